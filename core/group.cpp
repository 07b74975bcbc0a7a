#include "core/group.hpp"

#include <pthread.h>
#include <unistd.h>

#include <mutex>
#include <new>

#include "core/alloc.hpp"
#include "core/cache.hpp"
#include "core/notify.hpp"
#include "core/pool.hpp"
#include "core/shared.hpp"
#include "core/testing.hpp"
#include "core/thread.hpp"

namespace sf {

const char kUnknownException[] = "unknown C++ exception";

namespace {
const char kRefused[] = "sf_group_do_async: the executor refused the task";
const char kNoThread[] = "sf_group_do_async: out of memory";

// ---------------------------------------------------------------------------
// The fork registry: every live group, so that the child of a fork can
// reset them all before any other code runs there (instead of every call
// checking whether the process forked).
// ---------------------------------------------------------------------------
std::mutex g_registry_mu;
Group *g_registry = nullptr;

// The library's one fork handler: its locks are taken in one order.
void fork_prepare() noexcept {
    g_registry_mu.lock();
    detail::caches_fork_prepare();
}
void fork_parent() noexcept {
    detail::caches_fork_parent();
    g_registry_mu.unlock();
}
void fork_child() noexcept {
    detail::note_fork_in_child();  // first: everything below is the parent's from here on
    detail::caches_fork_child();
    new (&g_registry_mu) std::mutex();  // its holder, this thread, is the only one left
    detail::threads_after_fork_child();
    for (Group *g = g_registry; g; g = g->reg_next_) g->after_fork_child();
}
struct ForkHandlers {
    ForkHandlers() noexcept { pthread_atfork(fork_prepare, fork_parent, fork_child); }
} g_fork_handlers;

void register_group(Group *g) noexcept {
    std::lock_guard<std::mutex> lock(g_registry_mu);
    g->reg_next_ = g_registry;
    if (g_registry) g_registry->reg_prev_ = g;
    g_registry = g;
}

void unregister_group(Group *g) noexcept {
    std::lock_guard<std::mutex> lock(g_registry_mu);
    if (g->reg_prev_) g->reg_prev_->reg_next_ = g->reg_next_;
    else g_registry = g->reg_next_;
    if (g->reg_next_) g->reg_next_->reg_prev_ = g->reg_prev_;
}

// ---------------------------------------------------------------------------
// do_async
// ---------------------------------------------------------------------------

void run_leader_done(Follower *task) noexcept {
    if (!task->done) return;
    Flight *f = task->flight;
    detail::NoCancel no_cancel;  // done may reach cancellation points
    task->done.invoke(task->done.fn, task->done.payload, f->status(), f, flight_shared(f));
}

// The task record's end: the leader's reference and the record go.
void finish_task(Follower *task) noexcept {
    Flight *f = task->flight;
    detail::call_cache().put(task);
    flight_release(f);
}

void on_task_unwind(void *arg) noexcept {
    auto *task = static_cast<Follower *>(arg);
    run_leader_done(task);
    finish_task(task);
}

// fn runs with the executor thread's own cancellation state (a
// cancellation acted upon inside fn is the Goexit analogue); the library's
// own work around it runs with cancellation disabled.
void async_task(void *arg) {
    auto *task = static_cast<Follower *>(arg);
    Flight *f = task->flight;
    f->leader_thread.store(detail::thread_serial(), std::memory_order_relaxed);
    const WorkCallback work = task->work;
    Group::execute(
        f, [&](Flight *call) { return work.run(work.fn, work.payload, call); }, on_task_unwind,
        task);
    run_leader_done(task);
    finish_task(task);
}

// Hands a task to the group's executor: kOk, or kBusy when it refused
// (returned non-zero or threw; the header calls both a refusal).
Status submit_to(ExecutorFn executor, void *payload, Follower *task) noexcept {
    detail::NoCancel no_cancel;  // the executor may reach cancellation points
    try {
        return executor(async_task, task, payload) == 0 ? kOk : kBusy;
    } catch (...) {
        return kBusy;
    }
}
}  // namespace

// ---------------------------------------------------------------------------
// lifecycle
// ---------------------------------------------------------------------------

#if defined(SF_TESTING_HOOKS)
namespace {
std::atomic<bool> g_fixed_seeds{false};
}
void testing::fix_group_seeds(bool on) noexcept {
    g_fixed_seeds.store(on, std::memory_order_relaxed);
}
#endif

Group *Group::create(unsigned slots, ExecutorFn executor, void *executor_payload,
                     unsigned max_threads) noexcept {
    Group *g = detail::make<Group>();
    if (!g) return nullptr;
    if (!g->table_.init(slots)) {
        detail::unmake(g);
        return nullptr;
    }
    g->seed_ = detail::fold_mul(reinterpret_cast<uintptr_t>(g) ^ 0x243f6a8885a308d3ull,
                                static_cast<uint64_t>(detail::now_ns()) | 1);
#if defined(SF_TESTING_HOOKS)
    if (g_fixed_seeds.load(std::memory_order_relaxed)) g->seed_ = 0x243f6a8885a308d3ull;
#endif
    g->executor_ = executor;
    g->executor_payload_ = executor_payload;
    g->max_threads_ = max_threads;
    register_group(g);
    return g;
}

Group::~Group() {
    Pool::destroy(pool_.load(std::memory_order_acquire));
    table_.destroy();
}

Group *Group::create_shared(SharedGroup *s, bool run_unshared) noexcept {
    // The C layer sends a shared handle's calls to the shared path before
    // they reach run or begin.  One home slot, poisoned, all the same: a
    // path that forgot would fall to the slow path, which hands the call
    // back (kNotLocal), never lead a flight no other process can see.
    Group *g = create(1, nullptr, nullptr, 0);
    if (!g) return nullptr;
    g->table_.poison();
    g->shared_ = s;
    if (run_unshared) {
        // The fallback when the shared table or arena is full: a group of
        // this process alone.
        g->fallback_ = create(0, nullptr, nullptr, 0);
        if (!g->fallback_) {
            g->shared_ = nullptr;
            destroy(g);
            return nullptr;
        }
    }
    return g;
}

Status Group::submit(TaskFn task, void *arg) noexcept {
    if (executor_) {
        detail::NoCancel no_cancel;  // the executor may reach cancellation points
        try {
            return executor_(task, arg, executor_payload_) == 0 ? kOk : kBusy;
        } catch (...) {
            return kBusy;
        }
    }
    Pool *p = pool();
    return p ? p->submit(task, arg) : kNoMemory;
}

Status Group::destroy(Group *g) noexcept {
    // From a done callback or fn on the group's own pool: freeing would join
    // the very thread that is running, which then returns into freed memory.
    Pool *p = g->pool_.load(std::memory_order_acquire);
    if (p && p->on_worker_thread()) return kBusy;
    const Counts c = g->stats_.read();
    if (c.leaders != c.completed || c.handles != 0) return kBusy;
    if (g->fallback_ && destroy(g->fallback_) != kOk) return kBusy;
    g->fallback_ = nullptr;
    if (g->shared_) {
        // Results of the shared group stay valid after this (it detaches
        // when the last is released); refused on its own helper thread.
        if (const Status st = shared_close(g->shared_)) return st;
        g->shared_ = nullptr;
    }
    unregister_group(g);
    detail::unmake(g);
    return kOk;
}

void Group::after_fork_child() noexcept {
    // The flights in the table, and the handles on them, belong to the
    // parent's threads, which do not exist here.  Count them as gone (the
    // orphans' own completion and release skip the group), start every
    // slot empty, and give the pool a fresh start.
    const Counts c = stats_.read();
    stats_.add(kCompleted, c.leaders - c.completed);
    stats_.sub(kHandles, c.handles);
    table_.orphan_all();
    if (shared_) table_.poison();  // a shared group's handle stays one
    new (&pool_mu_) std::mutex();
    if (Pool *p = pool_.load(std::memory_order_acquire)) p->reset_after_fork();
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

// ---------------------------------------------------------------------------
// the ways in
// ---------------------------------------------------------------------------

Status Group::run_async(Key key, WorkCallback work, DoneCallback done) noexcept {
    Flight *f;
    const Status role = table_.acquire(this, kModeAsync, key, ident_of(key), false, &f);
    if (role < 0) return role;
    if (role == kFollower) {
        stats_.add(kFollowers);
        Follower *c = follower_new(f, kRoleFollower);
        if (!c) {
            // Cannot notify this caller: give its place back.
            if (!table_.unjoin(f)) {
                f->interest.fetch_sub(1, std::memory_order_seq_cst);
                flight_release(f);
            }
            stats_.sub(kFollowers);
            return kNoMemory;
        }
        notify_on_done(c, done);
        follower_unref(c);  // from now on the notification owns the record
        return kOk;
    }
    stats_.add(kLeaders);
    Follower *task = follower_new(f, kRoleAsyncLeader);
    Status rc = kNoMemory;
    if (task) {
        task->work = work;
        task->done = done;
        if (executor_) {
            rc = submit_to(executor_, executor_payload_, task);
        } else {
            Pool *p = pool();
            rc = p ? p->submit(async_task, task) : kNoMemory;
        }
    }
    if (rc != kOk) {
        // Nobody will run fn: release whoever joined meanwhile, say why.
        // The refused call and its flight are counted nowhere.
        f->lflags = uint8_t(f->lflags | kUncounted);
        stats_.sub(kLeaders);
        finish(f, kPanic, 0, rc == kBusy ? kRefused : kNoThread);
        if (task) detail::call_cache().put(task);
        flight_release(f);
    }
    return rc;
}

Status Group::begin(Key key, Call **out) noexcept {
    const uint64_t ident = ident_of(key);
    // The uncontended start, as in run: an empty home slot, one CAS.
    Flight *f = nullptr;
    Status role = kInvalid;
    const Table::Home home = table_.home_of(ident);
    if (Table::empty(home) && (f = flight_new(this, kModeTwoPhase, key, ident)) != nullptr &&
        Table::publish_fresh(home, f))
        role = kLeader;
    if (role != kLeader) {
        if (shared_) return kNotLocal;  // see run()
        role = table_.acquire(this, kModeTwoPhase, key, ident, false, &f, f);
    }
    if (role < 0) return role;
    if (role == kLeader) {
        const Stats::Mine counts = stats_.mine();
        stats_.add(counts, kLeaders);
        stats_.add(counts, kHandles);  // every two-phase leader handle is counted
        *out = as_call(f);
        return kLeader;
    }
    Follower *c = follower_new(f, kRoleFollower);
    if (!c) {
        if (!table_.unjoin(f)) {
            f->interest.fetch_sub(1, std::memory_order_seq_cst);
            flight_release(f);
        }
        return kNoMemory;
    }
    stats_.add(kFollowers);
    stats_.add(kHandles);
    c->flags.fetch_or(uint8_t(kCounted), std::memory_order_relaxed);
    c->epoch = current_epoch();
    *out = as_call(c);
    return kFollower;
}

int Group::forget(Key key, bool only_unshared) noexcept {
    const int rc = table_.forget(key, ident_of(key), only_unshared);
    if (rc == 1) stats_.add(kForgets);
    return rc;
}

}  // namespace sf
