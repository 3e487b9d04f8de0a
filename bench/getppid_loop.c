/* Syscall rate: call getppid() in a tight loop for a fixed time and print
 * calls per second. getppid is about the cheapest syscall there is (and,
 * unlike getpid, never cached by libc), so the time per call is mostly the
 * syscall entry and exit path, which is what syscall tracepoints slow down.
 *
 *   getppid_loop SECONDS   (at most 60)
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);   /* vDSO: not a syscall */
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 1.0;
    if (seconds <= 0 || seconds > 60)
        seconds = 1.0;
    long calls = 0;
    double t0 = now(), t;
    do {
        for (int i = 0; i < 10000; i++)
            syscall(SYS_getppid);
        calls += 10000;
        t = now();
    } while (t - t0 < seconds);
    printf("%.0f\n", calls / (t - t0));
    return 0;
}
