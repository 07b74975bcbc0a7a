#include "core/platform.hpp"

#include <cerrno>
#include <climits>
#include <ctime>
#include <linux/futex.h>
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

namespace sf {
namespace detail {

std::atomic<uint32_t> g_fork_generation{0};

void note_fork_in_child() noexcept { g_fork_generation.fetch_add(1, std::memory_order_relaxed); }

bool futex_wait(std::atomic<uint32_t> *word, uint32_t expected, int64_t timeout_ns) noexcept {
    struct timespec ts;
    struct timespec *tsp = nullptr;
    if (timeout_ns >= 0) {
        ts.tv_sec = static_cast<time_t>(timeout_ns / 1000000000);
        ts.tv_nsec = static_cast<long>(timeout_ns % 1000000000);
        tsp = &ts;
    }
    // std::atomic<uint32_t> is layout-compatible with uint32_t on every
    // platform we build for; the kernel only compares and sleeps on it.
    long rc = syscall(SYS_futex, reinterpret_cast<uint32_t *>(word), FUTEX_WAIT_PRIVATE, expected,
                      tsp, nullptr, 0);
    return !(rc == -1 && errno == ETIMEDOUT);
}

void futex_wake_all(std::atomic<uint32_t> *word) noexcept {
    syscall(SYS_futex, reinterpret_cast<uint32_t *>(word), FUTEX_WAKE_PRIVATE, INT_MAX, nullptr,
            nullptr, 0);
}

int64_t now_ns() noexcept {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<int64_t>(ts.tv_sec) * 1000000000 + ts.tv_nsec;
}

}  // namespace detail
}  // namespace sf
