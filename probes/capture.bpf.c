// sysdream capture: per-thread chunks of syscall ids, one ring-buffer record per chunk.
//
// A thread's open chunk lives in a per-CPU slot while the thread runs there, and is
// sent when the thread leaves the CPU. The per-syscall path then touches only per-CPU
// arrays (inlined lookups); per-thread task storage (filter verdict, sequence number)
// is consulted once per switch-in and once per record, not once per syscall. What a
// record says of its thread (tgid, tid, comm, cgroup) is also taken once per switch-in.
// Helper calls that the JIT does not inline cost 15-55 ns each on the reference machine
// (more than everything else on the path), so the common path makes none: the slot's
// owner is the thread's saved user registers (sys_enter's first argument; they sit at
// the top of the thread's own kernel stack, so the address is unique among live
// threads), and the age check reads jiffies, which the JIT inlines. The clock is read
// once per chunk.
//
// Compiled by bcc with these -D settings from probes/capture.py:
//   CHUNK_W       syscall ids per record (power of two, default 64)
//   AGE_JIFFIES   a chunk this many jiffies old is flushed (1 s by default, converted
//                 with the running kernel's CONFIG_HZ)
//   RINGBUF_PAGES ring buffer size in pages (power of two)
//   WAKE_EVERY    wake the reader once per this many records per CPU
//   STRICT_COMPAT 1: tell each syscall's table apart (int 0x80 from 64-bit code), at a
//                 register read per syscall; 0 (default): once per switch-in
//   CONTEXT       1: process context records (below) into the `procs` ring (capture.py
//                 sets it when the kernel's BTF gives the offsets; 0 leaves them out)
//   CTX_PAGES     the context ring buffer's size in pages (power of two)
//   FILTER_MAX    entries per filter map (probes/filters.py)
//   OFF_*         field offsets of the running kernel's structures, from its BTF
//                 (probes/btf.py); -1 where the kernel lacks the field
//
// Process context. Alerts must name the program, its user, its parent and its cgroup
// even when the process has exited before anyone looks at /proc. So the kernel says it,
// once per process and not per syscall: a CTX_NEW record at a process's first syscall
// since the program loaded (a new child, or a process older than the program), a CTX_EXEC
// record when it executes a new program, and a CTX_EXIT record when it ends. They go into
// their own ring buffer (`procs`) so the chunk path and its record layout are untouched.
// The structure fields are read at the running kernel's offsets (OFF_*, from BTF): the
// headers bcc compiles against need not be the running kernel's.
// The reader polls on a timer, so records are submitted without a wakeup:
// wakeups, not chunking, are the expensive part of kernel-to-user transport.
//
// Acts (ACTS=1, with CONTEXT): the arguments where behaviour lives, one `act_rec` per
// file written or created, sensitive file read, network peer, id change, ptrace, mount,
// module load, bpf call, memfd and exec, into their own ring buffer (`acts`). The
// per-syscall path pays one range test of the syscall number (ACT_MASK*, constants) and
// nothing else; the few numbers that pass tail-call `note_act`, which reads the
// arguments. Reads of user memory cannot fault pages in here: a path that is not
// resident is sent empty with ACT_FAULT, never dropped. Only native (64-bit x86) calls
// are read; a compat thread's acts are not (its chunk records still carry every call).

#include <linux/sched.h>

#ifndef CHUNK_W
#define CHUNK_W 64
#endif
#ifndef AGE_JIFFIES
#define AGE_JIFFIES 100
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 1024
#endif
#ifndef WAKE_EVERY
#define WAKE_EVERY 512
#endif
#ifndef STRICT_COMPAT
#define STRICT_COMPAT 0
#endif
#ifndef CONTEXT
#define CONTEXT 0
#endif
#ifndef CTX_PAGES
#define CTX_PAGES 512
#endif
#ifndef FILTER_MAX
#define FILTER_MAX 1024
#endif
#ifndef EXCLUDE_EXES
#define EXCLUDE_EXES 0
#endif
#ifndef ACTS
#define ACTS 0
#endif
#ifndef ACT_PAGES
#define ACT_PAGES 256
#endif
#ifndef INIT_USER_NS
#define INIT_USER_NS 0xEFFFFFFD     // PROC_USER_INIT_INO: the initial user namespace
#endif
#ifndef INIT_MNT_NS
#define INIT_MNT_NS 0               // the initial mount namespace's inode (capture.py)
#endif
#if ACTS && !CONTEXT
#error ACTS needs CONTEXT (the kernel offsets)
#endif
#if ACTS && !defined(CONFIG_X86_64)
#undef ACTS
#define ACTS 0                      // the syscall numbers below are x86_64's
#endif
#define ARGS_LEN 256
#define FILENAME_LEN 256
#define EXE_NAME_LEN 64
#define PATH_DEPTH 16           // path components of an exec'd file, innermost first
#define PATH_NAME 48

// Why a record was sent (bit set in chunk_rec.flags).
#define REC_FULL  0x01  // the chunk filled up
#define REC_EXEC  0x02  // the thread called exec: comm/exe change after this record
#define REC_EXIT  0x04  // the thread exited: nothing follows
#define REC_AGE   0x08  // the oldest syscall in the chunk reached AGE_JIFFIES
#define REC_SLEEP 0x10  // the thread went to sleep with a partial chunk
#define REC_SWITCH 0x20 // preempted or migrated with a partial chunk, or (strict_compat)
                        // its next syscall uses the other table
#define REC_COMPAT 0x40 // a 32-bit thread on a 64-bit kernel: the ids are compat numbers

// The record layout. probes/layout.py mirrors it as a numpy dtype; a test
// checks size and offsets against this compiled program.
struct chunk_rec {
    u64 first_ns;       // CLOCK_MONOTONIC ns of the first syscall in the chunk
    u64 last_ns;        // ... and when the record was sent (at or after the last one)
    u64 cgroup_id;
    u32 tgid;
    u32 tid;
    u32 seq;            // per-thread record sequence number, from 0
    u16 count;          // valid entries in ids[]
    u16 flags;          // REC_* reasons
    char comm[16];      // comm when the thread last came onto the CPU or exec'd
    u16 ids[CHUNK_W];   // syscall numbers, in order
};

// Counters, per CPU (kept in the CPU's slot, so one lookup serves both), summed
// exactly by user space. Every sys_enter lands in exactly one of filtered, traced and
// lost_nostorage, so user space derives "seen" from those three.
struct counters {
    u64 filtered;           // syscalls of threads the filters exclude (the daemon, ...)
    u64 traced;             // syscalls of traced threads: emitted + lost + still in chunks
    u64 emitted_records;
    u64 emitted_syscalls;   // syscalls carried by emitted records
    u64 lost_records;       // ring buffer full: records dropped
    u64 lost_syscalls;      // ... and the syscalls they carried
    u64 lost_nostorage;     // no per-thread storage could be allocated
    u64 unwoken;            // records since this CPU last woke the reader (not a count)
    u64 ctx_records;        // context records emitted
    u64 ctx_lost;           // ... and lost to a full context ring buffer
    u64 act_records;        // act records emitted
    u64 act_lost;           // ... and lost to a full acts ring buffer
};

// Filters, set by user space. A thread is traced unless it belongs to the daemon,
// matches an exclude map, or misses an include kind that has entries. Each filter map
// (BPF_HASH, further down) is a row of probes/filters.py, named by its key; a row's
// `switch` names its byte here.
struct filter_cfg {
    u32 generation;         // bumped by user space on every change; 0 is never used
    u32 self_tgid;
    u8 include_pid;
    u8 include_comm;
    u8 include_cgroup;
    u8 exclude_exe;         // exclude_exes has entries: read the executable's inode
};

struct comm_key {
    char comm[16];
};

