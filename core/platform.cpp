#include "core/platform.hpp"

#include <cerrno>
#include <climits>
#include <ctime>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "core/types.hpp"

namespace sf {
namespace detail {

std::atomic<uint32_t> g_fork_generation{0};

void note_fork_in_child() noexcept { g_fork_generation.fetch_add(1, std::memory_order_relaxed); }

bool futex_wait(std::atomic<uint32_t> *word, uint32_t expected, int64_t timeout_ns,
                bool shared) noexcept {
    struct timespec ts;
    struct timespec *tsp = nullptr;
    if (timeout_ns >= 0) {
        ts.tv_sec = static_cast<time_t>(timeout_ns / 1000000000);
        ts.tv_nsec = static_cast<long>(timeout_ns % 1000000000);
        tsp = &ts;
    }
    // std::atomic<uint32_t> is layout-compatible with uint32_t on every
    // platform we build for; the kernel only compares and sleeps on it.
    long rc = syscall(SYS_futex, reinterpret_cast<uint32_t *>(word),
                      shared ? FUTEX_WAIT : FUTEX_WAIT_PRIVATE, expected, tsp, nullptr, 0);
    return !(rc == -1 && errno == ETIMEDOUT);
}

void futex_wake_all(std::atomic<uint32_t> *word, bool shared) noexcept {
    syscall(SYS_futex, reinterpret_cast<uint32_t *>(word), shared ? FUTEX_WAKE : FUTEX_WAKE_PRIVATE,
            INT_MAX, nullptr, nullptr, 0);
}

void yield_cpu() noexcept { sched_yield(); }

int event_fd_open() noexcept {
    const int fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (fd >= 0) return fd;
    return errno == ENOMEM ? kNoMemory : kBusy;
}

void event_fd_signal(int fd) noexcept {
    if (fd < 0) return;
    uint64_t one = 1;
    // EAGAIN means the counter is already non-zero: readable, as wanted.
    ssize_t rc = write(fd, &one, sizeof one);
    (void)rc;
}

void event_fd_drain(int fd) noexcept {
    if (fd < 0) return;
    uint64_t n;
    ssize_t rc = read(fd, &n, sizeof n);  // non-blocking: EAGAIN when not signalled
    (void)rc;
}

void fd_close(int fd) noexcept {
    if (fd >= 0) close(fd);
}

int64_t now_ns() noexcept {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

}  // namespace detail
}  // namespace sf
