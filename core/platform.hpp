// Thin wrappers over the few OS facilities the core needs: a futex to park
// waiters on the flight's own state word, a monotonic clock, and a cheap
// per-thread identity for deadlock detection.
#pragma once

#include <pthread.h>

#include <atomic>
#include <cstdint>

// The few functions an uncontended call is made of: inlined whatever the
// optimisation level (-O2 would leave some of them calls), so the call
// costs the same in every build type.
#if defined(__GNUC__) || defined(__clang__)
#define SF_HOT inline __attribute__((always_inline))
#else
#define SF_HOT inline
#endif

// Functions that catch abi::__forced_unwind: the runtime hands the handler a
// null exception object, which UBSan's null-reference check reports although
// it is how glibc's thread exit works.  Only that one check is turned off.
#if defined(__GNUC__) || defined(__clang__)
#define SF_CATCHES_FORCED_UNWIND __attribute__((no_sanitize("null")))
#else
#define SF_CATCHES_FORCED_UNWIND
#endif

namespace sf {
namespace detail {

// Spin-wait hint: lets the sibling hyperthread run while we poll.
inline void cpu_relax() noexcept {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    asm volatile("yield" ::: "memory");
#endif
}

// Sleeps while *word == expected, for at most timeout_ns (< 0: forever).
// Returns false only on timeout; spurious wakeups return true, callers loop.
// shared: the word is in memory other processes map (a shared group), so
// the kernel must key the wait on the page, not on this process.
bool futex_wait(std::atomic<uint32_t> *word, uint32_t expected, int64_t timeout_ns,
                bool shared = false) noexcept;

// Wakes every thread parked on word (in any process, when shared).
void futex_wake_all(std::atomic<uint32_t> *word, bool shared = false) noexcept;

// Gives the CPU to another thread: a spinning waiter whose holder may have
// been preempted.
void yield_cpu() noexcept;

// An eventfd for sf_call_fd: non-blocking, close-on-exec, readable once
// signalled.  A negative Status when none could be made (kNoMemory, or
// kBusy when the process is out of descriptors).
int event_fd_open() noexcept;
// Makes it readable (a counter already non-zero stays so).  Callers
// disable cancellation: write is a cancellation point.
void event_fd_signal(int fd) noexcept;
// Reads it back to unreadable.  Never blocks.
void event_fd_drain(int fd) noexcept;
// Closes a descriptor.  Callers disable cancellation: close is one.
void fd_close(int fd) noexcept;

// CLOCK_MONOTONIC in nanoseconds.
int64_t now_ns() noexcept;

// Disables thread cancellation for its lifetime.  Wraps every place where the
// library itself reaches a cancellation point (an eventfd write or close) or
// runs a callback that may (done, destroy, an executor) from noexcept code:
// a cancellation acted upon there would unwind into std::terminate.  A
// request that arrives meanwhile stays pending, for the thread's own next
// cancellation point.  Two uncontended atomic updates of the thread's own
// word: kept off the uncontended call path.
class NoCancel {
public:
    NoCancel() noexcept { pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, &old_); }
    ~NoCancel() { pthread_setcancelstate(old_, nullptr); }
    NoCancel(const NoCancel &) = delete;
    NoCancel &operator=(const NoCancel &) = delete;

private:
    int old_;
};

// Call right before something that may end the thread by a forced unwind
// (pthread_testcancel acting on a request).  AddressSanitizer cannot see
// such an unwind and would leave the unwound frames' redzones poisoned on
// the thread's stack, where the thread's exit path trips over them; this is
// its documented hook for "a function that does not return".
#if defined(__SANITIZE_ADDRESS__)
#define SF_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SF_ASAN 1
#endif
#endif
#if defined(SF_ASAN)
extern "C" void __asan_handle_no_return(void);
#endif
inline void before_forced_unwind() noexcept {
#if defined(SF_ASAN)
    __asan_handle_no_return();
#endif
}

// now + timeout_ns, saturated at INT64_MAX: every non-negative timeout is
// valid (the header), the largest included.
inline int64_t deadline_after(int64_t now, int64_t timeout_ns) noexcept {
    return timeout_ns > INT64_MAX - now ? INT64_MAX : now + timeout_ns;
}

// Incremented in the child after every fork() (note_fork_in_child, from the
// library's fork handler in group.cpp, before anything else there), so that
// flights and handles made before the fork can tell they are the parent's
// without a getpid() system call on every operation.
extern std::atomic<uint32_t> g_fork_generation;
void note_fork_in_child() noexcept;
inline uint32_t fork_generation() noexcept {
    return g_fork_generation.load(std::memory_order_relaxed);
}

}  // namespace detail
}  // namespace sf
