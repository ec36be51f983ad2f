/* Counts fsync and fdatasync calls of the process it is preloaded into (LD_PRELOAD).
 *
 * bench/_child.py builds it with the system C compiler and reads the count through
 * bench_fsync_calls() (ctypes), before and after the workload. Unlike strace, it does
 * not stop the process at each call, so group commit batches as it does untraced. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdatomic.h>

static atomic_long calls;

long bench_fsync_calls(void) { return atomic_load(&calls); }

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    atomic_fetch_add(&calls, 1);
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    atomic_fetch_add(&calls, 1);
    return real(fd);
}