// An executable file, as the kernel knows it: the device of its filesystem (the
// kernel's dev_t encoding, major << 20 | minor) and its inode number.
struct exe_key {
    u64 ino;
    u32 dev;
    u32 _pad;
};

// Context record kinds, and what they say of the executable (proc_rec.flags).
#define CTX_NEW  1      // a process's first syscall since the program loaded
#define CTX_EXEC 2      // the process executed a new program (the record describes it)
#define CTX_EXIT 3      // the process (its thread-group leader) exited
#define EXE_MEMFD      0x01  // the executable is a memfd (fileless)
#define EXE_DELETED    0x02  // ... a file with no name left (unlinked)
#define EXE_WRITABLE   0x04  // ... on a mount that is not read-only
#define ARGS_TRUNCATED 0x08  // argv was longer than ARGS_LEN bytes
#define CTX_NO_MM      0x10  // no user memory (exe and argv unknown)
#define PATH_CUT       0x20  // the path has more than PATH_DEPTH components (or a mount
                             // could not be crossed): its outer part is missing
#define EXE_FOREIGN_MNT 0x40 // the executable's mount is not in the initial mount namespace
#define EXE_USERNS_MNT  0x80 // ... and belongs to a namespace owned by a user namespace other
                             // than the initial one (mounted without real privilege)
#define TASK_FOREIGN_MNTNS 0x100 // the process is not in the initial mount namespace
#define STDIN_INET     0x200 // (exec) descriptor 0 is an IPv4 or IPv6 socket
#define STDOUT_INET    0x400 // (exec) descriptor 1 is one

// One process context record. probes/layout.py mirrors it (context_dtype).
struct proc_rec {
    u64 ns;                 // CLOCK_MONOTONIC ns of the event
    u64 start_ns;           // the process's start (its leader's, CLOCK_MONOTONIC ns):
                            // with tgid, the process's key (a pid reused is another key)
    u64 parent_start_ns;    // the parent's start: its key with ppid
    u64 cgroup_id;
    u64 exe_ino;
    u32 kind;               // CTX_*
    u32 tgid;
    u32 tid;
    u32 ppid;               // the parent's tgid
    u32 uid;
    u32 gid;
    u32 euid;
    u32 egid;
    u32 loginuid;           // audit login uid, 4294967295 when unset or unknown
    u32 sessionid;          // audit session id, 4294967295 when unset or unknown
    u32 exe_dev;            // dev_t of the executable's filesystem (kernel encoding)
    u32 exe_fs_magic;       // the filesystem's magic number (tmpfs, overlayfs, ...)
    u16 args_len;           // bytes of args[] used
    u16 flags;              // EXE_*, ARGS_TRUNCATED, CTX_NO_MM
    char comm[16];
    char exe_name[EXE_NAME_LEN];   // the executable's file name (memfd:NAME for a memfd)
    char filename[FILENAME_LEN];   // CTX_EXEC: the path exec was given
    char args[ARGS_LEN];           // argv, NUL-separated
    u32 path_depth;                // CTX_EXEC: components in path[] (0: not walked)
    u32 mntns;                     // the process's mount namespace (its /proc/PID/ns/mnt
                                   // inode; 0 unknown): with exe_dev and exe_ino, the
                                   // program's identity
    char path[PATH_DEPTH * PATH_NAME]; // ... the executable's path, innermost first, one
                                       // NUL-padded PATH_NAME slot per component
};

// Per thread, across CPUs: the filter verdict and the next record sequence number.
struct thread_state {
    u32 next_seq;
    u32 generation;         // filter generation the verdict was taken under
    u8 traced;
    u8 known;               // this thread's process was looked up in known_procs
};

// Per CPU: the open chunk of the thread running there.
struct cpu_slot {
    struct chunk_rec rec;   // tgid, tid, comm and cgroup_id describe the owner
    u64 owner;              // pt_regs address of the thread whose chunk this is; 0: free
    u64 first_jiffies;      // jiffies at the chunk's first syscall
    u32 generation;         // filter generation `traced` was taken under
    u8 traced;
    u8 compat;              // REC_COMPAT when the owner runs 32-bit code, else 0
    struct counters c;
};

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_TASK_STORAGE(threads, struct thread_state);
BPF_PERCPU_ARRAY(slots, struct cpu_slot, 1);
BPF_ARRAY(config, struct filter_cfg, 1);
BPF_HASH(include_pids, u32, u8, FILTER_MAX);
BPF_HASH(exclude_pids, u32, u8, FILTER_MAX);
BPF_HASH(include_comms, struct comm_key, u8, FILTER_MAX);
BPF_HASH(exclude_comms, struct comm_key, u8, FILTER_MAX);
BPF_HASH(include_cgroups, u64, u8, FILTER_MAX);
BPF_HASH(exclude_cgroups, u64, u8, FILTER_MAX);
BPF_HASH(exclude_uids, u32, u8, FILTER_MAX);
BPF_HASH(exclude_exes, struct exe_key, u8, FILTER_MAX);
#if CONTEXT
BPF_RINGBUF_OUTPUT(procs, CTX_PAGES);
// Processes described so far: tgid -> start time (a pid reused by a new process has
// another start, so it is described again). Deleted when the process exits.
BPF_TABLE("lru_hash", u32, u64, known_procs, 65536);
#endif
// Never written: let user space read the compiled layouts of the records.
BPF_ARRAY(layout, struct chunk_rec, 1);
BPF_ARRAY(ctx_layout, struct proc_rec, 1);

// -- acts: the arguments where behaviour lives ------------------------------------------
// One record per act; probes/layout.py mirrors it (ACT_DTYPE), probes/acts.py reads it.
#define ACT_PATH 256            // bytes per path, NUL included
#define LPM_LEN 128             // bytes of a read path matched against sensitive prefixes
#define ARGV_HASH_MAX 4096      // bytes of an exec's argv hashed

#define ACT_WRITE    1   // open/openat/openat2/creat for writing or creating: path, flags
#define ACT_READ     2   // open for reading of a sensitive path (the `sensitive` map)
#define ACT_RENAME   3   // rename/renameat/renameat2: path -> path2
#define ACT_LINK     4   // link/linkat (path -> path2), symlink/symlinkat (target, link)
#define ACT_UNLINK   5   // unlink/unlinkat/rmdir
#define ACT_CHMOD    6   // chmod family (fchmod: by fd)
#define ACT_CHOWN    7   // chown family (fchown: by fd)
#define ACT_TRUNCATE 8   // truncate/ftruncate
#define ACT_CONNECT  9   // connect: the peer (a new one for this process)
#define ACT_BIND     10  // bind: the local address
#define ACT_LISTEN   11  // listen: the socket's own family, address and port
#define ACT_ACCEPT   12  // accept/accept4: the listening socket's address and port (first
                         // accept per process and port)
#define ACT_SEND     13  // sendto/sendmsg to an explicit address (a new peer)
#define ACT_SETID    14  // setuid/setgid/setre*/setres*/setfs*: the ids are in args
#define ACT_CAPSET   15  // capset: aux = effective | permitted << 32, aux2 = inheritable
#define ACT_PTRACE   16  // ptrace: args[0] request, args[1] target pid
#define ACT_MOUNT    17  // mount: path = source, path2 = target, args[3] flags
#define ACT_MODULE   18  // init_module/finit_module (by fd)
#define ACT_BPF      19  // bpf: args[0] the command (first of each command per process)
#define ACT_MEMFD    20  // memfd_create: path = its name
#define ACT_EXEC     21  // a program executed: path = the file exec was given, aux = argv
                         // hash, aux2 = argv bytes hashed (sent at sched_process_exec)

