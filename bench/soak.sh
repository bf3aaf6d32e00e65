#!/usr/bin/env bash
# Soaks one release daemon with control, api and dnslog enabled (Redis backend) under mixed
# load for DURATION seconds, and prints the results as Markdown tables:
#
#   - wrk: POST /api/redis/publish/soak with a 100-byte body, paced by wrk's Lua `delay()`
#     (CONNECTIONS connections, each waiting DELAY_MS between a response and its next
#     request), counting the responses by status;
#   - a writer appending CoreDNS `log` plugin lines from four known clients to the dnslog
#     file source at LINES_PER_SEC, in slices every 100 ms;
#   - `almagest ping` once a second, timing each run and the slowest pong in it.
#
# RSS of the daemon is sampled every SAMPLE_SECS, CPU time comes from /proc/<pid>/stat, and
# the queries counted in Redis are compared with the lines written. No faults are injected,
# so every 5xx is a failure. Everything listens on loopback or a unix socket in a temporary
# directory.
#
#   bench/soak.sh           # DURATION=600, CONNECTIONS=10, DELAY_MS=20, LINES_PER_SEC=2000
#
# Needs redis-server, redis-cli, wrk, curl, awk and a release build, which it makes.
set -euo pipefail
cd "$(dirname "$0")/.."

duration=${DURATION:-600}
connections=${CONNECTIONS:-10}
delay_ms=${DELAY_MS:-20}
lines_per_sec=${LINES_PER_SEC:-2000}
sample_secs=${SAMPLE_SECS:-$((duration / 10 > 0 ? duration / 10 : 1))}
port=${PORT:-18412}
token=soak-token-0123456789abcdef
prefix=soak
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

cargo build --release --locked --quiet --bin almagest

start redis-server --port 0 --unixsocket "$socket" --save "" --appendonly no --dir "$dir" \
  >/dev/null
until redis-cli -s "$socket" ping >/dev/null 2>&1; do sleep 0.05; done
redis_pid=$(redis-cli -s "$socket" info server | tr -d '\r' | sed -n 's/^process_id://p')

log=$dir/coredns.log
: >"$log"
cat >"$dir/almagest.toml" <<EOF
[log]
level = "warn"
[bus]
backend = "redis"
prefix = "$prefix"
instance = "soak"
[redis]
url = "redis+unix://$socket"
[control]
ping_interval_secs = 10
[api]
listen = "127.0.0.1:$port"
[[api.tokens]]
name = "soak"
token = "$token"
stubs = ["*"]
rate_limit_per_minute = 0
[dnslog]
retention_days = 3650
sources = [{ file = "$log", start_at = "beginning" }]
EOF
start env -u RUST_LOG target/release/almagest --config "$dir/almagest.toml" run \
  2>"$dir/almagest.log"
daemon=${pids[-1]}
until curl -fs "http://127.0.0.1:$port/readyz" >/dev/null; do sleep 0.1; done

channel="$prefix:q:soak"
# Its "Server closed the connection" at cleanup is expected, so stderr is dropped too.
start redis-cli -s "$socket" SUBSCRIBE "$channel" >/dev/null 2>&1
until [[ $(redis-cli -s "$socket" PUBSUB NUMSUB "$channel" | tail -1) -ge 1 ]]; do sleep 0.05; done

ticks=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$daemon/status"; }

# Sums the scores of every per-day clients set: the queries counted so far.
counted() {
  redis-cli -s "$socket" --raw eval "
    local total = 0
    for _, key in ipairs(redis.call('KEYS', '$prefix:dns:clients:*')) do
      local members = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
      for i = 2, #members, 2 do total = total + tonumber(members[i]) end
    end
    return total" 0
}

# One slice of the DNS log: a tenth of a second of queries from four clients, a few names
# and query types, some NXDOMAIN.
slice_lines=$((lines_per_sec / 10))
awk -v n="$slice_lines" 'BEGIN {
  split("192.168.1.42 192.168.1.43 10.0.0.7 [2001:db8:1:2::42]", clients, " ")
  split("example.org. wiki.home.arpa. nas.lan. push.apple.com. no-such-name.lan.", names, " ")
  split("A AAAA HTTPS", types, " ")
  for (i = 0; i < n; i++) {
    name = names[i % 5 + 1]
    rcode = name == "no-such-name.lan." ? "NXDOMAIN" : "NOERROR"
    printf "[INFO] %s:%d - %d \"%s IN %s udp 41 false 4096\" %s qr,rd,ra 68 0.000%06ds\n",
      clients[i % 4 + 1], 40000 + i, i, types[i % 3 + 1], name, rcode, 100 + i
  }
}' >"$dir/slice.log"

