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

}  // namespace testing
}  // namespace sf
