// sysdream capture: per-thread chunks of syscall ids, one ring-buffer record per chunk.
//
// Compiled by bcc with these -D settings from probes/capture.py:
//   CHUNK_W       syscall ids per record (power of two, default 64)
//   AGE_NS        a chunk older than this is flushed (default 1 s)
//   RINGBUF_PAGES ring buffer size in pages (power of two)
//   WAKE_EVERY    wake the reader once per this many records per CPU
// The reader polls on a timer, so records are submitted without a wakeup:
// wakeups, not chunking, are the expensive part of kernel-to-user transport.

#include <linux/sched.h>

#ifndef CHUNK_W
#define CHUNK_W 64
#endif
#ifndef AGE_NS
#define AGE_NS 1000000000ULL
#endif
#ifndef RINGBUF_PAGES
#define RINGBUF_PAGES 1024
#endif
#ifndef WAKE_EVERY
#define WAKE_EVERY 512
#endif

// Why a record was sent (bit set in chunk_rec.flags).
#define REC_FULL  0x01  // the chunk filled up
#define REC_EXEC  0x02  // the thread called exec: comm/exe change after this record
#define REC_EXIT  0x04  // the thread exited: nothing follows
#define REC_AGE   0x08  // the oldest syscall in the chunk reached AGE_NS
#define REC_SLEEP 0x10  // the thread went to sleep with a partial chunk

// The record layout. probes/layout.py mirrors it as a numpy dtype; a test
// checks size and offsets against this compiled program.
struct chunk_rec {
    u64 first_ns;       // CLOCK_MONOTONIC of the first syscall in the chunk
    u64 last_ns;        // ... and of the last
    u64 cgroup_id;
    u32 tgid;
    u32 tid;
    u32 seq;            // per-thread record sequence number, from 0
    u16 count;          // valid entries in ids[]
    u16 flags;          // REC_* reasons
    char comm[16];      // comm when the chunk started
    u16 ids[CHUNK_W];   // syscall numbers, in order
};

// Counters, per CPU, summed exactly by user space.
struct counters {
    u64 seen;               // every sys_enter on the host
    u64 filtered;           // syscalls of threads the filters exclude (the daemon, ...)
    u64 traced;             // syscalls of traced threads: emitted + lost + still in chunks
    u64 emitted_records;
    u64 emitted_syscalls;   // syscalls carried by emitted records
    u64 lost_records;       // ring buffer full: records dropped
    u64 lost_syscalls;      // ... and the syscalls they carried
    u64 lost_nostorage;     // no per-thread storage could be allocated
    u64 unwoken;            // records since this CPU last woke the reader (not a count)
};

// Filters, set by user space. A thread is traced unless it belongs to the daemon,
// matches an exclude map, or misses an include kind that has entries.
struct filter_cfg {
    u32 generation;         // bumped by user space on every change; 0 is never used
    u32 self_tgid;
    u8 include_pid;
    u8 include_comm;
    u8 include_cgroup;
    u8 _pad;
};

struct comm_key {
    char comm[16];
};

struct thread_state {
    struct chunk_rec rec;
    u32 next_seq;
    u32 generation;         // filter generation the verdict below was taken under
    u8 traced;
};

BPF_RINGBUF_OUTPUT(events, RINGBUF_PAGES);
BPF_TASK_STORAGE(threads, struct thread_state);
BPF_PERCPU_ARRAY(counts, struct counters, 1);
BPF_ARRAY(config, struct filter_cfg, 1);
BPF_HASH(include_pids, u32, u8, 1024);
BPF_HASH(exclude_pids, u32, u8, 1024);
BPF_HASH(include_comms, struct comm_key, u8, 1024);
BPF_HASH(exclude_comms, struct comm_key, u8, 1024);
BPF_HASH(include_cgroups, u64, u8, 1024);
BPF_HASH(exclude_cgroups, u64, u8, 1024);
// Never written: lets user space read the compiled layout of chunk_rec.
BPF_ARRAY(layout, struct chunk_rec, 1);

static __always_inline void flush(struct thread_state *st, u16 why, struct counters *c)
{
    u16 n = st->rec.count;
    if (n == 0)
        return;
    st->rec.flags |= why;
    st->rec.seq = st->next_seq++;
    u64 wake = BPF_RB_NO_WAKEUP;
    if (++c->unwoken >= WAKE_EVERY) {
        c->unwoken = 0;
        wake = BPF_RB_FORCE_WAKEUP;
    }
    if (events.ringbuf_output(&st->rec, sizeof(st->rec), wake) == 0) {
        c->emitted_records++;
        c->emitted_syscalls += n;
    } else {
        c->lost_records++;
        c->lost_syscalls += n;
    }
    st->rec.count = 0;
    st->rec.flags = 0;
}

