#!/usr/bin/env bash
# Install what building and testing wxgate needs, if it is missing (Debian/Ubuntu).
#   cmake         pingora-core builds zlib-ng with it
#   redis-server  the session store tests start a real one
#   curl          the demo's instructions
# With WXGATE_SETUP_TEST=1 (make test) also:
#   chromium      tests/browser opens the admin status page in a real browser (/usr/bin/chromium)
#   nodejs, npm   tests/browser drives Chromium with playwright-core (installed from its package-lock.json)
#   wrk           scripts/zero-downtime.sh keeps 64 connections busy across a reload and an upgrade
#   python3-jwcrypto  tests/keys.rs checks wxgate's JWKS and tokens with an independent library
#                 (and tests/browser's jsonwebtoken mints tokens as the tutorial's backend does)
#                 (tests/browser's express runs an app written for WeChat Cloud Hosting, tests/cloudhosting.rs)
# With WXGATE_SETUP_PGO=1 (make pgo, make bench, make soak) also:
#   wrk           the training load of the profile-guided build (scripts/pgo-train.sh)
#   llvm-N        its llvm-profdata, N being the LLVM version rustc is built on (`rustc -vV`);
#                 not needed when rustup's llvm-tools component is installed
# With WXGATE_SETUP_BENCH=1 (make bench, make soak) also:
#   wrk, nginx    the side-by-side benchmark (openssl: its HTTPS rows' certificate)
#   haproxy       its HAProxy rows: plain proxy and the native jwt_verify check (HAProxy >= 2.5)
#   libnginx-mod-http-js  its nginx + njs row (the token checked in JavaScript)
#                 The module is built against the `nginx` package's ABI (nginx-abi-*); the plain
#                 `nginx` package is installed rather than a flavour, and setup checks that this
#                 nginx loads the module, so the njs row fails here and not mid-benchmark.
set -euo pipefail

NJS_MODULE=/usr/lib/nginx/modules/ngx_http_js_module.so
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ "${WXGATE_SETUP_TEST:-0}" = 1 ]; then
  [ -x /usr/bin/chromium ] || need+=(chromium)
  command -v node >/dev/null 2>&1 || need+=(nodejs)
  command -v npm >/dev/null 2>&1 || need+=(npm)
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  /usr/bin/python3 -c 'import jwcrypto' >/dev/null 2>&1 || need+=(python3-jwcrypto)
fi
if [ "${WXGATE_SETUP_PGO:-0}" = 1 ] || [ "${WXGATE_SETUP_BENCH:-0}" = 1 ]; then
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  if command -v rustc >/dev/null 2>&1 &&
    ! llvm=$(bash "$(dirname "$0")/llvm-profdata.sh"); then
    need+=("$llvm")
  fi
fi
if [ "${WXGATE_SETUP_BENCH:-0}" = 1 ]; then
  command -v nginx >/dev/null 2>&1 || need+=(nginx)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
  command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
  [ -f "$NJS_MODULE" ] || need+=(libnginx-mod-http-js)
fi
command -v cc >/dev/null 2>&1 || need+=(build-essential)

if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# The njs module loads only into the nginx it was built for (same version and ABI): try it.
if [ "${WXGATE_SETUP_BENCH:-0}" = 1 ]; then
  njs_check=$(mktemp -d)
  printf 'load_module %s;\nerror_log stderr;\npid %s/nginx.pid;\nevents {}\n' "$NJS_MODULE" "$njs_check" \
    >"$njs_check/nginx.conf"
  if ! err=$(nginx -t -p "$njs_check" -e stderr -c "$njs_check/nginx.conf" 2>&1); then
    rm -rf "$njs_check"
    echo "setup: $(command -v nginx) cannot load $NJS_MODULE (the benchmark's njs row needs it):" >&2
    echo "$err" >&2
    echo "setup: install the Debian/Ubuntu 'nginx' package that libnginx-mod-http-js was built for" >&2
    exit 1
  fi
  rm -rf "$njs_check"
fi

browser="$(dirname "$0")/../tests/browser"
if [ "${WXGATE_SETUP_TEST:-0}" = 1 ] && { [ ! -d "$browser/node_modules/playwright-core" ] ||
  [ ! -d "$browser/node_modules/jsonwebtoken" ] || [ ! -d "$browser/node_modules/express" ]; }; then
  echo "setup: installing tests/browser's npm packages"
  npm ci --prefix "$browser" --no-audit --no-fund --loglevel=error >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust from https://rustup.rs" >&2
  exit 1
fi
