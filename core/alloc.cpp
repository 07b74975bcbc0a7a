#include "core/alloc.hpp"

#include <atomic>
#include <cstdlib>

#include "core/testing.hpp"

namespace sf {
namespace {
// -1: no injected failures; otherwise how many allocations may still succeed.
std::atomic<long> g_budget{-1};
std::atomic<unsigned long> g_count{0};
}  // namespace

namespace detail {
bool injected_failure() noexcept {
    long b = g_budget.load(std::memory_order_relaxed);
    while (b >= 0) {
        if (b == 0) return true;
        if (g_budget.compare_exchange_weak(b, b - 1, std::memory_order_relaxed)) return false;
    }
    return false;
}

void *alloc(std::size_t size) noexcept {
    g_count.fetch_add(1, std::memory_order_relaxed);
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
    if (injected_failure()) {
        g_count.fetch_add(1, std::memory_order_relaxed);
        return nullptr;
    }
    return raw_alloc_aligned(size, align);
}
}  // namespace detail

namespace testing {
void fail_allocations_after(long n) noexcept {
    g_budget.store(n < 0 ? -1 : n, std::memory_order_relaxed);
}
unsigned long allocations() noexcept { return g_count.load(std::memory_order_relaxed); }
}  // namespace testing
}  // namespace sf