#define ACT_TRUNCATED  0x001  // path longer than ACT_PATH - 1 bytes: its tail is missing
#define ACT_TRUNCATED2 0x002  // ... path2
#define ACT_RELATIVE   0x004  // path is relative (to the cwd, or to a dir fd: ACT_DIRFD)
#define ACT_RELATIVE2  0x008  // ... path2
#define ACT_DIRFD      0x010  // a relative path is relative to a directory fd, not the cwd
#define ACT_FAULT      0x020  // user memory not readable here (not resident): a field is empty
#define ACT_BY_FD      0x040  // the call names a file descriptor (args[0]), no path
#define ACT_LOCAL      0x080  // the address is the socket's own (listen, accept)
#define ACT_ARGV_CUT   0x100  // exec: argv longer than ARGV_HASH_MAX, the rest not hashed
#define ACT_NOT_SOCK   0x200  // listen/accept on a descriptor that is not a socket
#define ACT_BY_TAIL    0x400  // a read sent for its name's tail, not its prefix (a path
                              // through "..", "//" or relative): user space resolves it

struct act_rec {
    u64 ns;                 // CLOCK_MONOTONIC ns of the call (its entry)
    u64 start_ns;           // the process's start: with tgid, its key (as proc_rec)
    u64 cgroup_id;
    u64 args[6];            // the syscall's raw arguments (ACT_EXEC: none)
    u64 aux;                // openat2: open_how.flags; capset, exec: see ACT_*
    u64 aux2;
    u32 kind;               // ACT_*
    u32 nr;                 // the syscall number (x86_64 table)
    u32 tgid;
    u32 tid;
    u32 uid;
    u32 euid;
    u32 flags;              // ACT_TRUNCATED ...
    u16 family;             // AF_* of the address, 0 none
    u16 port;               // host order
    u8 addr[16];            // IPv4 in the first 4 bytes, IPv6, or a unix path's first bytes
    u16 path_len;           // bytes in path, NUL excluded
    u16 path2_len;
    char comm[16];
    char path[ACT_PATH];
    char path2[ACT_PATH];
};

struct lpm_key {
    u32 prefixlen;          // bits
    char data[LPM_LEN];
};

// What a process has already been told to have done, so a repeat is not sent again:
// a peer (connect, send), a listening port (accept), a bpf command.
struct seen_key {
    u64 start_ns;
    u32 tgid;
    u16 kind;
    u16 family;
    u16 port;
    u16 _pad;
    u8 addr[16];
};

BPF_ARRAY(act_layout, struct act_rec, 1);
#if ACTS
BPF_RINGBUF_OUTPUT(acts, ACT_PAGES);
BPF_PROG_ARRAY(act_progs, 1);
// Sensitive path prefixes, set by user space (probes/acts.py SENSITIVE_DEFAULT).
BPF_LPM_TRIE(sensitive, struct lpm_key, u8, 1024);
BPF_TABLE("lru_hash", struct seen_key, u8, acts_seen, 16384);
// A one-byte-per-slot filter on a sensitive prefix's first 4 bytes (slot: head_slot), so
// that most opens for reading (/usr/..., relative names) skip the trie lookup; their path
// is still read, for its end (sensitive_tails).
BPF_ARRAY(sensitive_heads, u8, 256);
// The last (up to) 7 bytes of a sensitive file's path ("/shadow", "id_rsa"), left-aligned
// and zero-padded, set by user space: a read whose path does not start with a sensitive
// prefix but ends so is sent too, for user space to resolve (`cat /tmp/../etc/shadow`, a
// web application's path traversal, `cd /etc; cat shadow`).
BPF_HASH(sensitive_tails, u64, u8, 1024);

static __always_inline u32 head_slot(u32 head)
{
    return (head * 2654435761u) >> 24;
}

// The numbers that carry acts, as one 64-bit mask per 64 numbers (constants: the
// per-syscall test is two compares and a shift).
#define ACT_B(n, w) ((((n) >> 6) == (w)) ? (1ULL << ((n) & 63)) : 0ULL)
#define ACT_MASK(w) (ACT_B(2, w) | ACT_B(85, w) | ACT_B(257, w) | ACT_B(437, w) |        \
    ACT_B(82, w) | ACT_B(264, w) | ACT_B(316, w) | ACT_B(86, w) | ACT_B(265, w) |         \
    ACT_B(88, w) | ACT_B(266, w) | ACT_B(87, w) | ACT_B(263, w) | ACT_B(84, w) |          \
    ACT_B(90, w) | ACT_B(91, w) | ACT_B(268, w) | ACT_B(452, w) | ACT_B(92, w) |          \
    ACT_B(93, w) | ACT_B(94, w) | ACT_B(260, w) | ACT_B(76, w) | ACT_B(77, w) |           \
    ACT_B(42, w) | ACT_B(43, w) | ACT_B(288, w) | ACT_B(44, w) | ACT_B(46, w) |          \
    ACT_B(49, w) | ACT_B(50, w) | ACT_B(105, w) | ACT_B(106, w) | ACT_B(113, w) |        \
    ACT_B(114, w) | ACT_B(117, w) | ACT_B(119, w) | ACT_B(122, w) | ACT_B(123, w) |       \
    ACT_B(126, w) | ACT_B(101, w) | ACT_B(165, w) | ACT_B(175, w) | ACT_B(313, w) |       \
    ACT_B(321, w) | ACT_B(319, w))

static __always_inline int is_act(u64 nr)
{
    u64 m;
    if (nr < 64)
        m = ACT_MASK(0);
    else if (nr < 128)
        m = ACT_MASK(1);
    else if (nr < 192)
        m = ACT_MASK(2);
    else if (nr < 320)
        m = nr < 256 ? ACT_MASK(3) : ACT_MASK(4);
    else if (nr < 512)
        m = nr < 384 ? ACT_MASK(5) : nr < 448 ? ACT_MASK(6) : ACT_MASK(7);
    else
        return 0;
    return (m >> (nr & 63)) & 1;
}
#endif

// -- kernel structures at the running kernel's offsets (see OFF_* above) -----------------
// A read at a missing offset (-1) or through a NULL pointer leaves the zero it started at.
static __always_inline u64 read_u64(u64 base, long off)
{
    u64 v = 0;
    if (base && off >= 0)
        bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
    return v;
}

static __always_inline u32 read_u32(u64 base, long off, u32 missing)
{
    u32 v = missing;
    if (base && off >= 0)
        bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
    return v;
}

// The executable file of the current process (0 for a kernel thread).
static __always_inline u64 current_exe_file(void)
{
    u64 mm = read_u64(bpf_get_current_task(), OFF_TASK_MM);
    return read_u64(mm, OFF_MM_EXE_FILE);
}

#if EXCLUDE_EXES
// Whether the current process runs an excluded executable, matched by device and inode:
// the file itself, not a name a process could take.
static __always_inline int exe_excluded(void)
{
    u64 file = current_exe_file();
    if (!file)
        return 0;
    u64 inode = read_u64(file, OFF_FILE_INODE);
    u64 sb = read_u64(inode, OFF_INODE_SB);
    struct exe_key key = {};
    key.ino = read_u64(inode, OFF_INODE_INO);
    key.dev = read_u32(sb, OFF_SB_DEV, 0);
    return exclude_exes.lookup(&key) != 0;
}
#endif

#if CONTEXT
#define MNT_READONLY 0x40
#define SB_RDONLY 0x01

