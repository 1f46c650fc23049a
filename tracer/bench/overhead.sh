#!/usr/bin/env bash
# Cost of tracing: wrk against the epoll server's /plaintext at 64 connections, untraced and
# under each tracer, alternating within one run (the machine drifts by up to 27% between
# runs, see /work/shared/notes/peers.md). Run as root. Results: docs/benchmarks.md,
# "## tracer overhead".
#
# Besides req/s, each measurement reports the CPU time per request of the server and of wrk
# (from /proc/PID/stat and time(1)): on a machine others load too, throughput follows the
# contention, while CPU per request is what the tracer adds to each process (the syscall
# tracepoints slow every process's syscalls, wrk's included).
#
#   tracer/bench/overhead.sh [ROUNDS] [SECONDS]
#
# Env: BIN (dir with release `server` and `lab-trace`, default target/release),
#      DATABASE_URL (default: the lab's test cluster), SERVER_CPU / LOAD_CPU (default 0 / 1),
#      PORT (default 18181), SPAWN=0 to skip part 2 (spawn mode, ptrace backend against strace),
#      LAB_TRACE_B=PATH: a second lab-trace build, measured as mode ebpf-b in every round
#      next to the first (an A/B comparison of a tracer change within one run),
#      SCALE=0: skip the bpftrace and strace measurements (quicker A/B runs of the tracer),
#      FLOOR=0: skip mode hook-floor. That mode attaches programs that stop after the tgid
#      test (examples/hook_floor.rs) to the same two syscall tracepoints: its loss is the
#      kernel's price for the hooks, which any tracer built on them pays, and the rest of
#      the eBPF loss is the tracer's own programs,
#      PIPELINE=16: that many requests in flight per connection, the shape in which
#      TechEmpower loads /plaintext (16 deep; wrk through
#      loadgen/bench/pipeline.lua, as TechEmpower does, loadgen with -p); one read and one
#      write then carry many requests, so the per-syscall cost weighs far less per request,
#      CLOSE=1: a new connection for every request (wrk: Connection: close; loadgen:
#      --no-keepalive), so every request brings the tracer a socket it has not seen,
#      GEN=loadgen: the lab's own load generator ($BIN/loadgen, same flags and summary)
#      instead of wrk. The generator matters: the hook slows *its* syscalls too, and wrk
#      makes about four per request (read, write, and two epoll_ctl to switch between
#      waiting for readable and writable), loadgen about two.
set -euo pipefail
ROUNDS=${1:-3}
SECS=${2:-8}
BIN=${BIN:-target/release}
URL=${DATABASE_URL:-postgres://benchmarkdbuser:benchmarkdbpass@127.0.0.1:54321/hello_world}
SCPU=${SERVER_CPU:-0}
LCPU=${LOAD_CPU:-1}
PORT=${PORT:-18181}
ADDR=http://127.0.0.1:$PORT/plaintext
SERVER=("$BIN/server" --variant epoll --workers 1 --log off --listen 127.0.0.1:$PORT --database-url "$URL")

for t in wrk strace taskset /usr/bin/time; do command -v $t >/dev/null || { echo "missing $t"; exit 1; }; done
[[ ${SCALE:-1} == 0 ]] || command -v bpftrace >/dev/null || { echo "missing bpftrace (or SCALE=0)"; exit 1; }
GEN=${GEN:-wrk}
case $GEN in
  wrk) GEN_CMD=(wrk) ;;
  loadgen) GEN_CMD=("$BIN/loadgen"); [ -x "$BIN/loadgen" ] || { echo "build first: cargo build --release --bins"; exit 1; } ;;
  *) echo "GEN is wrk or loadgen"; exit 1 ;;
esac
GEN_TAIL=() # after the URL: the arguments of wrk's Lua script
if [[ -n ${PIPELINE:-} ]]; then
  case $GEN in
    loadgen) GEN_CMD+=(-p "$PIPELINE") ;;
    # wrk pipelines only through a script: TechEmpower's way, one write of N requests.
    wrk) GEN_CMD+=(-s "$(dirname "$0")/../../loadgen/bench/pipeline.lua"); GEN_TAIL=(-- "$PIPELINE") ;;
  esac
