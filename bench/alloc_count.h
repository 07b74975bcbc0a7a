// Heap-allocation counting for the benchmark binaries.
//
// alloc_count.cpp defines malloc and friends in the executable itself.  The
// dynamic linker resolves every library's malloc (libsingleflight.so,
// libstdc++'s operator new, libsqlite3) to the executable's definition first,
// so allocations made inside the library on a benchmark thread are counted
// without LD_PRELOAD.  The counter is thread-local so counting adds no
// shared-cache-line traffic to the measurement.
#pragma once
#include <cstdint>

namespace sfbench {
// Allocations (malloc, calloc, realloc of a new block, aligned variants)
// made by the calling thread since it started.
std::uint64_t thread_allocs() noexcept;
// With SFBENCH_ALLOC_TRACE=N in the environment, prints the stack of the
// first N allocations made by threads that turned tracing on.
void trace_allocs(bool on) noexcept;
}  // namespace sfbench