// Fill a context record for the current process (the caller sets kind and filename).
static __always_inline void describe(struct proc_rec *r)
{
    u64 task = bpf_get_current_task();
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u64 uid_gid = bpf_get_current_uid_gid();
    r->ns = bpf_ktime_get_ns();
    r->tgid = pid_tgid >> 32;
    r->tid = (u32)pid_tgid;
    r->uid = (u32)uid_gid;
    r->gid = uid_gid >> 32;
    r->cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&r->comm, sizeof(r->comm));
    u64 leader = read_u64(task, OFF_TASK_GROUP_LEADER);
    r->start_ns = read_u64(leader, OFF_TASK_START_TIME);
    u64 parent = read_u64(task, OFF_TASK_REAL_PARENT);
    r->ppid = read_u32(parent, OFF_TASK_TGID, 0);
    r->parent_start_ns = read_u64(read_u64(parent, OFF_TASK_GROUP_LEADER), OFF_TASK_START_TIME);
    u64 cred = read_u64(task, OFF_TASK_CRED);
    r->euid = read_u32(cred, OFF_CRED_EUID, r->uid);
    r->egid = read_u32(cred, OFF_CRED_EGID, r->gid);
    r->loginuid = read_u32(task, OFF_TASK_LOGINUID, 0xffffffff);
    r->sessionid = read_u32(task, OFF_TASK_SESSIONID, 0xffffffff);
    r->args_len = 0;
    r->flags = 0;
    r->exe_name[0] = 0;
    r->filename[0] = 0;
    r->exe_ino = 0;
    r->exe_dev = 0;
    r->exe_fs_magic = 0;
    u64 mnt_ns = read_u64(read_u64(task, OFF_TASK_NSPROXY), OFF_NSPROXY_MNT_NS);
    r->mntns = read_u32(mnt_ns, OFF_MNT_NS_INUM, 0);
    if (INIT_MNT_NS && r->mntns && r->mntns != INIT_MNT_NS)
        r->flags |= TASK_FOREIGN_MNTNS;
    u64 mm = read_u64(task, OFF_TASK_MM);
    if (!mm) {
        r->flags |= CTX_NO_MM;
        return;
    }
    // argv as the process's memory holds it (NUL-separated), bounded
    u64 start = read_u64(mm, OFF_MM_ARG_START), end = read_u64(mm, OFF_MM_ARG_END);
    u64 len = end > start ? end - start : 0;
    if (len > ARGS_LEN) {
        len = ARGS_LEN;
        r->flags |= ARGS_TRUNCATED;
    }
    if (len > 0 && len <= ARGS_LEN && bpf_probe_read_user(r->args, len, (void *)start) == 0)
        r->args_len = len;
    u64 file = read_u64(mm, OFF_MM_EXE_FILE);
    if (!file)
        return;
    u64 dentry = read_u64(file, OFF_FILE_PATH_DENTRY);
    u64 name = read_u64(dentry, OFF_DENTRY_NAME);
    if (name)
        bpf_probe_read_kernel_str(r->exe_name, sizeof(r->exe_name), (void *)name);
    u64 inode = read_u64(file, OFF_FILE_INODE);
    u64 sb = read_u64(inode, OFF_INODE_SB);
    r->exe_ino = read_u64(inode, OFF_INODE_INO);
    r->exe_dev = read_u32(sb, OFF_SB_DEV, 0);
    r->exe_fs_magic = (u32)read_u64(sb, OFF_SB_MAGIC);
    u32 nlink = read_u32(inode, OFF_INODE_NLINK, 1);
    // memfd_create names its file "memfd:NAME"
    if (r->exe_name[0] == 'm' && r->exe_name[1] == 'e' && r->exe_name[2] == 'm' &&
        r->exe_name[3] == 'f' && r->exe_name[4] == 'd' && r->exe_name[5] == ':')
        r->flags |= EXE_MEMFD;
    else if (nlink == 0)
        r->flags |= EXE_DELETED;
    u64 vfsmnt = read_u64(file, OFF_FILE_PATH_MNT);
    // The mount the file was reached through: its namespace, and who owns that.
    if (vfsmnt && OFF_MOUNT_MNT >= 0 && OFF_MOUNT_MNT_NS >= 0) {
        u64 ns = read_u64(vfsmnt - OFF_MOUNT_MNT, OFF_MOUNT_MNT_NS);
        u32 ns_ino = read_u32(ns, OFF_MNT_NS_INUM, 0);
        if (INIT_MNT_NS && ns_ino && ns_ino != INIT_MNT_NS)
            r->flags |= EXE_FOREIGN_MNT;
        u32 owner = read_u32(read_u64(ns, OFF_MNT_NS_USER_NS), OFF_USER_NS_INUM, 0);
        if (owner && owner != INIT_USER_NS)
            r->flags |= EXE_USERNS_MNT;
    }
    u32 mnt_flags = read_u32(vfsmnt, OFF_VFSMOUNT_FLAGS, 0);
    u64 sb_flags = read_u64(sb, OFF_SB_FLAGS);
    if (!(mnt_flags & MNT_READONLY) && !(sb_flags & SB_RDONLY))
        r->flags |= EXE_WRITABLE;
}

// The executable's absolute path, read from the dentries up to the root of its mount and
// across mounts to the root (what d_path does; an exec by file descriptor, by a relative
// path or of a file since unlinked has no other trustworthy path). Innermost first.
static __always_inline void walk_path(struct proc_rec *r, u64 file)
{
    u64 dentry = read_u64(file, OFF_FILE_PATH_DENTRY);
    u64 vfsmnt = read_u64(file, OFF_FILE_PATH_MNT);
    u64 mnt = vfsmnt - OFF_MOUNT_MNT;     // the struct mount holding this vfsmount
    u32 n = 0;
#pragma unroll
    for (int i = 0; i < PATH_DEPTH + 4; i++) {
        if (!dentry || !vfsmnt)
            break;
        if (dentry == read_u64(vfsmnt, OFF_VFSMOUNT_ROOT)) {
            u64 parent = read_u64(mnt, OFF_MOUNT_PARENT);
            if (!parent || parent == mnt)
                return;                     // the root of the tree: done
            dentry = read_u64(mnt, OFF_MOUNT_MOUNTPOINT);
            mnt = parent;
            vfsmnt = parent + OFF_MOUNT_MNT;
            continue;
        }
        u64 up = read_u64(dentry, OFF_DENTRY_PARENT);
        if (!up || up == dentry)
            return;
        if (n >= PATH_DEPTH)
            break;
        u64 name = read_u64(dentry, OFF_DENTRY_NAME);
        bpf_probe_read_kernel_str(r->path + (n & (PATH_DEPTH - 1)) * PATH_NAME, PATH_NAME,
                                  (void *)name);
        r->path_depth = ++n;
        dentry = up;
    }
    r->flags |= PATH_CUT;
}

// Whether descriptor `fd` of the current process is an IPv4 or IPv6 socket: a program
// exec'd with its standard input and output on a network connection is a shell served
// to whoever is at the other end (a bind or reverse shell), inetd aside.
static __always_inline int fd_inet(u64 fdt, u32 fd)
{
    if (fd >= read_u32(fdt, OFF_FDT_MAX, 0))
        return 0;
    u64 file = read_u64(read_u64(fdt, OFF_FDT_FD) + fd * 8, 0);
    u64 inode = read_u64(file, OFF_FILE_INODE);
    u16 mode = 0, family = 0;
    if (!inode || OFF_INODE_MODE < 0 || OFF_SK_FAMILY < 0)
        return 0;
    bpf_probe_read_kernel(&mode, sizeof(mode), (void *)(inode + OFF_INODE_MODE));
    if ((mode & 0170000) != 0140000)        // S_IFSOCK
        return 0;
    u64 sk = read_u64(read_u64(file, OFF_FILE_PRIVATE), OFF_SOCKET_SK);
    if (sk)
        bpf_probe_read_kernel(&family, sizeof(family), (void *)(sk + OFF_SK_FAMILY));
    return family == 2 || family == 10;     // AF_INET, AF_INET6
}

static __always_inline u16 stdio_inet(void)
{
    u64 fdt = read_u64(read_u64(bpf_get_current_task(), OFF_TASK_FILES), OFF_FILES_FDT);
    if (!fdt)
        return 0;
    return (fd_inet(fdt, 0) ? STDIN_INET : 0) | (fd_inet(fdt, 1) ? STDOUT_INET : 0);
}

