#!/usr/bin/env bash
# Measures the CoreDNS query log parser on a generated log (1,000,000 lines unless LINES
# sets another count), next to `wc -l` and `grep -c INFO` on the same file in the same run:
# the I/O floor. Prints each tool's time (hyperfine, mean of 5 runs after a warm-up) and
# peak RSS (GNU time). Needs hyperfine and /usr/bin/time.
set -euo pipefail
cd "$(dirname "$0")/.."

LINES=${LINES:-1000000}
LOG=${LOG:-target/bench/dnslog-$LINES.log}

build_output=$(cargo bench --bench dnslog_parse --no-run 2>&1)
bin=$(sed -n 's/.*Executable .*(\(.*dnslog_parse-[0-9a-f]*\)).*/\1/p' <<<"$build_output" | tail -1)
if [[ -z $bin ]]; then
    echo "cannot find the benchmark binary in cargo's output:" >&2
    echo "$build_output" >&2
    exit 1
fi

"$bin" generate "$LOG" "$LINES"
echo "log: $LOG, $(wc -l <"$LOG") lines, $(du -h "$LOG" | cut -f1)"
echo "machine: $(nproc) cores, $(sed -n 's/^model name\s*: //p' /proc/cpuinfo | head -1)"
echo

# Output goes through a pipe: GNU grep stops at the first match when it writes to /dev/null.
hyperfine --warmup 1 --runs 5 --style basic --output=pipe \
    "wc -l $LOG" \
    "grep -c INFO $LOG" \
    "$bin parse $LOG"
echo

for command in "wc -l $LOG" "grep -c INFO $LOG" "$bin parse $LOG"; do
    /usr/bin/time -f %M -o "$LOG.rss" $command | cat >/dev/null
    peak=$(tail -1 "$LOG.rss")
    echo "peak RSS ${peak} KiB: ${command/$bin/dnslog_parse}"
done
echo
"$bin" parse "$LOG"
