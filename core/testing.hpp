// Test hooks.  Internal: not exported from the shared library; programs that
// link the static library (singleflight_static) may use them.
#pragma once

namespace sf {
namespace testing {

// n >= 0: the next n internal allocations succeed and every later one fails
// (the API returns SF_ENOMEM) until the next call; n < 0: never fail (the
// default).  Process-wide and thread-safe.
void fail_allocations_after(long n) noexcept;

// Internal allocations made so far in this process (successful or not).
unsigned long allocations() noexcept;

// Empties the block caches: the process-wide lists and the calling thread's
// own, so that the next operations allocate exactly as a fresh process would.
// A replayed fuzz input or a seeded stress round starts from the same state
// whatever ran before it.  Call it only while no other thread uses the
// library (blocks cached by other threads are left alone).
void reset_caches() noexcept;

}  // namespace testing
}  // namespace sf
