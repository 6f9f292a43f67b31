# Helpers shared by bench/run.sh and bench/soak.sh (sourced, not run).
# Servers are pinned to SERVER_CPU, wrk to WRK_CPU; every process started here is recorded in
# PIDS and stopped by `cleanup` (installed as the EXIT trap by the scripts).
# shellcheck shell=bash

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH="$ROOT/bench"
OUT="$BENCH/out"
WRK_CPU=${WRK_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
APPID=wxbench000000000
export WECHAT_APPSECRET=bench-appsecret
export WXGATE_JWT_SECRET=bench-jwt-secret-0123456789abcdef0123456789
PIDS=()
LAST_PID=

say() { printf '%s\n' "$*" >&2; }
die() { printf '%s: error: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

need_tool() { # need_tool CMD HINT
  command -v "$1" >/dev/null 2>&1 || die "'$1' is not installed ($2)"
}

check_cpus() {
  if ! taskset -c "$WRK_CPU" true 2>/dev/null || ! taskset -c "$SERVER_CPU" true 2>/dev/null; then
    die "cannot pin to CPUs $WRK_CPU (wrk) and $SERVER_CPU (servers): this needs 2 cores (set WRK_CPU/SERVER_CPU)"
  fi
}

# The binary: $WXGATE if given (must exist), else the profile-guided build a deployment uses,
# target/pgo/release/wxgate, made or brought up to date by scripts/pgo.sh (`make pgo`); with
# PGO=0 the plain release build, target/release/wxgate, built if missing.
find_wxgate() {
  if [ -n "${WXGATE:-}" ]; then
    [ -x "$WXGATE" ] || die "WXGATE=$WXGATE is not an executable file"
  elif [ "${PGO:-1}" != 0 ]; then
    say "== the profile-guided build (scripts/pgo.sh; PGO=0 for the plain release build)"
    bash "$ROOT/scripts/pgo.sh" >&2
    WXGATE="$ROOT/target/pgo/release/wxgate"
  else
    WXGATE="$ROOT/target/release/wxgate"
    if [ ! -x "$WXGATE" ]; then
      say "== $WXGATE missing: cargo build --release --locked"
      (cd "$ROOT" && cargo build --release --locked)
    fi
  fi
  WXGATE=$(cd "$(dirname "$WXGATE")" && pwd)/$(basename "$WXGATE")
}

# free_ports N: N distinct free loopback ports, chosen by the kernel, one per line.
free_ports() {
  python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print("\n".join(str(s.getsockname()[1]) for s in socks))
PY
}

# start NAME CMD...: run CMD pinned to SERVER_CPU in the background, output in $OUT/NAME.log.
start() {
  local name=$1; shift
  taskset -c "$SERVER_CPU" "$@" >"$OUT/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# wait_port PORT PID NAME: until PORT accepts connections (10 s at most, and while PID lives).
wait_port() {
  local port=$1 pid=$2 name=$3 i
  for i in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then return 0; fi
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$OUT/$name.log" >&2 || true
      die "$name exited before listening on 127.0.0.1:$port (log: $OUT/$name.log)"
    fi
    sleep 0.1
  done
  die "$name is not listening on 127.0.0.1:$port after 10 s (log: $OUT/$name.log)"
}

# stop PID [SIGNAL]: signal it (TERM by default), wait up to 5 s, then KILL it and its children.
stop() {
  local pid=$1 sig=${2:-TERM} i rest=()
  if kill -0 "$pid" 2>/dev/null; then
    kill -"$sig" "$pid" 2>/dev/null || true
    for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      pkill -KILL -P "$pid" 2>/dev/null || true
      kill -KILL "$pid" 2>/dev/null || true
    fi
  fi
  wait "$pid" 2>/dev/null || true
  for i in "${PIDS[@]}"; do [ "$i" = "$pid" ] || rest+=("$i"); done
  PIDS=("${rest[@]+"${rest[@]}"}")
}

cleanup() {
  local pid
  for pid in "${PIDS[@]+"${PIDS[@]}"}"; do stop "$pid"; done
}

# rss_kb PID FIELD: VmHWM (peak) or VmRSS (now) of PID, in kB.
rss_kb() {
  awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"
}

# ctxsw PID: context switches of all PID's threads so far, "INVOLUNTARY VOLUNTARY". Involuntary:
# it was runnable and another process took the core (on the shared server core, mostly the origin
# woken by the proxy's upstream write); voluntary: it waited with nothing to do.
ctxsw() {
  cat "/proc/$1"/task/*/status 2>/dev/null |
    awk '/^nonvoluntary_ctxt_switches/ { n += $2 } /^voluntary_ctxt_switches/ { v += $2 } END { print n + 0, v + 0 }'
}

# nginx_conf DIR PORT [ORIGIN_PORT]: one worker, no access log, everything under DIR.
# Without ORIGIN_PORT it is the origin (a fixed 60-byte JSON body); with it, a reverse proxy
# to the origin with upstream keepalive: up to 1024 idle upstream connections kept, as many as the
# largest row has clients (with nginx's usual 64, the 256- and 1024-connection rows opened an
# upstream connection for most requests: 24k requests/s at 256 instead of 65k).
# NGINX_WORKER_CONNECTIONS (4096) sets worker_connections:
# nginx allocates that many connection slots up front, so only the idle row raises it.
nginx_conf() {
  local dir=$1 port=$2 origin=${3:-} tls=${4:-} user="" location upstream="" listen
  listen="listen 127.0.0.1:$port;"
  if [ -n "$tls" ]; then
    listen="listen 127.0.0.1:$port ssl; ssl_certificate $OUT/tls.crt; ssl_certificate_key $OUT/tls.key; ssl_protocols TLSv1.2 TLSv1.3;"
  fi
  mkdir -p "$dir/tmp"
  if [ "$(id -u)" = 0 ]; then user="user root;"; fi
  if [ -z "$origin" ]; then
    location="default_type application/json;
      return 200 '{\"code\":\"200\",\"message\":\"ok\",\"data\":{\"hello\":\"world\"}}';"
  else
    upstream="upstream origin { server 127.0.0.1:$origin; keepalive 1024; keepalive_requests 1000000; }"
    location="proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";"
  fi
  cat >"$dir/nginx.conf" <<EOF
$user
worker_processes 1;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections ${NGINX_WORKER_CONNECTIONS:-4096}; }
http {
  access_log off;
  client_body_temp_path $dir/tmp/body;
  proxy_temp_path $dir/tmp/proxy;
  fastcgi_temp_path $dir/tmp/fastcgi;
  uwsgi_temp_path $dir/tmp/uwsgi;
  scgi_temp_path $dir/tmp/scgi;
  keepalive_requests 1000000;
  $upstream
  server {
    $listen
    location / {
      $location
    }
  }
}
EOF
}

# start_nginx NAME PORT [ORIGIN_PORT] [tls]: sets LAST_PID to the master.
start_nginx() {
  local name=$1 dir="$OUT/$1"
  nginx_conf "$dir" "$2" "${3:-}" "${4:-}"
  start "$name" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" -g 'daemon off;'
  wait_port "$2" "$LAST_PID" "$name"
}

# nginx_worker MASTER_PID: the worker's pid (the process that serves).
nginx_worker() {
  local w i
  for i in $(seq 20); do
    w=$(pgrep -P "$1" | head -n 1 || true)
    if [ -n "$w" ]; then echo "$w"; return 0; fi
    sleep 0.1
  done
  die "no nginx worker under pid $1"
}

# wxgate_conf FILE PORT ORIGIN_PORT WECHAT_PORT THREADS STORE [REDIS_PORT]
# Routes: /api/ (auth required) and /public/ (auth none), both to the origin. API_UPSTREAMS
# (a TOML list) and API_EXTRA (more keys) change the /api/ route.
wxgate_conf() {
  local file=$1 port=$2 origin=$3 wechat=$4 threads=$5 store=$6 redis=${7:-}
  local api_upstreams=${API_UPSTREAMS:-"[\"127.0.0.1:$origin\"]"}
  cat >"$file" <<EOF
[server]
listen = "127.0.0.1:$port"
threads = $threads
grace_period = "1s"
[wechat]
appid = "$APPID"
secret = "\${WECHAT_APPSECRET}"
api_base = "http://127.0.0.1:$wechat"
[jwt]
secret = "\${WXGATE_JWT_SECRET}"
ttl = "2h"
[session]
store = "$store"
${redis:+redis_url = \"redis://127.0.0.1:$redis/0\"}
[rate_limit]
# One client address makes every request here: the login row measures logins, not the limit.
login_per_minute = 0
[[routes]]
name = "api"
prefix = "/api/"
upstreams = $api_upstreams
auth = "required"
${API_EXTRA:-}
[[routes]]
name = "public"
prefix = "/public/"
upstreams = ["127.0.0.1:$origin"]
auth = "none"
EOF
  "$WXGATE" check -c "$file" >/dev/null || die "wxgate rejected $file"
}

# start_wxgate NAME CONF PORT: the gateway, access log silenced; sets LAST_PID.
start_wxgate() {
  RUST_LOG=warn start "$1" "$WXGATE" run -c "$2"
  wait_port "$3" "$LAST_PID" "$1"
}

# expect_status CODE URL [CURL ARGS...]: one request must answer CODE before anything is measured.
expect_status() {
  local want=$1 url=$2 code; shift 2
  code=$(curl -s -o "$OUT/last-body.txt" -w '%{http_code}' --max-time 5 "$@" "$url" || true)
  [ "$code" = "$want" ] ||
    die "GET $url answered '$code', not $want: $(head -c 300 "$OUT/last-body.txt" 2>/dev/null)"
}
expect_200() { expect_status 200 "$@"; }

# raise_fd_limit NEED: the soft open-files limit up to 65536 (else the hard limit); die unless it
# reaches NEED. Every process started afterwards inherits it.
raise_fd_limit() {
  local need=$1 have
  ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
  have=$(ulimit -n)
  if [ "$have" != unlimited ] && [ "$have" -lt "$need" ]; then
    die "the open files limit is $have (hard limit $(ulimit -Hn)) and this run needs $need; raise the hard limit (ulimit -Hn, LimitNOFILE, /etc/security/limits.conf) or lower IDLE_CONNS"
  fi
}

# jwt_json TOKEN PART: the token's header (0) or claims (1) as JSON, not verified.
jwt_json() {
  python3 -c 'import base64, sys
s = sys.argv[1].split(".")[int(sys.argv[2])]
print(base64.urlsafe_b64decode(s + "=" * (-len(s) % 4)).decode())' "$1" "$2"
}

# hs256_variant TOKEN forged|expired: the token's claims signed with another secret (forged), or
# with exp an hour ago and signed with the real secret (expired): both must be refused.
hs256_variant() {
  python3 -c 'import base64, hashlib, hmac, json, os, sys, time
token, kind = sys.argv[1], sys.argv[2]
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head, claims, _ = token.split(".")
secret = os.environ["WXGATE_JWT_SECRET"]
if kind == "forged":
    secret = "not-" + secret
else:
    c = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    c["exp"] = int(time.time()) - 3600
    claims = b64(json.dumps(c, separators=(",", ":")).encode())
sig = hmac.new(secret.encode(), f"{head}.{claims}".encode(), hashlib.sha256).digest()
print(f"{head}.{claims}.{b64(sig)}")' "$1" "$2"
}

# expect_openid URL TOKEN OPENID [CURL ARGS...]: through a gateway in front of `wxgate echo`, the
# app must see exactly one X-WX-OpenID, OPENID, even when the client sends its own.
expect_openid() {
  local url=$1 token=$2 want=$3 got; shift 3
  expect_200 "$url" -H "Authorization: Bearer $token" -H "X-WX-OpenID: spoofed" "$@"
  got=$(python3 -c 'import json, sys
h = json.load(open(sys.argv[1]))["headers"]
print(",".join(v for k, v in h if k.lower() == "x-wx-openid"))' "$OUT/last-body.txt") ||
    die "GET $url: the echo app's answer is not JSON: $(head -c 300 "$OUT/last-body.txt")"
  [ "$got" = "$want" ] || die "GET $url: the app saw X-WX-OpenID '$got', not '$want'"
}

# The peers (bench/peers/*.tmpl) listen on fixed ports; render_* puts this run's ports in.
PEERS="$BENCH/peers"

# start_haproxy NAME PLAIN_PORT JWT_PORT ORIGIN_PORT MAXCONN: HAProxy from haproxy-jwt.cfg.tmpl,
# frontend `plain` on PLAIN_PORT, `jwt` (native jwt_verify) on JWT_PORT; sets LAST_PID.
start_haproxy() {
  local name=$1 plain=$2 jwt=$3 origin=$4 maxconn=$5 dir="$OUT/$1" limits=""
  mkdir -p "$dir"
  # HAProxy reserves two descriptors per connection (client and server side) and by default
  # (strict-limits) refuses to start when the open files limit is lower. Idle keep-alive clients
  # hold one each and share the server connections (http-reuse always), so where the limit is
  # below that reservation (the idle row), let it start and use what it has.
  if [ "$(ulimit -n)" != unlimited ] && [ $((2 * maxconn + 100)) -gt "$(ulimit -n)" ]; then
    limits="\n    no strict-limits"
  fi
  sed -e "s/19201/$origin/g; s/19204/$jwt/g; s/19205/$plain/g; s/@SECRET@/$WXGATE_JWT_SECRET/g" \
    -e "s/^    maxconn 4096\$/    maxconn $maxconn$limits/" \
    "$PEERS/haproxy-jwt.cfg.tmpl" >"$dir/haproxy.cfg"
  haproxy -c -q -f "$dir/haproxy.cfg" >"$dir/check.log" 2>&1 ||
    { cat "$dir/check.log" >&2; die "haproxy rejected $dir/haproxy.cfg"; }
  start "$name" haproxy -f "$dir/haproxy.cfg" -db
  wait_port "$jwt" "$LAST_PID" "$name"
  wait_port "$plain" "$LAST_PID" "$name"
}

# start_njs NAME PORT ORIGIN_PORT: nginx + njs from nginx-njs.conf.tmpl and njs-jwt.js.tmpl,
# one worker; NGINX_WORKER_CONNECTIONS as for nginx_conf. Sets LAST_PID to the master.
start_njs() {
  local name=$1 port=$2 origin=$3 dir="$OUT/$1"
  mkdir -p "$dir/tmp"
  sed -e "s/@SECRET@/$WXGATE_JWT_SECRET/g" "$PEERS/njs-jwt.js.tmpl" >"$dir/jwt.js"
  sed -e "s|@DIR@|$dir|g; s/19201/$origin/g; s/19206/$port/g" \
    -e "s/worker_connections 4096;/worker_connections ${NGINX_WORKER_CONNECTIONS:-4096};/" \
    "$PEERS/nginx-njs.conf.tmpl" >"$dir/nginx.conf"
  # The template says `daemon off;` itself.
  start "$name" nginx -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf"
  wait_port "$port" "$LAST_PID" "$name"
}

# to_seconds 10s|3m|1h|90 -> seconds (wrk's duration syntax).
to_seconds() {
  local d=$1
  case "$d" in
    *s) echo "${d%s}" ;;
    *m) echo $(( ${d%m} * 60 )) ;;
    *h) echo $(( ${d%h} * 3600 )) ;;
    *) echo "$d" ;;
  esac
}
