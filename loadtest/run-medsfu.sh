#!/usr/bin/env bash
# Measures medsfu with the load generator: builds release binaries, starts a server on
# loopback, makes one token per subscriber, prints the JSON report.
# Usage: loadtest/run-medsfu.sh [SUBSCRIBERS] [SECONDS] [KBPS]
#        VEHICLES=V loadtest/run-medsfu.sh [SUBSCRIBERS_PER_VEHICLE] [SECONDS] [KBPS]
#        BIN_DIR=DIR ... measures the medsfu and medsfu-loadtest binaries in DIR (say, copies
#        built from an older commit) instead of building this checkout's.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-50}; secs=${2:-10}; kbps=${3:-2000}
if [ -n "${BIN_DIR:-}" ]; then
  bin=$BIN_DIR
else
  cargo build --release --locked -p medsfu -p medsfu-loadtest >&2
  bin=target/release
fi
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
vehicles=${VEHICLES:-0}
if [ "$vehicles" -gt 0 ]; then
  $bin/medsfu certs --data-dir "$dir" >/dev/null
fi
# The load's vehicles publish into one operator room ("load"), not into calls.
# A room holds 64 participants by default: make room for the load's subscribers.
MEDSFU_CORE__MAX_PARTICIPANTS_PER_ROOM=$((n + 8)) \
MEDSFU_VEHICLE__OPEN_ROOMS=true $bin/medsfu serve --data-dir "$dir" --http-listen 127.0.0.1:0 --webrtc-listen 127.0.0.1:0 \
  --vehicle-listen 127.0.0.1:0 >"$dir/out" 2>"$dir/err" &
pid=$!
until grep -q "listening on" "$dir/out" 2>/dev/null; do
  kill -0 "$pid" || { cat "$dir/err" >&2; exit 1; }
  sleep 0.1
done
base=$(grep -o 'http://[^/ ]*' "$dir/out" | head -1)
if [ "$vehicles" -gt 0 ]; then
  quic=$(grep -o 'quic [0-9.:]*' "$dir/out" | head -1 | cut -d' ' -f2)
  $bin/medsfu-loadtest --base "$base" --room load --vehicles "$vehicles" --data-dir "$dir" \
    --quic "$quic" --subscribers "$n" --seconds "$secs" --kbps "$kbps" --pid "$pid"
  exit
fi
pub=$($bin/medsfu token --data-dir "$dir" --room load --identity vehicle --role vehicle)
subs=()
for i in $(seq 1 "$n"); do
  subs+=(--subscriber-token "$($bin/medsfu token --data-dir "$dir" --room load --identity "viewer-$i" --role consultant)")
done
$bin/medsfu-loadtest --base "$base" --room load --publisher-token "$pub" "${subs[@]}" \
  --subscribers "$n" --seconds "$secs" --kbps "$kbps" --pid "$pid"
