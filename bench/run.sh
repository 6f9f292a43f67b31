#!/usr/bin/env bash
# Side-by-side benchmark: requests/s, p50/p99 latency, errors and peak RSS of
#   1  the origin (nginx, static JSON)          2  nginx as a reverse proxy (no auth, keepalive)
#   3  wxgate, public route                     4  wxgate, protected route, HS256 (memory store)
#   hp HAProxy as a reverse proxy (no auth)     hj HAProxy checking the token (native jwt_verify)
#   nj nginx + njs checking the token in JavaScript   (hj and nj do row 4's job: bench/peers/)
#   2s/4s rows 2 and 4 over HTTPS               4j as 4 with the JSON access log on and /metrics scraped
#   4b as 4 with the Redis store                5e/5d as 4, ES256 / EdDSA tokens
#   4r/4p as 4, one upstream round robin / three upstreams, openid_hash, health checks
#   2@256 hj@256 nj@256 4@256, 2@1024 hj@1024 4@1024: rows 2, hj, nj and 4 at 256 / 1024 connections
#   6  Node: Express + jsonwebtoken + http-proxy-middleware
#   7  wxgate logins (GET /auth?code=) against the stand-in WeChat
#   idle-nginx idle-haproxy idle-wxgate: RSS of a fresh server of rows 2, hj and 4 before and while
#      it holds IDLE_CONNS idle keep-alive client connections (bench/idle_conns.py), one at a time,
#      in ROUNDS interleaved rounds (a fresh server each time; medians and the spread)
# Every server starts once, on its own port, is checked (200 with the token; rows 4, hj and nj also
# 401 for a missing, a forged and an expired token, and the app sees the right X-WX-OpenID) and
# warmed up once. Then ROUNDS rounds each run every row once, in the order above and back (1 2 ...
# 7, 7 ... 2 1, 1 2 ... 7, ...): single runs on a small VM vary by +-20%, and interleaving spreads
# that drift over all rows alike; the order turns every other round so that no row always follows
# the same one (a run comes out a few per cent apart depending on what ran just before it).
# report.py judges the median of the rounds and shows their spread. One origin, the same wrk
# settings and headers for every row (wrk on CPU 0, every server on CPU 1), loopback only.
# Results: bench/out/{table.md,results.json,chart.svg}; raw runs in bench/out/wrk-<row>-r<round>.txt.
# Knobs: DURATION (5s per run) ROUNDS (3, at least 2) CONNECTIONS (32) WARMUP (2s, once per row)
# IDLE_CONNS (10000) SKIP_NODE=1 WXGATE=path BENCH_STRICT=1 (exit 1 when a target is missed)
# PGO=0 (wxgate is the plain release build, not the profile-guided one of scripts/pgo.sh)
# NODE_JWT_KEYOBJECT=1 (row 6 passes jsonwebtoken a KeyObject, Node's best case, instead of the
# tutorial's string secret). ORIGIN_SCHED=batch runs the origins' workers as SCHED_BATCH, so that
# the origin, woken by each upstream write, no longer preempts the proxy on the shared core (an
# origin on a core or machine of its own; the default, "other", is the normal policy).
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-32}
WARMUP=${WARMUP:-2s}
IDLE_CONNS=${IDLE_CONNS:-10000}
ORIGIN_SCHED=${ORIGIN_SCHED:-other}
RUN_ID="$(date +%s)-$$"

[[ "$ROUNDS" =~ ^[0-9]+$ ]] && [ "$ROUNDS" -ge 2 ] ||
  die "ROUNDS=$ROUNDS: at least 2 (the table reports the median and the spread of the rounds)"
[[ "$ORIGIN_SCHED" =~ ^(other|batch)$ ]] || die "ORIGIN_SCHED=$ORIGIN_SCHED: other or batch"
[[ "$IDLE_CONNS" =~ ^[0-9]+$ ]] && [ "$IDLE_CONNS" -ge 1 ] || die "IDLE_CONNS=$IDLE_CONNS is not a count"

WXGATE_SETUP_BENCH=1 bash "$ROOT/scripts/setup.sh"
for tool in wrk nginx haproxy redis-server redis-cli curl python3 openssl taskset timeout pgrep; do
  need_tool "$tool" "scripts/setup.sh installs wrk, nginx, haproxy and redis-server on Debian/Ubuntu"
done
# jwt_verify and the jwt_*_query converters came with HAProxy 2.5.
ha_version=$(haproxy -v | awk 'NR == 1 { print $3 }')
awk -v v="$ha_version" 'BEGIN { split(v, p, /[.-]/); exit !(p[1] > 2 || (p[1] == 2 && p[2] >= 5)) }' ||
  die "HAProxy $ha_version has no jwt_verify (2.5 or later is needed for rows hj)"
