// SPDX-License-Identifier: GPL-2.0
/* In-kernel half of the eBPF backend: counts, times and classifies every syscall, ring
 * operation and off-CPU interval of one process (all its threads) and, by default, of the
 * processes it forks, aggregating into per-CPU maps that user space reads at the end.
 * Nothing is sent per event.
 *
 * Hooks: tp_btf/sys_enter + sys_exit (raw syscall tracepoints, typed pt_regs),
 * tp_btf/sched_switch + sched_wakeup (off-CPU: blocked vs run-queue delay),
 * tp_btf/io_uring_{submit_req,file_get,complete} (ring operations),
 * tp_btf/sched_process_fork + sched_process_exit (the set of traced processes).
 *
 * Every program first tests the current tgid: targ_tgid (rodata, set before load), then,
 * when more than one process is traced, one slot of a direct-mapped table in .bss, so
 * that other processes pay a comparison and one load.
 */
#include "core.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

/* Categories: same numbering as tracer::Category (category.rs). */
#define CAT_NETWORK 0
#define CAT_DATABASE 1
#define CAT_LOGGING 2
#define CAT_EVENT_LOOP 3
#define CAT_SYNC 4
#define CAT_THREADS 5
#define CAT_MEMORY 6
#define CAT_OTHER 7
#define CAT_NONE 15 /* an fd that says nothing: the syscall keeps its default */

/* Per-syscall flags in sys_class[nr] (user space fills it, see ebpf/syscalls). */
#define SC_CAT_MASK 0xf
#define SC_FD0 (1 << 4)        /* arg0 is an fd: classify it */
#define SC_BYTES (1 << 5)      /* a positive return is a byte count */
#define SC_EPOLL_WAIT (1 << 6) /* arg0 is an epoll fd: category from what it covers */
#define SC_EPOLL_CTL (1 << 7)  /* epoll_ctl(epfd, op, fd): remember fd's category */
#define SC_POLL (1 << 8)       /* poll(fds, nfds): one fd => its category */
#define SC_CONNECT (1 << 9)    /* connect(fd, addr): classify by the address */
#define SC_CLOSE (1 << 10)     /* close(fd): forget per-fd state */
#define SC_LISTEN (1 << 11)    /* listen(fd): its local port serves clients */
#define SC_RET_FD (1 << 12)    /* returns a new fd (open): classify it at exit */
#define SC_NORET (1 << 13)     /* exit/exit_group: never returns, count at entry */
#define SC_EPOLL_NEW (1 << 14) /* epoll_create: a new epoll file, its set starts empty */
#define SC_IN (1 << 15)        /* reads or receives data from its fd */
#define SC_OUT (1 << 16)       /* writes or sends data to its fd (shutdown too) */

/* Aggregation key kinds. */
#define KIND_SYSCALL 0
#define KIND_RING 1
#define KIND_SCHED 2 /* off-CPU outside any syscall (preemption in user space, faults) */

#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define S_IFREG 0100000
#define AF_UNIX 1
#define AF_INET 2
#define AF_INET6 10
#define EAGAIN 11
#define IORING_CQE_F_MORE (1U << 1)
#define NR_SYSCALLS 512
#define HIST_BUCKETS 32
#define DB_PATH_MAX 108
#define AGG_SLOTS 8192 /* distinct (process, thread name, call, category) rows */
#define SLOT_CACHE 32  /* per-CPU cache of recently used rows */
#define MAX_LISTEN 16
#define DB_ADDRS_MAX 8 /* tracer::context::DB_ADDRS_MAX */

const volatile u32 targ_tgid = 0;
/* More processes than targ_tgid are traced (children, companions): consult tgid_set. */
const volatile u8 use_set = 0;
/* Add the processes that traced ones fork to the set. */
const volatile u8 follow_forks = 0;
/* Database TCP port in network byte order (as skc_dport and sin_port hold it), 0: none. */
const volatile u16 db_port_be = 0;
/* The database's addresses, in network byte order as skc_daddr / skc_v6_daddr hold them
 * (user space resolves its host once, before load; IPv4-mapped IPv6 ones are in db_v4).
 * A connection to db_port_be is the database's when its peer is one of them, or, when
 * both counts are 0 (a bare port given, or a host that did not resolve), whatever its
 * peer. Only a socket on the database's port compares addresses: others pay nothing. */
const volatile u32 db_v4[DB_ADDRS_MAX] = {};
const volatile u32 db_v6[DB_ADDRS_MAX][4] = {};
const volatile u32 db_n_v4 = 0;
const volatile u32 db_n_v6 = 0;
/* Database Unix socket path (Postgres: DIR/.s.PGSQL.PORT), db_path_len 0: none. */
const volatile char db_path[DB_PATH_MAX] = {};
const volatile u32 db_path_len = 0;

/* Anonymous-inode files are told apart by their dentry name ("[eventfd]", ...): their
 * file_operations are static and usually absent from kallsyms, and they all share one
 * inode. First 8 bytes, little-endian. */
#define ANON_EVENTFD 0x6466746e6576655bULL /* "[eventfd" */
#define ANON_EVENTPOLL 0x6f70746e6576655bULL /* "[eventpo" */
#define ANON_IO_URING 0x6e6972755f6f695bULL /* "[io_urin" */
#define ANON_TIMERFD 0x646672656d69745bULL /* "[timerfd" */
#define ANON_INODE_FS_MAGIC 0x09041934

struct agg_key {
	char comm[16];
	u32 tgid;
	u16 nr;
	u8 cat;
	u8 kind;
};

