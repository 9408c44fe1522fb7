#!/usr/bin/env bash
# Where the server's CPU goes under load: runs loadtest/run-medsfu.sh with the given
# arguments, samples the server with `perf record` (cpu-clock, so it works without hardware
# counters) for 8 s of the measuring window, and prints the share of samples by kind:
# kernel, memcpy, allocator, and by crate. Needs perf (Debian: linux-perf).
# Usage: loadtest/profile-medsfu.sh [SUBSCRIBERS] [SECONDS >= 12] [KBPS]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v perf >/dev/null || { echo "perf is not installed (apt-get install linux-perf)" >&2; exit 1; }
n=${1:-50}; secs=${2:-15}; kbps=${3:-2000}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
BIN_DIR=${BIN_DIR:-} loadtest/run-medsfu.sh "$n" "$secs" "$kbps" >"$out/report.json" 2>"$out/err" &
load=$!
# The window starts once every subscriber has joined; they join at about 5 a second.
until pid=$(pgrep -n -f "medsfu serve --data-dir /tmp/") ; do sleep 0.2; done
sleep $((n / 5 + 3))
perf record -q -e cpu-clock -F 999 -p "$pid" -o "$out/perf.data" -- sleep 8 2>/dev/null
wait "$load"
perf report -i "$out/perf.data" --no-children --sort dso,symbol --stdio -g none 2>/dev/null |
  python3 -c '
import collections, re, sys
share = collections.Counter()
for line in sys.stdin:
    m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+\[.\]\s+(.*)", line)
    if not m:
        continue
    p, dso, sym = float(m.group(1)), m.group(2), m.group(3).strip()
    if dso.startswith("[kernel"):
        k = "kernel (UDP send and receive, scheduling)"
    elif "memmove" in sym or "memcpy" in sym:
        k = "memcpy"
    elif re.search(r"malloc|free|realloc", sym):
        k = "allocator"
    elif dso.startswith("libc"):
        k = "libc, other"
    else:
        k = re.sub(r"^<", "", sym).split("::")[0].split(" ")[0]
        if k in ("core", "alloc", "std"):
            k = "std (hashing: %s)" % ("yes" if "hash" in sym.lower() else "no")
    share[k] += p
for k, v in share.most_common(16):
    print(f"{v:6.1f} %  {k}")
'
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print("server CPU per forwarded packet:", round(r["server_cpu_us_per_forwarded_packet"], 2), "us")' "$out/report.json"
