#include "core/group.hpp"

#include <sched.h>
#include <unistd.h>

#include <cstring>
#include <cxxabi.h>
#include <exception>
#include <new>

#include "core/alloc.hpp"
#include "core/hash.hpp"
#include "core/platform.hpp"
#include "core/pool.hpp"

namespace sf {

namespace {
constexpr std::size_t kInitialBuckets = sizeof(Shard::inline_buckets) / sizeof(Flight *);
constexpr unsigned kMaxShards = 4096;
const char kRefused[] = "sf_group_do_async: the executor refused the task";
const char kUnknownException[] = "unknown C++ exception";

unsigned round_up_pow2(unsigned n) {
    unsigned p = 1;
    while (p < n) p <<= 1;
    return p;
}

unsigned default_shards() {
    // More shards than cores so that two hot keys rarely share a lock.
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    unsigned want = cpus > 0 ? static_cast<unsigned>(cpus) * 8 : 32;
    if (want < 32) want = 32;
    return round_up_pow2(want > 1024 ? 1024 : want);
}

Flight **bucket_of(Shard *s, uint64_t hash) { return &s->buckets[hash & s->mask]; }

bool key_equals(const Flight *f, uint64_t hash, const void *key, std::size_t len) {
    return f->hash == hash && f->key_len == len && (len == 0 || std::memcmp(f->key, key, len) == 0);
}

void unlink_locked(Shard *s, Flight *f) {
    for (Flight **pp = bucket_of(s, f->hash); *pp; pp = &(*pp)->next) {
        if (*pp == f) {
            *pp = f->next;
            f->next = nullptr;
            f->in_table = false;
            --s->count;
            return;
        }
    }
}

// Doubles the bucket array when chains get long.  Failure to allocate only
// costs speed, so it is not reported.
void maybe_grow_locked(Shard *s) {
    std::size_t n = std::size_t(s->mask) + 1;
    if (s->count <= n) return;
    auto **fresh = static_cast<Flight **>(detail::alloc(2 * n * sizeof(Flight *)));
    if (!fresh) return;
    std::memset(fresh, 0, 2 * n * sizeof(Flight *));
    uint32_t mask = static_cast<uint32_t>(2 * n - 1);
    for (std::size_t i = 0; i < n; ++i) {
        Flight *f = s->buckets[i];
        while (f) {
            Flight *next = f->next;
            f->next = fresh[f->hash & mask];
            fresh[f->hash & mask] = f;
            f = next;
        }
    }
    if (s->buckets != s->inline_buckets) detail::dealloc(s->buckets);
    s->buckets = fresh;
    s->mask = mask;
}

// fn is over for this leader (returned, threw or is unwinding): no more
// finishing through the call, and its handle no longer holds the group.
void settle_leader(Call *c) noexcept {
    call_claim_finish(c);
    group_drop_handle(c);
}

// The do_async leader's own completion callback, after the flight completed.
void finish_async_leader(Call *c) noexcept {
    Flight *f = c->flight;
    if (c->done) {
        detail::NoCancel no_cancel;  // done may reach cancellation points
        try {
            c->done(f->status, reinterpret_cast<sf_result *>(f), f->shared, c->done_payload);
        } catch (...) {
            // done must not throw (header).
        }
    }
    call_unref(c);
}

// fn runs with the executor thread's own cancellation state (a cancellation
// acted upon inside fn is the Goexit analogue); the library's own work
// around it runs with cancellation disabled.
void async_task(void *arg) {
    Call *c = static_cast<Call *>(arg);
    c->flight->leader_thread.store(detail::this_thread_id(), std::memory_order_relaxed);
    Group::execute(c, c->fn, c->fn_payload, finish_async_leader);
    finish_async_leader(c);
}

void release_flight_of(Call *c) noexcept { flight_release(c->flight); }

// A do_async whose task was refused returned an error, and rejected calls do
// not count; the flight it opened still completed (as a panic, for whoever
// joined), so only the call and the execution are taken back.
void uncount_rejected_leader(Shard *s, Flight *f) noexcept {
    if (f->generation != detail::fork_generation()) return;
    std::lock_guard<detail::SpinLock> lock(s->mu);
    --s->leaders;
}

// Hands a task to the group's executor: SF_OK, or SF_EBUSY when it refused
// (returned non-zero or threw; the header calls both a refusal).
int submit_to(sf_executor_fn executor, void *payload, Call *c) noexcept {
    detail::NoCancel no_cancel;  // the executor may reach cancellation points
    try {
        return executor(async_task, c, payload) == 0 ? SF_OK : SF_EBUSY;
    } catch (...) {
        return SF_EBUSY;
    }
}
}  // namespace

Group *Group::create(unsigned shards, sf_executor_fn executor, void *executor_payload,
                     unsigned max_threads) noexcept {
    if (shards > kMaxShards) shards = kMaxShards;
    unsigned n = shards ? round_up_pow2(shards) : default_shards();
    void *mem = detail::alloc(sizeof(Group));
    if (!mem) return nullptr;
    Group *g = new (mem) Group();
    g->shards_ = static_cast<Shard *>(detail::alloc_aligned(n * sizeof(Shard), alignof(Shard)));
    if (!g->shards_) {
        detail::unmake(g);
        return nullptr;
    }
    for (unsigned i = 0; i < n; ++i) new (&g->shards_[i]) Shard();
    g->shard_mask_ = n - 1;
    for (unsigned i = 0; i < n; ++i) {
        Shard &s = g->shards_[i];
        s.buckets = s.inline_buckets;
        s.mask = static_cast<uint32_t>(kInitialBuckets - 1);
    }
    g->seed_ = detail::fold_mul(reinterpret_cast<uintptr_t>(g) ^ 0x243f6a8885a308d3ull,
                                static_cast<uint64_t>(detail::now_ns()) | 1);
    g->executor_ = executor;
    g->executor_payload_ = executor_payload;
    g->max_threads_ = max_threads;
    g->generation_.store(detail::fork_generation(), std::memory_order_relaxed);
    return g;
}

Group::~Group() {
    Pool::destroy(pool_.load(std::memory_order_acquire));
    if (shards_) {
        for (std::size_t i = 0; i <= shard_mask_; ++i) {
            if (shards_[i].buckets != shards_[i].inline_buckets) detail::dealloc(shards_[i].buckets);
            shards_[i].~Shard();
        }
        detail::dealloc(shards_);
    }
}

int Group::destroy(Group *g) noexcept {
    g->check_fork();
    // From a done callback or fn on the group's own pool: freeing would join
    // the very thread that is running, which then returns into freed memory.
    Pool *p = g->pool_.load(std::memory_order_acquire);
    if (p && p->on_worker_thread()) return SF_EBUSY;
    for (std::size_t i = 0; i <= g->shard_mask_; ++i) {
        Shard &s = g->shards_[i];
        std::lock_guard<detail::SpinLock> lock(s.mu);
        if (s.in_flight || s.handles.load(std::memory_order_acquire)) return SF_EBUSY;
    }
    detail::unmake(g);
    return SF_OK;
}

void Group::check_fork() noexcept {
    uint32_t now = detail::fork_generation();
    if (generation_.load(std::memory_order_acquire) == now) return;
    bool expected = false;
    if (!resetting_.compare_exchange_strong(expected, true, std::memory_order_acq_rel)) {
        while (generation_.load(std::memory_order_acquire) != now) sched_yield();
        return;
    }
    if (generation_.load(std::memory_order_acquire) != now) {
        // In a forked child.  The flights in the table belong to parent
        // threads that do not exist here, and a shard lock may have been
        // held by one of them: start every shard empty with a fresh lock.
        // The orphaned flights stay valid for any handle that still points
        // at them; their completion skips this table (generation differs).
        for (std::size_t i = 0; i <= shard_mask_; ++i) {
            Shard &s = shards_[i];
            s.mu.reset();
            std::memset(s.buckets, 0, (s.mask + 1) * sizeof(Flight *));
            s.count = 0;
            s.in_flight = 0;
            s.handles.store(0, std::memory_order_relaxed);
        }
        new (&pool_mu_) std::mutex();
        if (Pool *p = pool_.load(std::memory_order_acquire)) p->reset_after_fork();
        generation_.store(now, std::memory_order_release);
    }
    resetting_.store(false, std::memory_order_release);
}

int Group::acquire(const void *key, std::size_t len, bool deadlock_check, bool lead_here,
                   Shard **shard, Flight **flight) noexcept {
    check_fork();
    const uint64_t h = detail::hash_bytes(key, len, seed_);
    Shard *s = shard_for(h);
    *shard = s;
    const void *self = detail::this_thread_id();
    std::lock_guard<detail::SpinLock> lock(s->mu);
    for (Flight *f = *bucket_of(s, h); f; f = f->next) {
        if (!key_equals(f, h, key, len)) continue;
        if (deadlock_check && f->leader_thread.load(std::memory_order_relaxed) == self)
            return SF_EDEADLK;
        ++f->dups;
        flight_retain(f);
        ++s->followers;
        *flight = f;
        return SF_FOLLOWER;
    }
    Flight *f = flight_new();
    if (!f) return SF_ENOMEM;
    if (!flight_set_key(f, key, len)) {
        flight_release(f);
        return SF_ENOMEM;
    }
    f->hash = h;
    f->shard = s;
    f->generation = detail::fork_generation();
    f->leader_thread.store(lead_here ? self : nullptr, std::memory_order_relaxed);
    f->in_table = true;
    Flight **b = bucket_of(s, h);
    f->next = *b;
    *b = f;
    ++s->count;
    maybe_grow_locked(s);
    ++s->leaders;
    ++s->in_flight;
    *flight = f;
    return SF_LEADER;
}

void group_flight_completed(Flight *f) noexcept {
    Shard *s = f->shard;
    if (f->generation != detail::fork_generation()) {
        // Orphaned by fork: made before it, completed in the child.  The
        // child's table never held it, and the group may even be gone, so
        // the group is not touched.
        f->shared = f->dups > 0;
        return;
    }
    std::lock_guard<detail::SpinLock> lock(s->mu);
    if (f->in_table) unlink_locked(s, f);
    --s->in_flight;
    if (!f->uncounted) {
        if (f->status == SF_EPANIC) ++s->panics;
        if (f->status == SF_EGOEXIT) ++s->goexits;
    }
    f->shared = f->dups > 0;
}

void group_drop_handle(Call *c) noexcept {
    if (!c->handle_counted) return;
    c->handle_counted = false;
    // A handle made before a fork is not counted in the child's group.
    if (c->generation == detail::fork_generation())
        c->shard->handles.fetch_sub(1, std::memory_order_release);
}

void group_add_handle(Call *c, Shard *s) noexcept {
    c->shard = s;
    c->generation = detail::fork_generation();
    c->handle_counted = true;
    s->handles.fetch_add(1, std::memory_order_relaxed);
}

SF_CATCHES_FORCED_UNWIND
int Group::execute(Call *c, sf_fn fn, void *payload, void (*on_exit)(Call *)) {
    Flight *f = c->flight;
    try {
        int err = fn(reinterpret_cast<sf_call *>(c), payload);
        settle_leader(c);
        if (f->panic_pending) {
            flight_complete(f, SF_EPANIC, err,
                            f->pending_message_lost ? kPanicMessageLost : f->pending_message, true);
        } else {
            flight_complete(f, SF_OK, err, nullptr, true);
        }
    } catch (abi::__forced_unwind &) {
        // Go's Goexit: the thread is leaving inside fn.  Release everybody,
        // then let the unwind go on; swallowing it would abort the process.
        settle_leader(c);
        flight_complete(f, SF_EGOEXIT, 0, nullptr, true);
        if (on_exit) on_exit(c);
        throw;
    } catch (const std::exception &e) {
        settle_leader(c);
        flight_complete(f, SF_EPANIC, 0, e.what(), true);
    } catch (...) {
        settle_leader(c);
        flight_complete(f, SF_EPANIC, 0, kUnknownException, true);
    }
    return f->status;
}

int Group::run(const void *key, std::size_t len, sf_fn fn, void *payload, sf_result **result,
               int *shared) {
    Shard *s;
    Flight *f;
    int role = acquire(key, len, true, true, &s, &f);
    if (role < 0) return role;
    int status;
    if (role == SF_FOLLOWER) {
        flight_wait(f, -1);
        status = f->status;
        if (shared) *shared = 1;
    } else {
        Call c;
        c.flight = f;
        c.shard = s;
        c.role = SF_LEADER;
        c.kind = CallKind::Do;
        status = execute(&c, fn, payload, release_flight_of);
        if (shared) *shared = f->shared;
    }
    if (result) {
        *result = reinterpret_cast<sf_result *>(f);  // the caller's reference
    } else {
        flight_release(f);
    }
    return status;
}

int Group::run_async(const void *key, std::size_t len, sf_fn fn, void *payload, sf_done_fn done,
                     void *done_payload) noexcept {
    Call *c = call_new();
    if (!c) return SF_ENOMEM;
    Shard *s;
    Flight *f;
    int role = acquire(key, len, false, false, &s, &f);
    if (role < 0) {
        call_unref(c);
        return role;
    }
    c->flight = f;
    c->role = role;
    group_add_handle(c, s);
    if (role == SF_FOLLOWER) {
        c->kind = CallKind::AsyncFollower;
        call_on_done(c, done, done_payload);
        call_unref(c);  // from now on the notification owns the call
        return SF_OK;
    }
    c->kind = CallKind::AsyncLeader;
    c->fn = fn;
    c->fn_payload = payload;
    c->done = done;
    c->done_payload = done_payload;
    int rc;
    if (executor_) {
        rc = submit_to(executor_, executor_payload_, c);
    } else {
        Pool *p = pool();
        rc = p ? p->submit(async_task, c) : SF_ENOMEM;
    }
    if (rc != SF_OK) {
        // Nobody will run fn: release whoever joined meanwhile, say why.
        f->uncounted = true;
        settle_leader(c);
        flight_complete(f, SF_EPANIC, 0, rc == SF_EBUSY ? kRefused : "sf_group_do_async: out of memory",
                        true);
        uncount_rejected_leader(s, f);
        call_unref(c);
    }
    return rc;
}

int Group::begin(const void *key, std::size_t len, Call **out) noexcept {
    Call *c = call_new();
    if (!c) return SF_ENOMEM;
    Shard *s;
    Flight *f;
    int role = acquire(key, len, false, true, &s, &f);
    if (role < 0) {
        call_unref(c);
        return role;
    }
    c->flight = f;
    c->role = role;
    c->kind = CallKind::TwoPhase;
    group_add_handle(c, s);
    *out = c;
    return role;
}

int Group::forget(const void *key, std::size_t len, bool only_unshared) noexcept {
    check_fork();
    const uint64_t h = detail::hash_bytes(key, len, seed_);
    Shard *s = shard_for(h);
    std::lock_guard<detail::SpinLock> lock(s->mu);
    for (Flight *f = *bucket_of(s, h); f; f = f->next) {
        if (!key_equals(f, h, key, len)) continue;
        if (only_unshared && f->dups > 0) return 0;
        unlink_locked(s, f);
        ++s->forgets;
        return 1;
    }
    return 0;
}

void Group::stats(sf_group_stats *out) const noexcept {
    const_cast<Group *>(this)->check_fork();
    sf_group_stats st{};
    st.version = out->version;
    for (std::size_t i = 0; i <= shard_mask_; ++i) {
        Shard &s = shards_[i];
        std::lock_guard<detail::SpinLock> lock(s.mu);
        st.leaders += s.leaders;
        st.followers += s.followers;
        st.panics += s.panics;
        st.goexits += s.goexits;
        st.forgets += s.forgets;
        st.in_flight += s.in_flight;
        st.timeouts += s.timeouts.load(std::memory_order_relaxed);
    }
    st.calls = st.leaders + st.followers;  // by definition (DESIGN.md)
    *out = st;
}

Pool *Group::pool() noexcept {
    Pool *p = pool_.load(std::memory_order_acquire);
    if (p) return p;
    std::lock_guard<std::mutex> lock(pool_mu_);
    p = pool_.load(std::memory_order_relaxed);
    if (!p) {
        p = Pool::create(max_threads_);
        pool_.store(p, std::memory_order_release);
    }
    return p;
}

}  // namespace sf
