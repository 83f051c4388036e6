#!/usr/bin/env bash
# End to end on loopback: the README's quickstart and the receiver example against three
# axum servers (examples/bench_baseline.rs), all replaying one genuine signed 4 KiB
# delivery with wrk.
#
#   quickstart  the README's quickstart: VerifyOpenMailLayer on the route, a handler that
#               reads the typed event (the layer alone)
#   stack       the layer with the receiver's stack: its deadline, memory budget,
#               deduplication in memory and duplicate log line, served by axum::serve
#   receiver    examples/receiver.rs: that stack, plus its connection limits and timeouts
#   by-hand     the documentation's recipe written into an axum handler
#   unverified  reads the body and answers, checking nothing (the ceiling)
#
# All of them print one line per request and answer JSON, so what differs is the check, the
# parse and, for the stack and the receiver, deduplication: the replayed delivery is handled
# once, and every request after that is answered as a duplicate (200), which still
# verifies, parses and looks the event up, and logs the decision to stderr instead of the
# stdout line. receiver / stack is what the receiver's connection handling costs.
# Each server gets one tokio worker pinned to CPU 0 and wrk runs on CPU 1; the
# servers take turns, ROUNDS times, and the median counts. Besides requests per second the
# script reads each server's CPU time from /proc, so it also reports CPU microseconds per
# request, which other load on the machine disturbs less. With perf installed it then
# profiles the quickstart against the unverified route, and the receiver against the
# stack, and says where the differences go.
#
# Environment: DURATION (s per run, default 10), ROUNDS (default 3), CONNECTIONS
# (default 32), PROFILE (1 to profile, default 1 when perf exists), BODY_SIZE (default 4096).
# Traffic goes to 127.0.0.1 only; every run is bounded by DURATION.
set -euo pipefail

cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
BODY_SIZE=${BODY_SIZE:-4096}
if command -v perf >/dev/null 2>&1; then PROFILE=${PROFILE:-1}; else PROFILE=0; fi
SECRET=whsec_http_bench_5b0e7d21c9a4
SERVERS=(unverified by-hand quickstart stack receiver)
declare -A PORT=([unverified]=18201 [by-hand]=18202 [quickstart]=18204 [stack]=18205
    [receiver]=18203)

if ! command -v wrk >/dev/null 2>&1; then
    echo "installing wrk" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi

cargo build --release --example receiver --example bench_baseline >&2
bin="${CARGO_TARGET_DIR:-target}/release/examples"

