/* N fork + exec + wait of PROGRAM, then prints the nanoseconds they took.
 *
 *   spawn_loop N PROGRAM [RATE]
 *
 * With RATE, spawns are paced to RATE a second on an absolute schedule (one that fell
 * behind catches up without sleeping, so the mean rate holds while the machine allows). */
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4)
        return 2;
    long n = atol(argv[1]);
    double rate = argc == 4 ? atof(argv[3]) : 0.0;
    char *const child[] = {argv[2], NULL};
    char *const env[] = {NULL};
    struct timespec a, b, due;
    clock_gettime(CLOCK_MONOTONIC, &a);
    due = a;
    long step = rate > 0 ? (long)(1e9 / rate) : 0;
    for (long i = 0; i < n; i++) {
        if (step) {
            due.tv_nsec += step;
            while (due.tv_nsec >= 1000000000L) {
                due.tv_nsec -= 1000000000L;
                due.tv_sec++;
            }
            clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &due, NULL);
        }
        pid_t pid = fork();
        if (pid == 0) {
            execve(argv[2], child, env);
            _exit(127);
        }
        int status;
        if (pid < 0 || waitpid(pid, &status, 0) < 0 || status != 0)
            return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &b);
    printf("%ld\n", (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec));
    return 0;
}
