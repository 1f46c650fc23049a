#!/usr/bin/env bash
# loadgen against wrk: same target, same connection counts, one thread each, run
# alternately (wrk, loadgen, wrk, loadgen, ...) and compared pair by pair.
#
#   loadgen/bench/vs-wrk.sh                    # starts nginx (bench/nginx.conf) on CPU 1
#   URL=http://127.0.0.1:8080/plaintext SERVER_PID=1234 loadgen/bench/vs-wrk.sh
#
# Environment: PAIRS (5), DURATION (10s), CONFIGS ("32:1 256:1 256:16" = connections:pipeline),
# GEN_CPU (0) and SERVER_CPU (1) for taskset, LOADGEN (release binary path), URL/SERVER_PID
# to use a server that is already running (SERVER_PID adds the server's CPU per request).
# NICE (-10 as root, else 0) runs the server and both generators at that niceness so other
# work on the machine (compiles) disturbs them less; both tools get the same treatment.
# CPU time is the generator process's user+system time (rusage, via /usr/bin/time).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
PAIRS=${PAIRS:-5}
DURATION=${DURATION:-10s}
CONFIGS=${CONFIGS:-"32:1 256:1 256:16"}
GEN_CPU=${GEN_CPU:-0}
SERVER_CPU=${SERVER_CPU:-1}
if [ "$(id -u)" = 0 ]; then NICE=${NICE:--10}; else NICE=${NICE:-0}; fi
LOADGEN=${LOADGEN:-${CARGO_TARGET_DIR:-/work/target-loadgen}/release/loadgen}
work=$(mktemp -d /tmp/vs-wrk.XXXXXX)
nginx_master=""

cleanup() {
    if [ -n "$nginx_master" ]; then kill "$nginx_master" 2>/dev/null || true; wait "$nginx_master" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

[ -x "$LOADGEN" ] || { echo "no loadgen binary at $LOADGEN (cargo build --release -p loadgen)" >&2; exit 2; }
command -v wrk >/dev/null || { echo "wrk is not installed" >&2; exit 2; }

if [ -z "${URL:-}" ]; then
    mkdir -p "$work/nginx"
    cp "$here/nginx.conf" "$work/nginx/nginx.conf"
    nice -n "$NICE" taskset -c "$SERVER_CPU" /usr/sbin/nginx -p "$work/nginx" -c "$work/nginx/nginx.conf" &
    nginx_master=$!
    URL=http://127.0.0.1:8090/plaintext
    for _ in $(seq 50); do curl -fs "$URL" >/dev/null 2>&1 && break; sleep 0.1; done
    SERVER_PID=$(pgrep -P "$nginx_master" | head -n1)
    TARGET="nginx $(/usr/sbin/nginx -v 2>&1 | sed 's/.*\///'), 1 worker on CPU $SERVER_CPU"
else
    TARGET="$URL"
fi
curl -fs "$URL" >/dev/null || { echo "target $URL does not answer" >&2; exit 2; }

tck=$(getconf CLK_TCK)
server_ticks() {
    if [ -n "${SERVER_PID:-}" ] && [ -r "/proc/$SERVER_PID/stat" ]; then
        awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"
    else
        echo 0
    fi
}

# One run: prints "requests seconds cpu_seconds server_cpu_ticks errors".
run_one() {
    local tool=$1 conns=$2 depth=$3 out="$work/out" t0 t1
    t0=$(server_ticks)
    if [ "$tool" = wrk ]; then
        local script=()
        [ "$depth" -gt 1 ] && script=(-s "$here/pipeline.lua")
        /usr/bin/time -f "%U %S" -o "$work/time" nice -n "$NICE" taskset -c "$GEN_CPU" \
            wrk -t1 -c"$conns" -d"$DURATION" "${script[@]}" "$URL" ${script:+-- "$depth"} >"$out"
        t1=$(server_ticks)
        local reqs secs
        reqs=$(awk '/requests in/ {print $1}' "$out")
        secs=$(awk '/requests in/ {sub(/s,$/, "", $4); print $4}' "$out")
        # Socket errors: connect A, read B, write C, timeout D / Non-2xx or 3xx responses: N
        errs=$(awk '/Socket errors/ {gsub(/,/, ""); n += $4 + $6 + $8 + $10} /Non-2xx/ {n += $NF} END {print n + 0}' "$out")
        echo "$reqs $secs $(awk '{print $1 + $2}' "$work/time") $(( t1 - t0 )) $errs"
    else
        /usr/bin/time -f "%U %S" -o "$work/time" nice -n "$NICE" taskset -c "$GEN_CPU" \
            "$LOADGEN" -q -t1 -c"$conns" -p"$depth" -d"$DURATION" --json "$work/lg.json" "$URL" >"$out"
        t1=$(server_ticks)
        python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); print(r["requests"], r["duration_s"], end=" ")' "$work/lg.json"
        # Errors as a total, with the non-zero kinds appended, e.g. 256(timeout:256).
        echo "$(awk '{print $1 + $2}' "$work/time") $(( t1 - t0 )) $(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
kinds = ",".join("%s:%d" % kv for kv in r["errors"].items() if kv[1])
print("%d(%s)" % (r["errors_total"], kinds) if kinds else r["errors_total"])' "$work/lg.json")"
    fi
}

