#!/usr/bin/env bash
# After the test suite: grep every gateway log the end-to-end tests captured (they run the
# gateway at RUST_LOG=debug) for the secrets those tests used. Any hit fails the run.
set -euo pipefail
cd "$(dirname "$0")/.."
logs=$(find target/tmp -name gateway.log 2>/dev/null || true)
if [ -z "$logs" ]; then
  echo "check-logs: no gateway logs found under target/tmp (run cargo test first)" >&2
  exit 1
fi
n=$(echo "$logs" | wc -l)
bytes=$(cat $logs | wc -c)
# The secrets of tests/common/mod.rs, WeChat's sample session_key (the fixedkey- logins), any
# JWT (ours start with eyJ0eXAi or eyJhbGci), WeChat URLs with credentials, session keys.
patterns=(
  'test-appsecret-do-not-log'
  'test-jwt-secret-0123456789abcdef-0123456789'
  'tiihtNczf5v6AKRyjwEUhQ=='
  'eyJ0eXAi'
  'eyJhbGci'
  'secret='
  'access_token='
  'js_code='
  'session_key'
  'refresh_token'
)
status=0
for p in "${patterns[@]}"; do
  if grep -F -l -- "$p" $logs >/dev/null 2>&1; then
    echo "check-logs: FOUND '$p' in:" >&2
    grep -F -l -- "$p" $logs >&2
    status=1
  fi
done
if [ $status = 0 ]; then
  echo "check-logs: $n gateway logs ($bytes bytes, RUST_LOG=debug) contain no secret, token or session_key"
fi
exit $status
