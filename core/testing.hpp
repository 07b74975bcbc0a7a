// Test hooks.  Internal: they exist only in the test build of the library
// (singleflight_testing, compiled with SF_TESTING_HOOKS, never installed);
// the shared and static libraries users get have none.
#pragma once

namespace sf {
namespace testing {

// n >= 0: the next n internal allocations succeed and every later one fails
// (the API returns SF_ENOMEM) until the next call; n < 0: never fail (the
// default).  Process-wide and thread-safe.
void fail_allocations_after(long n) noexcept;

// Internal allocations made so far in this process (successful or not):
// calls to the system allocator.
unsigned long allocations() noexcept;

// Allocation requests so far: every allocation, and every block taken from
// a cache.  These are the events failure injection counts, so two runs of
// one input make the same requests, whatever the caches held before.
unsigned long allocation_requests() noexcept;

// Moves the calling thread's cached blocks to the process-wide lists, so that
// whatever ran before, the thread starts from the same state.  Together with
// failure injection counting a block taken from a cache like an allocation,
// a replayed fuzz input or a seeded stress round sees the same allocation
// failures at the same operations as in a fresh process.  (Blocks are never
// freed: flights are read speculatively, so their memory stays a flight.)
void reset_caches() noexcept;

// on: groups created from now on hash keys with one fixed seed instead of
// one drawn from the clock and their address.  Which keys share a home
// slot, and so whether an overflow chain is allocated, then is the same in
// every run of an input: without it a replayed fuzz input made 17
// allocation requests in one run and 16 in the next (about 1 replay in 10
// under ASan).  Process-wide.
void fix_group_seeds(bool on) noexcept;

// Points inside the library where a test may hold a thread, to force an
// interleaving that a race test meets only by chance.
enum class Point : int {
    // A party leaving a two-phase flight (cancel, or release before the
    // end) has seen nobody interested and is about to take the flight out
    // of the table to abandon it.
    kAbandonUnpublish = 0,
    kCount
};

// From now on, every thread reaching `point` calls hook(payload) there
// (nullptr: nothing).  Process-wide; set it while no thread can be at the
// point.
void set_pause(Point point, void (*hook)(void *), void *payload) noexcept;

}  // namespace testing
}  // namespace sf
