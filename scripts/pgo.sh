#!/usr/bin/env bash
# The profile-guided release build, the binary to deploy: target/pgo/release/wxgate (`make pgo`).
#
# 1. an instrumented release build (target/pgo-gen); 2. the training load on loopback
# (scripts/pgo-train.sh: that binary as the gateway in front of its echo app and stand-in WeChat,
# wrk driving the protected and public routes at 32 and 256 connections, a request with a body,
# refusals and logins); 3. the gateway's profile merged with the llvm-profdata of rustc's own LLVM
# version; 4. the release build again, optimized with the profile (target/pgo). About twice a
# release build (~15 minutes on 2 cores). Nothing is done when the binary is newer than the
# sources (src/, vendor/, Cargo.*, these scripts); PGO_FORCE=1 builds anyway.
# Knobs: PGO_SECONDS (each training step, default 4).
set -euo pipefail
cd "$(dirname "$0")/.."

out=target/pgo/release/wxgate
if [ "${PGO_FORCE:-0}" != 1 ] && [ -x "$out" ] &&
  [ -z "$(find src vendor Cargo.toml Cargo.lock .cargo scripts/pgo.sh scripts/pgo-train.sh \
    bench/lib.sh -newer "$out" -print -quit)" ]; then
  echo "pgo: $out is up to date (PGO_FORCE=1 to build it again)"
  exit 0
fi

if ! profdata=$(bash scripts/llvm-profdata.sh); then
  echo "pgo: no llvm-profdata for rustc's LLVM version: install the $profdata package" \
    "(WXGATE_SETUP_PGO=1 scripts/setup.sh does) or rustup's llvm-tools component" >&2
  exit 1
fi

dir=$PWD/target/pgo-data
rm -rf "$dir" && mkdir -p "$dir/build" "$dir/raw"

echo "pgo: 1/4 instrumented release build (target/pgo-gen)"
# Build scripts run instrumented too: their profiles go to build/ and are not used.
RUSTFLAGS="-Cprofile-generate=$dir/build" cargo build --release --locked --target-dir target/pgo-gen

echo "pgo: 2/4 training load"
LLVM_PROFILE_FILE="$dir/raw/wxgate-%p-%m.profraw" \
  bash scripts/pgo-train.sh target/pgo-gen/release/wxgate

echo "pgo: 3/4 merging the gateway's profile ($profdata)"
"$profdata" merge -o "$dir/merged.profdata" "$dir"/raw/*.profraw
# Named by its content: a new profile is a new RUSTFLAGS for cargo, which then builds every
# crate again with it (the same path would leave the dependencies built with the old one).
sum=$(sha256sum "$dir/merged.profdata" | cut -c1-16)
mkdir -p target/pgo
rm -f target/pgo/wxgate-*.profdata
cp "$dir/merged.profdata" "target/pgo/wxgate-$sum.profdata"

echo "pgo: 4/4 release build with the profile (target/pgo)"
RUSTFLAGS="-Cprofile-use=$PWD/target/pgo/wxgate-$sum.profdata" \
  cargo build --release --locked --target-dir target/pgo
touch "$out"
echo "pgo: built $out"
