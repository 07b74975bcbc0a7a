#include "core/alloc.hpp"

#include <atomic>
#include <cstdlib>

#include "core/testing.hpp"

namespace sf {
namespace {
std::atomic<unsigned long> g_count{0};
#if defined(SF_TESTING_HOOKS)
std::atomic<unsigned long> g_requests{0};
#endif
}  // namespace

namespace detail {
#if defined(SF_TESTING_HOOKS)
// -1: no injected failures; otherwise how many allocations may still succeed.
std::atomic<long> g_alloc_budget{-1};

void count_request() noexcept { g_requests.fetch_add(1, std::memory_order_relaxed); }

bool injected_failure_slow() noexcept {
    long b = g_alloc_budget.load(std::memory_order_relaxed);
    while (b >= 0) {
        if (b == 0) return true;
        if (g_alloc_budget.compare_exchange_weak(b, b - 1, std::memory_order_relaxed)) return false;
    }
    return false;
}
#endif

void *alloc(std::size_t size) noexcept {
    g_count.fetch_add(1, std::memory_order_relaxed);
#if defined(SF_TESTING_HOOKS)
    count_request();
#endif
    if (injected_failure()) return nullptr;
    return std::malloc(size);
}

void dealloc(void *p) noexcept { std::free(p); }

void *raw_alloc_aligned(std::size_t size, std::size_t align) noexcept {
    g_count.fetch_add(1, std::memory_order_relaxed);
    void *p = nullptr;
    return posix_memalign(&p, align, size) == 0 ? p : nullptr;
}

void *alloc_aligned(std::size_t size, std::size_t align) noexcept {
#if defined(SF_TESTING_HOOKS)
    count_request();
#endif
    if (injected_failure()) {
        g_count.fetch_add(1, std::memory_order_relaxed);
        return nullptr;
    }
    return raw_alloc_aligned(size, align);
}
}  // namespace detail

#if defined(SF_TESTING_HOOKS)
namespace testing {
void fail_allocations_after(long n) noexcept {
    detail::g_alloc_budget.store(n < 0 ? -1 : n, std::memory_order_relaxed);
}
unsigned long allocations() noexcept { return g_count.load(std::memory_order_relaxed); }
unsigned long allocation_requests() noexcept { return g_requests.load(std::memory_order_relaxed); }
}  // namespace testing
#endif
}  // namespace sf
