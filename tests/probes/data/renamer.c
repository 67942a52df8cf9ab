// Calls itself NAME (prctl PR_SET_NAME, as any process may), then makes COUNT getppid
// calls. Waits for a byte on stdin before the rename and another after it, so the test
// can load the capture program first and change its filters once the name is taken.
//   renamer NAME COUNT
#include <stdlib.h>
#include <sys/prctl.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    char go;
    if (argc != 3 || read(0, &go, 1) != 1)
        return 2;
    prctl(PR_SET_NAME, argv[1], 0, 0, 0);
    if (read(0, &go, 1) != 1)
        return 3;
    for (int i = atoi(argv[2]); i > 0; i--)
        getppid();
    return 0;
}