struct agg_val {
	u64 count;
	u64 errors;
	u64 eagain;
	u64 total_ns;
	u64 bytes;
	u64 blocked_ns;
	u64 runq_ns;
	u64 idle_blocked_ns; /* the part of blocked_ns while the thread served no request */
	u64 hist[HIST_BUCKETS];
};

/* One entry of a CPU's row cache: process, thread name, call nr and category -> slot. */
struct slot_ref {
	u64 comm[2];
	u32 tgid;
	u16 nr;
	u8 cat;
	u8 valid;
	u32 slot;
	u32 pad;
};

struct row_cache {
	struct slot_ref e[SLOT_CACHE];
};

/* A syscall in progress: entered, not yet returned. */
struct call_state {
	u64 task; /* the caller's struct task_struct *; 0: no call */
	u64 enter_ts;
	u64 blocked_ns;
	u64 runq_ns;
	u32 nr;
	u32 flags;
	s32 fd; /* arg0 of an fd call, classified at exit */
	u8 cat;
	u8 idle; /* the thread served no request when the call began */
	u8 pad[2];
};

/* Per CPU: the call in progress, and whether the traced thread running here serves a
 * request ("serving": it has read from a client, or talked to the database, since it last
 * answered or closed a client). The flag moves to the thread's task storage when the
 * thread leaves the CPU and back when it returns, so calls read and update it here with
 * no task-storage lookup. Waits that begin while it is clear are a thread's idle time
 * (a pool worker waiting for work, a log writer between flushes, an event loop with
 * nothing in flight), reported apart from the request path. */
struct cpu_state {
	struct call_state call;
	u64 thread; /* the struct task_struct * `serving` belongs to; 0: none */
	u32 serving;
	u32 pad;
};

/* Per thread: its call while it is off its CPU, and its off-CPU interval. */
struct task_state {
	struct call_state call;
	u64 off_ts;
	u64 wake_ts;
	u8 preempted;
	u8 serving;
	u8 pad[6];
};

struct ring_state {
	u64 ts;
	u64 task; /* the submitter */
	char comm[16];
	u32 tgid;
	u8 opcode;
	u8 cat;
};

/* Traced processes besides targ_tgid, for user space: who forked them and which traced
 * tree (root tgid) they belong to. Entries stay after exit (rows name exited processes). */
struct proc_info {
	u32 ppid;
	u32 root;
};

struct log_key {
	u64 ino;
	u32 dev;
	u32 pad;
};

/* Counts of categories each epoll fd covers (network, database, logging, other). */
struct epoll_cover {
	s32 n[4];
};

/* The aggregates: rows are allocated once per (thread name, call, category, kind) in
 * agg_slots and counted per CPU in agg_arr. A call finds its row through the small
 * per-CPU cache cpu_rows, so the common case costs no hash lookup at all (a hash
 * lookup with this 20-byte key costs about 50 ns, a quarter of the per-syscall budget). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, AGG_SLOTS);
	__type(key, struct agg_key);
	__type(value, u32);
} agg_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, AGG_SLOTS);
	__type(key, u32);
	__type(value, struct agg_val);
} agg_arr SEC(".maps");

/* Next free agg_arr slot. */
u32 next_slot = 0;

/* The traced processes other than targ_tgid, as a direct-mapped table: slot
 * tgid % TGID_SLOTS holds SLOT_USED | tgid; a tgid whose slot is taken goes to tgid_more
 * and marks the slot SLOT_MORE. Every program tests one slot (one load) before anything
 * else, so untraced processes pay no hash lookup; user space fills it before attaching,
 * sched_process_fork adds children, sched_process_exit removes a process once its whole
 * thread group has exited (its pid cannot be reused before). */
#define TGID_SLOTS 8192
#define SLOT_USED (1U << 30)
#define SLOT_MORE (1U << 31)
#define SLOT_TGID (SLOT_USED - 1)
u32 tgid_set[TGID_SLOTS] = {};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, u32);
	__type(value, u8);
} tgid_more SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, u32);
	__type(value, struct proc_info);
} procs SEC(".maps");

/* The target's listening ports (host order, 0 ends the list): a scan of a few words,
 * cheaper than a hash lookup on every client-socket syscall. Filled by user space
 * before attach and by listen() here, both with compare-and-swap. */
u32 listen_port_list[MAX_LISTEN] = {};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NR_SYSCALLS);
	__type(key, u32);
	__type(value, u32);
} sys_class SEC(".maps");


struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, struct log_key);
	__type(value, u8);
} log_files SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, u64); /* struct sock * */
	__type(value, u8);
} db_unix_socks SEC(".maps");

/* What each epoll instance covers, keyed by its struct file * so that every fd number
 * of a dup'ed epoll (mio's Registry::try_clone) shares one entry. LRU: an entry is not
 * removed at close (another number may still refer to the file); epoll_create resets
 * the entry of a new file, so a recycled address starts empty. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, u64);
	__type(value, struct epoll_cover);
} epoll_sets SEC(".maps");

/* Sets that existed before the tracer attached, keyed by fd number (user space reads
 * them from /proc/PID/fdinfo): moved to epoll_sets at their first use. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, u32);
	__type(value, struct epoll_cover);
} epoll_seed SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, u64); /* struct io_kiocb * */
	__type(value, struct ring_state);
} ring_reqs SEC(".maps");

