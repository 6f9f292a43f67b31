#!/usr/bin/env bash
# Soak: wrk against wxgate's protected route (valid HS256 token, memory store, origin nginx) for
# SOAK_DURATION (180s) at SOAK_CONNECTIONS (256), wrk on CPU 0 and the servers on CPU 1, loopback
# only. Records the gateway's VmRSS after a warm-up, during the run and after it, and counts every
# response by status (bench/wrk/status.lua). Results in bench/out/soak/.
# PASS iff errors (socket errors + non-2xx) == 0 and
#          RSS after <= 1.2 x RSS after warm-up + SOAK_SLACK_MB (4 MiB); otherwise FAIL, exit 1.
# Knobs: SOAK_DURATION SOAK_CONNECTIONS SOAK_THREADS (gateway threads, 1) SOAK_WARMUP (5s, x2)
#        SOAK_SAMPLES (RSS samples during the run, 6) SOAK_SLACK_MB WXGATE=path PGO=0
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SOAK_DURATION=${SOAK_DURATION:-180s}
SOAK_CONNECTIONS=${SOAK_CONNECTIONS:-256}
SOAK_THREADS=${SOAK_THREADS:-1}
SOAK_WARMUP=${SOAK_WARMUP:-5s}
SOAK_SAMPLES=${SOAK_SAMPLES:-6}
SOAK_SLACK_MB=${SOAK_SLACK_MB:-4}
OUT="$BENCH/out/soak"

WXGATE_SETUP_BENCH=1 bash "$ROOT/scripts/setup.sh"
for tool in wrk nginx curl python3 taskset timeout pgrep; do
  need_tool "$tool" "scripts/setup.sh installs wrk and nginx on Debian/Ubuntu"
done
check_cpus
find_wxgate

rm -rf "$OUT"
mkdir -p "$OUT"
trap cleanup EXIT
trap 'exit 130' INT TERM

dur_s=$(to_seconds "$SOAK_DURATION")
warm_s=$(to_seconds "$SOAK_WARMUP")
mapfile -t ports < <(free_ports 3)
read -r P_ORIGIN P_GW P_MOCK <<<"${ports[*]}"

start_nginx origin "$P_ORIGIN"
wxgate_conf "$OUT/wxgate.toml" "$P_GW" "$P_ORIGIN" "$P_MOCK" "$SOAK_THREADS" memory
start_wxgate wxgate "$OUT/wxgate.toml" "$P_GW"
gw=$LAST_PID
TOKEN=$("$WXGATE" token --openid soak-user -c "$OUT/wxgate.toml")
url="http://127.0.0.1:$P_GW/api/soak"
expect_200 "$url" -H "Authorization: Bearer $TOKEN"

mib() { awk -v k="$1" 'BEGIN { printf "%.1f MiB", k / 1024 }'; }

# Warm-up: two bursts of SOAK_WARMUP at full load, each followed by a second idle. The gateway's
# RSS steps up once, on the second burst of new connections (about +14 MiB at 256 connections:
# allocator and connection pools reaching their working set), and is flat from then on; a
# baseline taken after one burst would call that step a leak. Both values are printed.
warm_rss=()
for burst in 1 2; do
  say "== warm-up $burst/2: $SOAK_WARMUP at $SOAK_CONNECTIONS connections"
  taskset -c "$WRK_CPU" timeout $((warm_s + 30)) wrk -t1 -c"$SOAK_CONNECTIONS" -d"$SOAK_WARMUP" \
    -H "Authorization: Bearer $TOKEN" "$url" >"$OUT/warmup-$burst.txt" 2>&1
  sleep 1
  warm_rss+=("$(rss_kb "$gw" VmRSS)")
  say "   RSS after warm-up burst $burst: $(mib "${warm_rss[-1]}")"
done
rss_warm=${warm_rss[1]}

say "== soak: $SOAK_DURATION at $SOAK_CONNECTIONS connections, gateway threads = $SOAK_THREADS"
taskset -c "$WRK_CPU" timeout $((dur_s + 60)) wrk -t1 -c"$SOAK_CONNECTIONS" -d"$SOAK_DURATION" --latency \
  -s "$BENCH/wrk/status.lua" -H "Authorization: Bearer $TOKEN" "$url" >"$OUT/wrk.txt" 2>&1 &
