// A group: a namespace of keys.  It owns the flight table, the stats, and
// the executor that runs do_async work (the caller's, or a built-in pool),
// and it offers the four ways to take part in a flight: run (Go's Do), run
// async (DoChan), begin (two-phase) and forget.
#pragma once

#include <cxxabi.h>

#include <atomic>
#include <cstdint>
#include <exception>
#include <mutex>

#include "core/call.hpp"
#include "core/finish.hpp"
#include "core/flight.hpp"
#include "core/hash.hpp"
#include "core/notify.hpp"
#include "core/platform.hpp"
#include "core/stats.hpp"
#include "core/table.hpp"
#include "core/types.hpp"

namespace sf {

class Pool;
class SharedGroup;

extern const char kUnknownException[];

inline void release_flight(void *f) noexcept { flight_release(static_cast<Flight *>(f)); }

class Group {
public:
    // nullptr when out of memory.  slots: the table size (0: the default);
    // max_threads: the built-in pool's cap (0: the default).
    static Group *create(unsigned slots, ExecutorFn executor, void *executor_payload,
                         unsigned max_threads) noexcept;
    // kBusy (nothing freed) while flights or handles remain, or when called
    // on the group's own pool thread.
    static Status destroy(Group *g) noexcept;

    // Go's Do.  fn(Flight *call) runs on this thread when it leads and
    // returns fn's error code.  Returns kOk, kPanic or kGoexit with *result
    // a reference for the caller, or kDeadlock / kNoMemory.  A thread exit
    // inside fn completes the flight as kGoexit and unwinds on through.
    template <class Fn>
    Status run(Key key, Fn &&fn, Flight **result, bool *shared);

    // Go's DoChan: done runs once for this caller.  kBusy when the executor
    // refused (done will not run), kNoMemory.
    Status run_async(Key key, WorkCallback work, DoneCallback done) noexcept;

    // The two-phase form: kLeader / kFollower with *out a handle to release.
    Status begin(Key key, Call **out) noexcept;

    int forget(Key key, bool only_unshared) noexcept;
    Counts counts() const noexcept { return stats_.read(); }

    Table &table() noexcept { return table_; }
    Stats &stats() noexcept { return stats_; }
    uint64_t ident_of(Key key) const noexcept {
        return make_ident(key.size, detail::hash_bytes(key.data, key.size, seed_));
    }

    // Runs fn as the leader of f and completes f.  Exceptions become
    // kPanic; a forced unwind (the thread exiting inside fn) completes f as
    // kGoexit, then on_unwind(arg) if given, and unwinds on.
    // on_ok(f, error) completes f when fn returned normally (and asked for
    // no panic); finish() by default.
    template <class Fn, class OnOk>
    static Status execute(Flight *f, Fn &&fn, OnOk &&on_ok, void (*on_unwind)(void *), void *arg);
    template <class Fn>
    static Status execute(Flight *f, Fn &&fn, void (*on_unwind)(void *) = nullptr,
                          void *arg = nullptr) {
        auto on_ok = [](Flight *lf, int error) noexcept { finish(lf, kOk, error, nullptr); };
        return execute(f, static_cast<Fn &&>(fn), on_ok, on_unwind, arg);
    }

    // In a forked child (from the fork handler): the flights in flight
    // belong to the parent's threads; start empty.
    void after_fork_child() noexcept;

    ~Group();  // use destroy(); public only for detail::unmake
    Group() noexcept = default;

    Group *reg_prev_ = nullptr, *reg_next_ = nullptr;  // the fork registry

    // A shared group's handle is a Group too: its calls go to the shared
    // table (core/shared.hpp), and its own local table serves only the
    // SF_SHARED_RUN_UNSHARED fallback.  nullptr for a group of one process.
    SharedGroup *shared() const noexcept { return shared_; }
    // SF_SHARED_RUN_UNSHARED: the local group a full shared group's calls
    // run in instead; nullptr without the flag.
    Group *fallback() const noexcept { return fallback_; }
    static Group *create_shared(SharedGroup *s, bool run_unshared) noexcept;
    // Runs task(arg) on the group's executor (its own or the built-in
    // pool): kOk, or kBusy / kNoMemory when it was refused.
    Status submit(TaskFn task, void *arg) noexcept;

private:
    Pool *pool() noexcept;
    SharedGroup *shared_ = nullptr;
    Group *fallback_ = nullptr;

    Table table_;
    uint64_t seed_ = 0;
    ExecutorFn executor_ = nullptr;
    void *executor_payload_ = nullptr;
    unsigned max_threads_ = 0;
    std::atomic<Pool *> pool_{nullptr};
    std::mutex pool_mu_;
    Stats stats_;
};

// ---------------------------------------------------------------------------
// The hot path, inline
// ---------------------------------------------------------------------------

template <class Fn, class OnOk>
SF_CATCHES_FORCED_UNWIND Status Group::execute(Flight *f, Fn &&fn, OnOk &&on_ok,
                                               void (*on_unwind)(void *), void *arg) {
    try {
        int err = fn(f);
        if (__builtin_expect(f->lflags & kPanicPending, 0)) {
            finish(f, kPanic, err, nullptr);  // the message is pending in ext
        } else {
            on_ok(f, err);
        }
    } catch (abi::__forced_unwind &) {
        // Go's Goexit: the thread is leaving inside fn.  Release everybody,
        // then let the unwind go on; swallowing it would abort the process.
        finish(f, kGoexit, 0, nullptr);
        if (on_unwind) on_unwind(arg);
        throw;
    } catch (const std::exception &e) {
        finish(f, kPanic, 0, e.what());
    } catch (...) {
        finish(f, kPanic, 0, kUnknownException);
    }
    return f->status();
}

template <class Fn>
Status Group::run(Key key, Fn &&fn, Flight **result, bool *shared) {
    const uint64_t ident = ident_of(key);
    // The uncontended start, inline: an empty home slot, one CAS.
    Flight *f = nullptr;
    Status role = kInvalid;
    const Table::Home home = table_.home_of(ident);
    if (__builtin_expect(Table::empty(home), 1) &&
        (f = flight_new(this, kModeDo, key, ident)) != nullptr && Table::publish_fresh(home, f))
        role = kLeader;
    if (role != kLeader) {
        // A shared group's handle: its home slots are poisoned (never
        // empty), so its calls come here and go back to the C layer.
        if (__builtin_expect(shared_ != nullptr, 0)) return kNotLocal;
        role = table_.acquire(this, kModeDo, key, ident, true, &f, f);
    }
    if (__builtin_expect(role == kLeader, 1)) {
        const Stats::Mine counts = stats_.mine();
        stats_.add(counts, kLeaders);
        // The uncontended end, with the stripe this call already knows.
        auto on_ok = [this, home, counts](Flight *lf, int error) noexcept {
            finish_do_ok(lf, error, home, stats_, counts);
        };
        // A thread exit inside fn takes the caller's result with it.
        const Status st = execute(f, static_cast<Fn &&>(fn), on_ok, release_flight, f);
        *shared = flight_shared(f);
        *result = f;  // the leader's reference becomes the caller's result
        return st;
    }
    if (role != kFollower) return role;
    stats_.add(kFollowers);
    flight_wait(f, -1);
    *shared = true;
    *result = f;  // the joiner's reference, folded at completion
    return f->status();
}

}  // namespace sf