/* The call in progress on each CPU, as long as its thread stays on the CPU (most calls
 * return without leaving it): entry and exit then cost two array lookups instead of two
 * task-storage lookups. sched_switch moves the call to the thread's task storage when
 * the thread leaves the CPU inside it. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct cpu_state);
} cpu_call SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, struct row_cache);
} cpu_rows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct task_state);
} tstate SEC(".maps");

/* Events the maps could not hold (agg or ring_reqs full): reported, never hidden. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, u32);
	__type(value, u64);
} dropped SEC(".maps");

static __always_inline void note_drop(void);

static __always_inline bool traced_tgid(u32 tgid)
{
	if (tgid == targ_tgid)
		return true;
	if (!use_set)
		return false;
	u32 s = tgid_set[tgid & (TGID_SLOTS - 1)];
	if (s == (SLOT_USED | tgid) || s == (SLOT_MORE | SLOT_USED | tgid))
		return true;
	return (s & SLOT_MORE) && bpf_map_lookup_elem(&tgid_more, &tgid);
}

static __always_inline bool is_target(void)
{
	return traced_tgid(bpf_get_current_pid_tgid() >> 32);
}

static __always_inline void set_add(u32 tgid)
{
	u32 *s = &tgid_set[tgid & (TGID_SLOTS - 1)];
	u32 old = *s;
	if ((old & SLOT_USED) && (old & SLOT_TGID) == tgid)
		return;
	if (!(old & SLOT_USED) &&
	    __sync_val_compare_and_swap(s, old, old | SLOT_USED | tgid) == old)
		return;
	u8 one = 1;
	if (bpf_map_update_elem(&tgid_more, &tgid, &one, BPF_ANY)) {
		note_drop();
		return;
	}
	__sync_fetch_and_or(s, SLOT_MORE);
}

static __always_inline void set_remove(u32 tgid)
{
	u32 *s = &tgid_set[tgid & (TGID_SLOTS - 1)];
	u32 old = *s;
	if ((old & SLOT_USED) && (old & SLOT_TGID) == tgid)
		__sync_val_compare_and_swap(s, old, old & SLOT_MORE);
	if (old & SLOT_MORE)
		bpf_map_delete_elem(&tgid_more, &tgid);
}

static __always_inline u32 log2_ns(u64 v)
{
	u32 r = 0, s;
	s = (v > 0xFFFFFFFFULL) << 5; v >>= s; r |= s;
	s = (v > 0xFFFF) << 4; v >>= s; r |= s;
	s = (v > 0xFF) << 3; v >>= s; r |= s;
	s = (v > 0xF) << 2; v >>= s; r |= s;
	s = (v > 0x3) << 1; v >>= s; r |= s;
	r |= (v >> 1);
	return r;
}

static __always_inline void note_drop(void)
{
	u32 zero = 0;
	u64 *d = bpf_map_lookup_elem(&dropped, &zero);
	if (d)
		*d += 1;
}

/* The slot of key's row, allocated on first use; -1 when the slots are exhausted. */
static __always_inline s64 agg_slot(struct agg_key *key)
{
	u32 *s = bpf_map_lookup_elem(&agg_slots, key);
	if (s)
		return *s;
	u32 n = __sync_fetch_and_add(&next_slot, 1);
	if (n >= AGG_SLOTS) {
		note_drop();
		return -1;
	}
	/* Another CPU may allocate the same row at the same time: one insert wins and the
	 * loser's slot stays unused. */
	bpf_map_update_elem(&agg_slots, key, &n, BPF_NOEXIST);
	s = bpf_map_lookup_elem(&agg_slots, key);
	if (!s) {
		note_drop();
		return -1;
	}
	return *s;
}

static __always_inline struct agg_val *agg_at(s64 slot)
{
	if (slot < 0)
		return 0;
	u32 k = slot;
	return bpf_map_lookup_elem(&agg_arr, &k);
}

static __always_inline struct agg_val *agg_entry(struct agg_key *key)
{
	return agg_at(agg_slot(key));
}

/* agg_entry through this CPU's row cache. */
static __always_inline struct agg_val *agg_entry_cached(struct agg_key *key)
{
	u32 zero = 0;
	struct row_cache *rc = bpf_map_lookup_elem(&cpu_rows, &zero);
	if (!rc)
		return agg_entry(key);
	u64 c0 = 0, c1 = 0;
	__builtin_memcpy(&c0, key->comm, 8);
	__builtin_memcpy(&c1, key->comm + 8, 8);
	u32 i = (key->nr ^ ((u32)key->cat << 3) ^ (u32)(c0 >> 40) ^ (key->tgid << 2)) &
		(SLOT_CACHE - 1);
	struct slot_ref *r = &rc->e[i];
	if (r->valid && r->nr == key->nr && r->cat == key->cat && r->tgid == key->tgid &&
	    r->comm[0] == c0 && r->comm[1] == c1)
		return agg_at(r->slot);
	s64 slot = agg_slot(key);
	if (slot >= 0) {
		r->comm[0] = c0;
		r->comm[1] = c1;
		r->tgid = key->tgid;
		r->nr = key->nr;
		r->cat = key->cat;
		r->slot = slot;
		r->valid = 1;
	}
	return agg_at(slot);
}

static __always_inline bool is_listen_port(u32 port)
{
	for (int i = 0; i < MAX_LISTEN; i++) {
		u32 p = listen_port_list[i];
		if (p == 0)
			return false;
		if (p == port)
			return true;
	}
	return false;
}

static __always_inline void add_listen_port(u32 port)
{
	for (int i = 0; i < MAX_LISTEN; i++) {
		u32 p = listen_port_list[i];
		if (p == port)
			return;
		if (p == 0) {
			p = __sync_val_compare_and_swap(&listen_port_list[i], 0, port);
			if (p == 0 || p == port)
				return;
		}
	}
	note_drop(); /* more listening ports than MAX_LISTEN: the rest stay unknown */
}