wrk_pid=$!
PIDS+=("$wrk_pid")
interval=$(( dur_s / (SOAK_SAMPLES + 1) > 0 ? dur_s / (SOAK_SAMPLES + 1) : 1 )) # all samples inside the run
samples=()
start_s=$SECONDS
for _ in $(seq "$SOAK_SAMPLES"); do
  sleep "$interval"
  kill -0 "$wrk_pid" 2>/dev/null || break
  r=$(rss_kb "$gw" VmRSS)
  samples+=("$r")
  say "   t=$((SECONDS - start_s))s RSS $(mib "$r")"
done
wrk_rc=0
wait "$wrk_pid" || wrk_rc=$?
stop "$wrk_pid" # only forgets it: it has exited
[ "$wrk_rc" = 0 ] || { cat "$OUT/wrk.txt" >&2; die "wrk exited with $wrk_rc"; }
sleep 2
rss_after=$(rss_kb "$gw" VmRSS)
rss_peak=$(rss_kb "$gw" VmHWM)

field() { sed -nE "s#$1#\\1#p" "$OUT/wrk.txt" | head -n 1; }
requests=$(field '^ *([0-9]+) requests in .*')
rps=$(field '^Requests/sec: *([0-9.]+).*')
p99=$(field '^ +99% +([0-9.]+[a-z]+).*')
non2xx=$(field '^Lua non-2xx: ([0-9]+).*')
sock=$(field '^Lua socket errors: ([0-9]+).*')
statuses=$(field '^Lua statuses: (.*)')
if [ -z "$requests" ] || [ -z "$non2xx" ] || [ -z "$sock" ]; then
  cat "$OUT/wrk.txt" >&2
  die "could not read wrk's output ($OUT/wrk.txt)"
fi
errors=$((non2xx + sock))
limit=$(awk -v w="$rss_warm" -v s="$SOAK_SLACK_MB" 'BEGIN { printf "%d", 1.2 * w + s * 1024 }')

verdict=PASS
[ "$errors" = 0 ] || verdict=FAIL
[ "$rss_after" -le "$limit" ] || verdict=FAIL

{
  echo "wxgate soak: $SOAK_DURATION at $SOAK_CONNECTIONS connections, protected route, HS256, memory store, threads = $SOAK_THREADS"
  echo "  requests      $requests ($rps requests/s, p99 $p99)"
  echo "  statuses      $statuses"
  echo "  errors        $errors (socket errors $sock, non-2xx $non2xx)"
  echo "  RSS warm-up   $(mib "$rss_warm") (baseline: after two $SOAK_WARMUP bursts at $SOAK_CONNECTIONS connections; $(mib "${warm_rss[0]}") after the first)"
  for i in "${!samples[@]}"; do
    echo "  RSS during    $(mib "${samples[$i]}") (sample $((i + 1)), every ${interval}s)"
  done
  echo "  RSS after     $(mib "$rss_after") (2 s after the run)"
  echo "  RSS peak      $(mib "$rss_peak") (VmHWM over the gateway's life)"
  echo "  rule          errors == 0 and RSS after <= 1.2 x RSS warm-up + $SOAK_SLACK_MB MiB = $(mib "$limit")"
  echo "$verdict"
} | tee "$OUT/soak.txt"

python3 - "$OUT/soak.json" <<PY
import json, sys
json.dump({"duration": "$SOAK_DURATION", "connections": $SOAK_CONNECTIONS, "threads": $SOAK_THREADS,
           "requests": $requests, "requests_per_sec": $rps, "p99": "$p99", "statuses": "$statuses",
           "socket_errors": $sock, "non_2xx": $non2xx, "errors": $errors,
           "rss_kb": {"warm_first_burst": ${warm_rss[0]}, "warm": $rss_warm, "during": [${samples[*]+$(IFS=,; echo "${samples[*]}")}],
                      "after": $rss_after, "peak": $rss_peak, "limit": $limit},
           "result": "$verdict"}, open(sys.argv[1], "w"), indent=2)
PY

[ "$verdict" = PASS ]
