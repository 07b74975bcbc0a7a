// What the fuzz targets share: the input reader, the checks that abort (a
// crash is what libFuzzer reports), tracing, and a signal-proof poll.
#ifndef SF_FUZZ_HARNESS_HPP
#define SF_FUZZ_HARNESS_HPP

#include <poll.h>

#include <cerrno>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace sf_fuzz {

[[noreturn]] inline void die(const char *what, int line, long a, long b) {
    std::fprintf(stderr, "fuzz: check failed at line %d: %s (%ld vs %ld)\n", line, what, a, b);
    std::fflush(stderr);
    std::abort();
}

// SF_FUZZ_TRACE=1 prints each operation and its status code, to check what
// an input does (writing seeds, reading a regression).
inline bool tracing() {
    static const bool on = std::getenv("SF_FUZZ_TRACE") != nullptr;
    return on;
}
inline void trace(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
inline void trace(const char *fmt, ...) {
    if (!tracing()) return;
    va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fputc('\n', stderr);
}

// Whether fd is readable now: 1 or 0, as poll(2) with a zero timeout says.
// A signal can interrupt even that poll: when nothing is ready and a signal
// is pending, the kernel answers EINTR instead of 0.  libFuzzer's -timeout
// timer delivers SIGALRM every few seconds, and one that lands in a poll of a
// pending flight's fd once made a 60 s run fail with "-1 vs 0" (reproduced at
// will by sending SIGALRM in a loop to `sf_fuzz_capi -runs=N
// fuzz/corpus/two_phase`; strace shows the poll ending in
// ERESTART_RESTARTBLOCK).  The harness must be as robust to signals as the
// library: every system call it makes retries on EINTR.
inline int readable_now(int fd) {
    struct pollfd p = {fd, POLLIN, 0};
    int rc;
    do {
        rc = poll(&p, 1, 0);
    } while (rc < 0 && errno == EINTR);
    return rc;
}

// Input reader: never fails, yields zeros once the input is exhausted.
struct Input {
    const uint8_t *p;
    size_t n;
    uint8_t byte() {
        if (n == 0) return 0;
        n--;
        return *p++;
    }
    uint32_t u32() {
        uint32_t v = 0;
        for (int i = 0; i < 4; i++) v = (v << 8) | byte();
        return v;
    }
    std::string bytes(size_t max) {
        size_t len = byte();
        if (len == 255) len = 255 + size_t(byte()) * 4;  // occasionally long
        if (len > max) len = max;
        if (len > n) len = n;
        std::string s(reinterpret_cast<const char *>(p), len);
        p += len;
        n -= len;
        return s;
    }
};

}  // namespace sf_fuzz

#define EXPECT_EQ(a, b)                                             \
    do {                                                            \
        long a_ = long(a), b_ = long(b);                            \
        if (a_ != b_) sf_fuzz::die(#a " == " #b, __LINE__, a_, b_); \
    } while (0)
#define EXPECT(c)                                   \
    do {                                            \
        if (!(c)) sf_fuzz::die(#c, __LINE__, 0, 0); \
    } while (0)

#endif
