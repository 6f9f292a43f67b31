#!/usr/bin/env bash
# Zero-downtime check: wrk keeps 64 connections busy on a protected route while the gateway is
# reloaded (SIGHUP, twice: a route added, then a broken file refused) and then upgraded in place
# (a second process started with --upgrade takes the listening sockets, SIGQUIT drains the old
# one). Passes when wrk saw no socket error and no non-2xx answer, and the new process serves.
#
#   bash scripts/zero-downtime.sh              # 8 s of load, the debug binary (make test)
#   DURATION=30 WXGATE=target/release/wxgate bash scripts/zero-downtime.sh
# Everything runs on loopback; every process it starts is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8}
WXGATE=${WXGATE:-target/debug/wxgate}
[ -x "$WXGATE" ] || { echo "zero-downtime: $WXGATE not built (cargo build)" >&2; exit 1; }
command -v wrk >/dev/null || { echo "zero-downtime: wrk missing (scripts/setup.sh installs it)" >&2; exit 1; }

dir=$(mktemp -d /tmp/wxgate-zd.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

# Four distinct free ports: the sockets are held open together while the kernel picks them.
read -r GW WX UP ADMIN < <(python3 -c '
import socket
ss = [socket.socket() for _ in range(4)]
for s in ss: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in ss))')

"$WXGATE" mock-wechat --listen "127.0.0.1:$WX" >/dev/null 2>&1 & pids+=($!)
"$WXGATE" echo --listen "127.0.0.1:$UP" >/dev/null 2>&1 & pids+=($!)

cat >"$dir/gw.toml" <<TOML
[server]
listen = "127.0.0.1:$GW"
grace_period = "10s"
[wechat]
appid = "wx0000000000000000"
secret = "zero-downtime-appsecret"
api_base = "http://127.0.0.1:$WX"
[jwt]
secret = "zero-downtime-jwt-secret-0123456789abcdef"
[admin]
listen = "127.0.0.1:$ADMIN"
[[routes]]
name = "api"
prefix = "/api/"
upstreams = ["127.0.0.1:$UP"]
TOML

"$WXGATE" run -c "$dir/gw.toml" >"$dir/old.log" 2>&1 & old=$!; pids+=($old)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$GW/" && break; sleep 0.1; done
TOKEN=$("$WXGATE" token --openid o-zero-downtime -c "$dir/gw.toml")

wrk -t2 -c64 -d"${DURATION}s" -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$GW/api/load" >"$dir/wrk.txt" 2>&1 &
wrk_pid=$!
step=$(awk "BEGIN { print $DURATION / 5 }")

sleep "$step"
printf '\n[[routes]]\nname = "more"\nprefix = "/more/"\nupstreams = ["127.0.0.1:%s"]\n' "$UP" >>"$dir/gw.toml"
kill -HUP "$old"
sleep "$step"
cp "$dir/gw.toml" "$dir/good.toml"
echo 'broken = [' >>"$dir/gw.toml"
kill -HUP "$old"
sleep "$step"
cp "$dir/good.toml" "$dir/gw.toml"
"$WXGATE" run -c "$dir/gw.toml" --upgrade >"$dir/new.log" 2>&1 & new=$!; pids+=($new)
sleep 1
kill -QUIT "$old"
wait "$wrk_pid" || true

fail=0
cat "$dir/wrk.txt"
if grep -q "Socket errors" "$dir/wrk.txt"; then echo "zero-downtime: FAIL socket errors" >&2; fail=1; fi
if grep -q "Non-2xx" "$dir/wrk.txt"; then echo "zero-downtime: FAIL non-2xx answers" >&2; fail=1; fi
requests=$(awk '/requests in/ { print $1 }' "$dir/wrk.txt")
[ "${requests:-0}" -gt 0 ] || { echo "zero-downtime: FAIL no requests" >&2; fail=1; }
reloads=$(grep -c "configuration reloaded" "$dir/old.log" || true)
refused=$(grep -c "reload refused" "$dir/old.log" || true)
[ "$reloads" -ge 1 ] || { echo "zero-downtime: FAIL the reload did not happen" >&2; fail=1; }
[ "$refused" -ge 1 ] || { echo "zero-downtime: FAIL the broken file was not refused" >&2; fail=1; }
for _ in $(seq 100); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$old" 2>/dev/null; then echo "zero-downtime: FAIL the old process still runs" >&2; fail=1; fi
code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$GW/more/x")
[ "$code" = 200 ] || { echo "zero-downtime: FAIL the new process answers $code" >&2; fail=1; }
if [ $fail = 0 ]; then
  echo "zero-downtime: OK: $requests requests at 64 connections across 2 reloads (1 refused) and an upgrade; 0 socket errors, 0 non-2xx"
fi
exit $fail
