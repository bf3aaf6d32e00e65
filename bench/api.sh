#!/usr/bin/env bash
# Measures the HTTP API on loopback against Redis itself, in one run on one Redis:
#
#   1. wrk: POST /api/redis/publish/bench with a 100-byte body, 50 connections;
#   2. redis-benchmark: PUBLISH on the same channel with the same payload, 50 clients;
#   3. wrk: the rproxy round trip through the Rust echo worker (examples/rproxy_echo.rs),
#      10 connections, and through the shell worker (examples/rproxy-worker.sh), 1 connection.
#
# One redis-cli subscriber listens on the publish channel throughout, so both publish runs
# deliver every message once. Everything listens on loopback or a unix socket in a temporary
# directory, and every run is bounded by its duration.
#
#   bench/api.sh            # DURATION=10 (seconds per wrk run), PORT=18411
#
# Needs redis-server, redis-cli, redis-benchmark, wrk, jq and a release build, which it makes.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${DURATION:-10}
port=${PORT:-18411}
token=bench-token-0123456789abcdef
prefix=bench
dir=$(mktemp -d)
socket=$dir/redis.sock
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill -- "-$pid" 2>/dev/null || kill "$pid" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# Starts a command in its own process group and remembers it for cleanup.
start() {
  setsid "$@" &
  pids+=($!)
}

cargo build --release --locked --quiet --bin almagest --example rproxy_echo

start redis-server --port 0 --unixsocket "$socket" --save "" --appendonly no --dir "$dir" \
  >/dev/null
until redis-cli -s "$socket" ping >/dev/null 2>&1; do sleep 0.05; done

cat >"$dir/almagest.toml" <<EOF
[log]
level = "warn"
[bus]
backend = "redis"
prefix = "$prefix"
instance = "bench"
[redis]
url = "redis+unix://$socket"
[api]
listen = "127.0.0.1:$port"
rproxy_timeout_ms = 5000
[[api.tokens]]
name = "bench"
token = "$token"
stubs = ["*"]
rate_limit_per_minute = 0
EOF
start env -u RUST_LOG target/release/almagest --config "$dir/almagest.toml" run
until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.1; done

payload=$(head -c 100 /dev/zero | tr '\0' 'x')
channel="$prefix:q:bench"
start redis-cli -s "$socket" SUBSCRIBE "$channel" >/dev/null
until [[ $(redis-cli -s "$socket" PUBSUB NUMSUB "$channel" | tail -1) -ge 1 ]]; do sleep 0.05; done

cat >"$dir/post.lua" <<EOF
wrk.method = "POST"
wrk.body = "$payload"
wrk.headers["Authorization"] = "Bearer $token"
wrk.headers["Content-Type"] = "text/plain"
EOF
cat >"$dir/get.lua" <<EOF
wrk.method = "POST"
wrk.body = "ping"
wrk.headers["Authorization"] = "Bearer $token"
EOF

echo "== wrk: POST /api/redis/publish/bench, 100-byte body, 50 connections, ${duration}s"
wrk -t2 -c50 -d"${duration}s" --latency -s "$dir/post.lua" \
  "http://127.0.0.1:$port/api/redis/publish/bench" | tee "$dir/wrk-publish.txt"

echo "== redis-benchmark: PUBLISH $channel <100-byte payload>, 50 clients"
redis-benchmark -s "$socket" -c 50 -n 500000 PUBLISH "$channel" "$payload" \
  | tee "$dir/redis-benchmark.txt" | grep -A3 -E "Summary|throughput"

api_rps=$(awk '/Requests\/sec/ {print $2}' "$dir/wrk-publish.txt")
redis_rps=$(awk '/throughput summary/ {print $3}' "$dir/redis-benchmark.txt")
echo "== publish ratio: API $api_rps req/s / Redis $redis_rps req/s = $(
  awk -v a="$api_rps" -v r="$redis_rps" 'BEGIN { printf "%.3f", a / r }')"

start target/release/examples/rproxy_echo "redis+unix://$socket" "$prefix" echo
until [[ $(redis-cli -s "$socket" PUBSUB NUMSUB "$prefix:q:echo" | tail -1) -ge 1 ]]; do
  sleep 0.05
done
echo "== wrk: POST /api/rproxy/echo, Rust echo worker, 10 connections, ${duration}s"
wrk -t2 -c10 -d"${duration}s" --latency -s "$dir/get.lua" \
  "http://127.0.0.1:$port/api/rproxy/echo"

start env REDIS_SOCKET="$socket" ALMAGEST_PREFIX="$prefix" examples/rproxy-worker.sh shell \
  >/dev/null
until [[ $(redis-cli -s "$socket" PUBSUB NUMSUB "$prefix:q:shell" | tail -1) -ge 1 ]]; do
  sleep 0.05
done
echo "== wrk: POST /api/rproxy/shell, shell worker example, 1 connection, ${duration}s"
wrk -t1 -c1 -d"${duration}s" --latency -s "$dir/get.lua" \
  "http://127.0.0.1:$port/api/rproxy/shell"
