// A parent with a hostile name that starts short-lived programs the ways an attacker
// would: from a memfd, and from a file unlinked before it runs; their arguments hold a
// newline, terminal escapes and bytes that are not UTF-8. Waits for a byte on stdin first
// (the test loads the capture program), then prints the children's pids and exits.
//   spawner PROGRAM DIR   PROGRAM: what the children run (e.g. /bin/true); DIR: where
//                         the to-be-deleted copy goes
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static char *const child_argv[] = {"sd-child", "--evil\nMar 1 fake log line",
                                   "\x1b[2J\x07", "\xff\xfe", NULL};
static char *const child_env[] = {NULL};

static int copy_into(int out, const char *from)
{
    int in = open(from, O_RDONLY);
    char buf[65536];
    ssize_t n;
    if (in < 0)
        return -1;
    while ((n = read(in, buf, sizeof(buf))) > 0)
        if (write(out, buf, n) != n)
            return -1;
    close(in);
    return n < 0 ? -1 : 0;
}

static pid_t run_memfd(const char *program)
{
    pid_t pid = fork();
    if (pid == 0) {
        int fd = memfd_create("sd\x1bpayload", 0);
        if (fd < 0 || copy_into(fd, program))
            _exit(90);
        fexecve(fd, child_argv, child_env);
        _exit(91);
    }
    return pid;
}

static pid_t run_deleted(const char *program, const char *dir)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/sd-deleted", dir);
    int out = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0755);
    if (out < 0 || copy_into(out, program))
        exit(92);
    close(out);
    pid_t pid = fork();
    if (pid == 0) {
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0 || unlink(path))
            _exit(93);
        fexecve(fd, child_argv, child_env);
        _exit(94);
    }
    return pid;
}

int main(int argc, char **argv)
{
    char go;
    if (argc != 3 || read(0, &go, 1) != 1)
        return 2;
    prctl(PR_SET_NAME, "evil\n\x1b[31mx", 0, 0, 0);
    pid_t a = run_memfd(argv[1]);
    int status;
    waitpid(a, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) >= 90)
        return 3;
    pid_t b = run_deleted(argv[1], argv[2]);
    waitpid(b, &status, 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) >= 90)
        return 4;
    printf("%d %d\n", a, b);
    return 0;
}
