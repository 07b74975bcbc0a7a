// Every allocation the library makes goes through here, so that failure is a
// status code (never an exception or abort) and tests can inject it.
#pragma once

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
bool injected_failure() noexcept;
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
