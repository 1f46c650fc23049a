#!/usr/bin/env bash
# Memory stays flat: peak RSS of loadgen after 1 million and after 10 million requests
# against nginx (bench/nginx.conf, started here on CPU 1), closed loop, 256 connections
# pipelined 16 deep so 10 million requests take minutes, not an hour.
#   loadgen/bench/rss.sh            # COUNTS="1000000 10000000" by default
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
LOADGEN=${LOADGEN:-${CARGO_TARGET_DIR:-/work/target-loadgen}/release/loadgen}
COUNTS=${COUNTS:-"1000000 10000000"}
ARGS=${ARGS:-"-t1 -c256 -p16"}
if [ "$(id -u)" = 0 ]; then NICE=${NICE:--10}; else NICE=${NICE:-0}; fi
work=$(mktemp -d /tmp/lg-rss.XXXXXX)
mkdir -p "$work/nginx"
cp "$here/nginx.conf" "$work/nginx/nginx.conf"
nice -n "$NICE" taskset -c 1 /usr/sbin/nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
nginx_master=$!
trap 'kill $nginx_master 2>/dev/null || true; wait $nginx_master 2>/dev/null || true; rm -rf "$work"' EXIT
URL=http://127.0.0.1:8090/plaintext
for _ in $(seq 50); do curl -fs "$URL" >/dev/null 2>&1 && break; sleep 0.1; done
printf '%-12s %10s %12s %10s  %s\n' requests seconds "peak RSS KB" errors "(non-zero kinds)"
for n in $COUNTS; do
    # shellcheck disable=SC2086
    /usr/bin/time -f "%M" -o "$work/rss" nice -n "$NICE" taskset -c 0 "$LOADGEN" -q $ARGS -n "$n" --json "$work/r.json" "$URL" >/dev/null
    python3 - "$work/r.json" "$(cat "$work/rss")" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
kinds = {k: v for k, v in r["errors"].items() if v}
json.dump(r, open("/tmp/lg-rss-last.json", "w"))
print("%-12d %10.1f %12s %10d  %s" % (r["requests"], r["duration_s"], sys.argv[2], r["errors_total"], kinds or ""))
PY
done