// Send a context record of the current process; `filename` (kernel memory) for exec.
static __always_inline void send_context(u32 kind, u64 filename, struct counters *c)
{
    struct proc_rec *r = procs.ringbuf_reserve(sizeof(struct proc_rec));
    if (!r) {
        c->ctx_lost++;
        return;
    }
    describe(r);
    r->kind = kind;
    r->path_depth = 0;
    if (filename) {
        r->flags |= stdio_inet();
        bpf_probe_read_kernel_str(r->filename, sizeof(r->filename), (void *)filename);
        if (OFF_MOUNT_MNT >= 0 && OFF_MOUNT_PARENT >= 0 && OFF_DENTRY_PARENT >= 0)
            walk_path(r, current_exe_file());
    }
    procs.ringbuf_submit(r, BPF_RB_NO_WAKEUP);
    c->ctx_records++;
}

static __always_inline u64 current_start_ns(void)
{
    return read_u64(read_u64(bpf_get_current_task(), OFF_TASK_GROUP_LEADER),
                    OFF_TASK_START_TIME);
}

// The current thread's first syscall since the program loaded: describe its process
// unless that was done (by another of its threads, or at its exec).
static __always_inline void note_process(struct counters *c)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u64 start = current_start_ns();
    u64 *seen = known_procs.lookup(&tgid);
    if (seen && *seen == start)
        return;
    known_procs.update(&tgid, &start);
    send_context(CTX_NEW, 0, c);
}
#endif

#if ACTS
// x86_64 syscall arguments as the entry saved them (pt_regs from r10 to di, in the
// kernel's ptrace order): di, si, dx, r10, r8, r9.
struct arg_regs {
    u64 r10, r9, r8, ax, cx, dx, si, di;
};

#define AT_FDCWD_ (-100)
#define O_ACCMODE_ 03
#define O_CREAT_ 0100
#define O_TRUNC_ 01000
#define AF_UNIX_ 1
#define AF_INET_ 2
#define AF_INET6_ 10
#define S_IFMT_ 0170000
#define S_IFSOCK_ 0140000

// A user path into `dst` (ACT_PATH bytes): its length without the NUL, and flags for
// what it is (relative) and whether it was cut or unreadable.
static __always_inline u16 read_path(char *dst, u64 uptr, u32 *flags, u32 cut, u32 rel)
{
    if (!uptr)
        return 0;
    long n = bpf_probe_read_user_str(dst, ACT_PATH, (void *)uptr);
    if (n <= 0) {
        dst[0] = 0;
        *flags |= ACT_FAULT;
        return 0;
    }
    if (n == ACT_PATH) {    // the limit was hit: cut unless the string ends exactly there
        char last = 1;
        bpf_probe_read_user(&last, 1, (void *)(uptr + ACT_PATH - 1));
        if (last)
            *flags |= cut;
    }
    if (dst[0] != '/')
        *flags |= rel;
    return n - 1;
}

// A socket address from user memory into the record: family, port, address (and a unix
// socket's path into path2).
static __always_inline void read_sockaddr(struct act_rec *r, u64 uaddr, u64 len)
{
    u8 sa[28] = {};
    if (len > sizeof(sa))
        len = sizeof(sa);
    if (len < 2 || bpf_probe_read_user(sa, len & 31, (void *)uaddr)) {
        r->flags |= ACT_FAULT;
        return;
    }
    u16 family = sa[0] | (sa[1] << 8);
    r->family = family;
    if (family == AF_INET_ || family == AF_INET6_)
        r->port = (sa[2] << 8) | sa[3];
    if (family == AF_INET_) {
        __builtin_memcpy(r->addr, sa + 4, 4);
    } else if (family == AF_INET6_) {
        __builtin_memcpy(r->addr, sa + 8, 16);
    } else if (family == AF_UNIX_) {
        __builtin_memcpy(r->addr, sa + 2, 16);
        if (sa[2])
            r->path2_len = read_path(r->path2, uaddr + 2, &r->flags, ACT_TRUNCATED2,
                                     ACT_RELATIVE2);
    }
}

// The family and local port of the socket behind descriptor `fd` of the current process.
static __always_inline void read_own_socket(struct act_rec *r, u64 fd)
{
    r->flags |= ACT_LOCAL;
    u64 fdt = read_u64(read_u64(bpf_get_current_task(), OFF_TASK_FILES), OFF_FILES_FDT);
    u32 max = read_u32(fdt, OFF_FDT_MAX, 0);
    if (fd >= max)
        return;
    u64 file = read_u64(read_u64(fdt, OFF_FDT_FD) + fd * 8, 0);
    u16 mode = 0;
    u64 inode = read_u64(file, OFF_FILE_INODE);
    if (inode && OFF_INODE_MODE >= 0)
        bpf_probe_read_kernel(&mode, sizeof(mode), (void *)(inode + OFF_INODE_MODE));
    if ((mode & S_IFMT_) != S_IFSOCK_) {
        r->flags |= ACT_NOT_SOCK;
        return;
    }
    u64 sk = read_u64(read_u64(file, OFF_FILE_PRIVATE), OFF_SOCKET_SK);
    u16 family = 0, port = 0;
    if (sk && OFF_SK_FAMILY >= 0 && OFF_SK_NUM >= 0) {
        bpf_probe_read_kernel(&family, sizeof(family), (void *)(sk + OFF_SK_FAMILY));
        bpf_probe_read_kernel(&port, sizeof(port), (void *)(sk + OFF_SK_NUM));
    }
    r->family = family;
    r->port = port;     // skc_num is the local port in host order
    if (family == AF_INET_ && OFF_SK_RCV_SADDR >= 0)
        bpf_probe_read_kernel(r->addr, 4, (void *)(sk + OFF_SK_RCV_SADDR));
    else if (family == AF_INET6_ && OFF_SK_V6_RCV_SADDR >= 0)
        bpf_probe_read_kernel(r->addr, 16, (void *)(sk + OFF_SK_V6_RCV_SADDR));
}

// Whether this process already sent an act with this kind, family, port and address.
static __always_inline int seen_before(struct act_rec *r)
{
    struct seen_key k = {};
    k.start_ns = r->start_ns;
    k.tgid = r->tgid;
    k.kind = r->kind;
    k.family = r->family;
    k.port = r->port;
    __builtin_memcpy(k.addr, r->addr, 16);
    if (acts_seen.lookup(&k))
        return 1;
    u8 one = 1;
    acts_seen.update(&k, &one);
    return 0;
}

static __always_inline void act_header(struct act_rec *r, u32 kind, u32 nr)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u64 uid_gid = bpf_get_current_uid_gid();
    u64 cred = read_u64(bpf_get_current_task(), OFF_TASK_CRED);
    r->ns = bpf_ktime_get_ns();
    r->start_ns = current_start_ns();
    r->cgroup_id = bpf_get_current_cgroup_id();
    r->kind = kind;
    r->nr = nr;
    r->tgid = pid_tgid >> 32;
    r->tid = (u32)pid_tgid;
    r->uid = (u32)uid_gid;
    r->euid = read_u32(cred, OFF_CRED_EUID, r->uid);
    r->flags = 0;
    r->family = 0;
    r->port = 0;
    __builtin_memset(r->addr, 0, sizeof(r->addr));
    r->aux = 0;
    r->aux2 = 0;
    r->path_len = 0;
    r->path2_len = 0;
    r->path[0] = 0;
    r->path2[0] = 0;
    bpf_get_current_comm(&r->comm, sizeof(r->comm));
}