static __always_inline u8 decide(struct filter_cfg *cfg, u32 tgid)
{
    if (tgid == cfg->self_tgid || exclude_pids.lookup(&tgid))
        return 0;
    struct comm_key key = {};
    bpf_get_current_comm(&key.comm, sizeof(key.comm));
    if (exclude_comms.lookup(&key))
        return 0;
    u64 cg = bpf_get_current_cgroup_id();
    if (exclude_cgroups.lookup(&cg))
        return 0;
    if (cfg->include_pid && !include_pids.lookup(&tgid))
        return 0;
    if (cfg->include_comm && !include_comms.lookup(&key))
        return 0;
    if (cfg->include_cgroup && !include_cgroups.lookup(&cg))
        return 0;
    return 1;
}

RAW_TRACEPOINT_PROBE(sys_enter)
{
    u32 zero = 0;
    struct counters *c = counts.lookup(&zero);
    struct filter_cfg *cfg = config.lookup(&zero);
    if (!c || !cfg)
        return 0;
    c->seen++;

    struct task_struct *task = bpf_get_current_task_btf();
    struct thread_state *st = threads.task_storage_get(task, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
    if (!st) {
        c->lost_nostorage++;
        return 0;
    }
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (st->generation != cfg->generation) {
        st->traced = decide(cfg, pid_tgid >> 32);
        st->generation = cfg->generation;
    }
    if (!st->traced) {
        c->filtered++;
        return 0;
    }
    c->traced++;

    u64 now = bpf_ktime_get_ns();
    if (st->rec.count && now - st->rec.first_ns >= AGE_NS)
        flush(st, REC_AGE, c);
    if (st->rec.count == 0) {
        st->rec.first_ns = now;
        st->rec.tgid = pid_tgid >> 32;
        st->rec.tid = (u32)pid_tgid;
        st->rec.cgroup_id = bpf_get_current_cgroup_id();
        bpf_get_current_comm(&st->rec.comm, sizeof(st->rec.comm));
    }
    u16 i = st->rec.count;
    if (i < CHUNK_W)
        st->rec.ids[i] = (u16)ctx->args[1];
    st->rec.count = i + 1;
    st->rec.last_ns = now;
    if (st->rec.count >= CHUNK_W)
        flush(st, REC_FULL, c);
    return 0;
}

// A thread about to sleep sends what it has, so a thread that blocks forever
// is still seen; a preempted thread keeps its chunk unless it is old.
RAW_TRACEPOINT_PROBE(sched_switch)
{
    // TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next,
    //          unsigned int prev_state); prev is still current here.
    bool preempt = (bool)ctx->args[0];
    unsigned int prev_state = (unsigned int)ctx->args[3];
    struct task_struct *task = bpf_get_current_task_btf();
    struct thread_state *st = threads.task_storage_get(task, 0, 0);
    if (!st || st->rec.count == 0)
        return 0;
    u32 zero = 0;
    struct counters *c = counts.lookup(&zero);
    if (!c)
        return 0;
    if (!preempt && prev_state != 0)
        flush(st, REC_SLEEP, c);
    else if (bpf_ktime_get_ns() - st->rec.first_ns >= AGE_NS)
        flush(st, REC_AGE, c);
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_process_exec)
{
    struct task_struct *task = bpf_get_current_task_btf();
    struct thread_state *st = threads.task_storage_get(task, 0, 0);
    if (!st)
        return 0;
    u32 zero = 0;
    struct counters *c = counts.lookup(&zero);
    if (!c)
        return 0;
    flush(st, REC_EXEC, c);
    st->generation = 0;  // comm changed: take the filter verdict again
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_process_exit)
{
    struct task_struct *task = bpf_get_current_task_btf();
    struct thread_state *st = threads.task_storage_get(task, 0, 0);
    if (!st)
        return 0;
    u32 zero = 0;
    struct counters *c = counts.lookup(&zero);
    if (c)
        flush(st, REC_EXIT, c);
    threads.task_storage_delete(task);
    return 0;
}
