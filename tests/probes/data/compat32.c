/* A 32-bit program for the compat test: built with gcc -m32 -nostdlib -static, so it
 * needs no 32-bit C library. It waits for a byte on stdin, then makes a known sequence of
 * i386 syscalls through int 0x80 and exits. */
static long sc(long nr, long a, long b, long c)
{
    long r;
    __asm__ volatile ("int $0x80" : "=a"(r) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
    return r;
}

void _start(void)
{
    char byte;
    sc(3, 0, (long)&byte, 1);           /* read(0, &byte, 1) */
    for (int i = 0; i < 5; i++)
        sc(64, 0, 0, 0);                /* getppid */
    sc(20, 0, 0, 0);                    /* getpid */
    sc(1, 0, 0, 0);                     /* exit(0) */
    for (;;)
        ;
}