fi
if [[ ${CLOSE:-0} == 1 ]]; then
  case $GEN in
    wrk) GEN_CMD+=(-H "Connection: close") ;;
    loadgen) GEN_CMD+=(--no-keepalive) ;;
  esac
fi
[ -x "$BIN/server" ] && [ -x "$BIN/lab-trace" ] || { echo "build first: cargo build --release --bins"; exit 1; }
FLOOR_BIN=$BIN/examples/hook_floor
[[ ${FLOOR:-1} == 0 || -x $FLOOR_BIN ]] || { echo "build first: cargo build --release -p tracer --examples (or FLOOR=0)"; exit 1; }

wait_up() { for _ in $(seq 100); do curl -sf -o /dev/null "$ADDR" && return 0; sleep 0.1; done; echo "server did not start"; exit 1; }
TCK=$(getconf CLK_TCK)
ticks() { [[ -n ${1:-} ]] && awk '{print $14 + $15}' "/proc/$1/stat" || echo 0; }
load() { # $1: server pid (for its CPU time) or empty; prints "req/s server-us/req wrk-us/req"
  taskset -c "$LCPU" "${GEN_CMD[@]}" -t1 -c64 -d1s "$ADDR" "${GEN_TAIL[@]}" >/dev/null   # warm-up
  local t0 out t1
  t0=$(ticks "${1:-}")
  out=$(taskset -c "$LCPU" /usr/bin/time -f 'wrk-cpu %U %S' "${GEN_CMD[@]}" -t1 -c64 -d"${SECS}s" "$ADDR" "${GEN_TAIL[@]}" 2>&1)
  t1=$(ticks "${1:-}")
  awk -v t0="$t0" -v t1="$t1" -v tck="$TCK" -v pid="${1:-}" '
    /requests in/ {n = $1} /Requests\/sec/ {rps = $2} /^wrk-cpu/ {w = $2 + $3}
    END {printf "%s %s %.1f\n", rps, (pid == "" ? "-" : sprintf("%.1f", (t1 - t0) / tck * 1e6 / n)), w * 1e6 / n}' <<<"$out"
}
declare -A R S W
add() { # mode, "req/s server-us wrk-us"
  local rps s w; read -r rps s w <<<"$2"
  R[$1]="${R[$1]:-} $rps"; S[$1]="${S[$1]:-} $s"; W[$1]="${W[$1]:-} $w"
  echo "  $1: $rps req/s, CPU per request: server $s us, $GEN $w us"
}