// The tail of sys_enter for a syscall whose number is_act() passed (a tail call, so the
// per-syscall program stays as small as it was).
int note_act(struct bpf_raw_tracepoint_args *ctx)
{
    u32 zero = 0;
    struct cpu_slot *slot = slots.lookup(&zero);
    if (!slot || slot->compat)      // a compat call's number means another syscall
        return 0;
    u32 nr = (u32)ctx->args[1];
    struct arg_regs regs = {};
    bpf_probe_read_kernel(&regs, sizeof(regs), &((struct pt_regs *)ctx->args[0])->r10);
    u64 a[6] = {regs.di, regs.si, regs.dx, regs.r10, regs.r8, regs.r9};
    u32 kind = 0;
    u64 p1 = 0, p2 = 0;         // user paths
    s64 d1 = AT_FDCWD_, d2 = AT_FDCWD_;     // their directory fds
    u32 by_fd = 0;
    u32 flags_read = 0;
    switch (nr) {
    case 2:                     // open(path, flags, mode)
    case 85:                    // creat(path, mode)
    case 257:                   // openat(dfd, path, flags, mode)
    case 437: {                 // openat2(dfd, path, how, size)
        u64 path = (nr == 2 || nr == 85) ? a[0] : a[1];
        u64 flags = nr == 2 ? a[1] : nr == 257 ? a[2] : 0;
        if (nr == 437)
            bpf_probe_read_user(&flags, sizeof(flags), (void *)a[2]);
        if (nr == 85 || (flags & (O_ACCMODE_ | O_CREAT_ | O_TRUNC_))) {
            kind = ACT_WRITE;
        } else {
            // a read: sent when the path starts with a sensitive prefix, or (flagged)
            // when it ends as a sensitive file's does
            struct lpm_key k = {};
            long n = bpf_probe_read_user_str(k.data, LPM_LEN, (void *)path);
            if (n <= 1)
                return 0;
            u32 head = 0;
            __builtin_memcpy(&head, k.data, sizeof(head));
            u32 slot_i = head_slot(head);
            u8 *maybe = k.data[0] == '/' ? sensitive_heads.lookup(&slot_i) : 0;
            k.prefixlen = (n - 1) * 8;
            if (!maybe || !*maybe || !sensitive.lookup(&k)) {
                // the path's end, 120 bytes on at a time when it is longer than the
                // buffer (a traversal pads with "../"); the 8 bytes read twice put a
                // tail that the end of one read would cut inside the next
                u64 base = path;
                for (int i = 0; i < 36 && n == LPM_LEN; i++) {
                    base += LPM_LEN - 8;
                    n = bpf_probe_read_user_str(k.data, LPM_LEN, (void *)base);
                }
                if (n <= 0 || n == LPM_LEN)
                    return 0;
                u32 len = (u32)(n - 1);
                u32 at = len > 7 ? len - 7 : 0;
                u64 tail = 0;
                bpf_probe_read_kernel(&tail, (len > 7 ? 7 : len) & 7, k.data + (at & 127));
                if (!sensitive_tails.lookup(&tail))
                    return 0;
                flags_read = ACT_BY_TAIL;
            }
            kind = ACT_READ;
        }
        p1 = path;
        if (nr == 257 || nr == 437)
            d1 = (s64)(int)a[0];
        break;
    }
    case 82: case 86:           // rename, link (old, new)
        kind = nr == 82 ? ACT_RENAME : ACT_LINK;
        p1 = a[0]; p2 = a[1];
        break;
    case 264: case 316: case 265:   // renameat(2), linkat (olddfd, old, newdfd, new)
        kind = nr == 265 ? ACT_LINK : ACT_RENAME;
        p1 = a[1]; p2 = a[3];
        d1 = (s64)(int)a[0]; d2 = (s64)(int)a[2];
        break;
    case 88:                    // symlink(target, linkpath)
        kind = ACT_LINK;
        p1 = a[0]; p2 = a[1];
        break;
    case 266:                   // symlinkat(target, newdfd, linkpath)
        kind = ACT_LINK;
        p1 = a[0]; p2 = a[2];
        d2 = (s64)(int)a[1];
        break;
    case 87: case 84:           // unlink, rmdir
        kind = ACT_UNLINK;
        p1 = a[0];
        break;
    case 263:                   // unlinkat(dfd, path, flags)
        kind = ACT_UNLINK;
        p1 = a[1]; d1 = (s64)(int)a[0];
        break;
    case 90: case 92: case 94:  // chmod, chown, lchown (path, ...)
        kind = nr == 90 ? ACT_CHMOD : ACT_CHOWN;
        p1 = a[0];
        break;
    case 268: case 452: case 260:   // fchmodat(2), fchownat (dfd, path, ...)
        kind = nr == 260 ? ACT_CHOWN : ACT_CHMOD;
        p1 = a[1]; d1 = (s64)(int)a[0];
        break;
    case 91: case 93: case 77:  // fchmod, fchown, ftruncate (fd, ...)
        kind = nr == 91 ? ACT_CHMOD : nr == 93 ? ACT_CHOWN : ACT_TRUNCATE;
        by_fd = 1;
        break;
    case 76:                    // truncate(path, length)
        kind = ACT_TRUNCATE;
        p1 = a[0];
        break;
    case 42: case 49:           // connect, bind (fd, addr, len)
        kind = nr == 42 ? ACT_CONNECT : ACT_BIND;
        break;
    case 44:                    // sendto(fd, buf, len, flags, addr, addrlen)
        if (!a[4])
            return 0;           // a connected socket: its peer came with connect
        kind = ACT_SEND;
        break;
    case 46: {                  // sendmsg(fd, msghdr, flags): msg_name, msg_namelen first
        struct { u64 name; u32 namelen; } h = {};
        if (bpf_probe_read_user(&h, sizeof(h), (void *)a[1]) == 0 && !h.name)
            return 0;
        a[4] = h.name;          // where read_sockaddr finds it below
        a[5] = h.namelen;
        kind = ACT_SEND;
        break;
    }
    case 50:                    // listen(fd, backlog)
        kind = ACT_LISTEN;
        break;
    case 43: case 288:          // accept, accept4 (fd, ...)
        kind = ACT_ACCEPT;
        break;
    case 105: case 106: case 113: case 114: case 117: case 119: case 122: case 123:
        kind = ACT_SETID;
        break;
    case 126:                   // capset(header, data)
        kind = ACT_CAPSET;
        break;
    case 101:
        kind = ACT_PTRACE;
        break;
    case 165:                   // mount(source, target, fstype, flags, data)
        kind = ACT_MOUNT;
        p1 = a[0]; p2 = a[1];
        break;
    case 175:
        kind = ACT_MODULE;
        break;
    case 313:                   // finit_module(fd, args, flags)
        kind = ACT_MODULE;
        by_fd = 1;
        break;
    case 321:
        kind = ACT_BPF;
        break;
    case 319:                   // memfd_create(name, flags)
        kind = ACT_MEMFD;
        p1 = a[0];
        break;
    default:
        return 0;
    }
    struct act_rec *r = acts.ringbuf_reserve(sizeof(struct act_rec));
    if (!r) {
        slot->c.act_lost++;
        return 0;
    }
    act_header(r, kind, nr);
#pragma unroll
    for (int i = 0; i < 6; i++)
        r->args[i] = a[i];
    if (by_fd)
        r->flags |= ACT_BY_FD;
    r->flags |= flags_read;
    if (nr == 437)
        r->aux = 0, bpf_probe_read_user(&r->aux, sizeof(r->aux), (void *)a[2]);
    if (kind == ACT_CONNECT || kind == ACT_BIND)
        read_sockaddr(r, a[1], a[2]);
    else if (kind == ACT_SEND)
        read_sockaddr(r, a[4], a[5]);
    else if (kind == ACT_LISTEN || kind == ACT_ACCEPT)
        read_own_socket(r, a[0]);
    else if (kind == ACT_CAPSET) {
        u32 data[3] = {};       // the first __user_cap_data_struct: effective, permitted,
        bpf_probe_read_user(data, sizeof(data), (void *)a[1]);   // inheritable
        r->aux = data[0] | ((u64)data[1] << 32);
        r->aux2 = data[2];
    }
    if ((kind == ACT_CONNECT || kind == ACT_SEND || kind == ACT_ACCEPT || kind == ACT_BPF) &&
        !(r->flags & ACT_FAULT)) {
        if (kind == ACT_BPF)
            r->port = (u16)a[0];    // the command, as the key's port
        int dup = seen_before(r);
        if (kind == ACT_BPF)
            r->port = 0;
        if (dup) {
            acts.ringbuf_discard(r, BPF_RB_NO_WAKEUP);
            return 0;
        }
    }
    if (p1) {
        r->path_len = read_path(r->path, p1, &r->flags, ACT_TRUNCATED, ACT_RELATIVE);
        if ((r->flags & ACT_RELATIVE) && d1 != AT_FDCWD_)
            r->flags |= ACT_DIRFD;
    }
    if (p2) {
        r->path2_len = read_path(r->path2, p2, &r->flags, ACT_TRUNCATED2, ACT_RELATIVE2);
        if ((r->flags & ACT_RELATIVE2) && d2 != AT_FDCWD_)
            r->flags |= ACT_DIRFD;
    }
    acts.ringbuf_submit(r, BPF_RB_NO_WAKEUP);
    slot->c.act_records++;
    return 0;
}

