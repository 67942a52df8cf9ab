/* A steady, rate-controlled syscall load for the daemon benchmark (bench/daemon.py).
 *
 *   loadgen RATE THREADS SECONDS ODD_EVERY_MS ODD_MODE
 *
 * THREADS workers together make about RATE syscalls per second for SECONDS seconds. Each
 * worker serves a stream of "requests" the way a server's worker does: a request is one of
 * six fixed sequences of 4 to 8 short blocks of cheap syscalls (fstat/read/write/lseek on
 * /dev/zero and /dev/null, id getters, uname/getcwd/umask, clock_gettime, openat/fcntl/
 * close), its type drawn at random with fixed weights. The sequences repeat, as a real
 * program's do, while their order varies. A worker serves what is due and then sleeps
 * until more is (at least 1 ms, at most 1 s, about 50 syscalls a wake-up), so the rate
 * holds for 4 threads as for 10,000.
 *
 * With ODD_EVERY_MS > 0 an extra thread forks a child every ODD_EVERY_MS ms. ODD_MODE 0:
 * the child serves requests until it has made at least 48 ordinary syscalls and exits
 * (the pattern a model is trained on); ODD_MODE 1: the child makes 48 syscalls this
 * program never makes otherwise (socket, getrandom, sysinfo, ...) and exits. For each
 * child one line goes to stdout:
 * "odd PID T_NS", T_NS being CLOCK_MONOTONIC just after the child's last syscall.
 * At the end: "done SYSCALLS CPU_NS" (syscalls counted by the workers, process CPU time).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <sys/times.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ODD_SYSCALLS 48

static double per_thread;          /* syscalls per second per worker */
static double seconds;
static int fd_zero, fd_null;
static atomic_long total;
static struct timespec t_start;

static double now_s(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t_start.tv_sec) + (t.tv_nsec - t_start.tv_nsec) / 1e9;
}

static void sleep_until(double at)
{
    struct timespec t = t_start;
    long ns = t.tv_nsec + (long)((at - (long)at) * 1e9);
    t.tv_sec += (long)at + ns / 1000000000L;
    t.tv_nsec = ns % 1000000000L;
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &t, NULL);
}

/* One block of ordinary syscalls; returns how many it made. */
static int block(int kind)
{
    char buf[64];
    struct stat st;
    struct utsname u;
    struct timespec ts;
    switch (kind) {
    case 0:
        fstat(fd_zero, &st);
        read(fd_zero, buf, 8);
        write(fd_null, buf, 8);
        lseek(fd_zero, 0, SEEK_SET);
        return 4;
    case 1:
        syscall(SYS_getpid);
        syscall(SYS_getuid);
        syscall(SYS_geteuid);
        syscall(SYS_getgid);
        syscall(SYS_getegid);
        return 5;
    case 2:
        syscall(SYS_clock_gettime, CLOCK_MONOTONIC, &ts);
        syscall(SYS_getppid);
        return 2;
    case 3:
        uname(&u);
        getcwd(buf, sizeof buf);
        umask(022);
        umask(022);
        return 4;
    default: {
        int fd = openat(AT_FDCWD, "/dev/null", O_RDONLY);
        fcntl(fd, F_GETFL);
        close(fd);
        return 3;
    }
    }
}

/* The request types: block kinds, -1 ends; drawn with weights 8, 6, 4, 3, 2, 1. */
static const signed char requests[6][9] = {
    {2, 0, 0, 1, 2, -1},
    {2, 4, 0, 0, 0, 2, -1},
    {2, 1, 3, 0, 2, -1},
    {2, 4, 0, 4, 0, 1, 0, 2, -1},
    {2, 3, 1, 2, -1},
    {2, 4, 1, 0, 0, 0, 3, 2, -1},
};
static const int weights[6] = {8, 6, 4, 3, 2, 1};

static int request(uint64_t *rng)
{
    *rng = *rng * 6364136223846793005ULL + 1442695040888963407ULL;
    int r = (int)((*rng >> 33) % 24), type = 0;
    while (r >= weights[type])
        r -= weights[type++];
    int n = 0;
    for (const signed char *k = requests[type]; *k >= 0; k++)
        n += block(*k);
    return n;
}