# Part 1: attach to one running server.
taskset -c "$SCPU" "${SERVER[@]}" >/dev/null 2>&1 &
SP=$!
trap 'kill $SP 2>/dev/null || true' EXIT
wait_up
kill -0 $SP 2>/dev/null || { echo "our server exited: is port $PORT taken? (set PORT)"; exit 1; }
# The eBPF modes of a round, between its two untraced runs; every other round runs them in
# reverse order, so that a drift within the round favours none of them.
EBPF_MODES=(ebpf ${LAB_TRACE_B:+ebpf-b})
[[ ${FLOOR:-1} == 0 ]] || EBPF_MODES+=(hook-floor)
attached() { # mode: attach it to the server, measure, detach
  local cmd
  case $1 in
    ebpf) cmd=("$BIN/lab-trace" --pid $SP -q --json /tmp/overhead-ebpf.json) ;;
    ebpf-b) cmd=("$LAB_TRACE_B" --pid $SP -q --json /tmp/overhead-ebpf-b.json) ;;
    hook-floor) cmd=("$FLOOR_BIN" --pid $SP) ;;
  esac
  taskset -c "$LCPU" "${cmd[@]}" >/tmp/overhead-attached.txt & local t=$!; sleep 1
  add "$1" "$(load $SP)"; kill -INT $t; wait $t
  # The floor's programs must have seen the server's calls, or it measured nothing.
  [[ $1 != hook-floor ]] || grep -q '^[1-9]' /tmp/overhead-attached.txt ||
    { echo "hook_floor saw no calls of pid $SP"; exit 1; }
}
for r in $(seq "$ROUNDS"); do
  echo "round $r (attach)"
  add untraced "$(load $SP)"
  order=("${EBPF_MODES[@]}")
  (( r % 2 )) || for ((i = ${#EBPF_MODES[@]} - 1, j = 0; i >= 0; i--, j++)); do order[j]=${EBPF_MODES[i]}; done
  for m in "${order[@]}"; do attached "$m"; done
  add untraced "$(load $SP)"
  [[ ${SCALE:-1} == 0 ]] && continue
  taskset -c "$LCPU" bpftrace -q -e "tracepoint:raw_syscalls:sys_enter /pid == $SP/ { @[args->id] = count(); }" >/dev/null 2>&1 & T=$!; sleep 3
  add bpftrace "$(load $SP)"; kill -INT $T; wait $T || true
  taskset -c "$LCPU" strace -f -c -o /tmp/overhead-strace.txt -p $SP 2>/dev/null & T=$!; sleep 1
  add strace "$(load $SP)"; kill -INT $T; wait $T || true
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
for r in $(seq "$([[ ${SPAWN:-1} == 0 ]] && echo 0 || echo "$ROUNDS")"); do
  echo "round $r (spawn)"
  spawn_run spawn-untraced taskset -c "$SCPU" "${SERVER[@]}"
  spawn_run spawn-ptrace taskset -c "$SCPU" "$BIN/lab-trace" --backend ptrace -q --json /tmp/overhead-ptrace.json -- "${SERVER[@]}"
  spawn_run spawn-strace taskset -c "$SCPU" strace -f -c -o /tmp/overhead-strace-spawn.txt -- "${SERVER[@]}"
done

median() { tr ' ' '\n' | awk '$1 != "" && $1 != "-"' | sort -n | awk '{a[NR]=$1} END {if (!NR) print "-"; else print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
echo
printf "%-16s %12s %9s %16s %13s\n" mode "median req/s" "vs base" "server us/req" "$GEN us/req"
B=$(echo "${R[untraced]}" | median); SB=$(echo "${R[spawn-untraced]:-}" | median)
MODES=(untraced "${EBPF_MODES[@]}")
[[ ${SCALE:-1} == 0 ]] || MODES+=(bpftrace strace)
[[ ${SPAWN:-1} == 0 ]] || MODES+=(spawn-untraced spawn-ptrace spawn-strace)
for m in "${MODES[@]}"; do
  v=$(echo "${R[$m]}" | median); base=$B; [[ $m == spawn-* ]] && base=$SB
  printf "%-16s %12.0f %8.1f%% %16s %13s\n" "$m" "$v" "$(echo "($v/$base-1)*100" | bc -l)" \
    "$(echo "${S[$m]}" | median)" "$(echo "${W[$m]}" | median)"
done

# Drift-proof view: each round's traced rate against the mean of the two untraced runs
# around it (untraced, eBPF, untraced), then the median over the rounds.
paired() { # mode
  local -a u=(${R[untraced]}) t=(${R[$1]}) ratios=()
  for i in "${!t[@]}"; do
    local a=${u[$((2 * i))]:-} b=${u[$((2 * i + 1))]:-}
    [[ -n $a && -n $b ]] && ratios+=("$(echo "(${t[$i]} / (($a + $b) / 2) - 1) * 100" | bc -l)")
  done
  printf "%-16s per round vs its untraced neighbours: %s; median %.1f%%\n" "$1" \
    "$(printf '%.1f%% ' "${ratios[@]}")" "$(echo "${ratios[@]}" | median)"
}
versus() { # mode a, mode b: each round's rate of a against its rate of b
  local -a a=(${R[$1]}) b=(${R[$2]}) r=()
  for i in "${!a[@]}"; do r+=("$(echo "(${a[$i]} / ${b[$i]} - 1) * 100" | bc -l)"); done
  printf "%-16s per round: %s; median %.1f%%\n" "$1 vs $2" "$(printf '%.1f%% ' "${r[@]}")" "$(echo "${r[@]}" | median)"
}
echo
paired ebpf
if [[ -n ${LAB_TRACE_B:-} ]]; then
  paired ebpf-b
  versus ebpf ebpf-b   # the two builds side by side
fi
if [[ ${FLOOR:-1} != 0 ]]; then
  paired hook-floor
  versus ebpf hook-floor   # the programs' own share
fi
[[ ${SCALE:-1} == 0 ]] || paired bpftrace