# Appends one slice every 100 ms on a fixed schedule, so a late slice does not shift the
# ones after it, and records how many slices it wrote (renamed into place, so a reader never
# sees the file empty).
write_log() {
  local begin slices=0 due now
  begin=$(date +%s%N)
  while ((slices < duration * 10)); do
    cat "$dir/slice.log" >>"$log"
    slices=$((slices + 1))
    echo "$slices" >"$dir/slices.new"
    mv "$dir/slices.new" "$dir/slices"
    due=$((begin + slices * 100000000))
    now=$(date +%s%N)
    if ((due > now)); then sleep "$(awk -v ns=$((due - now)) 'BEGIN { print ns / 1e9 }')"; fi
  done
}

# Runs `almagest ping` once a second and writes one line per run: the exit status, the wall
# time and the slowest pong, both in ms.
ping_loop() {
  local begin runs=0 t0 t1 status slowest due now
  begin=$(date +%s%N)
  while ((runs < duration)); do
    t0=$(date +%s%N)
    status=0
    target/release/almagest --config "$dir/almagest.toml" ping --timeout 3 \
      >"$dir/ping.out" 2>&1 || status=$?
    t1=$(date +%s%N)
    slowest=$(awk 'NR > 1 { sub(/ms$/, "", $NF); if ($NF > max) max = $NF } END { print max + 0 }' \
      "$dir/ping.out")
    echo "$status $(((t1 - t0) / 1000)) $slowest" >>"$dir/pings"
    runs=$((runs + 1))
    due=$((begin + runs * 1000000000))
    now=$(date +%s%N)
    if ((due > now)); then sleep "$(awk -v ns=$((due - now)) 'BEGIN { print ns / 1e9 }')"; fi
  done
}

cat >"$dir/publish.lua" <<EOF
wrk.method = "POST"
wrk.body = string.rep("x", 100)
wrk.headers["Authorization"] = "Bearer $token"
wrk.headers["Content-Type"] = "text/plain"

local threads = {}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  statuses = {}
end
function delay()
  return $delay_ms
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local total = {}
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      total[status] = (total[status] or 0) + count
    end
  end
  for status, count in pairs(total) do
    io.write(string.format("status %d %d\n", status, count))
  end
  io.write(string.format("errors %d %d %d %d %d\n", summary.errors.connect,
    summary.errors.read, summary.errors.write, summary.errors.status, summary.errors.timeout))
end
EOF

echo "machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)," \
  "load average $(cut -d' ' -f1-3 /proc/loadavg) at start"
start_ns=$(date +%s%N)
start_daemon_ticks=$(cpu_ticks "$daemon")
start_redis_ticks=$(cpu_ticks "$redis_pid")
echo "0 $(rss_kib) 0 0" >"$dir/samples"

start wrk -t2 -c"$connections" -d"${duration}s" --latency -s "$dir/publish.lua" \
  "http://127.0.0.1:$port/api/redis/publish/soak" >"$dir/wrk.txt"
wrk_pid=${pids[-1]}
write_log &
writer=$!
ping_loop &
pinger=$!

# Every sample_secs: RSS, lines written so far and queries counted so far.
elapsed=0
while ((elapsed < duration)); do
  sleep "$sample_secs"
  elapsed=$((elapsed + sample_secs))
  written=$(($(cat "$dir/slices" 2>/dev/null || echo 0) * slice_lines))
  echo "$elapsed $(rss_kib) $written $(counted)" >>"$dir/samples"
done
wait "$writer" "$pinger" "$wrk_pid"
load_end=$(cut -d' ' -f1-3 /proc/loadavg)

written=$(wc -l <"$log")
catch_up_start=$(date +%s%N)
while [[ $(counted) -lt $written ]] && (($(date +%s%N) - catch_up_start < 30000000000)); do
  sleep 0.1