work=$(mktemp -d)
declare -A PID=()
cleanup() {
    for server in "${!PID[@]}"; do kill "${PID[$server]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

# One realistic message.received event of exactly BODY_SIZE bytes.
python3 - "$BODY_SIZE" >"$work/body.json" <<'PY'
import json, sys
size = int(sys.argv[1])
event = {
    "event": "message.received", "event_id": "evt_7f3a9c21d4",
    "occurred_at": "2024-03-21T10:05:00.000Z", "delivered_at": "2024-03-21T10:05:01.000Z",
    "attempt": 1, "inbox_id": "inb_92ma", "thread_id": "thr_xyz",
    "message": {
        "id": "msg_4c8d5e6f", "rfc_message_id": "<original@message.id>",
        "from": "Ada Lovelace <ada@example.com>", "to": "inbox@openmail.sh",
        "cc": ["carol@example.com"], "subject": "Quarterly invoice and the notes from Tuesday",
        "body_text": "",
        "attachments": [{
            "filename": "document.pdf", "contentType": "application/pdf", "sizeBytes": 12345,
            "url": "https://api.openmail.sh/v1/attachments/msg_4c8d5e6f/document.pdf",
            "parsedText": "Invoice #2847", "extractionMethod": "pdf"}],
        "received_at": "2024-03-21T10:05:00.000Z",
    },
}
line = ("Hello Ada, please find the invoice attached. Payment is due within 30 days; "
        "the reference is INV-2847. Thanks for the notes from Tuesday.\n")
base = len(json.dumps(event, separators=(",", ":")))
text = ""
while base + len(json.dumps(text + line)) - 2 <= size:
    text += line
while base + len(json.dumps(text)) - 2 < size:
    text += "."
event["message"]["body_text"] = text
body = json.dumps(event, separators=(",", ":"))
assert len(body) == size, len(body)
sys.stdout.write(body)
PY

# Signs the body now, with python's hmac, and writes the wrk script that replays it.
sign() {
    python3 - "$SECRET" "$work/body.json" "$work/post.lua" <<'PY'
import hashlib, hmac, sys, time
secret, body_path, lua_path = sys.argv[1:]
body = open(body_path, "rb").read()
timestamp = str(int(time.time()))
signature = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
with open(lua_path, "w") as lua:
    lua.write(f'''wrk.method = "POST"
local file = io.open("{body_path}", "rb")
wrk.body = file:read("*a")
file:close()
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Timestamp"] = "{timestamp}"
wrk.headers["X-Signature"] = "{signature}"
wrk.headers["X-Event-Id"] = "evt_7f3a9c21d4"
''')
PY
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

start() {
    local server=$1 port=${PORT[$1]}
    case $server in
        receiver) command=("$bin/receiver") ;;
        *) command=("$bin/bench_baseline" "$server") ;;
    esac
    # Both streams go to /dev/null: the stack and the receiver log each duplicate to
    # stderr, the others print their line to stdout, and writing either to a file would
    # time the file system.
    OPENMAIL_WEBHOOK_SECRET=$SECRET PORT=$port TOKIO_WORKER_THREADS=1 \
        taskset -c 0 "${command[@]}" >/dev/null 2>&1 &
    PID[$server]=$!
    for _ in $(seq 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return; fi
        sleep 0.1
    done
    echo "$server did not start; run it by hand to see why:" >&2
    echo "  OPENMAIL_WEBHOOK_SECRET=$SECRET PORT=$port ${command[*]}" >&2
    exit 1
}

for server in "${SERVERS[@]}"; do start "$server"; done

# wrk counts non-2xx answers; a run that got any is not a measurement.
run() {
    local server=$1 seconds=$2
    sign
    local before after output
    before=$(cpu_ticks "${PID[$server]}")
    output=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${seconds}s" -s "$work/post.lua" \
        "http://127.0.0.1:${PORT[$server]}/webhooks")
    after=$(cpu_ticks "${PID[$server]}")
    if grep -q "Non-2xx" <<<"$output"; then
        echo "$server answered non-2xx:" >&2
        echo "$output" >&2
        exit 1
    fi
    local rps requests
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$output")
    requests=$(awk '/requests in/ {print $1}' <<<"$output")
    local ticks_per_second
    ticks_per_second=$(getconf CLK_TCK)
    local cpu_us
    cpu_us=$(python3 -c "print(f'{($after - $before) / $ticks_per_second * 1e6 / $requests:.1f}')")
    echo "$rps $cpu_us"
}

# The stack and the receiver deduplicate by event_id: the first delivery is handled, every replay after
# it is answered as a duplicate (200). Deliver it once, alone, before the load starts, so
# that concurrent first deliveries do not meet the 409 for "still being handled".
prime() {
    sign
    python3 - "$1" "$work/post.lua" "$work/body.json" <<'PY'
import re, sys, urllib.request
url, lua, body = sys.argv[1:]
headers = dict(re.findall(r'wrk.headers\["([^"]+)"\] = "([^"]*)"', open(lua).read()))
request = urllib.request.Request(url, data=open(body, "rb").read(), headers=headers)
with urllib.request.urlopen(request, timeout=10) as response:
    assert response.status == 200, response.status
PY
}

echo "warming up" >&2
for server in "${SERVERS[@]}"; do
    prime "http://127.0.0.1:${PORT[$server]}/webhooks"
    run "$server" 2 >/dev/null
done

declare -A RPS=() CPU=()
for round in $(seq "$ROUNDS"); do
    for server in "${SERVERS[@]}"; do
        read -r rps cpu < <(run "$server" "$DURATION")
        echo "round $round  $server  $rps req/s  $cpu µs CPU/request" >&2
        RPS[$server]+="$rps "
        CPU[$server]+="$cpu "
    done
done

python3 - "$BODY_SIZE" "$CONNECTIONS" "${SERVERS[@]}" <<PY
import statistics, sys
size, connections, *names = sys.argv[1:]
rps_runs = {$(for s in "${SERVERS[@]}"; do printf '"%s": "%s", ' "$s" "${RPS[$s]}"; done)}
cpu_runs = {$(for s in "${SERVERS[@]}"; do printf '"%s": "%s", ' "$s" "${CPU[$s]}"; done)}
rps = {n: statistics.median(map(float, rps_runs[n].split())) for n in names}
cpu = {n: statistics.median(map(float, cpu_runs[n].split())) for n in names}
print(f"\n{size}-byte signed delivery, wrk -c{connections}, one server core; medians\n")
print("| server | requests/s | CPU µs/request | vs unverified | vs by-hand |")
print("|---|---:|---:|---:|---:|")
for n in names:
    print(f"| {n} | {rps[n]:,.0f} | {cpu[n]:.1f} | {rps[n] / rps['unverified']:.2f} × | "
          f"{rps[n] / rps['by-hand']:.2f} × |")
print()
for n in ("quickstart", "receiver"):
    print(f"{n} / unverified = {rps[n] / rps['unverified']:.2f} × requests/s, "
          f"{cpu['unverified'] / cpu[n]:.2f} × by CPU per request")
    print(f"{n} / by-hand = {rps[n] / rps['by-hand']:.2f} × requests/s, "
          f"{cpu['by-hand'] / cpu[n]:.2f} × by CPU per request")
print("(targets for the layer alone, the quickstart: ≥ 0.82 × unverified, ≥ 1.18 × by-hand)")
print(f"receiver / stack = {rps['receiver'] / rps['stack']:.2f} × requests/s, "
      f"{cpu['stack'] / cpu['receiver']:.2f} × by CPU per request (target ≥ 0.8 ×)")
rounds = [float(r) / float(s) for r, s in zip(rps_runs["receiver"].split(), rps_runs["stack"].split())]
print("receiver / stack round by round: " + ", ".join(f"{ratio:.2f}" for ratio in rounds))
for n in names[1:]:
    print(f"{n} spends {cpu[n] - cpu['unverified']:.1f} µs CPU/request more than the "
          f"unverified route")
PY

if [ "$PROFILE" = 1 ]; then
    for server in quickstart unverified receiver stack; do
        sign
        perf record -q -F 2999 -p "${PID[$server]}" -o "$work/$server.perf" \
            -- sleep "$DURATION" 2>/dev/null &
        recorder=$!
        before=$(cpu_ticks "${PID[$server]}")
        taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" -s "$work/post.lua" \
            "http://127.0.0.1:${PORT[$server]}/webhooks" >"$work/$server.wrk"
        after=$(cpu_ticks "${PID[$server]}")
        wait "$recorder" || true
        requests=$(awk '/requests in/ {print $1}' "$work/$server.wrk")
        python3 -c "print(($after - $before) / $(getconf CLK_TCK) * 1e6 / $requests)" \
            >"$work/$server.cpu"
        perf report -i "$work/$server.perf" --stdio --no-children --sort sym \
            --percent-limit 0 2>/dev/null >"$work/$server.report" || true
    done
    for pair in "quickstart unverified" "receiver stack"; do
    read -r subject_name base_name <<<"$pair"
    python3 - "$work/$subject_name.report" "$work/$base_name.report" \
        "$(cat "$work/$subject_name.cpu")" "$(cat "$work/$base_name.cpu")" \
        "$subject_name" "$base_name" <<'PY'
import re, sys
categories = [
    ("HMAC-SHA256", r"sha2::|hmac::|sha256"),
    ("JSON (parse and answer)", r"serde_json|serde::|openmail_webhooks::event"),
    ("the crate's layer", r"openmail_webhooks"),
    ("hyper / HTTP", r"hyper|httparse|http::|h2::"),
    ("axum / tower", r"axum|matchit|tower"),
    ("tokio / mio", r"tokio|mio::"),
    ("allocator", r"malloc|free|_int_|cfree|realloc"),
    ("memcpy / memset", r"mem(move|cpy|set)"),
    ("stdout and stderr", r"stdio|LineWriter|BufWriter|Stderr|libc_write"),
]
def load(path):
    shares, top = {}, []
    for line in open(path):
        match = re.match(r"\s*([\d.]+)%\s+\[(.)\]\s+(.*)", line)
        if not match:
            continue
        share, space, symbol = float(match[1]), match[2], match[3].strip()
        name = "kernel (TCP over loopback, syscalls, scheduling)" if space == "k" else next(
            (name for name, pattern in categories if re.search(pattern, symbol)), "other")
        shares[name] = shares.get(name, 0) + share
        top.append((share, symbol))
    return shares, sorted(top, reverse=True)[:12]
subject, subject_top = load(sys.argv[1])
unverified, _ = load(sys.argv[2])
subject_cpu, unverified_cpu = float(sys.argv[3]), float(sys.argv[4])
subject_name, base_name = sys.argv[5], sys.argv[6]
print(f"\n{subject_name} against {base_name}: where the server's CPU goes "
      "(perf samples × CPU time per request, profiled runs):\n")
print(f"| category | {subject_name} µs/request | {base_name} µs/request | difference |")
print("|---|---:|---:|---:|")
for name in sorted(set(subject) | set(unverified), key=lambda n: -subject.get(n, 0)):
    mine = subject.get(name, 0) / 100 * subject_cpu
    theirs = unverified.get(name, 0) / 100 * unverified_cpu
    print(f"| {name} | {mine:.2f} | {theirs:.2f} | {mine - theirs:+.2f} |")
print(f"| total | {subject_cpu:.2f} | {unverified_cpu:.2f} | "
      f"{subject_cpu - unverified_cpu:+.2f} |")
print(f"\nThe {subject_name}'s hottest symbols:\n")
for share, symbol in subject_top:
    print(f"  {share:5.1f} %  {symbol[:110]}")
PY
    done
fi