if [ "${SKIP_NODE:-0}" != 1 ]; then
  need_tool node "install Node.js >= 18, or run with SKIP_NODE=1 to skip row 6"
  need_tool npm "install npm, or run with SKIP_NODE=1 to skip row 6"
fi
check_cpus
find_wxgate
# The idle rows hold IDLE_CONNS sockets in the client and as many in the server; 1024-connection
# rows need about 2,100 in a proxy.
raise_fd_limit $((IDLE_CONNS + 2048))

mkdir -p "$OUT"
find "$OUT" -mindepth 1 -maxdepth 1 ! -name soak -exec rm -rf {} + # the last soak's results stay
trap cleanup EXIT
trap 'exit 130' INT TERM

if [ "${SKIP_NODE:-0}" != 1 ] && [ ! -d "$BENCH/node/node_modules" ]; then
  say "== npm install (bench/node)"
  (cd "$BENCH/node" && npm install --no-audit --no-fund --loglevel=error)
fi

# One port per server, chosen by the kernel: P[NAME].
declare -A P
port_names=(ORIGIN ORIGIN2 ORIGIN3 MOCK ECHO REDIS ADMIN PROXY PROXY256 PROXY1024 PROXYTLS
  GW3 GW4 GW4_256 GW4_1024 GW5E GW5D GW4R GW4P GWTLS GW4J GW4B GW7 NODE
  HP HP_JWT HJ HJ_PLAIN HJ256 HJ256_PLAIN HJ1024 HJ1024_PLAIN NJ NJ256
  CHK_HA CHK_HA_PLAIN CHK_NJ CHK_GW)
mapfile -t ports < <(free_ports "${#port_names[@]}")
for i in "${!port_names[@]}"; do P[${port_names[$i]}]=${ports[$i]}; done

dur_s=$(to_seconds "$DURATION")
warm_s=$(to_seconds "$WARMUP")

# wrk_run OUTFILE SECONDS_LIMIT DURATION CONNS URL SCRIPT_ARG [wrk args...]
# SCRIPT_ARG reaches a Lua script's init(args) as args[1] (login.lua makes codes unique with it).
wrk_run() {
  local file=$1 limit=$2 d=$3 c=$4 url=$5 arg=$6; shift 6
  taskset -c "$WRK_CPU" timeout "$limit" wrk -t1 -c"$c" -d"$d" --latency "$@" "$url" -- "$arg" \
    >"$OUT/$file" 2>&1 || { cat "$OUT/$file" >&2; die "wrk failed against $url"; }
}

# The rows, in the order odd rounds run them (even rounds run them back). R_*[ID]: URL,
# connections, target (the table's label), the pid whose VmHWM is the row's peak RSS, the token
# (or "" for none), a wrk Lua script, a note, and extras (k=v;k=v) for report.py.
ROWS=()
ORDER=() # ROWS and the skipped rows, in the table's order
declare -A R_URL R_CONNS R_TARGET R_RSS_PID R_TOKEN R_SCRIPT R_NOTE R_EXTRAS
# add_row ID CONNS URL TARGET RSS_PID TOKEN [SCRIPT]
add_row() {
  ROWS+=("$1"); ORDER+=("$1")
  R_CONNS[$1]=$2; R_URL[$1]=$3; R_TARGET[$1]=$4; R_RSS_PID[$1]=$5; R_TOKEN[$1]=$6
  R_SCRIPT[$1]=${7:-}; R_NOTE[$1]=""; R_EXTRAS[$1]=""
}
# wrk_args ID: the row's headers or script, into the array WRK_ARGS.
wrk_args() {
  WRK_ARGS=()
  if [ -n "${R_TOKEN[$1]}" ]; then WRK_ARGS+=(-H "Authorization: Bearer ${R_TOKEN[$1]}"); fi
  if [ -n "${R_SCRIPT[$1]}" ]; then WRK_ARGS+=(-s "${R_SCRIPT[$1]}"); fi
  return 0
}
warm() { # warm ID: not measured; a Lua script gets a run id of its own
  wrk_args "$1"
  wrk_run "warmup-$1.txt" $((warm_s + 30)) "$WARMUP" "${R_CONNS[$1]}" "${R_URL[$1]}" "w$RUN_ID" \
    "${WRK_ARGS[@]+"${WRK_ARGS[@]}"}"
}
measure() { # measure ID ROUND -> $OUT/wrk-ID-rROUND.txt, and the context switches of the row's
  # server and of the origin's worker during the run -> $OUT/cs-ID-rROUND.txt (report.py)
  local s0 o0 s1 o1
  wrk_args "$1"
  s0=$(ctxsw "${R_RSS_PID[$1]}"); o0=$(ctxsw "$origin_worker")
  wrk_run "wrk-$1-r$2.txt" $((dur_s + 30)) "$DURATION" "${R_CONNS[$1]}" "${R_URL[$1]}" "m${RUN_ID}r$2" \
    "${WRK_ARGS[@]+"${WRK_ARGS[@]}"}"
  s1=$(ctxsw "${R_RSS_PID[$1]}"); o1=$(ctxsw "$origin_worker")
  echo "$s0 $s1 $o0 $o1" | awk '{ print $3 - $1, $4 - $2, $7 - $5, $8 - $6 }' >"$OUT/cs-$1-r$2.txt"
  say "   round $2 $(printf '%-8s' "$1") $(grep -E '^Requests/sec' "$OUT/wrk-$1-r$2.txt" || echo 'no Requests/sec line')"
}
# row ID TARGET WRKFILES RSS_KB CONNS NOTE EXTRAS: one line of rows.tsv for report.py
# (WRKFILES: the row's runs, comma-separated, or "-").
row() { printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$OUT/rows.tsv"; }

: >"$OUT/rows.tsv"
cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)
# Other work on the machine shows up as noise in every row: say so up front.
load=$(cut -d' ' -f1 /proc/loadavg)
if awk -v l="$load" 'BEGIN { exit !(l > 0.5) }'; then
  say "warning: load average is $load before the run; other processes will make these numbers noisy"
