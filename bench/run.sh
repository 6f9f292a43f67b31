#!/usr/bin/env bash
# Side-by-side benchmark: requests/s, p50/p99 latency, errors and peak RSS of
#   1 the origin (nginx, static JSON)      2 nginx as a reverse proxy (no auth, keepalive)
#   3 wxgate, public route                 4 wxgate, protected route, HS256 (memory store)
#   2s/4s rows 2 and 4 over HTTPS       4j as 4 with the JSON access log on and /metrics scraped
#   4b as 4 with the Redis store           4@256 as 4 at 256 connections (peak RSS target)
#   4r/4p as 4, one upstream round robin / three upstreams, openid_hash, health checks (in turn)
#   5e/5d as 4, ES256 / EdDSA tokens       6 Node: Express + jsonwebtoken + http-proxy-middleware
#   7 wxgate logins (GET /auth?code=) against the stand-in WeChat
# One origin, the same wrk settings for every row (wrk on CPU 0, every server on CPU 1), a
# warm-up before each measured run, loopback only. Results: bench/out/{table.md,results.json,chart.svg}.
# Knobs: DURATION (10s) CONNECTIONS (32) WARMUP (2s) SKIP_NODE=1 WXGATE=path BENCH_STRICT=1
# (exit 1 when a target is missed) NODE_JWT_KEYOBJECT=1 (row 6 passes jsonwebtoken a KeyObject,
# Node's best case, instead of the tutorial's string secret).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-2s}
BIG_CONNECTIONS=256
RUN_ID="$(date +%s)-$$"

WXGATE_SETUP_BENCH=1 bash "$ROOT/scripts/setup.sh"
for tool in wrk nginx redis-server redis-cli curl python3 taskset timeout pgrep; do
  need_tool "$tool" "scripts/setup.sh installs wrk, nginx and redis-server on Debian/Ubuntu"
done
if [ "${SKIP_NODE:-0}" != 1 ]; then
  need_tool node "install Node.js >= 18, or run with SKIP_NODE=1 to skip row 6"
  need_tool npm "install npm, or run with SKIP_NODE=1 to skip row 6"
fi
check_cpus
find_wxgate

mkdir -p "$OUT"
find "$OUT" -mindepth 1 -maxdepth 1 ! -name soak -exec rm -rf {} + # the last soak's results stay
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "${SKIP_NODE:-0}" != 1 ] && [ ! -d "$BENCH/node/node_modules" ]; then
  say "== npm install (bench/node)"
  (cd "$BENCH/node" && npm install --no-audit --no-fund --loglevel=error)
fi

mapfile -t ports < <(free_ports 20)
read -r P_ORIGIN P_PROXY P_GW3 P_GW4 P_GW4B P_GW256 P_GW7 P_REDIS P_NODE P_MOCK P_GW4J P_ADMIN P_PROXYTLS P_GWTLS \
  P_ORIGIN2 P_ORIGIN3 P_GW4R P_GW4P P_GW5E P_GW5D <<<"${ports[*]}"

dur_s=$(to_seconds "$DURATION")
warm_s=$(to_seconds "$WARMUP")

# wrk_run OUTFILE SECONDS_LIMIT DURATION CONNS URL SCRIPT_ARG [wrk args...]
# SCRIPT_ARG reaches a Lua script's init(args) as args[1] (login.lua makes codes unique with it).
wrk_run() {
  local file=$1 limit=$2 d=$3 c=$4 url=$5 arg=$6; shift 6
  taskset -c "$WRK_CPU" timeout "$limit" wrk -t1 -c"$c" -d"$d" --latency "$@" "$url" -- "$arg" \
    >"$OUT/$file" 2>&1 || { cat "$OUT/$file" >&2; die "wrk failed against $url"; }
}
warm() { # warm NAME CONNS URL [wrk args]: not measured; script args get a run id of their own
  local name=$1 c=$2 url=$3; shift 3
  wrk_run "warmup-$name.txt" $((warm_s + 30)) "$WARMUP" "$c" "$url" "w$RUN_ID" "$@"
}
measure() { # measure NAME CONNS URL [wrk args] -> $OUT/wrk-NAME.txt
  local name=$1 c=$2 url=$3; shift 3
  wrk_run "wrk-$name.txt" $((dur_s + 30)) "$DURATION" "$c" "$url" "m$RUN_ID" "$@"
  say "   $(grep -E '^Requests/sec' "$OUT/wrk-$name.txt" || echo 'no Requests/sec line')"
}
best_of() { # best_of NAME RUN...: the run with the most requests/s becomes wrk-NAME.txt
  local name=$1 best="" best_rps=-1 run rps; shift
  for run in "$@"; do
    rps=$(awk '/^Requests\/sec/ { print int($2) }' "$OUT/wrk-$run.txt")
    if [ "${rps:-0}" -gt "$best_rps" ]; then best_rps=${rps:-0}; best=$run; fi
  done
  cp "$OUT/wrk-$best.txt" "$OUT/wrk-$name.txt"
}
# row ID TARGET WRKFILE RSS_KB CONNS NOTE EXTRAS: one line of rows.tsv for report.py
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$OUT/rows.tsv"; }

