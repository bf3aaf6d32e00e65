#!/usr/bin/env bash
# Measures the whole dnslog service: a generated query log (1,000,000 lines unless LINES
# sets another count) read from its beginning into Redis counters, timed from the daemon's
# start until the counted queries equal the queries in the file. Runs `wc -l` and
# `grep -c INFO` on the same file first (the I/O floor) and prints the daemon's peak RSS.
# Starts its own redis-server on a unix socket; needs redis-server, redis-cli and a release
# build.
#
#   cargo build --release && bench/dnslog-service.sh
set -euo pipefail
cd "$(dirname "$0")/.."

LINES=${LINES:-1000000}
LOG=${LOG:-target/bench/dnslog-$LINES.log}
BIN=${BIN:-target/release/almagest}

# The parser benchmark generates the log and counts its queries.
build_output=$(cargo bench --bench dnslog_parse --no-run 2>&1)
parser=$(sed -n 's/.*Executable .*(\(.*dnslog_parse-[0-9a-f]*\)).*/\1/p' <<<"$build_output" | tail -1)
if [[ -z $parser ]]; then
    echo "cannot find the benchmark binary in cargo's output:" >&2
    echo "$build_output" >&2
    exit 1
fi
[[ -f $LOG ]] || "$parser" generate "$LOG" "$LINES"
queries=$("$parser" parse "$LOG" | sed -n 's/.*(\([0-9]*\) queries.*/\1/p')
echo "log: $LOG, $(wc -l <"$LOG") lines, $queries queries, $(du -h "$LOG" | cut -f1)"
echo "machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
echo

# Output goes through a pipe: GNU grep stops at the first match when it writes to /dev/null.
for command in "wc -l $LOG" "grep -c INFO $LOG"; do
    /usr/bin/time -f "%e s, peak RSS %M KiB: $command" $command | cat >/dev/null
done

dir=$(mktemp -d /tmp/almagest-bench.XXXX)
cleanup() {
    kill "${daemon:-}" "${redis:-}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT

redis-server --port 0 --unixsocket "$dir/redis.sock" --save "" --appendonly no \
    --dir "$dir" >/dev/null &
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
[dnslog]
retention_days = 3650
sources = [{ file = "$PWD/$LOG", start_at = "beginning" }]
TOML

# Sums the scores of every per-day clients set: the queries counted so far.
counted() {
    redis-cli -s "$dir/redis.sock" --raw eval "
        local total = 0
        for _, key in ipairs(redis.call('KEYS', 'bench:dns:clients:*')) do
            local members = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
            for i = 2, #members, 2 do total = total + tonumber(members[i]) end
        end
        return total" 0
}

start=$(date +%s%N)
"$BIN" --config "$dir/almagest.toml" run 2>"$dir/almagest.log" &
daemon=$!
until [[ $(counted) -ge $queries ]]; do sleep 0.05; done
elapsed_ms=$((($(date +%s%N) - start) / 1000000))
peak=$(sed -n 's/^VmHWM:\s*//p' "/proc/$daemon/status")

echo "service: $queries queries counted in $elapsed_ms ms" \
    "($((LINES * 1000 / elapsed_ms)) lines/s), peak RSS $peak"
echo "counted: $(counted), expected: $queries"