// An exec that succeeded: the file exec was given and a hash of the new argv (its bytes
// as the new process's memory holds them, zero-padded to whole ACT_PATH blocks, 64-bit
// little-endian words, FNV-1a's constants; probes/acts.py argv_hash computes the same).
static __always_inline void exec_act(u64 filename, struct counters *c)
{
    struct act_rec *r = acts.ringbuf_reserve(sizeof(struct act_rec));
    if (!r) {
        c->act_lost++;
        return;
    }
    act_header(r, ACT_EXEC, 59);
    __builtin_memset(r->args, 0, sizeof(r->args));
    long n = filename ? bpf_probe_read_kernel_str(r->path, ACT_PATH, (void *)filename) : 0;
    if (n > 0)
        r->path_len = n - 1;
    if (n == ACT_PATH)
        r->flags |= ACT_TRUNCATED;   // bprm->filename is whole in the kernel: cut here
    if (r->path[0] != '/')
        r->flags |= ACT_RELATIVE;
    u64 mm = read_u64(bpf_get_current_task(), OFF_TASK_MM);
    u64 start = read_u64(mm, OFF_MM_ARG_START), end = read_u64(mm, OFF_MM_ARG_END);
    u64 len = end > start ? end - start : 0;
    if (len > ARGV_HASH_MAX) {
        len = ARGV_HASH_MAX;
        r->flags |= ACT_ARGV_CUT;
    }
    u64 h = 0xcbf29ce484222325ULL;
#pragma clang loop unroll(disable)
    for (int b = 0; b < ARGV_HASH_MAX / ACT_PATH; b++) {
        u64 off = (u64)b * ACT_PATH;
        if (off >= len)
            break;
        u64 part = len - off;
        if (part > ACT_PATH)
            part = ACT_PATH;
        __builtin_memset(r->path2, 0, ACT_PATH);
        if (bpf_probe_read_user(r->path2, part & (2 * ACT_PATH - 1), (void *)(start + off))) {
            r->flags |= ACT_FAULT;
            break;
        }
        u64 *words = (u64 *)r->path2;
#pragma clang loop unroll(disable)
        for (int w = 0; w < ACT_PATH / 8; w++)
            h = (h ^ words[w]) * 0x100000001b3ULL;
    }
    __builtin_memset(r->path2, 0, ACT_PATH);
    r->aux = h;
    r->aux2 = len;
    acts.ringbuf_submit(r, BPF_RB_NO_WAKEUP);
    c->act_records++;
}
#endif

// Send the slot's chunk, even an empty one (an exec marker). Callers run in the
// context of the slot's owner, so the current task's storage holds its sequence number.
static __always_inline void send(struct cpu_slot *slot, u16 why, struct counters *c)
{
    u16 n = slot->rec.count;
    struct thread_state *st = threads.task_storage_get(bpf_get_current_task_btf(), 0, 0);
    slot->rec.seq = st ? st->next_seq++ : 0xffffffff;
    slot->rec.flags |= why;
    slot->rec.last_ns = bpf_ktime_get_ns();
    u64 wake = BPF_RB_NO_WAKEUP;
    if (++c->unwoken >= WAKE_EVERY) {
        c->unwoken = 0;
        wake = BPF_RB_FORCE_WAKEUP;
    }
    if (events.ringbuf_output(&slot->rec, sizeof(slot->rec), wake) == 0) {
        c->emitted_records++;
        c->emitted_syscalls += n;
    } else {
        c->lost_records++;
        c->lost_syscalls += n;
    }
    slot->rec.count = 0;
    slot->rec.flags = 0;
}

// The slot owner key of the current thread, where sys_enter's argument is not at hand.
static __always_inline u64 current_regs(void)
{
    return (u64)bpf_task_pt_regs(bpf_get_current_task_btf());
}

// The current thread's identity, into the record header.
static __always_inline void identify(struct cpu_slot *slot)
{
    u64 pid_tgid = bpf_get_current_pid_tgid();
    slot->rec.tgid = pid_tgid >> 32;
    slot->rec.tid = (u32)pid_tgid;
    slot->rec.cgroup_id = bpf_get_current_cgroup_id();
    bpf_get_current_comm(&slot->rec.comm, sizeof(slot->rec.comm));
}

// Whether the thread whose syscall saved `regs` runs 32-bit code, whose syscall numbers
// are the compat table's (i386 on x86_64, arm on arm64). Read from the saved user
// registers, whose layout is the kernel's ABI (ptrace), once per switch-in. A 64-bit
// program that enters with int 0x80 is not told apart: that needs task flags.
static __always_inline u8 compat_of(u64 regs)
{
#if defined(CONFIG_X86_64) && defined(CONFIG_IA32_EMULATION)
    u64 cs = 0;
    bpf_probe_read_kernel(&cs, sizeof(cs), &((struct pt_regs *)regs)->cs);
    return (cs & 0xffff) == 0x23 ? REC_COMPAT : 0;    // __USER32_CS
#elif defined(CONFIG_ARM64) && defined(CONFIG_COMPAT)
    u64 pstate = 0;
    bpf_probe_read_kernel(&pstate, sizeof(pstate), &((struct pt_regs *)regs)->pstate);
    return (pstate & 0x10) ? REC_COMPAT : 0;          // PSR_MODE32_BIT
#else
    return 0;
#endif
}

#if STRICT_COMPAT && defined(CONFIG_X86_64) && defined(CONFIG_IA32_EMULATION)
// Which table this one syscall's number belongs to. A 64-bit program may also enter
// through int 0x80 (or sysenter), with i386 numbers: execve is then 11, which the x86_64
// table calls munmap, so a program could hide its calls behind the wrong names. The
// syscall instruction leaves its return address in cx, and the kernel saves cx as it is
// beside that address (entry_SYSCALL_64: pt_regs->ip is cx); after int 0x80, cx is the
// call's second argument. So a 64-bit syscall is one whose cx equals its ip, from 64-bit
// code. The remaining, narrow gap: a 64-bit program that sets that argument to its own
// return address before int 0x80 still passes for 64-bit. The read is a helper call per
// syscall, about 55 ns here (bench/capture.py --strict-compat), so it is opt-in.
struct entry_regs {     // pt_regs from cx to cs, in the kernel's (ptrace) order
    u64 cx, dx, si, di, orig_ax, ip, cs;
};

