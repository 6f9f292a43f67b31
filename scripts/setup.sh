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
# With WXGATE_SETUP_BENCH=1 (make bench) also:
#   wrk, nginx    the side-by-side benchmark (openssl: its HTTPS rows' certificate)
set -euo pipefail

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
if [ "${WXGATE_SETUP_BENCH:-0}" = 1 ]; then
  command -v wrk >/dev/null 2>&1 || need+=(wrk)
  command -v nginx >/dev/null 2>&1 || need+=(nginx-light)
  command -v openssl >/dev/null 2>&1 || need+=(openssl)
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
