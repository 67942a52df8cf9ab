// An attack split into short steps: COUNT children, one after another, each making a few
// syscalls and exiting, too few for a window of its own to add up to the evidence rule.
// Waits for a byte on stdin first.
//   shortlived COUNT
#include <stdlib.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char go;
    if (argc != 2 || read(0, &go, 1) != 1)
        return 2;
    for (int i = atoi(argv[1]); i > 0; i--) {
        pid_t pid = fork();
        if (pid == 0) {
            for (int j = 0; j < 5; j++)
                syscall(SYS_getppid);
            syscall(SYS_exit_group, 0);
        }
        waitpid(pid, NULL, 0);
    }
    return 0;
}