static __always_inline void account(struct agg_val *v, s64 ret, u64 dur, bool bytes)
{
	v->count += 1;
	if (ret < 0) {
		if (ret == -EAGAIN)
			v->eagain += 1;
		else
			v->errors += 1;
	} else if (bytes) {
		v->bytes += ret;
	}
	v->total_ns += dur;
	u32 b = log2_ns(dur);
	if (b >= HIST_BUCKETS)
		b = HIST_BUCKETS - 1;
	v->hist[b] += 1;
}

static __always_inline bool db_v4_addr(u32 a)
{
	for (int i = 0; i < DB_ADDRS_MAX; i++) {
		if (i >= db_n_v4)
			return false;
		if (db_v4[i] == a)
			return true;
	}
	return false;
}

/* a0..a3: the 16 bytes of an IPv6 address as four words; ::ffff:a.b.c.d is a.b.c.d. */
static __always_inline bool db_v6_addr(u32 a0, u32 a1, u32 a2, u32 a3)
{
	if (a0 == 0 && a1 == 0 && a2 == bpf_htonl(0xffff))
		return db_v4_addr(a3);
	for (int i = 0; i < DB_ADDRS_MAX; i++) {
		if (i >= db_n_v6)
			return false;
		if (db_v6[i][0] == a0 && db_v6[i][1] == a1 && db_v6[i][2] == a2 &&
		    db_v6[i][3] == a3)
			return true;
	}
	return false;
}

/* Whether the database is recognised by its port alone (any peer address). */
static __always_inline bool db_any_addr(void)
{
	return db_n_v4 == 0 && db_n_v6 == 0;
}

/* The file's socket: private_data is a void * to the verifier, so cast it back to its
 * kernel type (bpf_core_cast: a free, read-only cast whose loads are fault-safe). */
static __always_inline struct sock *socket_sk(struct file *fp)
{
	struct file *f = bpf_core_cast(fp, struct file);
	struct socket *sock = bpf_core_cast(f->private_data, struct socket);
	return sock->sk;
}

/* What a file is, at this moment. fd is the number it has (1 and 2 matter), -1 if none.
 *
 * This runs on every fd syscall of the target, so it reads kernel memory with direct,
 * fault-safe loads through BTF-typed pointers (one instruction each) rather than
 * bpf_probe_read_kernel() helper calls, and reads a file's name only for anonymous
 * inodes (told apart from sockets and files by their superblock). */
/* The first 8 bytes of an anonymous-inode file's name ("[eventfd", ...); 0 for any other
 * file, whose name is not read (told apart by the superblock). f: a BTF-typed file. */
static __always_inline u64 anon_name_head(struct file *f)
{
	u64 head = 0;
	if (f->f_inode->i_sb->s_magic == ANON_INODE_FS_MAGIC)
		bpf_probe_read_kernel(&head, sizeof(head), f->f_path.dentry->d_name.name);
	return head;
}

static __always_inline u8 classify_file(struct file *fp, int fd)
{
	if (!fp)
		return CAT_NONE;
	struct file *f = bpf_core_cast(fp, struct file);
	struct inode *ino = f->f_inode;
	umode_t mode = ino->i_mode;
	if ((mode & S_IFMT) != S_IFSOCK) { /* client sockets, the hot case, skip this */
		u64 head = anon_name_head(f);
		if (head == ANON_EVENTFD || head == ANON_EVENTPOLL || head == ANON_IO_URING ||
		    head == ANON_TIMERFD)
			return CAT_EVENT_LOOP;
	}
	if ((mode & S_IFMT) == S_IFSOCK) {
		struct sock *sk = socket_sk(f);
		u16 family = sk->__sk_common.skc_family;
		if (family == AF_INET || family == AF_INET6) {
			if (db_port_be && sk->__sk_common.skc_dport == db_port_be) {
				struct sock_common *c = &sk->__sk_common;
				if (db_any_addr() ||
				    (family == AF_INET ? db_v4_addr(c->skc_daddr)
						       : db_v6_addr(c->skc_v6_daddr.in6_u.u6_addr32[0],
								    c->skc_v6_daddr.in6_u.u6_addr32[1],
								    c->skc_v6_daddr.in6_u.u6_addr32[2],
								    c->skc_v6_daddr.in6_u.u6_addr32[3])))
					return CAT_DATABASE;
			}
			u16 lport = sk->__sk_common.skc_num;
			/* Reset by its peer (or closed): the socket left the port's bind bucket
			 * and skc_num reads 0, but its source port is still there. */
			if (!lport)
				lport = __builtin_bswap16(
					bpf_core_cast(sk, struct inet_sock)->inet_sport);
			if (is_listen_port(lport))
				return CAT_NETWORK;
		} else if (family == AF_UNIX) {
			u64 key = (u64)sk;
			if (bpf_map_lookup_elem(&db_unix_socks, &key))
				return CAT_DATABASE;
		}
		/* A socket on fd 1/2 (journald, a log shipper) is still the log. */
		if (fd == 1 || fd == 2)
			return CAT_LOGGING;
		return CAT_NONE;
	}
	if ((mode & S_IFMT) == S_IFREG) {
		struct log_key lk = {};
		lk.ino = ino->i_ino;
		lk.dev = ino->i_sb->s_dev;
		if (bpf_map_lookup_elem(&log_files, &lk))
			return CAT_LOGGING;
	}
	/* pipe, tty, /dev/null or a file on stdout/stderr: the log */
	if (fd == 1 || fd == 2)
		return CAT_LOGGING;
	return CAT_NONE;
}