: >"$OUT/rows.tsv"
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
# Other work on the machine shows up as noise in every row: say so up front.
load=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
  say "warning: load average is $load before the run; other processes will make these numbers noisy"
fi
{
  printf 'settings\twrk -t1 -c%s -d%s --latency after a %s warm-up per target; wrk on CPU %s, servers on CPU %s; %s; %s\n' \
    "$CONNECTIONS" "$DURATION" "$WARMUP" "$WRK_CPU" "$SERVER_CPU" "${cpu_model:-unknown CPU}" "$(date -u +%Y-%m-%dT%H:%MZ)"
  printf 'connections\t%s\nduration\t%s\nwarmup\t%s\n' "$CONNECTIONS" "$DURATION" "$WARMUP"
  printf 'load_average_at_start\t%s\n' "$load"
  printf 'wxgate\t%s\n' "$("$WXGATE" --version 2>/dev/null || echo unknown)"
  printf 'git\t%s\n' "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  printf 'nginx\t%s\n' "$(nginx -v 2>&1)"
  printf 'wrk\t%s\n' "$(wrk --version 2>&1 | head -n 1 | awk '{ print $1, $2 }')"
  printf 'redis\t%s\n' "$(redis-server --version)"
  printf 'node\t%s\n' "$(node --version 2>/dev/null || echo none)"
} >"$OUT/meta.tsv"

# The fixed origin and the stand-in WeChat stay up for the whole run.
say "== origin: nginx on 127.0.0.1:$P_ORIGIN"
start_nginx origin "$P_ORIGIN"
origin_pid=$LAST_PID
start mock-wechat "$WXGATE" mock-wechat --listen "127.0.0.1:$P_MOCK" --appid "$APPID" --secret "$WECHAT_APPSECRET"
mock_pid=$LAST_PID
wait_port "$P_MOCK" "$mock_pid" mock-wechat

wxgate_conf "$OUT/wxgate-memory.toml" "$P_GW3" "$P_ORIGIN" "$P_MOCK" 1 memory
TOKEN=$("$WXGATE" token --openid bench-user -c "$OUT/wxgate-memory.toml")
AUTH=(-H "Authorization: Bearer $TOKEN")

# Row 1: the origin itself.
say "== row 1: origin directly"
url="http://127.0.0.1:$P_ORIGIN/api/hello"
expect_200 "$url"
warm 1 "$CONNECTIONS" "$url"
measure 1 "$CONNECTIONS" "$url" "${AUTH[@]}"
row 1 "origin: nginx, static 60-byte JSON" wrk-1.txt "$(rss_kb "$(nginx_worker "$origin_pid")" VmHWM)" "$CONNECTIONS" "" ""

# Row 2: nginx as the reverse proxy.
say "== row 2: nginx reverse proxy"
start_nginx proxy "$P_PROXY" "$P_ORIGIN"
pid=$LAST_PID
url="http://127.0.0.1:$P_PROXY/api/hello"
expect_200 "$url"
warm 2 "$CONNECTIONS" "$url"
measure 2 "$CONNECTIONS" "$url" "${AUTH[@]}"
row 2 "nginx reverse proxy (no auth, upstream keepalive)" wrk-2.txt "$(rss_kb "$(nginx_worker "$pid")" VmHWM)" "$CONNECTIONS" "" ""
stop "$pid"

# bench_wxgate ID TARGET CONF PORT CONNS PATH [wrk args]: a fresh gateway per row, so its
# VmHWM is that row's peak.
bench_wxgate() {
  local id=$1 target=$2 conf=$3 port=$4 c=$5 path=$6; shift 6
  start_wxgate "wxgate-$id" "$conf" "$port"
  local gw=$LAST_PID url="http://127.0.0.1:$port$path"
  expect_200 "$url" "$@"
  warm "$id" "$c" "$url" "$@"
  measure "$id" "$c" "$url" "$@"
  row "$id" "$target" "wrk-$id.txt" "$(rss_kb "$gw" VmHWM)" "$c" "" ""
  stop "$gw" INT
}

