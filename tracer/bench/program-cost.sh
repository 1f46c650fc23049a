#!/usr/bin/env bash
# What the eBPF backend's programs cost per syscall, from the kernel's own BPF statistics
# (run time and run count per program, read with bpftool), enabled for the measurement by
# holding a BPF_ENABLE_STATS fd (refcounted, unlike the kernel.bpf_stats_enabled sysctl,
# so it does not switch off the statistics of anyone else who needs them meanwhile).
#
# Two runs under the same load (wrk -t1 -c64 on the epoll server's /plaintext): first the
# tracer follows a sleeping process, so every call it sees is another process's (the cost
# of the tgid test); then it follows the server. The target's per-call cost is the second
# run's total run time minus the other processes' calls at the first run's per-call cost,
# divided by the target's call count (from the tracer's JSON). Both include the
# statistics' own overhead (two clock reads per program run, ~60 ns here).
#
#   tracer/bench/program-cost.sh [LAB_TRACE]       (root; needs wrk, bpftool, python3)
#
# Env: BIN (release binaries, default target/release), DATABASE_URL (default: the lab's
# database), PORT (18203), SECS (4).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-target/release}
LT=${1:-$BIN/lab-trace}
URL=${DATABASE_URL:-$($BIN/lab db url)}
PORT=${PORT:-18203}
SECS=${SECS:-4}
for t in wrk bpftool python3 taskset; do command -v $t >/dev/null || { echo "missing $t"; exit 1; }; done
work=$(mktemp -d /tmp/program-cost.XXXXXX)
taskset -c 0 "$BIN/server" --variant epoll --workers 1 --log off --listen 127.0.0.1:$PORT --database-url "$URL" >/dev/null 2>&1 &
SP=$!
sleep 300 & SL=$!
# bpf(BPF_ENABLE_STATS, {type: BPF_STATS_RUN_TIME}): statistics on while the fd is open.
python3 -c '
import ctypes, os, signal
attr = ctypes.create_string_buffer(16)
fd = ctypes.CDLL(None, use_errno=True).syscall(321, 32, attr, 16)
if fd < 0: raise SystemExit("BPF_ENABLE_STATS: " + os.strerror(ctypes.get_errno()))
signal.pause()' & ST=$!
trap 'kill $SP $SL $ST 2>/dev/null; rm -rf "$work"' EXIT
sleep 1
taskset -c 1 wrk -t1 -c64 -d1s http://127.0.0.1:$PORT/plaintext >/dev/null
stats() { bpftool prog show | awk '/run_time_ns/ {for(i=1;i<=NF;i++){if($i=="name")n=$(i+1); if($i=="run_time_ns")t=$(i+1); if($i=="run_cnt")c=$(i+1)}; if(n=="sys_enter"||n=="sys_exit") print n, c, t}'; }
for tgt in $SL $SP; do
  taskset -c 1 "$LT" --pid $tgt -q --json "$work/trace-$tgt.json" 2>/dev/null & T=$!
  sleep 1
  rps=$(taskset -c 1 wrk -t1 -c64 -d${SECS}s http://127.0.0.1:$PORT/plaintext | awk '/Requests/ {print $2}')
  stats > "$work/stats-$tgt"
  kill -INT $T; wait $T
  echo "tracing $([ $tgt = $SL ] && echo 'a sleeping process' || echo 'the server'): $rps req/s"
done
python3 - "$work" $SL $SP <<'PY'
import json, sys
work, other, server = sys.argv[1:]
def stats(p):
    return {l.split()[0]: (int(l.split()[1]), int(l.split()[2])) for l in open(f'{work}/stats-{p}')}
a, b = stats(other), stats(server)
n = json.load(open(f'{work}/trace-{server}.json'))['totals']['syscalls']['count']
for prog in ('sys_enter', 'sys_exit'):
    c0, t0 = a[prog]; c1, t1 = b[prog]
    per_other = t0 / c0
    per_target = (t1 - (c1 - n) * per_other) / n
    print(f"{prog}: {per_other:.0f} ns per call of another process, {per_target:.0f} ns per call of the target ({n} of {c1} calls)")
PY