static __always_inline struct file *fd_file(struct task_struct *task, int fd)
{
	if (fd < 0)
		return 0;
	struct fdtable *fdt = task->files->fdt;
	if ((unsigned int)fd >= fdt->max_fds)
		return 0;
	/* The verifier allows no variable index into a BTF-typed array, so take the slot's
	 * address as a number and cast it to a kernel struct that starts with a struct file *
	 * (struct kiocb: ki_filp): one fault-safe load instead of a helper call. */
	u64 slot = (u64)fdt->fd + (u64)(unsigned int)fd * sizeof(struct file *);
	return bpf_core_cast((void *)slot, struct kiocb)->ki_filp;
}

static __always_inline bool is_unix_socket(struct file *f)
{
	if (!f)
		return false;
	f = bpf_core_cast(f, struct file);
	if ((f->f_inode->i_mode & S_IFMT) != S_IFSOCK)
		return false;
	return socket_sk(f)->__sk_common.skc_family == AF_UNIX;
}

/* An io_uring instance (its completions make it readable). */
static __always_inline bool is_io_uring(struct file *fp)
{
	return fp && anon_name_head(bpf_core_cast(fp, struct file)) == ANON_IO_URING;
}

/* An fd call whose fd outlives it is classified at its exit, where the call has just
 * brought the file and socket into this CPU's cache (at the entry they cost misses).
 * close, connect and listen change what the fd is: those are classified at the entry. */
static __always_inline bool classified_at_exit(u32 cls)
{
	return (cls & SC_FD0) && !(cls & (SC_CLOSE | SC_CONNECT | SC_LISTEN));
}

static __always_inline u8 classify_fd(struct task_struct *task, int fd)
{
	return classify_file(fd_file(task, fd), fd);
}

static __always_inline int cover_slot(u8 cat)
{
	switch (cat) {
	case CAT_NETWORK: return 0;
	case CAT_DATABASE: return 1;
	case CAT_LOGGING: return 2;
	case CAT_EVENT_LOOP: return -1; /* wake-up fds do not change what a wait is for */
	default: return 3;
	}
}

/* The set of epoll fd epfd: by its file, else (first use of a set that existed before
 * the tracer attached) from the seed, which it then moves to epoll_sets. */
static __always_inline struct epoll_cover *epoll_set(struct task_struct *task, u32 epfd)
{
	u64 key = (u64)fd_file(task, (int)epfd);
	if (!key)
		return 0;
	struct epoll_cover *c = bpf_map_lookup_elem(&epoll_sets, &key);
	if (c)
		return c;
	struct epoll_cover *seed = bpf_map_lookup_elem(&epoll_seed, &epfd);
	if (!seed)
		return 0;
	struct epoll_cover copy = *seed;
	bpf_map_delete_elem(&epoll_seed, &epfd);
	bpf_map_update_elem(&epoll_sets, &key, &copy, BPF_NOEXIST);
	return bpf_map_lookup_elem(&epoll_sets, &key);
}

/* An epoll wait is the database's (or the log's) when every fd it covers is; a wait
 * that covers client sockets, or a mix, is the event loop's. */
static __always_inline u8 epoll_wait_cat(struct task_struct *task, u32 epfd)
{
	struct epoll_cover *c = epoll_set(task, epfd);
	if (!c)
		return CAT_EVENT_LOOP;
	if (c->n[0] > 0 || c->n[3] > 0)
		return CAT_EVENT_LOOP;
	if (c->n[1] > 0 && c->n[2] <= 0)
		return CAT_DATABASE;
	if (c->n[2] > 0 && c->n[1] <= 0)
		return CAT_LOGGING;
	return CAT_EVENT_LOOP;
}

static __always_inline void epoll_ctl_note(struct task_struct *task, u32 epfd, int op, int fd)
{
	/* EPOLL_CTL_ADD = 1, EPOLL_CTL_DEL = 2 */
	if (op != 1 && op != 2)
		return;
	struct file *f = fd_file(task, fd);
	u8 cat = classify_file(f, fd);
	/* A Unix socket that is not the database's is a wake-up channel here (tokio's
	 * signal driver registers one in every runtime's epoll): like an eventfd, it does
	 * not change what a wait is for. */
	if (cat == CAT_NONE && is_unix_socket(f))
		return;
	int slot = cover_slot(cat);
	/* A ring in the set: the wait is also for its completions (tokio-uring waits for the
	 * ring's client I/O and its database sockets in one epoll), whatever they are for. */
	if (cat == CAT_EVENT_LOOP && is_io_uring(f))
		slot = 3;
	if (slot < 0 || slot > 3)
		return;
	struct epoll_cover *c = epoll_set(task, epfd);
	if (!c) {
		if (op != 1)
			return;
		u64 key = (u64)fd_file(task, (int)epfd);
		if (!key)
			return;
		struct epoll_cover zero = {};
		bpf_map_update_elem(&epoll_sets, &key, &zero, BPF_NOEXIST);
		c = bpf_map_lookup_elem(&epoll_sets, &key);
		if (!c)
			return;
	}
	__sync_fetch_and_add(&c->n[slot], op == 1 ? 1 : -1);
}