# Rows 2s and 4s: the same over HTTPS (TLS 1.2/1.3, one self-signed certificate, keepalive).
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$OUT/tls.key" -out "$OUT/tls.crt" 2>/dev/null \
  || die "openssl could not make the benchmark's certificate"
say "== row 2s: nginx reverse proxy over HTTPS"
start_nginx proxy-tls "$P_PROXYTLS" "$P_ORIGIN" tls
pid=$LAST_PID
url="https://127.0.0.1:$P_PROXYTLS/api/hello"
expect_200 "$url" -k
warm 2s "$CONNECTIONS" "$url"
measure 2s "$CONNECTIONS" "$url" "${AUTH[@]}"
row 2s "nginx reverse proxy over HTTPS (keepalive)" wrk-2s.txt "$(rss_kb "$(nginx_worker "$pid")" VmHWM)" "$CONNECTIONS" "" ""
stop "$pid"

say "== row 3: wxgate, public route"
bench_wxgate 3 "wxgate, public route (auth = none)" "$OUT/wxgate-memory.toml" "$P_GW3" "$CONNECTIONS" /public/hello "${AUTH[@]}"

say "== row 4: wxgate, protected route, HS256, memory store"
wxgate_conf "$OUT/wxgate-4.toml" "$P_GW4" "$P_ORIGIN" "$P_MOCK" 1 memory
bench_wxgate 4 "wxgate, protected route, HS256 (memory store)" "$OUT/wxgate-4.toml" "$P_GW4" "$CONNECTIONS" /api/hello "${AUTH[@]}"

# Rows 5e and 5d: as row 4 with an ES256 / an EdDSA token (keys from `wxgate keygen`, each token
# minted by `wxgate token` with that gateway's config), right after row 4 in the same run. The
# verified-token cache should keep them near HS256 (report.py: >= 0.9 x row 4).
say "== rows 5e/5d: wxgate, protected route, ES256 / EdDSA tokens"
mkdir -p "$OUT/keys"
for alg in ES256 EdDSA; do
  if [ "$alg" = ES256 ]; then id=5e; port=$P_GW5E; else id=5d; port=$P_GW5D; fi
  "$WXGATE" keygen --algorithm "$alg" --kid "bench-$id" --out "$OUT/keys" >/dev/null \
    || die "wxgate keygen --algorithm $alg failed"
  wxgate_conf "$OUT/wxgate-$id.toml" "$port" "$P_ORIGIN" "$P_MOCK" 1 memory
  jwt_lines="algorithm = \"$alg\"\nprivate_key = \"$OUT/keys/bench-$id.pem\"\nkid = \"bench-$id\""
  sed -i "s|^secret = \"\${WXGATE_JWT_SECRET}\"\$|$jwt_lines|" "$OUT/wxgate-$id.toml"
  "$WXGATE" check -c "$OUT/wxgate-$id.toml" >/dev/null || die "wxgate rejected wxgate-$id.toml"
  alg_token=$("$WXGATE" token --openid bench-user -c "$OUT/wxgate-$id.toml")
  bench_wxgate "$id" "wxgate, protected route, $alg token (memory store)" "$OUT/wxgate-$id.toml" "$port" \
    "$CONNECTIONS" /api/hello -H "Authorization: Bearer $alg_token"
done

# Rows 4r and 4p: what a pool costs. Both gateways run side by side and are measured in turn,
# twice each (the better run counts), so that drift on the machine hits both alike.
say "== rows 4r/4p: one upstream round robin vs three upstreams, openid_hash, health checks"
start_nginx origin2 "$P_ORIGIN2"; o2=$LAST_PID
start_nginx origin3 "$P_ORIGIN3"; o3=$LAST_PID
wxgate_conf "$OUT/wxgate-4r.toml" "$P_GW4R" "$P_ORIGIN" "$P_MOCK" 1 memory
API_UPSTREAMS="[\"127.0.0.1:$P_ORIGIN\", \"127.0.0.1:$P_ORIGIN2\", \"127.0.0.1:$P_ORIGIN3\"]" \
  API_EXTRA='lb = "openid_hash"
health_check = { path = "/healthz", interval = "1s", timeout = "500ms" }' \
  wxgate_conf "$OUT/wxgate-4p.toml" "$P_GW4P" "$P_ORIGIN" "$P_MOCK" 1 memory
