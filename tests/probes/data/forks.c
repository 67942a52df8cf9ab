// Many processes that live for a moment: forks COUNT children one after another, each of
// which makes a few syscalls and exits; prints the children's pids when all are done.
// Waits for a byte on stdin first (the test loads the capture program).
//   forks COUNT
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char go;
    if (argc != 2 || read(0, &go, 1) != 1)
        return 2;
    int count = atoi(argv[1]);
    pid_t *pids = calloc(count, sizeof(pid_t));
    for (int i = 0; i < count; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            for (int j = 0; j < 24; j++)
                getppid();
            _exit(0);
        }
        pids[i] = pid;
        waitpid(pid, NULL, 0);
    }
    for (int i = 0; i < count; i++)
        printf("%d\n", pids[i]);
    return 0;
}