/* connect(): the socket has no peer yet, so read the address the caller passes. */
static __always_inline u8 connect_cat(struct task_struct *task, int fd, const void *uaddr)
{
	u16 family = 0;
	if (bpf_probe_read_user(&family, sizeof(family), uaddr))
		return CAT_NONE;
	if (family == AF_INET || family == AF_INET6) {
		u16 port = 0; /* sin_port and sin6_port sit at offset 2, network order */
		bpf_probe_read_user(&port, sizeof(port), uaddr + 2);
		if (!db_port_be || port != db_port_be)
			return CAT_NONE;
		if (db_any_addr())
			return CAT_DATABASE;
		bool db;
		if (family == AF_INET) { /* sin_addr at 4 */
			u32 a = 0;
			bpf_probe_read_user(&a, sizeof(a), uaddr + 4);
			db = db_v4_addr(a);
		} else { /* sin6_addr at 8 */
			u32 a[4] = {};
			bpf_probe_read_user(a, sizeof(a), uaddr + 8);
			db = db_v6_addr(a[0], a[1], a[2], a[3]);
		}
		return db ? CAT_DATABASE : CAT_NONE;
	}
	if (family == AF_UNIX && db_path_len) {
		char path[DB_PATH_MAX] = {};
		bpf_probe_read_user(path, sizeof(path), uaddr + 2);
		for (int i = 0; i < DB_PATH_MAX; i++) {
			if (i >= db_path_len)
				break;
			if (path[i] != db_path[i])
				return CAT_NONE;
		}
		struct file *f = fd_file(task, fd);
		if (f) {
			u64 key = (u64)socket_sk(f);
			u8 one = 1;
			bpf_map_update_elem(&db_unix_socks, &key, &one, BPF_ANY);
		}
		return CAT_DATABASE;
	}
	return CAT_NONE;
}

/* Updates the serving flag of the thread on this CPU after a call (or a ring operation it
 * submitted) on a client socket or the database: data read from a client, or any exchange
 * with the database, means a request is in hand; a response written (or the client
 * closed) means it has been answered. */
static __always_inline void note_serving(struct cpu_state *cs, struct task_struct *task, u8 cat,
					 u32 fl, s64 ret)
{
	if (cs->thread != (u64)task) { /* running since before the trace: nothing known */
		cs->thread = (u64)task;
		cs->serving = 0;
	}
	if (cat == CAT_DATABASE) {
		if ((fl & (SC_IN | SC_OUT)) && ret > 0)
			cs->serving = 1;
	} else if (fl & SC_IN) {
		if (ret > 0)
			cs->serving = 1;
	} else if (fl & (SC_OUT | SC_CLOSE)) {
		if (ret != -EAGAIN)
			cs->serving = 0;
	}
}

SEC("tp_btf/sys_enter")
int BPF_PROG(sys_enter, struct pt_regs *regs, long id)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!traced_tgid(tgid))
		return 0;
	if (id < 0 || id >= NR_SYSCALLS)
		return 0;
	u32 nr = id;
	u32 *clsp = bpf_map_lookup_elem(&sys_class, &nr);
	u32 cls = clsp ? *clsp : CAT_OTHER;
	u8 cat = cls & SC_CAT_MASK;
	struct task_struct *task = bpf_get_current_task_btf();
	u64 a0 = regs->di;

	if (cls & SC_EPOLL_WAIT) {
		cat = epoll_wait_cat(task, (u32)a0);
	} else if (cls & SC_EPOLL_CTL) {
		epoll_ctl_note(task, (u32)a0, (int)regs->si, (int)regs->dx);
	} else if (cls & SC_POLL) {
		if (regs->si == 1) {
			int pfd = -1; /* struct pollfd { int fd; short events, revents; } */
			bpf_probe_read_user(&pfd, sizeof(pfd), (void *)a0);
			u8 c = classify_fd(task, pfd);
			if (c != CAT_NONE)
				cat = c;
		}
	} else if ((cls & SC_FD0) && !classified_at_exit(cls)) {
		u8 c;
		if (cls & SC_CONNECT)
			c = connect_cat(task, (int)a0, (void *)regs->si);
		else
			c = classify_fd(task, (int)a0);
		if (c != CAT_NONE)
			cat = c;
		if (cls & SC_CLOSE) {
			if (c == CAT_DATABASE) {
				struct file *f = fd_file(task, (int)a0);
				if (f) {
					u64 key = (u64)socket_sk(f);
					bpf_map_delete_elem(&db_unix_socks, &key);
				}
			}
		}
		if (cls & SC_LISTEN) {
			struct file *f = fd_file(task, (int)a0);
			if (f && ((BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) == S_IFSOCK)) {
				u16 lport = BPF_CORE_READ(socket_sk(f), __sk_common.skc_num);
				if (lport)
					add_listen_port(lport);
				cat = CAT_NETWORK;
			}
		}
	}

	if (cls & SC_NORET) {
		struct agg_key key = {};
		bpf_get_current_comm(key.comm, sizeof(key.comm));
		key.tgid = tgid;
		key.nr = nr;
		key.cat = cat;
		key.kind = KIND_SYSCALL;
		struct agg_val *v = agg_entry(&key);
		if (v)
			account(v, 0, 0, false);
		return 0;
	}

	u32 zero = 0;
	struct cpu_state *c = bpf_map_lookup_elem(&cpu_call, &zero);
	if (!c)
		return 0;
	c->call.enter_ts = bpf_ktime_get_ns();
	c->call.fd = (int)a0;
	c->call.nr = nr;
	c->call.flags = cls;
	c->call.cat = cat;
	c->call.idle = !(c->thread == (u64)task && c->serving);
	c->call.blocked_ns = 0;
	c->call.runq_ns = 0;
	c->call.task = (u64)task; /* last: the record is whole once it names its thread */
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(sys_exit, struct pt_regs *regs, long ret)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!traced_tgid(tgid))
		return 0;
	struct task_struct *task = bpf_get_current_task_btf();
	u32 zero = 0;
	struct cpu_state *cs = bpf_map_lookup_elem(&cpu_call, &zero);
	if (!cs)
		return 0;
	struct call_state *st = &cs->call;
	if (st->task != (u64)task) { /* the thread left its CPU during the call */
		struct task_state *ts = bpf_task_storage_get(&tstate, task, 0, 0);
		if (!ts || ts->call.task != (u64)task)
			return 0;
		st = &ts->call;
	}
	/* Copy the call out before releasing its slot: these programs run preemptible
	 * (migration disabled only), and another thread's entry on this CPU may reuse it. */
	struct call_state call = *st;
	st->task = 0;
	u64 dur = bpf_ktime_get_ns() - call.enter_ts;
	u8 cat = call.cat;
	u32 fl = call.flags;
	if (classified_at_exit(fl)) {
		u8 c = classify_fd(task, call.fd);
		if (c != CAT_NONE)
			cat = c;
	}
	if ((fl & SC_RET_FD) && ret >= 0) {
		u8 c = classify_fd(task, (int)ret);
		if (c != CAT_NONE)
			cat = c;
	}
	if ((fl & SC_EPOLL_NEW) && ret >= 0) {
		u64 key = (u64)fd_file(task, (int)ret);
		struct epoll_cover zero = {};
		if (key)
			bpf_map_update_elem(&epoll_sets, &key, &zero, BPF_ANY);
	}
	struct agg_key key = {};
	__builtin_memcpy(key.comm, task->comm, sizeof(key.comm));
	key.tgid = tgid;
	key.nr = call.nr;
	key.cat = cat;
	key.kind = KIND_SYSCALL;
	struct agg_val *v = agg_entry_cached(&key);
	if (!v)
		return 0;
	account(v, ret, dur, fl & SC_BYTES);
	if (call.blocked_ns | call.runq_ns) {
		v->blocked_ns += call.blocked_ns;
		v->runq_ns += call.runq_ns;
		/* Waiting for the database is always a request's wait. */
		if (call.idle && cat != CAT_DATABASE)
			v->idle_blocked_ns += call.blocked_ns;
	}
	if (cat == CAT_NETWORK || cat == CAT_DATABASE)
		note_serving(cs, task, cat, fl, ret);
	return 0;
}

