/* A 64-bit program that also enters the kernel through int 0x80, where syscall numbers are
 * i386 ones (getppid is 64 there, semget here). Built with gcc -nostdlib -static, so its
 * syscalls are exactly these. It waits for a byte on stdin, then mixes the two entries. */
static long sc64(long nr, long a, long b, long c)
{
    long r;
    __asm__ volatile ("syscall" : "=a"(r) : "a"(nr), "D"(a), "S"(b), "d"(c)
                      : "rcx", "r11", "memory");
    return r;
}

static long sc32(long nr)
{
    long r;
    __asm__ volatile ("int $0x80" : "=a"(r) : "a"(nr), "b"(0), "c"(0), "d"(0) : "memory");
    return r;
}

void _start(void)
{
    char byte;
    sc64(0, 0, (long)&byte, 1);         /* read(0, &byte, 1) */
    for (int i = 0; i < 5; i++)
        sc32(64);                       /* i386 getppid */
    for (int i = 0; i < 3; i++)
        sc64(110, 0, 0, 0);             /* x86_64 getppid */
    sc32(20);                           /* i386 getpid */
    sc64(60, 0, 0, 0);                  /* exit(0) */
    for (;;)
        ;
}
