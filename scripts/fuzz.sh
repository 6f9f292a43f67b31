#!/usr/bin/env bash
# Run every cargo-fuzz target for FUZZ_SECONDS each (default 5: the short CI run).
# A longer run: FUZZ_SECONDS=600 bash scripts/fuzz.sh   (or one target: bash scripts/fuzz.sh token)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-5}
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# cargo-fuzz needs -Z flags: use a nightly toolchain if there is one, else let stable accept them.
if [ "${FUZZ_TOOLCHAIN:-}" != stable ] && rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cd fuzz && "${fuzz[@]}" list)
fi
for t in "${targets[@]}"; do
  echo "fuzz: $t for ${seconds}s"
  mkdir -p "fuzz/corpus/$t"
  "${fuzz[@]}" run "$t" "fuzz/corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 2>&1 | tail -n 3
done
