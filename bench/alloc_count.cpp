#include "alloc_count.h"

#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdlib>

#include <execinfo.h>
#include <unistd.h>

// glibc's real allocator entry points; defining malloc here shadows the
// public names for the whole process, and these let us forward to it.
extern "C" {
void *__libc_malloc(std::size_t);
void *__libc_calloc(std::size_t, std::size_t);
void *__libc_realloc(void *, std::size_t);
void __libc_free(void *);
void *__libc_memalign(std::size_t, std::size_t);
}

namespace {
// initial-exec TLS in the executable: one add on a thread-private line.
thread_local std::uint64_t tl_allocs = 0;
thread_local bool tl_tracing = false;
thread_local bool tl_in_trace = false;
std::atomic<int> g_trace_budget{-1};  // -1: not read from the environment yet

// Prints where an allocation in the measured loop came from, so that a
// non-zero allocs/call can be traced to its line in the library.
void trace_one() {
    if (tl_in_trace) return;
    if (g_trace_budget.fetch_sub(1) <= 0) return;
    tl_in_trace = true;  // backtrace() may allocate on first use
    void *frames[24];
    int n = backtrace(frames, 24);
    static const char sep[] = "---- allocation in the measured loop:\n";
    ssize_t rc = write(2, sep, sizeof sep - 1);
    (void)rc;
    backtrace_symbols_fd(frames, n, 2);
    tl_in_trace = false;
}
}  // namespace

std::uint64_t sfbench::thread_allocs() noexcept { return tl_allocs; }

void sfbench::trace_allocs(bool on) noexcept {
    if (g_trace_budget.load() == -1) {
        const char *e = std::getenv("SFBENCH_ALLOC_TRACE");
        g_trace_budget.store(e ? std::atoi(e) : 0);
    }
    tl_tracing = on && g_trace_budget.load() > 0;
}

extern "C" {

__attribute__((visibility("default"))) void *malloc(std::size_t n) {
    ++tl_allocs;
    if (__builtin_expect(tl_tracing, 0)) trace_one();
    return __libc_malloc(n);
}

__attribute__((visibility("default"))) void *calloc(std::size_t a, std::size_t b) {
    ++tl_allocs;
    if (__builtin_expect(tl_tracing, 0)) trace_one();
    return __libc_calloc(a, b);
}

__attribute__((visibility("default"))) void *realloc(void *p, std::size_t n) {
    // Growing in place is not a new allocation from the caller's point of
    // view, but the allocator may have had to find a block: count it, as Go's
    // runtime counts every growth.
    ++tl_allocs;
    return __libc_realloc(p, n);
}

__attribute__((visibility("default"))) void free(void *p) { __libc_free(p); }

__attribute__((visibility("default"))) void *memalign(std::size_t a, std::size_t n) {
    ++tl_allocs;
    return __libc_memalign(a, n);
}

__attribute__((visibility("default"))) void *aligned_alloc(std::size_t a, std::size_t n) {
    ++tl_allocs;
    return __libc_memalign(a, n);
}

__attribute__((visibility("default"))) int posix_memalign(void **out, std::size_t a,
                                                          std::size_t n) {
    if (a < sizeof(void *) || (a & (a - 1)) != 0) return EINVAL;
    ++tl_allocs;
    void *p = __libc_memalign(a, n);
    if (!p) return ENOMEM;
    *out = p;
    return 0;
}

}  // extern "C"
