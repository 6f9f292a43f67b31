#!/usr/bin/env bash
# The llvm-profdata matching rustc's LLVM version (a profile-guided build needs that version):
# prints its path, or, when there is none, the Debian package that has it (llvm-N) and exits 1.
# Used by scripts/pgo.sh and scripts/setup.sh.
set -euo pipefail
host=$(rustc -vV | sed -n 's/^host: //p')
llvm_major=$(rustc -vV | sed -nE 's/^LLVM version: ([0-9]+).*/\1/p')
for c in "llvm-profdata-$llvm_major" "$(rustc --print sysroot)/lib/rustlib/$host/bin/llvm-profdata"; do
  if command -v "$c" >/dev/null 2>&1; then command -v "$c"; exit 0; fi
done
echo "llvm-$llvm_major"
exit 1