/* Off-CPU: switch-out time, then (if it slept) wake-up time, then switch-in. Blocked is
 * switch-out -> wake-up; run-queue delay is wake-up (or a preempting switch-out) ->
 * switch-in. Inside a syscall both go to that syscall; outside, to a KIND_SCHED entry.
 * The serving flag travels with the thread: CPU -> task storage at switch-out, back at
 * switch-in. */
SEC("tp_btf/sched_switch")
int BPF_PROG(sched_switch, bool preempt, struct task_struct *prev, struct task_struct *next,
	     unsigned int prev_state)
{
	u64 now = 0;
	u32 zero = 0;
	if (traced_tgid(prev->tgid)) {
		struct task_state *st = bpf_task_storage_get(&tstate, prev, 0,
							     BPF_LOCAL_STORAGE_GET_F_CREATE);
		struct cpu_state *c = bpf_map_lookup_elem(&cpu_call, &zero);
		if (st && c) {
			if (c->call.task == (u64)prev) { /* leaving inside a call: take it along */
				st->call = c->call;
				c->call.task = 0;
			}
			if (c->thread == (u64)prev)
				st->serving = c->serving;
			c->thread = 0;
		}
		if (st) {
			now = bpf_ktime_get_ns();
			st->off_ts = now;
			st->wake_ts = 0;
			st->preempted = prev_state == 0; /* TASK_RUNNING: still runnable */
		}
	}
	if (traced_tgid(next->tgid)) {
		struct task_state *st = bpf_task_storage_get(&tstate, next, 0, 0);
		struct cpu_state *c = bpf_map_lookup_elem(&cpu_call, &zero);
		if (c) {
			c->thread = (u64)next;
			c->serving = st ? st->serving : 0;
		}
		if (!st || !st->off_ts)
			return 0;
		if (!now)
			now = bpf_ktime_get_ns();
		u64 blocked = 0, runq = 0;
		if (st->preempted) {
			runq = now - st->off_ts;
		} else if (st->wake_ts > st->off_ts && st->wake_ts <= now) {
			blocked = st->wake_ts - st->off_ts;
			runq = now - st->wake_ts;
		} else {
			blocked = now - st->off_ts;
		}
		st->off_ts = 0;
		if (st->call.task) {
			st->call.blocked_ns += blocked;
			st->call.runq_ns += runq;
		} else {
			struct agg_key key = {};
			__builtin_memcpy(key.comm, next->comm, sizeof(key.comm));
			key.tgid = next->tgid;
			key.cat = CAT_OTHER;
			key.kind = KIND_SCHED;
			struct agg_val *v = agg_entry(&key);
			if (v) {
				v->count += 1;
				v->blocked_ns += blocked;
				v->runq_ns += runq;
				if (!st->serving)
					v->idle_blocked_ns += blocked;
			}
		}
	}
	return 0;
}

SEC("tp_btf/sched_wakeup")
int BPF_PROG(sched_wakeup, struct task_struct *p)
{
	if (!traced_tgid(p->tgid))
		return 0;
	struct task_state *st = bpf_task_storage_get(&tstate, p, 0, 0);
	if (st && st->off_ts && !st->wake_ts)
		st->wake_ts = bpf_ktime_get_ns();
	return 0;
}

