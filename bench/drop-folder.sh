#!/usr/bin/env bash
# Measures the drop folder: the time from writing one file to finding it in sent/ (20 runs),
# and the time until N files written at once are all in sent/. Starts its own redis-server
# on a unix socket and its own daemon; needs redis-server and a built almagest binary.
#
#   BIN=target/release/almagest N=1000 docs/bench/drop-folder.sh
set -euo pipefail
BIN=${BIN:-target/release/almagest}
N=${N:-1000}
dir=$(mktemp -d /tmp/almagest-bench.XXXX)
cleanup() {
  kill "${daemon:-}" "${redis:-}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

redis-server --port 0 --unixsocket "$dir/redis.sock" --save "" --appendonly no >/dev/null &
redis=$!
until redis-cli -s "$dir/redis.sock" ping >/dev/null 2>&1; do sleep 0.05; done
cat >"$dir/almagest.toml" <<TOML
[log]
level = "warn"
[bus]
backend = "redis"
instance = "bench"
prefix = "bench"
[redis]
url = "redis+unix://$dir/redis.sock"
[control]
drop_dir = "$dir/drop"
TOML
"$BIN" --config "$dir/almagest.toml" run 2>"$dir/almagest.log" &
daemon=$!
until [ -d "$dir/drop/sent" ]; do sleep 0.05; done

ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

for i in $(seq 1 20); do
  start=$(date +%s%N)
  echo "message $i" >"$dir/drop/one-$i.txt"
  until [ -e "$dir/drop/sent/one-$i.txt" ]; do sleep 0.005; done
  ms_since "$start"
done | sort -n | awk '{ms[NR] = $1} END {
  printf "one file: min %d ms, median %d ms, max %d ms\n", ms[1], ms[int((NR + 1) / 2)], ms[NR]
}'

start=$(date +%s%N)
for i in $(seq 1 "$N"); do echo "bulk $i" >"$dir/drop/bulk-$i.txt"; done
written=$(ms_since "$start")
until [ "$(find "$dir/drop/sent" -name 'bulk-*' | wc -l)" -eq "$N" ]; do sleep 0.05; done
echo "$N files: written in $written ms, all in sent/ after $(ms_since "$start") ms"
