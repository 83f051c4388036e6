#!/usr/bin/env python3
"""Tabulates criterion's results as markdown, with the ratios the performance targets are
stated in, and draws the throughput chart at the top of BENCHMARKS.md. Every ratio
compares two functions measured in the same run.

    cargo bench --bench verify                                   # the crate, the limit, by hand
    (cd benches/compare && cargo bench --bench svix)             # svix, in its own workspace
    python3 benches/report.py --svg benches/throughput.svg       # tables, verdicts, chart
    python3 benches/report.py --backend [--best] [CRITERION_DIR ...]

Results are read from every CRITERION_DIR given, or else from each of these that exists:
$CRITERION_HOME, $CARGO_TARGET_DIR/criterion, target/criterion and
benches/compare/target/criterion. Directories are read in order; a later result for the
same benchmark replaces an earlier one.

Medians are used by default: the machine may be shared, and a median shrugs off most of
the samples another process disturbed. `--best` (with `--backend`) takes instead each
function's fastest sample across all the directories given: on a machine where other work
comes and goes, the least disturbed sample is the closest to what the code itself costs.

Nothing but the standard library is needed; the chart is plain SVG.
"""

import json
import math
import os
import sys

SIZES = ["256B", "1KiB", "16KiB", "256KiB", "1MiB", "4MiB"]
BYTES = {"256B": 256, "1KiB": 1024, "16KiB": 16384, "256KiB": 262144,
         "1MiB": 1048576, "4MiB": 4194304}
LARGE = ["16KiB", "256KiB", "1MiB", "4MiB"]
READABLE = {"256B": "256 B", "1KiB": "1 KiB", "16KiB": "16 KiB", "256KiB": "256 KiB",
            "1MiB": "1 MiB", "4MiB": "4 MiB"}

# The chart's lines: (label, criterion group prefix, function, colour, dash pattern).
# Colours are the Okabe-Ito palette, which stays distinct for colour-blind readers; the
# dashes tell the lines apart in grey too.
CHART = [
    ("raw HMAC-SHA256: the limit", "verify", "limit", "#000000", ""),
    ("core check: Verifier::verify", "verify", "core", "#0072B2", "6 3"),
    ("layer, without the parse", "verify", "layer/one_frame/no_parse", "#009E73", ""),
    ("hand-written recipe", "verify", "by_hand", "#E69F00", "2 3"),
    ("svix", "compare", "svix", "#D55E00", "8 3 2 3"),
]


def default_roots():
    roots = []
    if os.environ.get("CRITERION_HOME"):
        roots.append(os.environ["CRITERION_HOME"])
    if os.environ.get("CARGO_TARGET_DIR"):
        roots.append(os.path.join(os.environ["CARGO_TARGET_DIR"], "criterion"))
    here = os.path.dirname(os.path.abspath(__file__))
    roots.append(os.path.join(here, "..", "target", "criterion"))
    roots.append(os.path.join(here, "compare", "target", "criterion"))
    unique = []
    for root in roots:
        if os.path.isdir(root) and os.path.realpath(root) not in map(os.path.realpath, unique):
            unique.append(root)
    return unique


def load(roots, best=False):
    """(group, function) -> time per iteration in ns: the median, or with `best` the
    fastest sample across every directory in `roots`."""
    if isinstance(roots, str):
        roots = [roots]
    results = {}
    for root in roots:
        for directory, _, files in os.walk(root):
            if os.path.basename(directory) != "new" or "benchmark.json" not in files:
                continue
            with open(os.path.join(directory, "benchmark.json")) as file:
                meta = json.load(file)
            key = (meta["group_id"], meta["function_id"])
            if best:
                with open(os.path.join(directory, "sample.json")) as file:
                    sample = json.load(file)
                value = min(t / i for t, i in zip(sample["times"], sample["iters"]))
                results[key] = min(results.get(key, value), value)
            else:
                with open(os.path.join(directory, "estimates.json")) as file:
                    results[key] = json.load(file)["median"]["point_estimate"]
    return results