static __always_inline u8 entry_compat(u64 regs)
{
    struct entry_regs r = {};
    bpf_probe_read_kernel(&r, sizeof(r), &((struct pt_regs *)regs)->cx);
    if ((r.cs & 0xffff) == 0x23)                      // __USER32_CS: 32-bit code
        return REC_COMPAT;
    return r.cx == r.ip ? 0 : REC_COMPAT;
}
#define PER_SYSCALL_COMPAT 1
#else
#define PER_SYSCALL_COMPAT 0
#endif

static __always_inline void start_chunk(struct cpu_slot *slot)
{
    slot->rec.count = 0;
    slot->rec.flags = slot->compat;
    slot->rec.first_ns = bpf_ktime_get_ns();
    slot->first_jiffies = bpf_jiffies64();
}

static __always_inline void flush(struct cpu_slot *slot, u16 why, struct counters *c)
{
    if (slot->rec.count)
        send(slot, why, c);
}

// The filter verdict for the thread whose identity the slot's record holds.
static __always_inline u8 decide(struct filter_cfg *cfg, struct cpu_slot *slot)
{
    u32 tgid = slot->rec.tgid;
    if (tgid == cfg->self_tgid || exclude_pids.lookup(&tgid))
        return 0;
    struct comm_key key = {};
    __builtin_memcpy(&key.comm, slot->rec.comm, sizeof(key.comm));
    if (exclude_comms.lookup(&key))
        return 0;
    u64 cg = slot->rec.cgroup_id;
    if (exclude_cgroups.lookup(&cg))
        return 0;
    u32 uid = (u32)bpf_get_current_uid_gid();
    if (exclude_uids.lookup(&uid))
        return 0;
#if EXCLUDE_EXES
    if (cfg->exclude_exe && exe_excluded())
        return 0;
#endif
    if (cfg->include_pid && !include_pids.lookup(&tgid))
        return 0;
    if (cfg->include_comm && !include_comms.lookup(&key))
        return 0;
    if (cfg->include_cgroup && !include_cgroups.lookup(&cg))
        return 0;
    return 1;
}

// First syscall of a thread since it came onto this CPU: take the slot.
static __always_inline int claim(struct cpu_slot *slot, struct counters *c, u64 regs,
                                 struct filter_cfg *cfg)
{
    struct thread_state *st = threads.task_storage_get(bpf_get_current_task_btf(), 0,
                                                       BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!st) {
        slot->owner = 0;
        c->lost_nostorage++;
        return -1;
    }
    identify(slot);
    slot->compat = compat_of(regs);
#if CONTEXT
    // A thread's first syscall since the program loaded: its process is described once.
    if (!st->known) {
        st->known = 1;
        if (slot->rec.tgid != cfg->self_tgid)
            note_process(c);
    }
#endif
    if (st->generation != cfg->generation) {
        st->traced = decide(cfg, slot);
        st->generation = cfg->generation;
    }
    slot->owner = regs;
    slot->generation = cfg->generation;
    slot->traced = st->traced;
    slot->rec.count = 0;
    slot->rec.flags = 0;
    return 0;
}

RAW_TRACEPOINT_PROBE(sys_enter)
{
    u32 zero = 0;
    struct cpu_slot *slot = slots.lookup(&zero);
    struct filter_cfg *cfg = config.lookup(&zero);
    if (!slot || !cfg)
        return 0;
    struct counters *c = &slot->c;
    u64 regs = ctx->args[0];    // TP_PROTO(struct pt_regs *regs, long id)
    // A new thread on this CPU takes the slot. So does a thread that never left the CPU
    // when the filters change (it would keep its old verdict otherwise): its chunk so far
    // goes out first.
    if (slot->owner != regs || slot->generation != cfg->generation) {
        if (slot->owner == regs)
            flush(slot, REC_SWITCH, c);
        if (claim(slot, c, regs, cfg))
            return 0;
    }
    if (!slot->traced) {
        c->filtered++;
        return 0;
    }
    c->traced++;

    // A thread that sleeps or is switched out sends its chunk anyway; the age check
    // serves threads that keep the CPU.
    u16 i = slot->rec.count;
#if PER_SYSCALL_COMPAT
    // A chunk holds the numbers of one table: a change of table starts a new one.
    u8 compat = entry_compat(regs);
    if (compat != slot->compat) {
        slot->compat = compat;
        if (i) {
            flush(slot, REC_SWITCH, c);
            i = 0;
        }
    }
#endif
    if (i && bpf_jiffies64() - slot->first_jiffies >= AGE_JIFFIES) {
        flush(slot, REC_AGE, c);
        i = 0;
    }
    if (i == 0)
        start_chunk(slot);
    if (i < CHUNK_W)
        slot->rec.ids[i] = (u16)ctx->args[1];
    slot->rec.count = i + 1;
    if (i + 1 >= CHUNK_W)
        flush(slot, REC_FULL, c);
#if ACTS
    // The few syscalls whose arguments say what a program does: read them off this
    // path (a tail call does not return here).
    if (is_act(ctx->args[1]))
        act_progs.call(ctx, 0);
#endif
    return 0;
}

// The running thread leaves the CPU: send its chunk and free the slot. A thread that
// blocks forever is thereby delivered at once.
RAW_TRACEPOINT_PROBE(sched_switch)
{
    // TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next,
    //          unsigned int prev_state); prev is still current here.
    u32 zero = 0;
    struct cpu_slot *slot = slots.lookup(&zero);
    if (!slot || !slot->owner)
        return 0;
    if (slot->rec.count) {
        bool preempt = (bool)ctx->args[0];
        unsigned int prev_state = (unsigned int)ctx->args[3];
        flush(slot, (!preempt && prev_state != 0) ? REC_SLEEP : REC_SWITCH, &slot->c);
    }
    slot->owner = 0;
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_process_exec)
{
    // TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
    u32 zero = 0;
    struct cpu_slot *slot = slots.lookup(&zero);
    if (!slot)
        return 0;
#if CONTEXT
    struct filter_cfg *cfg = config.lookup(&zero);
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (cfg && tgid != cfg->self_tgid) {
        u64 start = current_start_ns();
        known_procs.update(&tgid, &start);
        send_context(CTX_EXEC, read_u64(ctx->args[2], OFF_BPRM_FILENAME), &slot->c);
#if ACTS
        struct thread_state *ts = threads.task_storage_get(bpf_get_current_task_btf(), 0, 0);
        if (!ts || ts->traced)
            exec_act(read_u64(ctx->args[2], OFF_BPRM_FILENAME), &slot->c);
#endif
    }
#endif
    struct thread_state *st = threads.task_storage_get(bpf_get_current_task_btf(), 0, 0);
    if (!st)
        return 0;
    u8 mine = slot->owner == current_regs();
    if (mine ? slot->traced : st->traced) {
        // The chunk holding execve already left (the thread slept inside execve):
        // send an empty record so that the boundary is still marked.
        if (!mine || slot->rec.count == 0) {
            identify(slot);
            slot->compat = compat_of(current_regs());
            start_chunk(slot);
        }
        send(slot, REC_EXEC, &slot->c);
    }
    slot->owner = 0;      // comm changed: the next syscall takes the filter verdict again
    st->generation = 0;
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_process_exit)
{
    u32 zero = 0;
    struct cpu_slot *slot = slots.lookup(&zero);
    if (!slot)
        return 0;
    if (slot->owner == current_regs())
        flush(slot, REC_EXIT, &slot->c);
    slot->owner = 0;
#if CONTEXT
    // The thread-group leader's exit ends the process (for the table in user space).
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    if ((u32)pid_tgid == tgid && known_procs.lookup(&tgid)) {
        known_procs.delete(&tgid);
        send_context(CTX_EXIT, 0, &slot->c);
    }
#endif
    threads.task_storage_delete(bpf_get_current_task_btf());
    return 0;
}