fi
{
  printf 'settings\twrk -t1 -c%s -d%s --latency (256/1024 for the @ rows), %s rounds interleaved (every other one in reverse), medians; a %s warm-up per row; wrk on CPU %s, servers on CPU %s%s; %s; %s; run %s\n' \
    "$CONNECTIONS" "$DURATION" "$ROUNDS" "$WARMUP" "$WRK_CPU" "$SERVER_CPU" \
    "$([ "$ORIGIN_SCHED" = batch ] && echo ' (the origins SCHED_BATCH)')" "${cpu_model:-unknown CPU}" \
    "$(date -u +%Y-%m-%dT%H:%MZ)" "$RUN_ID"
  printf 'connections\t%s\nduration\t%s\nwarmup\t%s\nrounds\t%s\nrun_id\t%s\n' \
    "$CONNECTIONS" "$DURATION" "$WARMUP" "$ROUNDS" "$RUN_ID"
  printf 'idle_connections\t%s\nopen_files_limit\t%s\n' "$IDLE_CONNS" "$(ulimit -n)"
  printf 'load_average_at_start\t%s\n' "$load"
  printf 'origin_sched\t%s\n' "$ORIGIN_SCHED"
  printf 'wxgate\t%s\n' "$("$WXGATE" --version 2>/dev/null || echo unknown)"
  printf 'git\t%s\n' "$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  printf 'nginx\t%s\n' "$(nginx -v 2>&1)"
  printf 'njs\t%s\n' "$(dpkg-query -W -f '${Version}' libnginx-mod-http-js 2>/dev/null || echo unknown)"
  printf 'haproxy\t%s\n' "$ha_version"
  printf 'wrk\t%s\n' "$(wrk --version 2>&1 | head -n 1 | awk '{ print $1, $2 }')"
  printf 'redis\t%s\n' "$(redis-server --version)"
  printf 'node\t%s\n' "$(node --version 2>/dev/null || echo none)"
} >"$OUT/meta.tsv"

# start_origin NAME PORT: an origin (nginx, static JSON), its worker under the scheduling policy
# ORIGIN_SCHED says; LAST_PID is its master.
start_origin() {
  start_nginx "$1" "$2"
  if [ "$ORIGIN_SCHED" = batch ]; then
    local worker
    worker=$(nginx_worker "$LAST_PID")
    chrt --batch --pid 0 "$worker" || die "cannot make the origin worker $worker SCHED_BATCH"
  fi
}

# ---------------------------------------------------------------------------------------------
say "== starting every server (all on CPU $SERVER_CPU)"
start_origin origin "${P[ORIGIN]}"
origin_pid=$LAST_PID
origin_worker=$(nginx_worker "$origin_pid")
start mock-wechat "$WXGATE" mock-wechat --listen "127.0.0.1:${P[MOCK]}" --appid "$APPID" --secret "$WECHAT_APPSECRET"
wait_port "${P[MOCK]}" "$LAST_PID" mock-wechat

wxgate_conf "$OUT/wxgate-memory.toml" "${P[GW3]}" "${P[ORIGIN]}" "${P[MOCK]}" 1 memory
TOKEN=$("$WXGATE" token --openid bench-user -c "$OUT/wxgate-memory.toml")
# The peers read the openid from `sub` and pin HS256: the token must carry both.
[ "$(jwt_json "$TOKEN" 0 | python3 -c 'import json, sys; print(json.load(sys.stdin).get("alg"))')" = HS256 ] ||
  die "wxgate token did not mint an HS256 token: $(jwt_json "$TOKEN" 0)"
