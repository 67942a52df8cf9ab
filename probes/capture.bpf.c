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
// The reader polls on a timer, so records are submitted without a wakeup:
// wakeups, not chunking, are the expensive part of kernel-to-user transport.

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

// Per thread, across CPUs: the filter verdict and the next record sequence number.
struct thread_state {
    u32 next_seq;
    u32 generation;         // filter generation the verdict was taken under
    u8 traced;
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
BPF_HASH(include_pids, u32, u8, 1024);
BPF_HASH(exclude_pids, u32, u8, 1024);
BPF_HASH(include_comms, struct comm_key, u8, 1024);
BPF_HASH(exclude_comms, struct comm_key, u8, 1024);
BPF_HASH(include_cgroups, u64, u8, 1024);
BPF_HASH(exclude_cgroups, u64, u8, 1024);
// Never written: lets user space read the compiled layout of chunk_rec.
BPF_ARRAY(layout, struct chunk_rec, 1);

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
    u32 zero = 0;
    struct cpu_slot *slot = slots.lookup(&zero);
    struct thread_state *st = threads.task_storage_get(bpf_get_current_task_btf(), 0, 0);
    if (!slot || !st)
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
    threads.task_storage_delete(bpf_get_current_task_btf());
    return 0;
}
