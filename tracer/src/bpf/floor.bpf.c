// SPDX-License-Identifier: GPL-2.0
/* The floor under the tracer's cost: the same two syscall tracepoints as tracer.bpf.c,
 * with programs that stop after the tgid test that every tracer program starts with.
 *
 * Attaching any program to raw_syscalls:sys_enter/sys_exit sends every syscall of every
 * process through the kernel's slow syscall path and into the BPF program runner, twice.
 * This program measures that price alone (tracer/examples/hook_floor.rs, run by
 * tracer/bench/overhead.sh as mode hook-floor), so a benchmark can tell the kernel's share
 * of the tracer's cost from its programs' share.
 */
#include "core.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>

char LICENSE[] SEC("license") = "GPL";

const volatile u32 targ_tgid = 0;

/* The target's calls seen on the way in and out: proof that the programs ran. Plain
 * increments, not atomic ones: a lost update between CPUs does not matter here, and a
 * locked add (~20 ns) would charge the floor for work the tracer's tgid test does not do. */
u64 target_enters = 0;
u64 target_exits = 0;

/* The tgid test as tracer.bpf.c does it: for other processes nothing else runs. */
static __always_inline bool is_target(void)
{
	return (bpf_get_current_pid_tgid() >> 32) == targ_tgid;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(floor_enter, struct pt_regs *regs, long id)
{
	if (is_target())
		target_enters += 1;
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(floor_exit, struct pt_regs *regs, long ret)
{
	if (is_target())
		target_exits += 1;
	return 0;
}
