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

/* Calls of the target seen: proof that the programs ran. */
u64 target_calls = 0;

SEC("tp_btf/sys_enter")
int BPF_PROG(floor_enter, struct pt_regs *regs, long id)
{
	if ((bpf_get_current_pid_tgid() >> 32) != targ_tgid)
		return 0;
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(floor_exit, struct pt_regs *regs, long ret)
{
	if ((bpf_get_current_pid_tgid() >> 32) != targ_tgid)
		return 0;
	__sync_fetch_and_add(&target_calls, 1);
	return 0;
}
