// Does one of each act for tests/probes/test_acts.py, then execs /bin/true.
// argv: workdir sensitive-file connect-port
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 4)
        return 2;
    char path[1024];
    snprintf(path, sizeof(path), "%s/written.txt", argv[1]);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0640);
    if (fd < 0 || write(fd, "x", 1) != 1)
        return 3;
    close(fd);
    // a path longer than the kernel keeps (ENOENT: asked for all the same)
    char longp[600];
    snprintf(longp, sizeof(longp), "%s/%0300d/f", argv[1], 0);
    open(longp, O_WRONLY | O_CREAT, 0600);
    if (chdir(argv[1]))
        return 4;
    fd = openat(AT_FDCWD, "relative.txt", O_RDWR | O_CREAT, 0600);
    close(fd);
    char renamed[1024];
    snprintf(renamed, sizeof(renamed), "%s/renamed.txt", argv[1]);
    rename(path, renamed);
    chmod(renamed, 0600);
    unlink(renamed);
    fd = open("/etc/hostname", O_RDONLY);      // not sensitive: no act
    close(fd);
    fd = open(argv[2], O_RDONLY);               // sensitive
    char buf[8];
    if (fd < 0 || read(fd, buf, sizeof(buf)) < 0)
        return 5;
    close(fd);

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < 3; i++) {               // one peer, three times: one act
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (connect(s, (struct sockaddr *)&sa, sizeof(sa)))
            return 6;
        close(s);
    }
    int l = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in any = {.sin_family = AF_INET};
    any.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof(any);
    if (bind(l, (struct sockaddr *)&any, sizeof(any)) || listen(l, 4) ||
        getsockname(l, (struct sockaddr *)&any, &alen))
        return 7;
    printf("%d\n", ntohs(any.sin_port));
    fflush(stdout);
    if (setuid(getuid()))
        return 8;
    ptrace(PTRACE_ATTACH, 999999999, 0, 0);     // ESRCH: the request is what counts
    int m = memfd_create("sd-acts-memfd", MFD_CLOEXEC);
    if (m < 0)
        return 9;
    execl("/bin/true", "/bin/true", "acts child", (char *)0);
    return 10;
}