[ "$(jwt_json "$TOKEN" 1 | python3 -c 'import json, sys; print(json.load(sys.stdin).get("sub"))')" = bench-user ] ||
  die "the token's sub is not the openid, which the peers forward: $(jwt_json "$TOKEN" 1)"
FORGED=$(hs256_variant "$TOKEN" forged)
EXPIRED=$(hs256_variant "$TOKEN" expired)

# ng_row ID CONNS NAME TARGET [tls]: one nginx reverse proxy of its own per row.
ng_row() {
  local id=$1 c=$2 name=$3 target=$4 tls=${5:-} port=${P[$3]} scheme=http
  if [ -n "$tls" ]; then scheme=https; fi
  start_nginx "nginx-$id" "$port" "${P[ORIGIN]}" "$tls"
  add_row "$id" "$c" "$scheme://127.0.0.1:$port/api/hello" "$target" "$(nginx_worker "$LAST_PID")" "$TOKEN"
}
# gw_row ID CONNS PORTNAME CONF PATH TARGET [TOKEN]: a gateway of its own per row, so its VmHWM
# is that row's peak.
gw_row() {
  local id=$1 c=$2 port=${P[$3]} conf=$4 path=$5 target=$6 token=${7:-$TOKEN} scheme=http
  if grep -q '^\[server.tls\]' "$conf"; then scheme=https; fi
  start_wxgate "wxgate-$id" "$conf" "$port"
  add_row "$id" "$c" "$scheme://127.0.0.1:$port$path" "$target" "$LAST_PID" "$token"
}
# ha_row ID CONNS PORTNAME FRONTEND TARGET: an HAProxy of its own per row (both frontends bound).
ha_row() {
  local id=$1 c=$2 name=$3 fe=$4 target=$5 plain jwt
  if [ "$fe" = jwt ]; then jwt=${P[$name]}; plain=${P[${name}_PLAIN]}; else plain=${P[$name]}; jwt=${P[${name}_JWT]}; fi
  start_haproxy "haproxy-$id" "$plain" "$jwt" "${P[ORIGIN]}" 4096
  add_row "$id" "$c" "http://127.0.0.1:${P[$name]}/api/hello" "$target" "$LAST_PID" "$TOKEN"
}
nj_row() { # nj_row ID CONNS PORTNAME TARGET
  start_njs "njs-$1" "${P[$3]}" "${P[ORIGIN]}"
  add_row "$1" "$2" "http://127.0.0.1:${P[$3]}/api/hello" "$4" "$(nginx_worker "$LAST_PID")" "$TOKEN"
}

C=$CONNECTIONS
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost -keyout "$OUT/tls.key" -out "$OUT/tls.crt" 2>/dev/null \
  || die "openssl could not make the benchmark's certificate"

add_row 1 "$C" "http://127.0.0.1:${P[ORIGIN]}/api/hello" "origin: nginx, static 60-byte JSON" \
  "$origin_worker" "$TOKEN"
ng_row 2 "$C" PROXY "nginx reverse proxy (no auth, upstream keepalive)"
ng_row 2s "$C" PROXYTLS "nginx reverse proxy over HTTPS (keepalive)" tls
gw_row 3 "$C" GW3 "$OUT/wxgate-memory.toml" /public/hello "wxgate, public route (auth = none)"
wxgate_conf "$OUT/wxgate-4.toml" "${P[GW4]}" "${P[ORIGIN]}" "${P[MOCK]}" 1 memory
gw_row 4 "$C" GW4 "$OUT/wxgate-4.toml" /api/hello "wxgate, protected route, HS256 (memory store)"

# Rows 5e and 5d: as row 4 with an ES256 / an EdDSA token (keys from `wxgate keygen`, each token
# minted by `wxgate token` with that gateway's config). The verified-token cache should keep them
# near HS256 (report.py: >= 0.9 x row 4).
mkdir -p "$OUT/keys"
for alg in ES256 EdDSA; do
  if [ "$alg" = ES256 ]; then id=5e; else id=5d; fi
  "$WXGATE" keygen --algorithm "$alg" --kid "bench-$id" --out "$OUT/keys" >/dev/null \
    || die "wxgate keygen --algorithm $alg failed"
  wxgate_conf "$OUT/wxgate-$id.toml" "${P[GW${id^^}]}" "${P[ORIGIN]}" "${P[MOCK]}" 1 memory
  jwt_lines="algorithm = \"$alg\"\nprivate_key = \"$OUT/keys/bench-$id.pem\"\nkid = \"bench-$id\""
  sed -i "s|^secret = \"\${WXGATE_JWT_SECRET}\"\$|$jwt_lines|" "$OUT/wxgate-$id.toml"
  "$WXGATE" check -c "$OUT/wxgate-$id.toml" >/dev/null || die "wxgate rejected wxgate-$id.toml"
  gw_row "$id" "$C" "GW${id^^}" "$OUT/wxgate-$id.toml" /api/hello \
    "wxgate, protected route, $alg token (memory store)" \
    "$("$WXGATE" token --openid bench-user -c "$OUT/wxgate-$id.toml")"
