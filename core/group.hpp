// A group: the sharded table of flights in flight, plus the operations that
// start, join and complete them.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>

#include "core/flight.hpp"
#include "core/spinlock.hpp"
#include "singleflight.h"

namespace sf {

class Pool;

// One shard: a lock, a chained hash table and the counters it guards.
// Every call writes its shard twice (start, completion), and with many keys
// every thread writes every shard, so the line moves between cores on most
// calls.  Everything an ordinary call touches therefore lives in the first
// cache line, buckets included: the table holds only flights in flight, so
// two inline buckets serve until a shard gets busy (then it grows on the
// heap and a call touches one more line).
struct alignas(64) Shard {
    // ---- line 1: touched by every call
    detail::SpinLock mu;
    uint32_t count = 0;      // flights in the table
    uint32_t mask = 0;       // bucket count - 1 (a power of two minus one)
    Flight **buckets = nullptr;
    uint64_t leaders = 0, followers = 0, in_flight = 0;
    Flight *inline_buckets[2] = {};
    // ---- line 2: written only by panics, goexits, forgets, timeouts and
    // two-phase handles
    alignas(64) uint64_t panics = 0;
    uint64_t goexits = 0, forgets = 0;
    std::atomic<uint64_t> timeouts{0};
    // Unreleased call handles; keep sf_group_free from freeing under them.
    std::atomic<uint64_t> handles{0};
};
static_assert(offsetof(Shard, panics) == 64, "the hot part of a shard must fit one cache line");

class Group {
public:
    // nullptr when out of memory.  shards == 0 chooses a default.
    // max_threads: the built-in pool's cap (0: the default).
    static Group *create(unsigned shards, sf_executor_fn executor, void *executor_payload,
                         unsigned max_threads) noexcept;
    // SF_EBUSY (nothing freed) while flights or handles remain.
    static int destroy(Group *g) noexcept;

    int run(const void *key, std::size_t len, sf_fn fn, void *payload, sf_result **result,
            int *shared);  // a thread exit inside fn unwinds through it
    int run_async(const void *key, std::size_t len, sf_fn fn, void *payload, sf_done_fn done,
                  void *done_payload) noexcept;
    int begin(const void *key, std::size_t len, Call **out) noexcept;
    int forget(const void *key, std::size_t len, bool only_unshared) noexcept;
    void stats(sf_group_stats *out) const noexcept;

    // Runs fn as the leader of c's flight and completes it.  Exceptions
    // become SF_EPANIC; a thread exit (forced unwind) completes the flight
    // as SF_EGOEXIT and continues, after calling on_exit(c) if given.
    static int execute(Call *c, sf_fn fn, void *payload, void (*on_exit)(Call *)) ;

    Shard *shard_for(uint64_t hash) noexcept { return &shards_[(hash >> 40) & shard_mask_]; }

    ~Group();  // use destroy(); public only for detail::unmake

private:
    Group() = default;

    // Finds or creates the key's flight under the shard lock.  Returns
    // SF_LEADER / SF_FOLLOWER with *flight referenced for the caller,
    // SF_EDEADLK when the calling thread runs its fn and deadlock_check is set,
    // SF_ENOMEM.
    // lead_here: fn will run on this thread (not do_async's executor).
    int acquire(const void *key, std::size_t len, bool deadlock_check, bool lead_here,
                Shard **shard, Flight **flight) noexcept;
    void check_fork() noexcept;
    Pool *pool() noexcept;

    Shard *shards_ = nullptr;
    std::size_t shard_mask_ = 0;
    uint64_t seed_ = 0;
    sf_executor_fn executor_ = nullptr;
    void *executor_payload_ = nullptr;
    unsigned max_threads_ = 0;
    std::atomic<Pool *> pool_{nullptr};
    std::mutex pool_mu_;
    std::atomic<uint32_t> generation_{0};
    std::atomic<bool> resetting_{false};
};

// Called by flight_complete: unlinks f from its table if it is still there,
// records the outcome in the shard's counters and fixes f->shared.
void group_flight_completed(Flight *f) noexcept;
// A call handle came or went (Shard::handles, fork-aware).  Dropping is
// idempotent: each call is counted once and uncounted once.
void group_add_handle(Call *c, Shard *s) noexcept;
void group_drop_handle(Call *c) noexcept;

}  // namespace sf
