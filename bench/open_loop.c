// Opens for reading, nothing else: COUNT opens of a file that is not sensitive, by its
// absolute path and by a relative one in turn, each closed at once.
//   open_loop COUNT
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2 || chdir("/usr/lib"))
        return 2;
    int count = atoi(argv[1]);
    for (int i = 0; i < count; i++) {
        int fd = open(i & 1 ? "os-release" : "/usr/lib/os-release", O_RDONLY);
        if (fd >= 0)
            close(fd);
    }
    return 0;
}