/* A traced process forks: the child is traced too (follow_forks), in its parent's tree.
 * Threads (same tgid) are traced already. */
SEC("tp_btf/sched_process_fork")
int BPF_PROG(sched_process_fork, struct task_struct *parent, struct task_struct *child)
{
	if (!follow_forks)
		return 0;
	u32 ptgid = parent->tgid, ctgid = child->tgid;
	if (ctgid == ptgid || !traced_tgid(ptgid))
		return 0;
	struct proc_info *pp = bpf_map_lookup_elem(&procs, &ptgid);
	struct proc_info ci = {};
	ci.ppid = ptgid;
	ci.root = pp ? pp->root : targ_tgid;
	if (bpf_map_update_elem(&procs, &ctgid, &ci, BPF_ANY))
		note_drop();
	set_add(ctgid);
	return 0;
}

/* The last thread of a traced process exits: forget its tgid (which the kernel may hand
 * to another process once the parent has reaped this one). */
SEC("tp_btf/sched_process_exit")
int BPF_PROG(sched_process_exit, struct task_struct *p)
{
	if (!use_set)
		return 0;
	u32 tgid = p->tgid;
	if (tgid == targ_tgid || !traced_tgid(tgid))
		return 0;
	if (p->signal->live.counter != 0)
		return 0;
	set_remove(tgid);
	return 0;
}

/* Direction of a ring opcode, as SC_IN / SC_OUT / SC_CLOSE. */
static __always_inline u32 ring_op_dir(u8 op)
{
	switch (op) {
	case 1: case 4: case 10: case 22: case 27: case 49: case 60:
		return SC_IN;
	case 2: case 5: case 9: case 23: case 26: case 34: case 47: case 48: case 61:
		return SC_OUT;
	case 19:
		return SC_CLOSE;
	}
	return 0;
}

/* Ring operations: submit_req (opcode) -> file_get (fd, not for registered files) ->
 * complete (res). Keyed by the request pointer, which the kernel reuses: the state is
 * removed at the last completion. Completions may run in any context (io-wq workers,
 * task work, interrupts), so they are matched by pointer, not by tgid. */
SEC("tp_btf/io_uring_submit_req")
int BPF_PROG(io_uring_submit_req, struct io_kiocb *req)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!traced_tgid(tgid))
		return 0;
	struct ring_state rs = {};
	rs.ts = bpf_ktime_get_ns();
	rs.task = (u64)bpf_get_current_task_btf();
	rs.tgid = tgid;
	rs.opcode = BPF_CORE_READ(req, opcode);
	rs.cat = CAT_NONE;
	bpf_get_current_comm(rs.comm, sizeof(rs.comm));
	u64 key = (u64)req;
	if (bpf_map_update_elem(&ring_reqs, &key, &rs, BPF_ANY))
		note_drop();
	return 0;
}

SEC("tp_btf/io_uring_file_get")
int BPF_PROG(io_uring_file_get, struct io_kiocb *req, int fd)
{
	u64 key = (u64)req;
	struct ring_state *rs = bpf_map_lookup_elem(&ring_reqs, &key);
	if (!rs)
		return 0;
	rs->cat = classify_fd(bpf_get_current_task_btf(), fd);
	return 0;
}

static __always_inline bool ring_op_bytes(u8 op)
{
	switch (op) {
	case 1: case 2: case 4: case 5: case 9: case 10: case 22: case 23:
	case 26: case 27: case 30: case 47: case 48: case 49: case 60: case 61:
		return true;
	}
	return false;
}

SEC("tp_btf/io_uring_complete")
int BPF_PROG(io_uring_complete, struct io_ring_ctx *ring, void *req, struct io_uring_cqe *cqe)
{
	u64 key = (u64)req;
	struct ring_state *rs = bpf_map_lookup_elem(&ring_reqs, &key);
	if (!rs)
		return 0;
	s32 res = BPF_CORE_READ(cqe, res);
	u32 flags = BPF_CORE_READ(cqe, flags);
	u8 cat = rs->cat;
	if (cat == CAT_NONE) /* registered file, or fd-less op: look at the request's file */
		cat = classify_file(BPF_CORE_READ((struct io_kiocb *)req, file), -1);
	if (cat == CAT_NONE)
		cat = CAT_OTHER;
	struct agg_key k = {};
	__builtin_memcpy(k.comm, rs->comm, sizeof(k.comm));
	k.tgid = rs->tgid;
	k.nr = rs->opcode;
	k.cat = cat;
	k.kind = KIND_RING;
	u64 dur = bpf_ktime_get_ns() - rs->ts;
	struct agg_val *v = agg_entry(&k);
	if (v)
		account(v, res, dur, ring_op_bytes(rs->opcode));
	/* Completed in its submitter's own context (task work, the common case with
	 * COOP_TASKRUN): the submitter's serving flag follows, as for a syscall. */
	struct task_struct *cur = bpf_get_current_task_btf();
	if ((cat == CAT_NETWORK || cat == CAT_DATABASE) && rs->task == (u64)cur) {
		u32 zero = 0;
		struct cpu_state *cs = bpf_map_lookup_elem(&cpu_call, &zero);
		if (cs)
			note_serving(cs, cur, cat, ring_op_dir(rs->opcode), res);
	}
	if (!(flags & IORING_CQE_F_MORE))
		bpf_map_delete_elem(&ring_reqs, &key);
	return 0;
}