done
catch_up_ms=$((($(date +%s%N) - catch_up_start) / 1000000))
final_counted=$(counted)
end_ns=$(date +%s%N)
wall_ms=$(((end_ns - start_ns) / 1000000))
daemon_cpu_ms=$((($(cpu_ticks "$daemon") - start_daemon_ticks) * 1000 / ticks))
redis_cpu_ms=$((($(cpu_ticks "$redis_pid") - start_redis_ticks) * 1000 / ticks))
hwm=$(awk '/^VmHWM/ {print $2}' "/proc/$daemon/status")

percent() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", 100 * a / b }'; }
# Prints the p-th percentile of column c of a file of numbers (nearest rank).
percentile() {
  sort -n -k"$2","$2" "$1" | awk -v p="$3" -v c="$2" '{ v[NR] = $c }
    END { i = int(NR * p / 100 + 0.999999); if (i < 1) i = 1; printf "%.1f", v[i] / 1 }'
}

echo
echo "== API publishes (wrk, $connections connections, ${delay_ms} ms between requests)"
echo
requests=$(awk '/requests in/ {print $1}' "$dir/wrk.txt")
echo "| measure | value |"
echo "|---|---|"
echo "| requests | $requests, $(awk '/Requests\/sec/ {print $2}' "$dir/wrk.txt") req/s |"
awk '/^status/ { printf "| status %s | %s |\n", $2, $3 }' "$dir/wrk.txt" | sort
awk '/^errors/ { printf "| socket errors (connect, read, write, timeout) | %s, %s, %s, %s |\n",
  $2, $3, $4, $6 }' "$dir/wrk.txt"
echo "| p50 | $(awk '$1 == "50%" {print $2}' "$dir/wrk.txt") |"
echo "| p99 | $(awk '$1 == "99%" {print $2}' "$dir/wrk.txt") |"
echo "| max | $(awk '/Latency/ && NF == 5 {print $4}' "$dir/wrk.txt") |"

pings=$(wc -l <"$dir/pings")
failed=$(awk '$1 != 0' "$dir/pings" | wc -l)
awk '{ print $2 / 1000 }' "$dir/pings" >"$dir/ping-wall"
echo
echo "== almagest ping, once a second"
echo
echo "| measure | value |"
echo "|---|---|"
echo "| runs | $pings, $failed with a missing service or an error |"
echo "| wall time of the command, p50 / p99 | $(percentile "$dir/ping-wall" 1 50) ms /" \
  "$(percentile "$dir/ping-wall" 1 99) ms |"
echo "| slowest pong per run, p50 / p99 | $(percentile "$dir/pings" 3 50) ms /" \
  "$(percentile "$dir/pings" 3 99) ms |"

echo
echo "== DNS log, $lines_per_sec lines/s written"
echo
echo "| measure | value |"
echo "|---|---|"
echo "| lines written | $written in $duration s ($((written / duration)) lines/s) |"
echo "| queries counted in Redis | $final_counted ($(percent "$final_counted" "$written") %)," \
  "$catch_up_ms ms after the writer stopped |"
echo "| counted per second | $((final_counted * 1000 / wall_ms)) over the $wall_ms ms run |"

echo
echo "== daemon RSS and backlog (lines written minus queries counted)"
echo
echo "| time | RSS | backlog |"
echo "|---|---|---|"
awk '{ printf "| %d s | %.1f MiB | %d |\n", $1, $2 / 1024, $3 - $4 }' "$dir/samples"
echo "| peak (VmHWM) | $(awk -v k="$hwm" 'BEGIN { printf "%.1f MiB", k / 1024 }') | |"

echo
echo "== CPU over $wall_ms ms (load average $load_end at the end of the load)"
echo
echo "| process | CPU time | of one core |"
echo "|---|---|---|"
echo "| almagest | $daemon_cpu_ms ms | $(percent "$daemon_cpu_ms" "$wall_ms") % |"
echo "| redis-server | $redis_cpu_ms ms | $(percent "$redis_cpu_ms" "$wall_ms") % |"

errors=$(grep -c -E ' (ERROR|WARN) ' "$dir/almagest.log" || true)
echo
echo "daemon log: $errors ERROR or WARN lines"
grep -E ' (ERROR|WARN) ' "$dir/almagest.log" | cut -c1-200 | sort | uniq -c | sort -rn | head -5 \
  || true # grep finds nothing in a clean run
