/* The few kernel types the tracer's BPF program reads, declared by hand.
 *
 * Every struct carries preserve_access_index, so clang records each field access as a
 * CO-RE relocation and libbpf rewrites the offsets at load time against the running
 * kernel's BTF (/sys/kernel/btf/vmlinux). Only the fields we read are declared; their
 * order and the struct sizes here do not matter. Fields that sit inside anonymous
 * unions in the real kernel (sock_common's ports) are matched by name by libbpf.
 *
 * This replaces a generated vmlinux.h, so the build needs no bpftool.
 * x86_64 only: struct pt_regs uses x86_64 register names.
 */
#ifndef TRACER_CORE_H
#define TRACER_CORE_H

typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef unsigned long long __u64;
typedef signed char __s8;
typedef short __s16;
typedef int __s32;
typedef long long __s64;
typedef __u16 __be16;
typedef __u32 __be32;
typedef __u32 __wsum;
typedef __u8 u8;
typedef __u16 u16;
typedef __u32 u32;
typedef __u64 u64;
typedef __s32 s32;
typedef __s64 s64;
typedef _Bool bool;
#define true 1
#define false 0
typedef int pid_t;
typedef __u32 dev_t;
typedef unsigned short umode_t;

enum {
	BPF_ANY = 0,
	BPF_NOEXIST = 1,
	BPF_EXIST = 2,
};

enum bpf_map_type {
	BPF_MAP_TYPE_HASH = 1,
	BPF_MAP_TYPE_ARRAY = 2,
	BPF_MAP_TYPE_PERCPU_ARRAY = 6,
	BPF_MAP_TYPE_LRU_HASH = 9,
	BPF_MAP_TYPE_TASK_STORAGE = 29,
};

enum {
	BPF_F_NO_PREALLOC = 1,
};

enum {
	BPF_LOCAL_STORAGE_GET_F_CREATE = 1,
};

struct pt_regs {
	unsigned long r10;
	unsigned long r9;
	unsigned long r8;
	unsigned long dx;
	unsigned long si;
	unsigned long di;
} __attribute__((preserve_access_index));

struct super_block {
	dev_t s_dev;
	unsigned long s_magic;
} __attribute__((preserve_access_index));

struct inode {
	umode_t i_mode;
	struct super_block *i_sb;
	unsigned long i_ino;
} __attribute__((preserve_access_index));

struct file_operations;

struct qstr {
	const unsigned char *name;
} __attribute__((preserve_access_index));

struct dentry {
	struct qstr d_name;
} __attribute__((preserve_access_index));

struct path {
	struct dentry *dentry;
} __attribute__((preserve_access_index));

struct file {
	struct path f_path;
	const struct file_operations *f_op;
	void *private_data;
	struct inode *f_inode;
} __attribute__((preserve_access_index));

/* Only for its first member: a struct file * at offset 0 (see fd_file). */
struct kiocb {
	struct file *ki_filp;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

typedef struct {
	int counter;
} atomic_t;

struct signal_struct {
	atomic_t live; /* threads of the group not yet exiting: 0 once the group is dead */
} __attribute__((preserve_access_index));

struct task_struct {
	pid_t pid;
	pid_t tgid;
	char comm[16];
	struct files_struct *files;
	struct signal_struct *signal;
} __attribute__((preserve_access_index));

/* The kernel's in6_addr is a union of views of its 16 bytes, in network order. */
struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__be32 u6_addr32[4];
	} in6_u;
} __attribute__((preserve_access_index));

/* The peer's address: skc_daddr (IPv4, inside anonymous unions in the kernel) or
 * skc_v6_daddr (IPv6, which holds ::ffff:a.b.c.d for an IPv4 peer of a dual-stack
 * socket). */
struct sock_common {
	__be32 skc_daddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

/* The socket's own port also lives here, in network order: a connection torn down by a
 * reset (tcp_done -> inet_put_port) has skc_num zeroed, but keeps inet_sport. */
struct inet_sock {
	struct sock sk;
	__be16 inet_sport;
} __attribute__((preserve_access_index));

struct socket {
	struct sock *sk;
} __attribute__((preserve_access_index));

struct io_kiocb {
	struct file *file;
	__u8 opcode;
} __attribute__((preserve_access_index));

struct io_ring_ctx;

struct io_uring_cqe {
	__u64 user_data;
	__s32 res;
	__u32 flags;
} __attribute__((preserve_access_index));

#endif