static void *worker(void *arg)
{
    uint64_t rng = (uint64_t)(uintptr_t)arg * 0x9E3779B97F4A7C15ULL + 1;
    long done = 0;
    /* workers start spread over the first second so 10,000 of them do not wake at once */
    double start = (double)((uintptr_t)arg % 1000) / 1000.0 / (per_thread > 1000 ? 1000 : 1);
    sleep_until(start);
    for (;;) {
        double t = now_s();
        if (t >= seconds)
            break;
        double due = (t - start) * per_thread;
        while (done < due)
            done += request(&rng);
        double next = start + (done + 1) / per_thread;
        double quantum = 50 / per_thread;
        quantum = quantum < 0.001 ? 0.001 : quantum > 1.0 ? 1.0 : quantum;
        if (next < t + quantum)
            next = t + quantum;
        sleep_until(next);
    }
    atomic_fetch_add(&total, done);
    return NULL;
}

static void odd_syscalls(void)
{
    char buf[16];
    struct sysinfo si;
    struct tms tm;
    struct rlimit rl;
    uid_t a, b, c;
    for (int i = 0; i < ODD_SYSCALLS / 8; i++) {
        int s = socket(AF_UNIX, SOCK_DGRAM, 0);
        close(s);
        getrandom(buf, sizeof buf, 0);
        sysinfo(&si);
        times(&tm);
        getrlimit(RLIMIT_NOFILE, &rl);
        getresuid(&a, &b, &c);
        syscall(SYS_getsid, 0);
    }
}

static void ordinary_syscalls(void)
{
    uint64_t rng = 7;
    int n = 0;
    while (n < ODD_SYSCALLS - 8)
        n += request(&rng);
    while (n++ < ODD_SYSCALLS)
        syscall(SYS_getppid);
}

static int odd_every_ms, odd_mode;

static void *odd_thread(void *arg)
{
    (void)arg;
    volatile uint64_t *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE,
                                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    double next = 0.5;
    while (next < seconds - 0.5) {
        sleep_until(next);
        next += odd_every_ms / 1000.0;
        pid_t pid = fork();
        if (pid == 0) {
            struct timespec t;
            if (odd_mode)
                odd_syscalls();
            else
                ordinary_syscalls();
            clock_gettime(CLOCK_MONOTONIC, &t);   /* vDSO: not a syscall */
            shared[0] = (uint64_t)t.tv_sec * 1000000000ULL + t.tv_nsec;
            _exit(0);
        }
        if (pid < 0)
            continue;
        waitpid(pid, NULL, 0);
        printf("odd %d %llu\n", pid, (unsigned long long)shared[0]);
        fflush(stdout);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: loadgen RATE THREADS SECONDS ODD_EVERY_MS ODD_MODE\n");
        return 2;
    }
    double rate = atof(argv[1]);
    int threads = atoi(argv[2]);
    seconds = atof(argv[3]);
    odd_every_ms = atoi(argv[4]);
    odd_mode = atoi(argv[5]);
    per_thread = rate / threads;
    fd_zero = open("/dev/zero", O_RDONLY);
    fd_null = open("/dev/null", O_WRONLY);
    clock_gettime(CLOCK_MONOTONIC, &t_start);

    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setstacksize(&attr, 64 * 1024);
    pthread_t *tids = calloc(threads + 1, sizeof *tids);
    int started = 0;
    for (int i = 0; i < threads; i++)
        if (pthread_create(&tids[i], &attr, worker, (void *)(uintptr_t)(i + 1)) == 0)
            started++;
    if (started < threads)
        fprintf(stderr, "loadgen: only %d of %d threads started\n", started, threads);
    if (odd_every_ms > 0)
        pthread_create(&tids[threads], &attr, odd_thread, NULL);
    for (int i = 0; i < threads; i++)
        if (tids[i])
            pthread_join(tids[i], NULL);
    if (odd_every_ms > 0)
        pthread_join(tids[threads], NULL);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    long cpu = (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000L
               + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000L;
    printf("done %ld %ld\n", atomic_load(&total), cpu);
    return 0;
}
