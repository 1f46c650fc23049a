#!/usr/bin/env bash
# Cost of tracing: wrk against the epoll server's /plaintext at 64 connections, untraced and
# under each tracer, alternating within one run (the machine drifts by up to 27% between
# runs, see /work/shared/notes/peers.md). Run as root. Results: docs/benchmarks.md,
# "## tracer overhead".
#
#   tracer/bench/overhead.sh [ROUNDS] [SECONDS]
#
# Env: BIN (dir with release `server` and `lab-trace`, default target/release),
#      DATABASE_URL (default: the lab's test cluster), SERVER_CPU / LOAD_CPU (default 0 / 1).
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-8}
BIN=${BIN:-target/release}
URL=${DATABASE_URL:-postgres://benchmarkdbuser:benchmarkdbpass@127.0.0.1:54321/hello_world}
SCPU=${SERVER_CPU:-0}
LCPU=${LOAD_CPU:-1}
PORT=18181
ADDR=http://127.0.0.1:$PORT/plaintext
SERVER=("$BIN/server" --variant epoll --workers 1 --log off --listen 127.0.0.1:$PORT --database-url "$URL")

for t in wrk strace bpftrace taskset; do command -v $t >/dev/null || { echo "missing $t"; exit 1; }; done
[ -x "$BIN/server" ] && [ -x "$BIN/lab-trace" ] || { echo "build first: cargo build --release --bins"; exit 1; }

wait_up() { for _ in $(seq 100); do curl -sf -o /dev/null "$ADDR" && return 0; sleep 0.1; done; echo "server did not start"; exit 1; }
load() { # prints req/s
  taskset -c "$LCPU" wrk -t1 -c64 -d1s "$ADDR" >/dev/null   # warm-up
  taskset -c "$LCPU" wrk -t1 -c64 -d"${SECS}s" "$ADDR" | awk '/Requests\/sec/ {print $2}'
}
declare -A R
add() { R[$1]="${R[$1]:-} $2"; echo "  $1: $2 req/s"; }

# Part 1: attach to one running server.
taskset -c "$SCPU" "${SERVER[@]}" >/dev/null 2>&1 &
SP=$!
trap 'kill $SP 2>/dev/null || true' EXIT
wait_up
for r in $(seq "$ROUNDS"); do
  echo "round $r (attach)"
  add untraced "$(load)"
  taskset -c "$LCPU" "$BIN/lab-trace" --pid $SP -q --json /tmp/overhead-ebpf.json & T=$!; sleep 1
  add ebpf "$(load)"; kill -INT $T; wait $T
  add untraced "$(load)"
  taskset -c "$LCPU" bpftrace -q -e "tracepoint:raw_syscalls:sys_enter /pid == $SP/ { @[args->id] = count(); }" >/dev/null 2>&1 & T=$!; sleep 3
  add bpftrace "$(load)"; kill -INT $T; wait $T || true
  taskset -c "$LCPU" strace -f -c -o /tmp/overhead-strace.txt -p $SP 2>/dev/null & T=$!; sleep 1
  add strace "$(load)"; kill -INT $T; wait $T || true
done
kill $SP; wait $SP 2>/dev/null || true

# Part 2: spawn mode, ptrace backend (seccomp filter) against strace -f -c, same run.
spawn_run() { # $1 = label, rest = command prefix
  local label=$1; shift
  "$@" >/dev/null 2>&1 & local P=$!
  wait_up
  add "$label" "$(load)"
  if [[ $label == spawn-strace ]]; then
    # strace running a command blocks fatal signals (-I3): stop the server instead.
    pkill -TERM -f "^$BIN/server " || true
  else
    kill -INT $P 2>/dev/null || true   # lab-trace stops its child; plain server stops
  fi
  wait $P 2>/dev/null || true
  pkill -KILL -f "^$BIN/server " 2>/dev/null || true; sleep 0.5
}
for r in $(seq "$ROUNDS"); do
  echo "round $r (spawn)"
  spawn_run spawn-untraced taskset -c "$SCPU" "${SERVER[@]}"
  spawn_run spawn-ptrace taskset -c "$SCPU" "$BIN/lab-trace" --backend ptrace -q --json /tmp/overhead-ptrace.json -- "${SERVER[@]}"
  spawn_run spawn-strace taskset -c "$SCPU" strace -f -c -o /tmp/overhead-strace-spawn.txt -- "${SERVER[@]}"
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo
printf "%-16s %12s %10s\n" mode "median req/s" "vs base"
B=$(echo "${R[untraced]}" | median); SB=$(echo "${R[spawn-untraced]}" | median)
for m in untraced ebpf bpftrace strace spawn-untraced spawn-ptrace spawn-strace; do
  v=$(echo "${R[$m]}" | median); base=$B; [[ $m == spawn-* ]] && base=$SB
  printf "%-16s %12.0f %9.1f%%\n" "$m" "$v" "$(echo "($v/$base-1)*100" | bc -l)"
done