done

# Rows 4r and 4p: what a pool costs (one upstream round robin against three, openid_hash, health
# checks); being in the same rounds, drift on the machine hits both alike.
start_origin origin2 "${P[ORIGIN2]}"
start_origin origin3 "${P[ORIGIN3]}"
wxgate_conf "$OUT/wxgate-4r.toml" "${P[GW4R]}" "${P[ORIGIN]}" "${P[MOCK]}" 1 memory
API_UPSTREAMS="[\"127.0.0.1:${P[ORIGIN]}\", \"127.0.0.1:${P[ORIGIN2]}\", \"127.0.0.1:${P[ORIGIN3]}\"]" \
  API_EXTRA='lb = "openid_hash"
health_check = { path = "/healthz", interval = "1s", timeout = "500ms" }' \
  wxgate_conf "$OUT/wxgate-4p.toml" "${P[GW4P]}" "${P[ORIGIN]}" "${P[MOCK]}" 1 memory
gw_row 4r "$C" GW4R "$OUT/wxgate-4r.toml" /api/hello "wxgate, as row 4 (one upstream, round robin)"
gw_row 4p "$C" GW4P "$OUT/wxgate-4p.toml" /api/hello \
  "wxgate, as row 4, three upstreams, openid_hash, health checks every 1s"

wxgate_conf "$OUT/wxgate-4s.toml" "${P[GWTLS]}" "${P[ORIGIN]}" "${P[MOCK]}" 1 memory
printf '[server.tls]\ncert = "%s"\nkey = "%s"\n' "$OUT/tls.crt" "$OUT/tls.key" >>"$OUT/wxgate-4s.toml"
"$WXGATE" check -c "$OUT/wxgate-4s.toml" >/dev/null || die "wxgate rejected wxgate-4s.toml"
gw_row 4s "$C" GWTLS "$OUT/wxgate-4s.toml" /api/hello "wxgate, protected route over HTTPS (rustls)"

# Row 4j: as row 4 with the JSON access log on (one line per request, openid hashed) and the
# admin listener scraped during each measured run: what operating it costs.
wxgate_conf "$OUT/wxgate-4j.toml" "${P[GW4J]}" "${P[ORIGIN]}" "${P[MOCK]}" 1 memory
printf '[admin]\nlisten = "127.0.0.1:%s"\n[log]\nformat = "json"\nopenid = "hash"\n' "${P[ADMIN]}" >>"$OUT/wxgate-4j.toml"
"$WXGATE" check -c "$OUT/wxgate-4j.toml" >/dev/null || die "wxgate rejected wxgate-4j.toml"
RUST_LOG=info start wxgate-4j "$WXGATE" run -c "$OUT/wxgate-4j.toml"
wait_port "${P[GW4J]}" "$LAST_PID" wxgate-4j
add_row 4j "$C" "http://127.0.0.1:${P[GW4J]}/api/hello" \
  "wxgate, as row 4, JSON access log on, /metrics scraped each second" "$LAST_PID" "$TOKEN"

# Row 4b: the Redis store.
start redis redis-server --bind 127.0.0.1 --port "${P[REDIS]}" --save '' --appendonly no
wait_port "${P[REDIS]}" "$LAST_PID" redis
wxgate_conf "$OUT/wxgate-redis.toml" "${P[GW4B]}" "${P[ORIGIN]}" "${P[MOCK]}" 1 redis "${P[REDIS]}"
gw_row 4b "$C" GW4B "$OUT/wxgate-redis.toml" /api/hello "wxgate, protected route, HS256 (Redis store)"

# The same job as row 4 done by the tools a team would otherwise use (bench/peers/), and HAProxy
# without auth as its own baseline.
ha_row hp "$C" HP plain "HAProxy reverse proxy (no auth, http-reuse always)"
ha_row hj "$C" HJ jwt "HAProxy, HS256 checked by its native jwt_verify"
nj_row nj "$C" NJ "nginx + njs, HS256 checked in JavaScript"

