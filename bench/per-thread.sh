#!/bin/bash
# Where a workload's CPU goes, thread by thread: the server's CPU time (user and system) and
# context switches (voluntary, involuntary) per request, for each of its threads, over WIN
# seconds (default 10) in the middle of one workload of the throughput bench.
#
#   bench/per-thread.sh BIN 'WORKLOAD'      e.g. bench/per-thread.sh target/release/tollgate '`createTask`, UNLIMITED plan'
#
# Runs the throughput bench (BENCH_BIN, default the newest target/release/deps/throughput-*;
# build it with `cargo bench --bench throughput --no-run`) on SQLite with BENCH_ONLY=WORKLOAD and
# BENCH_SERVER_BIN=BIN, waits until the guard writer has been idle for 5 s (the `/healthz` run)
# and busy again, lets 3 s pass, and reads /proc/PID/task/*/{stat,status} before and after the
# window. Requests are counted as the run's req/s times the window: the window must lie inside
# the workload (SECS, default 25, is each workload's length).
set -euo pipefail
BIN=$(realpath "$1"); ONLY=$2; WIN=${WIN:-10}
BENCH=${BENCH_BIN:-$(ls -t target/release/deps/throughput-* | grep -v '\.d$' | head -1)}
LOG=$(mktemp)
BENCH_SERVER_BIN=$BIN BENCH_DATABASE_URL=none BENCH_ONLY="$ONLY" BENCH_SECONDS=${SECS:-25} \
  "$BENCH" --bench > "$LOG" 2>&1 &
B=$!
P=""
for _ in $(seq 600); do P=$(pgrep -f "^$BIN serve" | head -1 || true); [ -n "$P" ] && break; sleep 0.1; done
W=""
while [ -z "$W" ]; do
  for t in /proc/"$P"/task/*; do [ "$(cat "$t"/comm 2>/dev/null)" = tollgate-writer ] && W=$t; done
  sleep 0.2
done
ticks() { sed -E 's/.*\) //' "$W"/stat | awk '{print $12 + $13}'; }
idle=0; last=$(ticks)
while true; do
  sleep 0.5; now=$(ticks)
  if [ "$now" = "$last" ]; then idle=$((idle + 1)); else [ $idle -ge 10 ] && break; idle=0; fi
  last=$now
done
sleep 3
snap() {
  for t in /proc/"$P"/task/*; do
    echo "$(basename "$t") $(tr ' ' _ < "$t"/comm) $(sed -E 's/.*\) //' "$t"/stat | awk '{print $12, $13}') $(grep -E '^(voluntary|nonvoluntary)_ctxt' "$t"/status | awk '{print $2}' | tr '\n' ' ')"
  done
}
BEFORE=$(snap); sleep "$WIN"; AFTER=$(snap)
wait $B
RPS=$(grep -m1 -F "$ONLY" "$LOG" | sed -E 's/.*: ([0-9]+) req\/s.*/\1/')
echo "$ONLY: $RPS req/s over the whole run"
python3 - "$RPS" "$WIN" "$(getconf CLK_TCK)" "$BEFORE" "$AFTER" <<'P'
import sys
rps, win, hz = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
n = rps * win
before = {l.split()[0]: l.split() for l in sys.argv[4].splitlines()}
total = 0.0
for line in sys.argv[5].splitlines():
    f = line.split()
    if f[0] not in before:
        continue
    b = before[f[0]]
    user = (int(f[2]) - int(b[2])) * 1e6 / hz / n
    system = (int(f[3]) - int(b[3])) * 1e6 / hz / n
    vol, invol = (int(f[4]) - int(b[4])) / n, (int(f[5]) - int(b[5])) / n
    total += user + system
    if user + system + vol + invol > 0.01:
        print(f"{f[1]:20s} user {user:5.1f} µs  system {system:5.1f} µs  switches {vol:.3f} voluntary, {invol:.3f} involuntary (per request)")
print(f"all threads: {total:.1f} µs per request")
P
rm -f "$LOG"