echo "target: $TARGET; generators on CPU $GEN_CPU, -t1, nice $NICE, $DURATION per run, $PAIRS pairs, alternating"
echo "loadgen: $LOADGEN; wrk: $(wrk --version 2>&1 | head -n1 | cut -d' ' -f1-2)"
printf '\n%-14s %-4s %12s %12s %11s %11s %9s %9s %9s %s\n' config pair "wrk req/s" "lg req/s" "wrk us/req" "lg us/req" "req/s x" "us/req x" "srv us/req" "errors"
echo "(x = loadgen / wrk; srv us/req = server CPU per request during the wrk / loadgen run; errors wrk/loadgen)"
summary=""
for cfg in $CONFIGS; do
    conns=${cfg%%:*}; depth=${cfg##*:}
    label="c=$conns p=$depth"
    ratios=""
    for pair in $(seq "$PAIRS"); do
        read -r wr ws wc wsrv we <<<"$(run_one wrk "$conns" "$depth")"
        read -r lr ls lc lsrv le <<<"$(run_one loadgen "$conns" "$depth")"
        line=$(python3 - "$wr" "$ws" "$wc" "$wsrv" "$lr" "$ls" "$lc" "$lsrv" "$tck" <<'PY'
import sys
wr, ws, wc, wsrv, lr, ls, lc, lsrv, tck = map(float, sys.argv[1:])
wrps, lrps = wr / ws, lr / ls
wcpu, lcpu = wc / wr * 1e6, lc / lr * 1e6
srv = "%.2f/%.2f" % (wsrv / tck / wr * 1e6, lsrv / tck / lr * 1e6) if wsrv > 0 else "-"
print("%12.0f %12.0f %11.2f %11.2f %9.3f %9.3f %9s|%f %f" % (wrps, lrps, wcpu, lcpu, lrps / wrps, lcpu / wcpu, srv, lrps / wrps, lcpu / wcpu))
PY
)
        printf '%-14s %-4s %s %s/%s\n' "$label" "$pair" "${line%%|*}" "$we" "$le"
        ratios+="${line##*|};"
    done
    summary+=$(python3 - "$label" "$ratios" <<'PY'
import statistics, sys
label, raw = sys.argv[1], sys.argv[2]
pairs = [tuple(map(float, p.split())) for p in raw.split(";") if p.strip()]
t = statistics.median(p[0] for p in pairs)
c = statistics.median(p[1] for p in pairs)
print("%-14s throughput loadgen/wrk median %.3f (min %.3f, max %.3f); CPU per request loadgen/wrk median %.3f (min %.3f, max %.3f)" % (
    label, t, min(p[0] for p in pairs), max(p[0] for p in pairs), c, min(p[1] for p in pairs), max(p[1] for p in pairs)))
PY
)$'\n'
done
echo
echo "Medians over $PAIRS alternating pairs (ratio > 1 = loadgen higher):"
printf '%s' "$summary"