# The same rows at 256 and 1024 connections (every one a server of its own, for its peak RSS).
ng_row 2@256 256 PROXY256 "nginx reverse proxy, as row 2, at 256 connections"
ha_row hj@256 256 HJ256 jwt "HAProxy jwt_verify, as row hj, at 256 connections"
nj_row nj@256 256 NJ256 "nginx + njs, as row nj, at 256 connections"
wxgate_conf "$OUT/wxgate-4@256.toml" "${P[GW4_256]}" "${P[ORIGIN]}" "${P[MOCK]}" 1 memory
gw_row 4@256 256 GW4_256 "$OUT/wxgate-4@256.toml" /api/hello "wxgate, as row 4, at 256 connections"
ng_row 2@1024 1024 PROXY1024 "nginx reverse proxy, as row 2, at 1024 connections"
ha_row hj@1024 1024 HJ1024 jwt "HAProxy jwt_verify, as row hj, at 1024 connections"
wxgate_conf "$OUT/wxgate-4@1024.toml" "${P[GW4_1024]}" "${P[ORIGIN]}" "${P[MOCK]}" 1 memory
gw_row 4@1024 1024 GW4_1024 "$OUT/wxgate-4@1024.toml" /api/hello "wxgate, as row 4, at 1024 connections"

if [ "${SKIP_NODE:-0}" = 1 ]; then
  ORDER+=(6); R_TARGET[6]="Node: Express + jsonwebtoken + http-proxy-middleware"; R_CONNS[6]=$C
  R_NOTE[6]="skipped (SKIP_NODE=1)"; R_EXTRAS[6]=""
else
  if [ "${NODE_JWT_KEYOBJECT:-0}" = 1 ]; then
    node_note="jwt.verify() given a KeyObject (NODE_JWT_KEYOBJECT=1)"
  else
    node_note="jwt.verify() given the secret as a string, as the tutorial does (NODE_JWT_KEYOBJECT=1: a KeyObject)"
  fi
  NODE_ENV=production PORT="${P[NODE]}" ORIGIN="http://127.0.0.1:${P[ORIGIN]}" JWT_SECRET="$WXGATE_JWT_SECRET" \
    APPID="$APPID" JWT_KEYOBJECT="${NODE_JWT_KEYOBJECT:-0}" start node node "$BENCH/node/app.js"
  wait_port "${P[NODE]}" "$LAST_PID" node
  add_row 6 "$C" "http://127.0.0.1:${P[NODE]}/api/hello" "Node: Express + jsonwebtoken + http-proxy-middleware" \
    "$LAST_PID" "$TOKEN"
  R_NOTE[6]=$node_note
fi

# Row 7: logins; login.lua makes every code unique (WeChat codes are single-use) from the run id
# that each warm-up and measured run passes it.
wxgate_conf "$OUT/wxgate-7.toml" "${P[GW7]}" "${P[ORIGIN]}" "${P[MOCK]}" 1 memory
start_wxgate wxgate-7 "$OUT/wxgate-7.toml" "${P[GW7]}"
add_row 7 "$C" "http://127.0.0.1:${P[GW7]}" "wxgate logins: GET /auth?code= via stand-in WeChat" \
  "$LAST_PID" "" "$BENCH/wrk/login.lua"
R_NOTE[7]="logins per second; every code unique, non-2xx counted as errors"

# ---------------------------------------------------------------------------------------------
say "== checking every row answers as it should"
for id in "${ROWS[@]}"; do
  url=${R_URL[$id]} tls=()
  if [[ "$url" == https://* ]]; then tls=(-k); fi
  if [ "$id" = 7 ]; then
    expect_200 "$url/auth?code=check.$RUN_ID"
    continue
  fi
  expect_200 "$url" "${tls[@]+"${tls[@]}"}" -H "Authorization: Bearer ${R_TOKEN[$id]}"
  # Rows that check the HS256 token (wxgate's protected routes and the peers) must refuse it
  # missing, forged (signed with another secret) or expired: else they are not doing row 4's job.
  case "$id" in
    1 | 2* | 3 | 5? | hp | 6) ;;
    *)
      expect_status 401 "$url" "${tls[@]+"${tls[@]}"}"
      expect_status 401 "$url" "${tls[@]+"${tls[@]}"}" -H "Authorization: Bearer $FORGED"
      expect_status 401 "$url" "${tls[@]+"${tls[@]}"}" -H "Authorization: Bearer $EXPIRED"
      ;;
  esac
done
# ...and pass the app the token's openid, the client's own X-WX-OpenID dropped: row 4's gateway,
# HAProxy and njs each once more, in front of `wxgate echo` (stopped again before any timing).
start echo "$WXGATE" echo --listen "127.0.0.1:${P[ECHO]}"
echo_pid=$LAST_PID
wait_port "${P[ECHO]}" "$echo_pid" echo
start_haproxy check-haproxy "${P[CHK_HA_PLAIN]}" "${P[CHK_HA]}" "${P[ECHO]}" 4096
chk_ha=$LAST_PID
start_njs check-njs "${P[CHK_NJ]}" "${P[ECHO]}"
chk_nj=$LAST_PID
wxgate_conf "$OUT/wxgate-check.toml" "${P[CHK_GW]}" "${P[ECHO]}" "${P[MOCK]}" 1 memory
start_wxgate wxgate-check "$OUT/wxgate-check.toml" "${P[CHK_GW]}"
chk_gw=$LAST_PID
for port in "${P[CHK_HA]}" "${P[CHK_NJ]}" "${P[CHK_GW]}"; do
  expect_openid "http://127.0.0.1:$port/api/hello" "$TOKEN" bench-user
