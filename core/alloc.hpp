// Every allocation the library makes goes through here, so that failure is a
// status code (never an exception or abort) and tests can inject it.
#pragma once

#include <atomic>
#include <cstddef>
#include <new>
#include <utility>

namespace sf {
namespace detail {

// nullptr when memory is exhausted or a test injected a failure.
void *alloc(std::size_t size) noexcept;
void dealloc(void *p) noexcept;
// align must be a power of two and a multiple of sizeof(void *).
void *alloc_aligned(std::size_t size, std::size_t align) noexcept;

// The two halves of alloc, for the block caches: a block taken from a cache
// counts as an allocation for failure injection (so a test sees the same
// failures whatever the caches hold), but only a real malloc is counted by
// testing::allocations().
// Failure injection exists only in the build the tests link
// (singleflight_testing, SF_TESTING_HOOKS): the libraries users get pay
// nothing for it on the uncontended path.
#if defined(SF_TESTING_HOOKS)
extern std::atomic<long> g_alloc_budget;  // -1: no failure injected
bool injected_failure_slow() noexcept;
void count_request() noexcept;
// Asked by the caches for every block, and by alloc: one request each.
inline bool cache_request_fails() noexcept {
    count_request();
    return __builtin_expect(g_alloc_budget.load(std::memory_order_relaxed) >= 0, 0) &&
           injected_failure_slow();
}
inline bool injected_failure() noexcept {
    return __builtin_expect(g_alloc_budget.load(std::memory_order_relaxed) >= 0, 0) &&
           injected_failure_slow();
}
#else
inline bool cache_request_fails() noexcept { return false; }
inline bool injected_failure() noexcept { return false; }
#endif
void *raw_alloc_aligned(std::size_t size, std::size_t align) noexcept;

template <class T, class... Args>
T *make(Args &&...args) noexcept {
    void *p = alloc(sizeof(T));
    return p ? new (p) T(std::forward<Args>(args)...) : nullptr;
}

template <class T>
void unmake(T *obj) noexcept {
    if (obj) {
        obj->~T();
        dealloc(obj);
    }
}

}  // namespace detail
}  // namespace sf