def duration(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def mib_per_s(size, ns):
    return BYTES[size] / ns * 1e9 / 2**20


def throughput(size, ns):
    return f"{mib_per_s(size, ns):,.0f} MiB/s"


def verdict(ok):
    return "met" if ok else "**missed**"


def verify_report(results):
    def t(size, function, group="verify"):
        return results.get((f"{group}/{size}", function))

    layers = [
        ("layer/one_frame/no_parse", "layer, 1 frame"),
        ("layer/frames_16k/no_parse", "layer, 16 KiB frames"),
        ("layer/one_frame/parse", "layer + parse, 1 frame"),
        ("layer/frames_16k/parse", "layer + parse, 16 KiB frames"),
    ]

    def svix(size):
        """svix's time scaled to the verify run: svix runs in the comparison workspace,
        against the limit measured in that same run, and the ratio carries over."""
        own_limit, time = t(size, "limit", "compare"), t(size, "svix", "compare")
        if own_limit is None or time is None or t(size, "limit") is None:
            return None
        return time / own_limit * t(size, "limit")

    print("### Throughput against the limit (same run, medians)\n")
    header = ["body", "limit (raw HMAC)", "core check"] + [name for _, name in layers] + [
        "by hand", "by hand + `Value`", "svix", "harness alone"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for size in SIZES:
        limit = t(size, "limit")
        if limit is None:
            continue
        row = [READABLE[size], f"{throughput(size, limit)} ({duration(limit)})"]
        for function in ["core"] + [f for f, _ in layers] + ["by_hand", "by_hand_parse"]:
            value = t(size, function)
            row.append("–" if value is None else
                       f"{limit / value:.2f} × ({duration(value)})")
        own = t(size, "svix", "compare")
        row.append("–" if own is None or svix(size) is None else
                   f"{limit / svix(size):.2f} × ({duration(own)})")
        harness = t(size, "harness")
        row.append("–" if harness is None else duration(harness))
        print("| " + " | ".join(row) + " |")
    print("\nEach cell is the limit's time divided by the function's (1.00 × is the limit), "
          "with the function's median time per delivery. svix runs in the comparison "
          "workspace; its ratio is against the limit measured in that run.\n")

    print("### Targets\n")
    print("| target | measured | verdict |")
    print("|---|---|---|")
    rows = []
    core = {s: t(s, "limit") / t(s, "core") for s in LARGE if t(s, "core") and t(s, "limit")}
    if core:
        worst = min(core, key=core.get)
        rows.append(("core check ≥ 0.95 × the limit from 16 KiB up",
                     f"lowest {core[worst]:.3f} × at {READABLE[worst]}",
                     verdict(core[worst] >= 0.95)))
    if t("256B", "core") and t("256B", "limit"):
        gap = t("256B", "core") - t("256B", "limit")
        rows.append(("core check within 100 ns of the limit at 256 B",
                     f"+{gap:.0f} ns ({duration(t('256B', 'core'))} vs "
                     f"{duration(t('256B', 'limit'))})", verdict(gap <= 100)))
    for function, name in layers[:2]:
        layer = {s: t(s, "limit") / t(s, function)
                 for s in LARGE if t(s, function) and t(s, "limit")}
        if layer:
            worst = min(layer, key=layer.get)
            rows.append((f"{name}, no parse, ≥ 0.90 × the limit from 16 KiB up",
                         f"lowest {layer[worst]:.3f} × at {READABLE[worst]}",
                         verdict(layer[worst] >= 0.90)))
        if t("1KiB", function) and t("1KiB", "limit"):
            gap = t("1KiB", function) - t("1KiB", "limit")
            harness = t("1KiB", "harness")
            measured = f"+{duration(gap)}"
            if harness:
                measured += (f"; the harness alone (oneshot, dropping the request) takes "
                             f"{duration(harness)}")
            rows.append((f"{name}, no parse, within 1 µs of the limit at 1 KiB",
                         measured, verdict(gap <= 1000)))
    for function, name in [("core", "core check"), (layers[0][0], "layer, 1 frame, no parse"),
                           (layers[1][0], "layer, 16 KiB frames, no parse")]:
        ratios = {s: svix(s) / t(s, function)
                  for s in SIZES[1:] if svix(s) and t(s, function)}
        if ratios:
            worst = min(ratios, key=ratios.get)
            rows.append((f"{name} ≥ 5 × svix from 1 KiB up",
                         f"lowest {ratios[worst]:.2f} × at {READABLE[worst]}",
                         verdict(ratios[worst] >= 5)))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    ratios = {s: svix(s) / t(s, layers[2][0])
              for s in SIZES[1:] if svix(s) and t(s, layers[2][0])}
    if ratios:
        worst = min(ratios, key=ratios.get)
        print(f"\n(Not a target: svix does not parse, but the layer with the typed parse is "
              f"still {ratios[worst]:.2f} × svix at its lowest, at {READABLE[worst]}.)")

    refusals = [(f, v) for (g, f), v in results.items() if g == "refusal"]
    if refusals:
        print("\n### Cheap refusal (the bodies count their polls: zero)\n")
        print("| request | cost per refusal | vs verifying 1 MiB (core) |")
        print("|---|---:|---:|")
        one_mib = t("1MiB", "core")
        for function, value in sorted(refusals):
            against = f"{one_mib / value:,.0f} × cheaper" if one_mib else "–"
            print(f"| {function} | {duration(value)} | {against} |")


def backend_report(results, title):
    print(f"### {title}\n")
    print("| body | sha2 | ring | ring / sha2 | crate's check |")
    print("|---|---:|---:|---:|---:|")
    for size in SIZES:
        group = f"backend/{size}"
        sha2, ring, core = (results.get((group, f)) for f in ("sha2", "ring", "core"))
        if sha2 is None or ring is None:
            continue
        print(f"| {READABLE[size]} | {throughput(size, sha2)} | {throughput(size, ring)} | "
              f"{sha2 / ring:.2f} × | {throughput(size, core) if core else '–'} |")
    print()


def nice_ticks(low, high):
    """1, 2 and 5 times the powers of ten between low and high."""
    ticks = []
    for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if low <= value <= high:
                ticks.append(value)
    return ticks


def escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def chart(results, path):
    """Throughput against body size, both axes logarithmic, one line per CHART entry."""
    lines = []
    for label, group, function, colour, dash in CHART:
        points = [(size, mib_per_s(size, results[(f"{group}/{size}", function)]))
                  for size in SIZES if (f"{group}/{size}", function) in results]
        if points:
            lines.append((label, colour, dash, points))
    if not lines:
        sys.exit("no results to draw: run `cargo bench --bench verify` first")

    width, height = 760, 430
    left, right, top, bottom = 70, 250, 48, 58
    plot_w, plot_h = width - left - right, height - top - bottom
    values = [value for *_, points in lines for _, value in points]
    # The y range: from the 1-2-5 step below the slowest point to the one above the fastest.
    steps = nice_ticks(1, 1e6)
    low = max([step for step in steps if step <= min(values)] or [min(values)])
    high = min([step for step in steps if step >= max(values)] or [max(values)])

    def x(size):
        first, last = math.log2(BYTES[SIZES[0]]), math.log2(BYTES[SIZES[-1]])
        return left + (math.log2(BYTES[size]) - first) / (last - first) * plot_w

    def y(value):
        return top + (math.log10(high) - math.log10(value)) / (
            math.log10(high) - math.log10(low)) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="Helvetica, Arial, sans-serif" '
        f'font-size="12">',
        "<title>Verification throughput against body size</title>",
        "<desc>Throughput in MiB/s, both axes logarithmic, for "
        + escape(", ".join(label for label, *_ in lines))
        + ". Generated by benches/report.py from criterion's results.</desc>",
        f'<rect width="{width}" height="{height}" fill="#ffffff"/>',
        f'<text x="{left}" y="22" font-size="15" font-weight="bold">'
        "Verifying one delivery: throughput by body size</text>",
        f'<text x="{left}" y="38" fill="#555555">'
        "MiB/s, higher is better; both axes logarithmic; medians of criterion runs</text>",
    ]
    for tick in nice_ticks(low, high):
        out.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(tick):.1f}" '
                   f'y2="{y(tick):.1f}" stroke="#dddddd"/>')
        out.append(f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" text-anchor="end">'
                   f"{tick:,}</text>")
    for size in SIZES:
        out.append(f'<line x1="{x(size):.1f}" x2="{x(size):.1f}" y1="{top}" '
                   f'y2="{top + plot_h}" stroke="#eeeeee"/>')
        out.append(f'<text x="{x(size):.1f}" y="{top + plot_h + 18}" text-anchor="middle">'
                   f"{READABLE[size]}</text>")
    out.append(f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="none" '
               'stroke="#888888"/>')
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 14}" text-anchor="middle">'
               "body size</text>")
    out.append(f'<text transform="translate(18 {top + plot_h / 2:.1f}) rotate(-90)" '
               'text-anchor="middle">MiB/s</text>')
    for label, colour, dash, points in lines:
        path_data = " ".join(f"{'M' if i == 0 else 'L'}{x(size):.1f},{y(value):.1f}"
                             for i, (size, value) in enumerate(points))
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<path d="{path_data}" fill="none" stroke="{colour}" '
                   f'stroke-width="2"{dashes}/>')
        for size, value in points:
            out.append(f'<circle cx="{x(size):.1f}" cy="{y(value):.1f}" r="3" '
                       f'fill="{colour}"><title>{escape(label)}, {READABLE[size]}: '
                       f"{value:,.0f} MiB/s</title></circle>")
    legend_x, legend_y = left + plot_w + 16, top + 8
    for index, (label, colour, dash, points) in enumerate(lines):
        row = legend_y + index * 40
        dashes = f' stroke-dasharray="{dash}"' if dash else ""
        out.append(f'<line x1="{legend_x}" x2="{legend_x + 28}" y1="{row}" y2="{row}" '
                   f'stroke="{colour}" stroke-width="2"{dashes}/>')
        out.append(f'<circle cx="{legend_x + 14}" cy="{row}" r="3" fill="{colour}"/>')
        out.append(f'<text x="{legend_x + 36}" y="{row + 4}">{escape(label)}</text>')
        largest = points[-1]
        out.append(f'<text x="{legend_x + 36}" y="{row + 19}" fill="#555555">'
                   f"{largest[1]:,.0f} MiB/s at {READABLE[largest[0]]}</text>")
    out.append("</svg>")
    with open(path, "w") as file:
        file.write("\n".join(out) + "\n")


def main():
    args = sys.argv[1:]
    if args and args[0] == "--backend":
        best = "--best" in args
        roots = [arg for arg in args[1:] if arg != "--best"] or default_roots()
        title = ("without SHA extensions (sha2 portable, ring AVX)"
                 if any("no-sha-ni" in root for root in roots)
                 else "this CPU (both with SHA extensions)")
        statistic = "fastest sample of every run" if best else "medians"
        backend_report(load(roots, best), f"HMAC-SHA256 backends, {title}; {statistic}")
        return
    svg = None
    if "--svg" in args:
        index = args.index("--svg")
        if index + 1 >= len(args):
            sys.exit("--svg needs a path")
        svg = args[index + 1]
        del args[index:index + 2]
    roots = args or default_roots()
    if not roots:
        sys.exit("no criterion results found: run `cargo bench --bench verify` first")
    results = load(roots)
    verify_report(results)
    if svg:
        chart(results, svg)
        print(f"\nchart written to {svg}", file=sys.stderr)


if __name__ == "__main__":
    main()