done
stop "$chk_ha"; stop "$chk_nj"; stop "$chk_gw" INT; stop "$echo_pid"

say "== warm-up: $WARMUP per row"
for id in "${ROWS[@]}"; do warm "$id"; done

# Row 4j counts the access log lines its measured runs write (nothing else reaches it after the
# warm-up); row 4b the Redis commands during its measured runs, summed over the rounds.
access_lines() { grep -c '"target":"wxgate::access"' "$OUT/wxgate-4j.log" || true; }
redis_cmds() { redis-cli -p "${P[REDIS]}" info stats | awk -F: '/^total_commands_processed/ { print $2 + 0 }'; }
sleep 0.5
lines_before=$(access_lines)
redis_total=0

# Odd rounds run the rows in the order of the table, even rounds back.
ROWS_BACK=()
for ((i = ${#ROWS[@]} - 1; i >= 0; i--)); do ROWS_BACK+=("${ROWS[$i]}"); done
for round in $(seq "$ROUNDS"); do
  say "== round $round of $ROUNDS: ${#ROWS[@]} rows, $DURATION each"
  if [ $((round % 2)) -eq 1 ]; then order=("${ROWS[@]}"); else order=("${ROWS_BACK[@]}"); fi
  for id in "${order[@]}"; do
    case "$id" in
      4j)
        ( for _ in $(seq "$dur_s"); do curl -s -o /dev/null "http://127.0.0.1:${P[ADMIN]}/metrics"; sleep 1; done ) &
        scraper=$!
        measure "$id" "$round"
        wait "$scraper" 2>/dev/null || true
        ;;
      4b)
        before=$(redis_cmds)
        measure "$id" "$round"
        after=$(redis_cmds)
        redis_total=$((redis_total + after - before - 1)) # less the INFO that read `before`
        ;;
      *) measure "$id" "$round" ;;
    esac
  done
done
sleep 0.5
lines=$(( $(access_lines) - lines_before ))
R_NOTE[4j]="access log lines written during its $ROUNDS measured runs: $lines"
R_EXTRAS[4j]="access_lines=$lines"
R_NOTE[4b]="Redis commands during its $ROUNDS measured runs: $redis_total (the proxied path does not call Redis)"
R_EXTRAS[4b]="redis_commands=$redis_total"

for id in "${ORDER[@]}"; do
  if [ -z "${R_URL[$id]:-}" ]; then # skipped
    row "$id" "${R_TARGET[$id]}" - - "${R_CONNS[$id]}" "${R_NOTE[$id]}" ""
    continue
  fi
  files=$(seq -f "wrk-$id-r%g.txt" "$ROUNDS" | paste -sd, -)
  row "$id" "${R_TARGET[$id]}" "$files" "$(rss_kb "${R_RSS_PID[$id]}" VmHWM)" "${R_CONNS[$id]}" \
    "${R_NOTE[$id]}" "${R_EXTRAS[$id]}"
done

# ---------------------------------------------------------------------------------------------
# The idle rows: what holding IDLE_CONNS idle keep-alive clients costs each server (a fresh one,
# configured for that many: nginx allocates its worker_connections up front, HAProxy its maxconn).
# Everything but the origin stops first.
say "== idle rows: $IDLE_CONNS idle keep-alive connections, one server at a time"
for pid in "${PIDS[@]}"; do
  if [ "$pid" != "$origin_pid" ]; then stop "$pid" INT; fi
done
mapfile -t ports < <(free_ports 4)
read -r P_IDLE_NGINX P_IDLE_HA P_IDLE_HA_PLAIN P_IDLE_GW <<<"${ports[*]}"
idle_max=$((IDLE_CONNS + 2000))

