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
# JWT (ours start with eyJ0eXAi or eyJhbGci), WeChat URLs with credentials, session keys; from
# tests/keys.rs: the tutorial backend's secret and session_key, any PEM private key.
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
  'tutorial-session-key-AAAA'
  'bj2304'
  'PRIVATE KEY'
)
status=0
for p in "${patterns[@]}"; do
  if grep -F -l -- "$p" $logs >/dev/null 2>&1; then
    echo "check-logs: FOUND '$p' in:" >&2
    grep -F -l -- "$p" $logs >&2
    status=1
  fi
done
# JSON logs (log.format = "json"): every line must be one JSON object; decoded values are checked
# again (an escape must not hide a secret), and access lines never carry a query string.
json_logs=$(for f in $logs; do head -c1 "$f" | grep -q '{' && echo "$f"; done || true)
if [ -n "$json_logs" ]; then
  python3 - "${patterns[@]}" <<PY || status=1
import json, sys
patterns = sys.argv[1:]
bad = 0
for path in """$json_logs""".split():
    for n, line in enumerate(open(path, encoding="utf-8"), 1):
        try:
            event = json.loads(line)
        except ValueError:
            print(f"check-logs: {path}:{n} is not JSON", file=sys.stderr); bad = 1; continue
        text = " ".join(str(v) for v in event.values())
        for p in patterns:
            if p in text:
                print(f"check-logs: FOUND '{p}' in {path}:{n}", file=sys.stderr); bad = 1
        if event.get("target") == "wxgate::access" and "?" in str(event.get("path", "")):
            print(f"check-logs: query string in {path}:{n}", file=sys.stderr); bad = 1
sys.exit(bad)
PY
  echo "check-logs: $(echo "$json_logs" | wc -l) of them JSON, every line parsed and checked"
fi
if [ $status = 0 ]; then
  echo "check-logs: $n gateway logs ($bytes bytes, RUST_LOG=debug) contain no secret, token or session_key"
fi
exit $status
