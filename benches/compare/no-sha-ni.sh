#!/usr/bin/env bash
# HMAC-SHA256 as a CPU without SHA extensions runs it (Skylake and Cascade Lake servers,
# for instance), measured on any x86_64 machine:
#
# - sha2 is built with `--cfg sha2_backend="soft"`, its portable code, which is what its
#   run-time detection picks on such a CPU;
# - ring is built from a copy of its source with the SHA-extension flag never set, so it
#   picks the AVX (Intel) or SSSE3 assembly it uses on such a CPU.
#
# It runs the `backend` bench of this comparison workspace (benches/compare), whose build
# goes to its own target directory, target/no-sha-ni, and leaves the normal one alone. The
# bench runs RUNS times (default 3), into target/no-sha-ni/criterion-N, and the script ends
# with the table from `python3 benches/report.py --backend --best`, which keeps each
# function's fastest sample across the runs. Extra arguments for cargo bench go after `--`.
#
#   bash benches/compare/no-sha-ni.sh
set -euo pipefail

cd "$(dirname "$0")"
target="$PWD/target/no-sha-ni"
mkdir -p "$target"

ring_version=$(cargo metadata --format-version 1 \
    | python3 -c 'import json,sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "ring"))')
ring_source=$(cargo metadata --format-version 1 \
    | python3 -c 'import json,sys,os; print(os.path.dirname(next(p["manifest_path"] for p in json.load(sys.stdin)["packages"] if p["name"] == "ring")))')
patched="$target/ring-$ring_version-no-sha-ext"
if [ ! -d "$patched" ]; then
    cp -r "$ring_source" "$patched"
    # The one line that records the CPUID SHA bit.
    python3 - "$patched/src/cpu/intel.rs" <<'PY'
import sys
path = sys.argv[1]
source = open(path).read()
line = "set(&mut caps, Shift::Sha);"
assert source.count(line) == 1, "ring's feature detection changed; update this script"
open(path, "w").write(source.replace(line, "// SHA extensions hidden for the measurement.", 1))
PY
fi

extra=()
if [ "${1:-}" = "--" ]; then shift; extra=("$@"); fi

# On a shared machine one run can be disturbed for seconds at a time. Several runs, each in
# its own criterion directory, let the report take every function's least disturbed sample.
runs=${RUNS:-3}
for run in $(seq "$runs"); do
    CRITERION_HOME="$target/criterion-$run" \
    CARGO_TARGET_DIR="$target" \
    RUSTFLAGS="${RUSTFLAGS:-} --cfg sha2_backend=\"soft\"" \
        cargo bench --bench backend \
            --config "patch.crates-io.ring.path=\"$patched\"" "${extra[@]}"
done
python3 ../report.py --backend --best "$target"/criterion-*