# idle_round ID RSS_PID URL: warm-up, VmRSS, IDLE_CONNS clients that each made one request and
# wait, VmRSS again and VmHWM (the peak while they connected); one line per round in
# $OUT/ID.rounds (before, holding, peak, the client's ready and done JSON).
idle_round() {
  local id=$1 pid=$2 url=$3 port path client before during hwm ready done_line i
  port=${url#http://127.0.0.1:}; port=${port%%/*}; path=/${url#http://127.0.0.1:*/}
  R_URL[$id]=$url; R_RSS_PID[$id]=$pid
  expect_200 "$url" -H "Authorization: Bearer $TOKEN"
  warm "$id"
  sleep 1
  before=$(rss_kb "$pid" VmRSS)
  taskset -c "$WRK_CPU" python3 "$BENCH/idle_conns.py" 127.0.0.1 "$port" -n "$IDLE_CONNS" --path "$path" \
    -H "Authorization: Bearer $TOKEN" --hold signal >"$OUT/$id.txt" 2>&1 &
  client=$!
  PIDS+=("$client")
  for i in $(seq 1800); do
    if grep -q '^ready ' "$OUT/$id.txt"; then break; fi
    kill -0 "$client" 2>/dev/null || { cat "$OUT/$id.txt" >&2; die "idle_conns.py exited against $id"; }
    [ "$i" -lt 1800 ] || die "idle_conns.py not ready after 180 s against $id"
    sleep 0.1
  done
  sleep 1 # let the server settle with every connection idle
  during=$(rss_kb "$pid" VmRSS)
  hwm=$(rss_kb "$pid" VmHWM)
  stop "$client" TERM
  ready=$(sed -n 's/^ready //p' "$OUT/$id.txt")
  done_line=$(sed -n 's/^done //p' "$OUT/$id.txt")
  say "   $id: VmRSS $before kB before, $during kB holding them; client: $ready $done_line"
  printf '%s\t%s\t%s\t%s\t%s\n' "$before" "$during" "$hwm" "$ready" "${done_line:-{\}}" >>"$OUT/$id.rounds"
}

# idle_row ID TARGET: the row of ID's rounds for report.py: medians of the RSS before and while
# holding, every round's holding RSS (the spread), the highest peak, the fewest connections held.
idle_row() {
  local id=$1 target=$2 extras hwm
  read -r hwm extras < <(python3 - "$OUT/$id.rounds" <<'PY'
import json, statistics, sys
rounds = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
before = [int(r[0]) for r in rounds]
during = [int(r[1]) for r in rounds]
ready = [json.loads(r[3]) for r in rounds]
done = [json.loads(r[4] or "{}") for r in rounds]
err = next((r["first_error"] for r in ready if r["first_error"]), "") or ""
print(max(int(r[2]) for r in rounds),
      "rss_before_kb=%d;rss_idle_kb=%d;rss_idle_runs_kb=%s;idle_rounds=%d;idle_open=%d;"
      "idle_failed=%d;idle_closed_by_server=%s;idle_first_error=%s"
      % (statistics.median(before), statistics.median(during), ",".join(map(str, during)),
         len(rounds), min(r["open"] for r in ready), sum(r["failed"] for r in ready),
         sum(d.get("closed_by_server", 0) or 0 for d in done),
         err.replace(";", ",")))
PY
  )
  row "$id" "$target" - "$hwm" "$IDLE_CONNS" "" "$extras"
}

T_IDLE_NGINX="nginx reverse proxy (as row 2; worker_connections $idle_max)"
T_IDLE_HA="HAProxy jwt_verify (as row hj; maxconn $idle_max)"
T_IDLE_GW="wxgate, protected route (as row 4)"
add_row idle-nginx "$C" "" "$T_IDLE_NGINX" "" "$TOKEN"
add_row idle-haproxy "$C" "" "$T_IDLE_HA" "" "$TOKEN"
add_row idle-wxgate "$C" "" "$T_IDLE_GW" "" "$TOKEN"
wxgate_conf "$OUT/wxgate-idle.toml" "$P_IDLE_GW" "${P[ORIGIN]}" "${P[MOCK]}" 1 memory
# ROUNDS rounds, each a fresh nginx, HAProxy and wxgate in turn (interleaved, as the timed rows).
for round in $(seq "$ROUNDS"); do
  say "   idle round $round"
  NGINX_WORKER_CONNECTIONS=$idle_max start_nginx idle-nginx "$P_IDLE_NGINX" "${P[ORIGIN]}"
  master=$LAST_PID
  idle_round idle-nginx "$(nginx_worker "$master")" "http://127.0.0.1:$P_IDLE_NGINX/api/hello"
  stop "$master"

  start_haproxy idle-haproxy "$P_IDLE_HA_PLAIN" "$P_IDLE_HA" "${P[ORIGIN]}" "$idle_max"
  ha=$LAST_PID
  idle_round idle-haproxy "$ha" "http://127.0.0.1:$P_IDLE_HA/api/hello"
  stop "$ha"

  start_wxgate wxgate-idle "$OUT/wxgate-idle.toml" "$P_IDLE_GW"
  gw=$LAST_PID
  idle_round idle-wxgate "$gw" "http://127.0.0.1:$P_IDLE_GW/api/hello"
  stop "$gw" INT
done
idle_row idle-nginx "$T_IDLE_NGINX"
idle_row idle-haproxy "$T_IDLE_HA"
idle_row idle-wxgate "$T_IDLE_GW"

say "== report"
strict=()
if [ "${BENCH_STRICT:-0}" = 1 ]; then strict=(--strict); fi
python3 "$BENCH/report.py" "$OUT" "${strict[@]+"${strict[@]}"}"
