#!/usr/bin/env bash
# Idle footprint of the release binary: resident memory and CPU time over a quiet minute,
# with the control service pinging every 10 s against a private redis-server.
#
#   bash bench/idle.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-60}

cargo build --release --quiet
dir=$(mktemp -d)
trap 'kill "$daemon" "$redis" 2>/dev/null || true; rm -rf "$dir"' EXIT

redis-server --port 0 --unixsocket "$dir/redis.sock" --save "" --appendonly no \
  --dir "$dir" >/dev/null &
redis=$!
for _ in $(seq 100); do [ -S "$dir/redis.sock" ] && break; sleep 0.05; done

cat > "$dir/almagest.toml" <<TOML
[bus]
backend = "redis"
instance = "idle"
prefix = "idle"
[redis]
url = "redis+unix://$dir/redis.sock"
[control]
ping_interval_secs = 10
TOML
./target/release/almagest --config "$dir/almagest.toml" run 2>"$dir/log" &
daemon=$!
sleep 5

ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$daemon/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$daemon/status"; }
start_ticks=$(cpu_ticks)
start_rss=$(rss_kib)
sleep "$seconds"
end_ticks=$(cpu_ticks)
end_rss=$(rss_kib)
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$daemon/status")

cpu_ms=$(( (end_ticks - start_ticks) * 1000 / ticks ))
echo "| measure | value |"
echo "|---|---|"
echo "| RSS after 5 s | $((start_rss / 1024)) MiB ($start_rss KiB) |"
echo "| RSS after $((seconds + 5)) s | $((end_rss / 1024)) MiB ($end_rss KiB) |"
echo "| peak RSS | $((hwm / 1024)) MiB ($hwm KiB) |"
echo "| CPU time over $seconds s idle | $cpu_ms ms ($(awk "BEGIN {printf \"%.3f\", $cpu_ms / ($seconds * 10)}") % of one core) |"
