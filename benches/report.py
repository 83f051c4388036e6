#!/usr/bin/env python3
"""Tabulates criterion's results for benches/verify.rs and benches/backend.rs as markdown,
with the ratios the performance targets are stated in. Every ratio compares two functions
of the same group, measured in the same run.

    cargo bench --bench verify && python3 benches/report.py
    python3 benches/report.py --backend [--best] [CRITERION_DIR ...]

Medians are used by default. `--best` takes instead each function's fastest sample across
all the directories given: on a machine where other work comes and goes, the least
disturbed sample is the closest to what the code itself costs.

Medians are used rather than means: the machine may be shared, and a median shrugs off
most of the samples another process disturbed.
"""

import json
import os
import sys

SIZES = ["256B", "1KiB", "16KiB", "256KiB", "1MiB", "4MiB"]
BYTES = {"256B": 256, "1KiB": 1024, "16KiB": 16384, "256KiB": 262144,
         "1MiB": 1048576, "4MiB": 4194304}
LARGE = ["16KiB", "256KiB", "1MiB", "4MiB"]


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


def throughput(size, ns):
    return f"{BYTES[size] / ns * 1e9 / 2**20:,.0f} MiB/s"


def verdict(ok):
    return "met" if ok else "**missed**"


def verify_report(results):
    def t(size, function):
        return results.get((f"verify/{size}", function))

    layers = [
        ("layer/one_frame/no_parse", "layer, 1 frame"),
        ("layer/frames_16k/no_parse", "layer, 16 KiB frames"),
        ("layer/one_frame/parse", "layer + parse, 1 frame"),
        ("layer/frames_16k/parse", "layer + parse, 16 KiB frames"),
    ]
    print("### Throughput against the limit (same run, medians)\n")
    header = ["body", "limit (raw HMAC)", "core check"] + [name for _, name in layers] + [
        "by hand", "by hand + `Value`", "svix", "harness alone"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for size in SIZES:
        limit = t(size, "limit")
        if limit is None:
            continue
        row = [size, f"{throughput(size, limit)} ({duration(limit)})"]
        for function in ["core"] + [f for f, _ in layers] + ["by_hand", "by_hand_parse", "svix",
                                                             "harness"]:
            value = t(size, function)
            row.append("–" if value is None else
                       f"{limit / value:.2f} × ({duration(value)})")
        print("| " + " | ".join(row) + " |")
    print("\nEach cell is the limit's time divided by the function's (1.00 × is the limit), "
          "with the function's median time per delivery.\n")

    print("### Targets\n")
    print("| target | measured | verdict |")
    print("|---|---|---|")
    rows = []
    core = {s: t(s, "limit") / t(s, "core") for s in LARGE if t(s, "core")}
    if core:
        worst = min(core, key=core.get)
        rows.append(("core check ≥ 0.95 × the limit from 16 KiB up",
                     f"lowest {core[worst]:.3f} × at {worst}",
                     verdict(core[worst] >= 0.95)))
    if t("256B", "core"):
        gap = t("256B", "core") - t("256B", "limit")
        rows.append(("core check within 100 ns of the limit at 256 B",
                     f"+{gap:.0f} ns ({duration(t('256B', 'core'))} vs "
                     f"{duration(t('256B', 'limit'))})", verdict(gap <= 100)))
    for function, name in layers[:2]:
        layer = {s: t(s, "limit") / t(s, function) for s in LARGE if t(s, function)}
        if layer:
            worst = min(layer, key=layer.get)
            rows.append((f"{name}, no parse, ≥ 0.90 × the limit from 16 KiB up",
                         f"lowest {layer[worst]:.3f} × at {worst}",
                         verdict(layer[worst] >= 0.90)))
        if t("1KiB", function):
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
        ratios = {s: t(s, "svix") / t(s, function)
                  for s in SIZES[1:] if t(s, "svix") and t(s, function)}
        if ratios:
            worst = min(ratios, key=ratios.get)
            rows.append((f"{name} ≥ 5 × svix from 1 KiB up",
                         f"lowest {ratios[worst]:.2f} × at {worst}",
                         verdict(ratios[worst] >= 5)))
    for row in rows:
        print("| " + " | ".join(row) + " |")
    ratios = {s: t(s, "svix") / t(s, layers[2][0])
              for s in SIZES[1:] if t(s, "svix") and t(s, layers[2][0])}
    if ratios:
        worst = min(ratios, key=ratios.get)
        print(f"\n(Not a target: svix does not parse, but the layer with the typed parse is "
              f"still {ratios[worst]:.2f} × svix at its lowest, at {worst}.)")

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
        print(f"| {size} | {throughput(size, sha2)} | {throughput(size, ring)} | "
              f"{sha2 / ring:.2f} × | {throughput(size, core) if core else '–'} |")
    print()


def main():
    args = sys.argv[1:]
    if args and args[0] == "--backend":
        best = "--best" in args
        roots = [arg for arg in args[1:] if arg != "--best"] or ["target/criterion"]
        title = ("without SHA extensions (sha2 portable, ring AVX)"
                 if any("no-sha-ni" in root for root in roots)
                 else "this CPU (both with SHA extensions)")
        statistic = "fastest sample of every run" if best else "medians"
        backend_report(load(roots, best), f"HMAC-SHA256 backends, {title}; {statistic}")
        return
    verify_report(load(args[0] if args else "target/criterion"))


if __name__ == "__main__":
    main()