start_wxgate wxgate-4r "$OUT/wxgate-4r.toml" "$P_GW4R"; g4r=$LAST_PID
start_wxgate wxgate-4p "$OUT/wxgate-4p.toml" "$P_GW4P"; g4p=$LAST_PID
for id in 4r 4p; do
  port_var=P_GW${id^^}; url="http://127.0.0.1:${!port_var}/api/hello"
  expect_200 "$url" "${AUTH[@]}"
  warm "$id" "$CONNECTIONS" "$url" "${AUTH[@]}"
done
for i in 1 2; do
  measure "4r-$i" "$CONNECTIONS" "http://127.0.0.1:$P_GW4R/api/hello" "${AUTH[@]}"
  measure "4p-$i" "$CONNECTIONS" "http://127.0.0.1:$P_GW4P/api/hello" "${AUTH[@]}"
done
best_of 4r 4r-1 4r-2
best_of 4p 4p-1 4p-2
row 4r "wxgate, as row 4 (one upstream, round robin), measured in turn with 4p" wrk-4r.txt "$(rss_kb "$g4r" VmHWM)" "$CONNECTIONS" "" ""
row 4p "wxgate, as row 4, three upstreams, openid_hash, health checks every 1s" wrk-4p.txt "$(rss_kb "$g4p" VmHWM)" "$CONNECTIONS" "" ""
stop "$g4r" INT; stop "$g4p" INT; stop "$o2"; stop "$o3"

say "== row 4s: wxgate, protected route over HTTPS"
wxgate_conf "$OUT/wxgate-4s.toml" "$P_GWTLS" "$P_ORIGIN" "$P_MOCK" 1 memory
printf '[server.tls]\ncert = "%s"\nkey = "%s"\n' "$OUT/tls.crt" "$OUT/tls.key" >>"$OUT/wxgate-4s.toml"
"$WXGATE" check -c "$OUT/wxgate-4s.toml" >/dev/null || die "wxgate rejected wxgate-4s.toml"
start_wxgate wxgate-4s "$OUT/wxgate-4s.toml" "$P_GWTLS"
gw=$LAST_PID
url="https://127.0.0.1:$P_GWTLS/api/hello"
expect_200 "$url" -k "${AUTH[@]}"
warm 4s "$CONNECTIONS" "$url" "${AUTH[@]}"
measure 4s "$CONNECTIONS" "$url" "${AUTH[@]}"
row 4s "wxgate, protected route over HTTPS (rustls)" wrk-4s.txt "$(rss_kb "$gw" VmHWM)" "$CONNECTIONS" "" ""
stop "$gw" INT

# Row 4j: as row 4 with the JSON access log on (one line per request, openid hashed) and the
# admin listener scraped during the run: what operating it costs.
say "== row 4j: wxgate, protected route, JSON access log + metrics scraped"
wxgate_conf "$OUT/wxgate-4j.toml" "$P_GW4J" "$P_ORIGIN" "$P_MOCK" 1 memory
printf '[admin]\nlisten = "127.0.0.1:%s"\n[log]\nformat = "json"\nopenid = "hash"\n' "$P_ADMIN" >>"$OUT/wxgate-4j.toml"
"$WXGATE" check -c "$OUT/wxgate-4j.toml" >/dev/null || die "wxgate rejected wxgate-4j.toml"
RUST_LOG=info start wxgate-4j "$WXGATE" run -c "$OUT/wxgate-4j.toml"
gw=$LAST_PID
wait_port "$P_GW4J" "$gw" wxgate-4j
url="http://127.0.0.1:$P_GW4J/api/hello"
expect_200 "$url" "${AUTH[@]}"
warm 4j "$CONNECTIONS" "$url" "${AUTH[@]}"
( for _ in $(seq "$dur_s"); do curl -s -o /dev/null "http://127.0.0.1:$P_ADMIN/metrics"; sleep 1; done ) &
scraper=$!
measure 4j "$CONNECTIONS" "$url" "${AUTH[@]}"
wait "$scraper" 2>/dev/null || true
lines=$(grep -c '"target":"wxgate::access"' "$OUT/wxgate-4j.log" || true)
row 4j "wxgate, as row 4, JSON access log on, /metrics scraped each second" wrk-4j.txt "$(rss_kb "$gw" VmHWM)" "$CONNECTIONS" \
  "access log lines written: $lines" "access_lines=$lines"
stop "$gw" INT

