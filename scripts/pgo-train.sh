#!/usr/bin/env bash
# The training load of a profile-guided build (scripts/pgo.sh): the gateway BINARY (instrumented)
# in front of its own echo app and stand-in WeChat on loopback, driven by wrk through what a
# gateway mostly does. Only the gateway's profile is kept (LLVM_PROFILE_FILE is set for it
# alone); the stand-ins write theirs to a scratch directory.
#   usage: scripts/pgo-train.sh BINARY      knobs: PGO_SECONDS (per step, default 4)
set -euo pipefail
# Gateway and wrk on CPUs of their own where there are two (bench/lib.sh), else together.
if ! taskset -c 1 true 2>/dev/null; then export SERVER_CPU=0 WRK_CPU=0; fi
source "$(dirname "$0")/../bench/lib.sh"
WXGATE=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
S=${PGO_SECONDS:-4}
need_tool wrk "make pgo installs it"
OUT=$ROOT/target/pgo-data/train
rm -rf "$OUT" && mkdir -p "$OUT"
trap cleanup EXIT
gateway_profile=${LLVM_PROFILE_FILE:?set by scripts/pgo.sh}

# Anything but the gateway: profiles go to the scratch directory.
export LLVM_PROFILE_FILE="$OUT/stand-in-%p.profraw"
read -r GW ORIGIN MOCK <<<"$(free_ports 3 | tr '\n' ' ')"
start echo "$WXGATE" echo --listen "127.0.0.1:$ORIGIN"
wait_port "$ORIGIN" "$LAST_PID" echo
start mock "$WXGATE" mock-wechat --listen "127.0.0.1:$MOCK" --appid "$APPID" --secret "$WECHAT_APPSECRET"
wait_port "$MOCK" "$LAST_PID" mock
wxgate_conf "$OUT/gw.toml" "$GW" "$ORIGIN" "$MOCK" 1 memory
TOKEN=$("$WXGATE" token --openid pgo-user -c "$OUT/gw.toml")

LLVM_PROFILE_FILE=$gateway_profile start_wxgate gw "$OUT/gw.toml" "$GW"
gw=$LAST_PID
base=http://127.0.0.1:$GW
expect_200 "$base/api/hello" -H "Authorization: Bearer $TOKEN"

cat >"$OUT/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"item":"pgo","qty":1}'
wrk.headers["Content-Type"] = "application/json"
LUA

train() { # train NAME CONNECTIONS URL [WRK ARGS...]
  local name=$1 c=$2 url=$3; shift 3
  taskset -c "$WRK_CPU" wrk -t1 -c"$c" -d"${S}s" "$url" "$@" >"$OUT/$name.txt"
  say "pgo: $name: $(awk '/^Requests\/sec/ {print int($2)}' "$OUT/$name.txt") requests/s"
}
auth=(-H "Authorization: Bearer $TOKEN")
train protected-32 32 "$base/api/hello" "${auth[@]}"
train protected-256 256 "$base/api/hello?page=2" "${auth[@]}"
train public 32 "$base/public/hello"
train post-body 32 "$base/api/orders" "${auth[@]}" -s "$OUT/post.lua"
train no-token 32 "$base/api/hello"
train logins 32 "$base" -s "$ROOT/bench/wrk/login.lua" -- pgo

# A clean exit writes the gateway's profile.
stop "$gw"
ls "$(dirname "$gateway_profile")"/*.profraw >/dev/null 2>&1 || die "the gateway wrote no profile"
