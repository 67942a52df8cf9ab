// One program, many names: starts COUNT children, each of which calls itself by a name of
// its own (prctl PR_SET_NAME, as any process may) and makes a few syscalls before it
// exits. Waits for a byte on stdin first.
//   namer COUNT
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char go;
    if (argc != 2 || read(0, &go, 1) != 1)
        return 2;
    int count = atoi(argv[1]);
    for (int i = 0; i < count; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            char name[16];
            snprintf(name, sizeof(name), "nm%03d", i);
            prctl(PR_SET_NAME, name, 0, 0, 0);
            usleep(2000);   // off the CPU and back: the capture reads the new name
            for (int j = 0; j < 24; j++)
                getppid();
            _exit(0);
        }
        waitpid(pid, NULL, 0);
    }
    return 0;
}