# Row 4b: the Redis store; Redis commands are counted over the measured run only.
say "== row 4b: wxgate, protected route, HS256, Redis store"
start redis redis-server --bind 127.0.0.1 --port "$P_REDIS" --save '' --appendonly no
redis_pid=$LAST_PID
wait_port "$P_REDIS" "$redis_pid" redis
wxgate_conf "$OUT/wxgate-redis.toml" "$P_GW4B" "$P_ORIGIN" "$P_MOCK" 1 redis "$P_REDIS"
start_wxgate wxgate-4b "$OUT/wxgate-redis.toml" "$P_GW4B"
gw=$LAST_PID
url="http://127.0.0.1:$P_GW4B/api/hello"
expect_200 "$url" "${AUTH[@]}"
warm 4b "$CONNECTIONS" "$url" "${AUTH[@]}"
redis_cmds() { redis-cli -p "$P_REDIS" info stats | awk -F: '/^total_commands_processed/ { print $2 + 0 }'; }
before=$(redis_cmds)
measure 4b "$CONNECTIONS" "$url" "${AUTH[@]}"
after=$(redis_cmds)
cmds=$((after - before - 1)) # less the INFO that read `before`
row 4b "wxgate, protected route, HS256 (Redis store)" wrk-4b.txt "$(rss_kb "$gw" VmHWM)" "$CONNECTIONS" \
  "Redis commands during the measured run: $cmds (the proxied path does not call Redis)" "redis_commands=$cmds"
stop "$gw" INT
stop "$redis_pid"

say "== row 4 at $BIG_CONNECTIONS connections (peak RSS)"
wxgate_conf "$OUT/wxgate-256.toml" "$P_GW256" "$P_ORIGIN" "$P_MOCK" 1 memory
bench_wxgate 4@256 "wxgate, as row 4, at $BIG_CONNECTIONS connections" "$OUT/wxgate-256.toml" "$P_GW256" "$BIG_CONNECTIONS" /api/hello "${AUTH[@]}"


if [ "${SKIP_NODE:-0}" = 1 ]; then
  say "== row 6: skipped (SKIP_NODE=1)"
  row 6 "Node: Express + jsonwebtoken + http-proxy-middleware" - - "$CONNECTIONS" "skipped (SKIP_NODE=1)" ""
else
  say "== row 6: Node, Express + jsonwebtoken + http-proxy-middleware"
  if [ "${NODE_JWT_KEYOBJECT:-0}" = 1 ]; then
    node_note="jwt.verify() given a KeyObject (NODE_JWT_KEYOBJECT=1)"
  else
    node_note="jwt.verify() given the secret as a string, as the tutorial does (NODE_JWT_KEYOBJECT=1: a KeyObject)"
  fi
  NODE_ENV=production PORT="$P_NODE" ORIGIN="http://127.0.0.1:$P_ORIGIN" JWT_SECRET="$WXGATE_JWT_SECRET" APPID="$APPID" \
    JWT_KEYOBJECT="${NODE_JWT_KEYOBJECT:-0}" start node node "$BENCH/node/app.js"
  pid=$LAST_PID
  wait_port "$P_NODE" "$pid" node
  url="http://127.0.0.1:$P_NODE/api/hello"
  expect_200 "$url" "${AUTH[@]}"
  warm 6 "$CONNECTIONS" "$url" "${AUTH[@]}"
  measure 6 "$CONNECTIONS" "$url" "${AUTH[@]}"
  row 6 "Node: Express + jsonwebtoken + http-proxy-middleware" wrk-6.txt "$(rss_kb "$pid" VmHWM)" "$CONNECTIONS" "$node_note" ""
  stop "$pid"
fi

say "== row 7: logins, GET /auth?code= against the stand-in WeChat"
wxgate_conf "$OUT/wxgate-7.toml" "$P_GW7" "$P_ORIGIN" "$P_MOCK" 1 memory
start_wxgate wxgate-7 "$OUT/wxgate-7.toml" "$P_GW7"
gw=$LAST_PID
expect_200 "http://127.0.0.1:$P_GW7/auth?code=check.$RUN_ID"
warm 7 "$CONNECTIONS" "http://127.0.0.1:$P_GW7" -s "$BENCH/wrk/login.lua"
measure 7 "$CONNECTIONS" "http://127.0.0.1:$P_GW7" -s "$BENCH/wrk/login.lua"
row 7 "wxgate logins: GET /auth?code= via stand-in WeChat" wrk-7.txt "$(rss_kb "$gw" VmHWM)" "$CONNECTIONS" \
  "logins per second; every code unique, non-2xx counted as errors" ""
stop "$gw" INT

say "== report"
strict=()
if [ "${BENCH_STRICT:-0}" = 1 ]; then strict=(--strict); fi
python3 "$BENCH/report.py" "$OUT" "${strict[@]+"${strict[@]}"}"
