// Stress / soak test for libsingleflight with fault injection.
//
// Many threads hammer a small key set through every entry point (sf_group_do,
// sf_group_do_async, the two-phase API, forget, forget_unshared) while the
// work function randomly returns errors, throws, panics, exits its thread or
// sleeps, a custom executor randomly refuses tasks, and (unless --no-oom)
// internal allocations fail in bursts.  Invariants are checked on every operation, by a
// watchdog thread while the run goes on, and at the end of every round, when
// the round's groups are drained, audited against the test's own books and
// freed.
//
// Usage: sf_stress [--seconds N] [--threads N] [--round-ms N] [--margin-ms N]
//                  [--no-oom] [--seed N]
// SF_STRESS_SECONDS in the environment overrides the default duration.
// --seed defaults to the clock; the seed is printed first, and a failing run
// prints the command that runs it again with the same seed (ctest uses a
// fixed one: tests/suites.txt).
// Exit status 0 only when every invariant held.

#include <singleflight.h>

#include "core/testing.hpp"

#include <poll.h>
#include <pthread.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cinttypes>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <mutex>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch())
        .count();
}

// ---------------------------------------------------------------------------
// Configuration and failure reporting
// ---------------------------------------------------------------------------

struct Config {
    double seconds = 15;
    int threads = 8;
    int round_ms = 1500;
    int margin_ms = 20000;  // generous: TSan on two shared cores is slow
    bool oom = true;
    uint64_t seed = 0;
};
Config cfg;

std::atomic<uint64_t> g_failures{0};
std::mutex g_print_mu;

void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void fail(const char *fmt, ...) {
    // Keep going after a failure so one run reports as many broken
    // invariants as possible, but cap the noise.
    uint64_t n = g_failures.fetch_add(1) + 1;
    if (n > 50) return;
    std::lock_guard<std::mutex> lk(g_print_mu);
    std::fprintf(stderr, "FAIL: ");
    va_list ap;
    va_start(ap, fmt);
    std::vfprintf(stderr, fmt, ap);
    va_end(ap);
    std::fputc('\n', stderr);
}

#define CHECK(cond, ...)                \
    do {                                \
        if (!(cond)) fail(__VA_ARGS__); \
    } while (0)

// ---------------------------------------------------------------------------
// Keys: a small set so flights collide, covering the empty key, embedded
// NULs, and keys long enough to need a heap copy inside the library.
// ---------------------------------------------------------------------------

std::vector<std::string> g_keys;

void init_keys() {
    g_keys.push_back(std::string());
    g_keys.push_back("a");
    g_keys.push_back("hot");
    g_keys.push_back(std::string("\0nul\0", 5));
    g_keys.push_back("user:42");
    g_keys.push_back(std::string(100, 'L'));
    g_keys.push_back(std::string(300, '\xff'));
    g_keys.push_back("b");
}

// ---------------------------------------------------------------------------
// Fault and operation counters (for the final figures)
// ---------------------------------------------------------------------------

struct Figures {
    std::atomic<uint64_t> ops{0}, do_calls{0}, async_calls{0}, begin_calls{0}, forget_calls{0},
        stats_reads{0};
    std::atomic<uint64_t> f_error{0}, f_throw{0}, f_panic_call{0}, f_pthread_exit{0}, f_sleep{0},
        f_refuse{0}, f_release_leader{0}, f_timeout_waits{0}, f_nested_deadlk{0}, f_oom_bursts{0},
        f_enomem_returns{0}, f_forget_in_fn{0}, f_cancels{0}, f_abandons{0};
    std::atomic<uint64_t> values_created{0}, values_destroyed{0};
    std::atomic<uint64_t> rounds{0}, groups_freed{0};
} fig;

// ---------------------------------------------------------------------------
// Values: every value records which key and which execution made it, and how
// that execution ended, so any caller can check that the result it got is the
// result its flight produced.
// ---------------------------------------------------------------------------

constexpr uint32_t kLive = 0x5f11ab1e;
constexpr uint32_t kDead = 0xdeadf11e;

struct Value {
    uint32_t magic;
    int key;
    int err;
    uint64_t exec;
};

void destroy_value(void *p) {
    Value *v = static_cast<Value *>(p);
    CHECK(v != nullptr, "destroy called with NULL");
    if (!v) return;
    CHECK(v->magic == kLive, "destroy on a value that is not live (magic %08x)", v->magic);
    v->magic = kDead;
    fig.values_destroyed.fetch_add(1);
    delete v;
}

Value *new_value(int key, int err, uint64_t exec) {
    fig.values_created.fetch_add(1);
    return new Value{kLive, key, err, exec};
}

std::atomic<uint64_t> g_exec_ids{1};

// ---------------------------------------------------------------------------
// Per-group books: what the test itself did, audited against sf_group_stats.
// ---------------------------------------------------------------------------

struct Books {
    std::atomic<uint64_t> calls{0};     // calls that started or joined a flight
    std::atomic<uint64_t> leaders{0};   // flights started
    std::atomic<uint64_t> panics{0};    // flights that completed as a panic
    std::atomic<uint64_t> goexits{0};   // flights that completed as goexit
    std::atomic<uint64_t> timeouts{0};  // sf_call_wait returning ETIMEDOUT
    std::atomic<uint64_t> forgets{0};   // forget/forget_unshared returning 1
    // do_async refused by the executor (SF_EBUSY) or by a failing pool
    // allocation (SF_ENOMEM): the library may already have started the flight
    // and completes it as a panic for anyone who joined, so it may count one
    // leader and one panic that ran no fn.
    std::atomic<uint64_t> refused{0};
    std::atomic<uint64_t> async_pending{0};  // accepted do_async, done not yet run
    std::atomic<uint64_t> on_done_pending{0};
    std::atomic<uint64_t> cancels{0};   // sf_call_cancel returning 0 or 1
    std::atomic<uint64_t> abandons{0};  // abandon callbacks that ran
};

// ---------------------------------------------------------------------------
// "Each flight runs exactly once": per key, the executions currently running.
// Two executions of one key may overlap only if a forget of that key
// completed after the older flight's caller entered the library.  The forget
// counter is bumped under the key's mutex right after the forget returns, and
// an execution registers under the same mutex, so the check has no false
// positives: a new flight for a key can only start after the old one left the
// table, i.e. after a forget that is fully accounted before we look.
// ---------------------------------------------------------------------------

struct Running {
    uint64_t exec;
    uint64_t forgets_at_entry;
    const char *kind;
    int64_t started_ns;
};

struct KeyTrack {
    std::mutex mu;
    uint64_t forgets = 0;
    std::vector<Running> running;
};

struct GroupCtx;

struct KeyTracks {
    std::vector<KeyTrack> k;
    KeyTracks() : k(g_keys.size()) {}

    uint64_t forgets_now(int key) {
        std::lock_guard<std::mutex> lk(k[key].mu);
        return k[key].forgets;
    }
    void start(int key, uint64_t exec, uint64_t entry_forgets, const char *kind) {
        KeyTrack &t = k[key];
        std::lock_guard<std::mutex> lk(t.mu);
        for (const Running &r : t.running) {
            // Either execution may belong to the older flight (an async fn
            // can start long after its flight was created, even after the
            // flight was forgotten and replaced), so the forget must have
            // come after the earlier of the two entries.
            CHECK(t.forgets > std::min(r.forgets_at_entry, entry_forgets),
                  "key %d: %s execution %" PRIu64 " started while %s execution %" PRIu64
                  " (started %.3f ms before) of the same key still runs with no "
                  "forget since its caller entered (forgets %" PRIu64 ", at its entry %" PRIu64
                  ", at this entry %" PRIu64 ")",
                  key, kind, exec, r.kind, r.exec, (now_ns() - r.started_ns) / 1e6, t.forgets,
                  r.forgets_at_entry, entry_forgets);
        }
        t.running.push_back(Running{exec, entry_forgets, kind, now_ns()});
    }
    void stop(int key, uint64_t exec) {
        KeyTrack &t = k[key];
        std::lock_guard<std::mutex> lk(t.mu);
        auto it = std::find_if(t.running.begin(), t.running.end(),
                               [&](const Running &r) { return r.exec == exec; });
        CHECK(it != t.running.end(), "key %d: execution %" PRIu64 " lost", key, exec);
        if (it != t.running.end()) t.running.erase(it);
    }
};

// Runs `forget` under the key's mutex and records a successful forget, so
// that KeyTracks::start sees it before any flight it enables can start.
template <class F>
int tracked_forget(KeyTracks &kt, int key, F forget) {
    KeyTrack &t = kt.k[key];
    std::lock_guard<std::mutex> lk(t.mu);
    int rc = forget();
    if (rc == 1) t.forgets++;
    return rc;
}

// An abandoned flight leaves the table like a forgotten one, so a new flight
// of the key may start while the old leader still runs.  Abandonment happens
// inside the sf_call_cancel or sf_call_release that removes the last
// interest, on that thread (the abandon callback runs there): such a call
// is made under the key's mutex, and counts as a forget when the callback
// ran, before any flight it enables can register.
thread_local bool t_abandoned_here = false;

struct GroupCtx;
void count_abandon(GroupCtx *gc);

void stress_on_abandon(sf_call *call, void *payload) {
    CHECK(sf_call_abandoned(call) == 1, "abandon callback but sf_call_abandoned is 0");
    t_abandoned_here = true;
    count_abandon(static_cast<GroupCtx *>(payload));
}

template <class F>
auto tracked_leave(KeyTracks &kt, int key, F leave) -> decltype(leave()) {
    KeyTrack &t = kt.k[key];
    std::lock_guard<std::mutex> lk(t.mu);
    t_abandoned_here = false;
    auto rc = leave();
    if (t_abandoned_here) t.forgets++;
    return rc;
}

// Registers an execution for the lifetime of a scope; the destructor also runs
// when fn leaves by exception or by pthread_exit's forced unwind, which is
// before the library completes the flight.
struct ExecGuard {
    KeyTracks &kt;
    int key;
    uint64_t exec;
    ExecGuard(KeyTracks &t, int k, uint64_t e, uint64_t entry, const char *kind)
        : kt(t), key(k), exec(e) {
        kt.start(key, exec, entry, kind);
    }
    ~ExecGuard() { done(); }
    // Completing a two-phase flight lets a new flight of the key start at
    // once, so the execution must be unregistered just before completing.
    void done() {
        if (exec != 0) kt.stop(key, exec);
        exec = 0;
    }
    ExecGuard(const ExecGuard &) = delete;
    ExecGuard &operator=(const ExecGuard &) = delete;
};

// ---------------------------------------------------------------------------
// Watchdog: every blocking wait registers its start; a wait older than the
// longest fn (sleeps are at most kMaxSleepUs) plus the margin is a hang.
// ---------------------------------------------------------------------------

constexpr int kMaxSleepUs = 2000;

struct Slot {
    std::atomic<int64_t> since{0};
    std::atomic<const char *> what{nullptr};
};

std::vector<Slot> *g_slots;
std::atomic<bool> g_watch_stop{false};

struct Waiting {
    Slot *s;
    Waiting(Slot *slot, const char *what) : s(slot) {
        if (!s) return;
        s->what.store(what);
        s->since.store(now_ns());
    }
    ~Waiting() {
        if (s) s->since.store(0);
    }
};

void watchdog() {
    const int64_t limit = int64_t(kMaxSleepUs) * 1000 + int64_t(cfg.margin_ms) * 1000000;
    while (!g_watch_stop.load()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        int64_t t = now_ns();
        for (size_t i = 0; i < g_slots->size(); i++) {
            int64_t since = (*g_slots)[i].since.load();
            if (since != 0 && t - since > limit) {
                std::fprintf(stderr,
                             "HANG: thread slot %zu blocked in %s for %.1f s "
                             "(limit %.1f s)\n",
                             i, (*g_slots)[i].what.load(), (t - since) / 1e9, limit / 1e9);
                std::fflush(stderr);
                std::_Exit(2);  // a hung thread cannot be joined: stop here
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Custom executor: a thread per task (so the task may pthread_exit without
// killing a shared pool thread), refusing some tasks on purpose.
// ---------------------------------------------------------------------------

std::atomic<int64_t> g_exec_threads{0};
thread_local bool t_may_exit = false;
// fn nesting on this thread: only the outermost fn may exit the thread, or the
// outer flight would end as a goexit the test did not decide.
thread_local int t_fn_depth = 0;
thread_local std::mt19937_64 *t_rng = nullptr;

// Seeds for the generators threads make along the way (executor threads,
// the refusing executor, the fallback): all drawn from --seed, so the seed
// alone fixes every random choice.  Which thread gets which stream depends
// on the scheduler, as the interleaving does.
std::atomic<uint64_t> g_streams{0};
uint64_t next_stream_seed() {
    return cfg.seed ^ (0x9e3779b97f4a7c15ULL * (g_streams.fetch_add(1) + 1));
}

struct TaskBox {
    sf_task_fn task;
    void *arg;
};

struct ThreadCount {
    ~ThreadCount() { g_exec_threads.fetch_sub(1); }
};

void *exec_thread(void *p) {
    ThreadCount tc;  // runs on normal return and on pthread_exit's unwind
    TaskBox box = *static_cast<TaskBox *>(p);
    delete static_cast<TaskBox *>(p);
    std::mt19937_64 rng(next_stream_seed());
    t_rng = &rng;
    t_may_exit = true;
    box.task(box.arg);
    t_rng = nullptr;
    return nullptr;
}

int refusing_executor(sf_task_fn task, void *arg, void *payload) {
    auto *refuse_per_mille = static_cast<std::atomic<int> *>(payload);
    static thread_local std::mt19937 er(static_cast<std::mt19937::result_type>(next_stream_seed()));
    int r = int(er() % 1000);
    if (r < refuse_per_mille->load()) {
        fig.f_refuse.fetch_add(1);
        return 1;
    }
    g_exec_threads.fetch_add(1);
    auto *box = new TaskBox{task, arg};
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_t th;
    int rc = pthread_create(&th, &attr, exec_thread, box);
    pthread_attr_destroy(&attr);
    if (rc != 0) {
        delete box;
        g_exec_threads.fetch_sub(1);
        fig.f_refuse.fetch_add(1);
        return 1;
    }
    return 0;
}

// ---------------------------------------------------------------------------
// One group under test, with its books.
// ---------------------------------------------------------------------------

struct GroupCtx {
    sf_group *g = nullptr;
    bool custom_executor = false;
    Books books;
    KeyTracks kt;
    std::atomic<int> refuse_per_mille{20};
};

// The payload of one caller's call into sf_group_do / do_async.
struct CallCtx {
    GroupCtx *gc;
    int key;
    uint64_t forgets_at_entry;
    bool force_exit;  // the goexit helper: fn must exit its thread
    bool fn_ran;
    bool is_async;
};

const std::string &key_bytes(int k) { return g_keys[size_t(k)]; }

std::string panic_text(int key, uint64_t exec) {
    return "sfpanic k=" + std::to_string(key) + " x=" + std::to_string(exec);
}

// Checks one caller's outcome against what its flight's execution recorded.
// `follower` is 1 when the caller knows it joined (0 when it led, -1 unknown).
void check_outcome(GroupCtx *gc, int key, int status, sf_result *r, int shared, int follower,
                   const char *where) {
    switch (status) {
        case SF_OK: {
            CHECK(r != nullptr, "%s: SF_OK without a result", where);
            if (!r) return;
            CHECK(sf_result_panic_message(r) == nullptr, "%s: SF_OK with a panic message", where);
            const Value *v = static_cast<const Value *>(sf_result_value(r));
            CHECK(v != nullptr, "%s: SF_OK without the value fn stored", where);
            if (!v) return;
            CHECK(v->magic == kLive, "%s: result value is not live (magic %08x)", where, v->magic);
            CHECK(v->key == key, "%s: key %d got the value of key %d", where, key, v->key);
            CHECK(sf_result_error(r) == v->err, "%s: error %d but the flight's fn returned %d",
                  where, sf_result_error(r), v->err);
            break;
        }
        case SF_EPANIC: {
            CHECK(r != nullptr, "%s: SF_EPANIC without a result", where);
            if (!r) return;
            const char *msg = sf_result_panic_message(r);
            CHECK(msg != nullptr, "%s: SF_EPANIC without a message", where);
            if (!msg) return;
            int mk = -1;
            unsigned long long mx = 0;
            if (std::sscanf(msg, "sfpanic k=%d x=%llu", &mk, &mx) == 2) {
                CHECK(mk == key, "%s: key %d got the panic of key %d (%s)", where, key, mk, msg);
                CHECK(panic_text(mk, mx) == msg, "%s: panic message altered: %s", where, msg);
            } else {
                // Only a refused executor task, or a message copy that failed
                // under injected allocation failure, makes a panic the test did
                // not write itself.
                bool oom_text = cfg.oom && std::strstr(msg, "out of memory") != nullptr;
                CHECK(gc->custom_executor || oom_text, "%s: unexpected panic message '%s'", where,
                      msg);
            }
            const Value *v = static_cast<const Value *>(sf_result_value(r));
            if (v) {
                CHECK(v->magic == kLive && v->key == key,
                      "%s: panicked result carries a foreign value", where);
            }
            break;
        }
        case SF_EGOEXIT:
            CHECK(r != nullptr, "%s: SF_EGOEXIT without a result", where);
            if (r)
                CHECK(sf_result_panic_message(r) == nullptr, "%s: SF_EGOEXIT with a panic message",
                      where);
            break;
        default:
            fail("%s: unexpected status %s (%d)", where, sf_err_name(status), status);
            return;
    }
    if (follower == 1) CHECK(shared == 1, "%s: follower got shared=%d", where, shared);
    CHECK(shared == 0 || shared == 1, "%s: shared=%d", where, shared);
}

// ---------------------------------------------------------------------------
// The work function shared by sf_group_do and sf_group_do_async.
// ---------------------------------------------------------------------------

std::mt19937_64 &rng() {
    static thread_local std::mt19937_64 fallback(next_stream_seed());
    return t_rng ? *t_rng : fallback;
}

int pct(std::mt19937_64 &r) { return int(r() % 100); }

void maybe_sleep(std::mt19937_64 &r, int percent) {
    if (pct(r) < percent) {
        fig.f_sleep.fetch_add(1);
        std::this_thread::sleep_for(std::chrono::microseconds(r() % kMaxSleepUs));
    }
}

int work_fn(sf_call *call, void *payload) {
    CallCtx *cc = static_cast<CallCtx *>(payload);
    GroupCtx *gc = cc->gc;
    CHECK(!cc->fn_ran, "fn ran twice for one caller");
    cc->fn_ran = true;
    CHECK(sf_call_role(call) == SF_LEADER, "fn's call is not the leader (%d)", sf_call_role(call));
    uint64_t exec = g_exec_ids.fetch_add(1);
    gc->books.leaders.fetch_add(1);
    // A do leader's call is counted here because fn may never return to it
    // (pthread_exit); do_async calls are counted when accepted.
    if (!cc->is_async) gc->books.calls.fetch_add(1);
    ExecGuard guard(gc->kt, cc->key, exec, cc->forgets_at_entry,
                    cc->force_exit ? "exiting-do"
                    : cc->is_async ? (gc->custom_executor ? "async(custom)" : "async(pool)")
                                   : "do");
    std::mt19937_64 &r = rng();
    const std::string &kb = key_bytes(cc->key);

    // fn's call belongs to do/do_async: the two-phase verbs must refuse it.
    CHECK(sf_call_finish(call, 0) == SF_ESTATE, "finish inside fn not refused");
    CHECK(sf_call_on_done(
              call, [](int, sf_result *, int, void *) {}, nullptr) == SF_ESTATE,
          "on_done inside fn not refused");

    if (pct(r) < 3) {
        // Calling Do on one's own key from inside fn: Go deadlocks, we must not.
        sf_result *res = reinterpret_cast<sf_result *>(1);
        CallCtx inner{gc, cc->key, gc->kt.forgets_now(cc->key), false, false, false};
        t_fn_depth++;
        int rc = sf_group_do(gc->g, kb.data(), kb.size(), work_fn, &inner, &res, nullptr);
        t_fn_depth--;
        if (rc == SF_EDEADLK) {
            fig.f_nested_deadlk.fetch_add(1);
            CHECK(res == nullptr, "EDEADLK left *result set");
        } else if (rc == SF_ENOMEM && cfg.oom) {
            CHECK(res == nullptr, "ENOMEM left *result set");
        } else {
            // Legitimate only when another thread forgot this flight, so the
            // nested call joined or led a newer one.
            CHECK(gc->kt.forgets_now(cc->key) > cc->forgets_at_entry,
                  "nested Do on own key returned %s without a forget", sf_err_name(rc));
            if (rc == SF_OK || rc == SF_EPANIC || rc == SF_EGOEXIT) {
                if (!inner.fn_ran) gc->books.calls.fetch_add(1);
                sf_result_release(res);
            } else {
                fail("nested Do on own key returned %s", sf_err_name(rc));
            }
        }
    }
    if (pct(r) < 3) {
        // Forgetting one's own flight from inside fn is legal.
        int rc = tracked_forget(gc->kt, cc->key,
                                [&] { return sf_group_forget(gc->g, kb.data(), kb.size()); });
        CHECK(rc == 0 || rc == 1, "forget in fn returned %d", rc);
        if (rc == 1) {
            gc->books.forgets.fetch_add(1);
            fig.f_forget_in_fn.fetch_add(1);
        }
    }
    maybe_sleep(r, 20);

    int choice = cc->force_exit ? 1000 : pct(r);
    if (choice >= 1000 || (t_may_exit && t_fn_depth == 0 && choice < 4)) {
        fig.f_pthread_exit.fetch_add(1);
        gc->books.goexits.fetch_add(1);
        if (pct(r) < 50) sf_call_set_value(call, new_value(cc->key, 0, exec), destroy_value);
        pthread_exit(nullptr);
    }
    if (choice < 12) {
        fig.f_throw.fetch_add(1);
        gc->books.panics.fetch_add(1);
        throw std::runtime_error(panic_text(cc->key, exec));
    }
    if (choice < 17) {
        fig.f_panic_call.fetch_add(1);
        gc->books.panics.fetch_add(1);
        std::string m = panic_text(cc->key, exec);
        int rc = sf_call_panic(call, m.c_str());
        CHECK(rc == SF_OK, "sf_call_panic in fn returned %s", sf_err_name(rc));
        return 0;
    }
    int err = 0;
    if (choice < 35) {
        fig.f_error.fetch_add(1);
        err = 1 + int(r() % 1000);
    }
    if (pct(r) < 10) {
        // Setting twice replaces the value: the first must be destroyed.
        sf_call_set_value(call, new_value(cc->key, -12345, exec), destroy_value);
    }
    sf_call_set_value(call, new_value(cc->key, err, exec), destroy_value);
    return err;
}

// ---------------------------------------------------------------------------
// Operations
// ---------------------------------------------------------------------------

struct Worker {
    Slot *slot;
    std::mt19937_64 r;
};

bool enomem_ok(int rc) {
    if (rc == SF_ENOMEM && cfg.oom) {
        fig.f_enomem_returns.fetch_add(1);
        return true;
    }
    return false;
}

void op_do(Worker &w, GroupCtx *gc, int key) {
    fig.do_calls.fetch_add(1);
    const std::string &kb = key_bytes(key);
    CallCtx cc{gc, key, gc->kt.forgets_now(key), false, false, false};
    sf_result *res = nullptr;
    int shared = -1;
    bool want = pct(w.r) < 90;
    int rc;
    {
        Waiting wt(w.slot, "sf_group_do");
        rc = sf_group_do(gc->g, kb.data(), kb.size(), work_fn, &cc, want ? &res : nullptr,
                         want ? &shared : nullptr);
    }
    if (enomem_ok(rc)) {
        CHECK(!cc.fn_ran, "fn ran but sf_group_do returned ENOMEM");
        return;
    }
    if (!cc.fn_ran) gc->books.calls.fetch_add(1);
    if (!want) {
        CHECK(rc == SF_OK || rc == SF_EPANIC || rc == SF_EGOEXIT, "sf_group_do returned %s",
              sf_err_name(rc));
        return;
    }
    check_outcome(gc, key, rc, res, shared, cc.fn_ran ? 0 : 1, "do");
    sf_result_release(res);
}

void done_cb(int status, sf_result *result, int shared, void *payload) {
    CallCtx *cc = static_cast<CallCtx *>(payload);
    check_outcome(cc->gc, cc->key, status, result, shared, -1, "do_async done");
    if (result && status == SF_OK) {
        // A retained reference outlives the callback.
        sf_result *extra = sf_result_retain(result);
        CHECK(extra == result, "retain returned another pointer");
        sf_result_release(extra);
    }
    cc->gc->books.async_pending.fetch_sub(1);
    delete cc;
}

void op_async(Worker &, GroupCtx *gc, int key) {
    fig.async_calls.fetch_add(1);
    const std::string &kb = key_bytes(key);
    auto *cc = new CallCtx{gc, key, gc->kt.forgets_now(key), false, false, true};
    // Counted before the call: done may run (and decrement) before it returns.
    gc->books.async_pending.fetch_add(1);
    int rc = sf_group_do_async(gc->g, kb.data(), kb.size(), work_fn, cc, done_cb, cc);
    if (rc == SF_OK) {
        gc->books.calls.fetch_add(1);
        return;  // cc now belongs to done_cb
    }
    gc->books.async_pending.fetch_sub(1);
    if (rc == SF_EBUSY) {
        CHECK(gc->custom_executor, "built-in pool refused a task");
        gc->books.refused.fetch_add(1);
    } else if (enomem_ok(rc)) {
        gc->books.refused.fetch_add(1);
    } else {
        fail("do_async returned %s", sf_err_name(rc));
    }
    CHECK(!cc->fn_ran, "fn ran for a refused do_async");
    delete cc;
}

// A leader whose thread exits inside fn: run on a thread of its own.
struct ExitArg {
    GroupCtx *gc;
    int key;
    int rc;
    bool returned;
    CallCtx cc;
};

void *exiting_caller(void *p) {
    ExitArg &a = *static_cast<ExitArg *>(p);
    t_may_exit = true;
    const std::string &kb = key_bytes(a.key);
    sf_result *res = nullptr;
    int shared = -1;
    a.rc = sf_group_do(a.gc->g, kb.data(), kb.size(), work_fn, &a.cc, &res, &shared);
    // Reached only when this thread joined someone else's flight.
    a.returned = true;
    if (enomem_ok(a.rc)) return nullptr;
    a.gc->books.calls.fetch_add(1);
    check_outcome(a.gc, a.key, a.rc, res, shared, 1, "do (exiting leader)");
    sf_result_release(res);
    return nullptr;
}

void op_goexit(Worker &w, GroupCtx *gc, int key) {
    ExitArg a{gc, key, 0, false, CallCtx{gc, key, gc->kt.forgets_now(key), true, false, false}};
    pthread_t th;
    if (pthread_create(&th, nullptr, exiting_caller, &a) != 0) return;
    {
        Waiting wt(w.slot, "join of an exiting leader");
        pthread_join(th, nullptr);
    }
    CHECK(a.returned != a.cc.fn_ran,
          "exiting leader: returned=%d fn_ran=%d (sf_group_do returned after fn "
          "called pthread_exit, or fn never ran yet do did not return)",
          a.returned, a.cc.fn_ran);
}

std::atomic<int> t_refused_flag{0};
thread_local bool t_refused_destroyed = false;
void destroy_refused(void *p) {
    CHECK(p == &t_refused_flag, "refused destroy got a foreign pointer");
    t_refused_destroyed = true;
}

void count_abandon(GroupCtx *gc) {
    gc->books.abandons.fetch_add(1);
    fig.f_abandons.fetch_add(1);
}

void on_done_cb(int status, sf_result *result, int shared, void *payload) {
    CallCtx *cc = static_cast<CallCtx *>(payload);
    if (status == SF_ECANCELED) {
        // Its caller gave up first: the callback runs once, with no result.
        CHECK(result == nullptr, "on_done: SF_ECANCELED with a result");
    } else {
        check_outcome(cc->gc, cc->key, status, result, shared, 1, "on_done");
    }
    cc->gc->books.on_done_pending.fetch_sub(1);
    delete cc;
}

void two_phase_leader(Worker &w, GroupCtx *gc, int key, sf_call *call, uint64_t entry_forgets) {
    uint64_t exec = g_exec_ids.fetch_add(1);
    gc->books.leaders.fetch_add(1);
    bool completed = false;
    bool leader_cancelled = false;
    int expect = SF_OK;
    int expect_err = 0;
    {
        ExecGuard guard(gc->kt, key, exec, entry_forgets, "two-phase");
        CHECK(sf_call_role(call) == SF_LEADER, "role of a leader is %d", sf_call_role(call));
        sf_result *res = reinterpret_cast<sf_result *>(1);
        int rc = sf_call_wait(call, 0, &res, nullptr);
        CHECK(rc == SF_EDEADLK, "leader waiting on its own flight got %s", sf_err_name(rc));
        CHECK(res == nullptr, "EDEADLK wait left *result set");
        if (pct(w.r) < 10) {
            // The leader's caller gives up: the work goes on for the
            // followers, or is abandoned if none is left (then the key is
            // free at once, like a forget).
            // Without the callback an abandonment would go unseen by the
            // books and the execution tracker: then the leader stays.
            int ar = sf_call_on_abandon(call, stress_on_abandon, gc);
            CHECK(ar == SF_OK || enomem_ok(ar), "on_abandon returned %s", sf_err_name(ar));
            if (ar == SF_OK) {
                int cr = tracked_leave(gc->kt, key, [&] { return sf_call_cancel(call); });
                CHECK(cr == 0 || cr == 1, "leader's cancel returned %d", cr);
                gc->books.cancels.fetch_add(1);
                fig.f_cancels.fetch_add(1);
                leader_cancelled = true;
            }
        }
        maybe_sleep(w.r, 20);
        int c = pct(w.r);
        if (c < 8) {
            // Leaving without finishing: every follower gets SF_EGOEXIT.
            fig.f_release_leader.fetch_add(1);
            gc->books.goexits.fetch_add(1);
            if (pct(w.r) < 50) sf_call_set_value(call, new_value(key, 0, exec), destroy_value);
            guard.done();
        } else if (c < 18) {
            fig.f_panic_call.fetch_add(1);
            gc->books.panics.fetch_add(1);
            std::string m = panic_text(key, exec);
            guard.done();
            rc = sf_call_panic(call, m.c_str());
            CHECK(rc == SF_OK, "two-phase panic returned %s", sf_err_name(rc));
            completed = true;
            expect = SF_EPANIC;
        } else {
            if (c < 35) {
                fig.f_error.fetch_add(1);
                expect_err = 1 + int(w.r() % 1000);
            }
            sf_call_set_value(call, new_value(key, expect_err, exec), destroy_value);
            guard.done();
            rc = sf_call_finish(call, expect_err);
            CHECK(rc == SF_OK, "finish returned %s", sf_err_name(rc));
            completed = true;
        }
        if (completed) {
            CHECK(sf_call_finish(call, 0) == SF_ESTATE, "second finish not refused");
            CHECK(sf_call_panic(call, "late") == SF_ESTATE, "panic after finish not refused");
            t_refused_destroyed = false;
            sf_call_set_value(call, &t_refused_flag, destroy_refused);
            CHECK(t_refused_destroyed, "value set after finish was not destroyed at once");
        }
    }
    if (completed && pct(w.r) < 50) {
        sf_result *res = nullptr;
        int shared = -1;
        int rc = sf_call_wait(call, 0, &res, &shared);
        if (leader_cancelled) expect = SF_ECANCELED;
        CHECK(rc == expect, "leader reading its own result got %s, want %s", sf_err_name(rc),
              sf_err_name(expect));
        if (rc != SF_ECANCELED) check_outcome(gc, key, rc, res, shared, 0, "leader wait");
        if (rc == SF_OK && res)
            CHECK(sf_result_error(res) == expect_err, "leader sees error %d, set %d",
                  sf_result_error(res), expect_err);
        sf_result_release(res);
    }
    sf_call_release(call);
}

void two_phase_follower(Worker &w, GroupCtx *gc, int key, sf_call *call) {
    CHECK(sf_call_role(call) == SF_FOLLOWER, "role of a follower is %d", sf_call_role(call));
    CHECK(sf_call_finish(call, 0) == SF_ESTATE, "finish by a follower not refused");
    t_refused_destroyed = false;
    sf_call_set_value(call, &t_refused_flag, destroy_refused);
    CHECK(t_refused_destroyed, "value set by a follower was not destroyed at once");

    int c = pct(w.r);
    sf_result *res = nullptr;
    int shared = -1;
    int rc = SF_ETIMEDOUT;
    if (c < 10) {
        // Walk away at once: the flight must not care.
    } else if (c < 18) {
        // Give up, with or without a done callback: it runs once, now,
        // with SF_ECANCELED; later waits say SF_ECANCELED too.  Too late
        // (the flight completed) is SF_ESTATE, and the result stands.
        CallCtx *cc = nullptr;
        if (pct(w.r) < 50) {
            cc = new CallCtx{gc, key, 0, false, false, false};
            gc->books.on_done_pending.fetch_add(1);
            if (sf_call_on_done(call, on_done_cb, cc) != SF_OK) {
                gc->books.on_done_pending.fetch_sub(1);
                delete cc;
            }
        }
        maybe_sleep(w.r, 10);
        int cr = tracked_leave(gc->kt, key, [&] { return sf_call_cancel(call); });
        if (cr == SF_ESTATE) {
            rc = sf_call_wait(call, 0, &res, &shared);
            CHECK(rc != SF_ETIMEDOUT && rc != SF_ECANCELED, "cancel refused but wait got %s",
                  sf_err_name(rc));
            check_outcome(gc, key, rc, res, shared, 1, "wait after a late cancel");
            sf_result_release(res);
        } else {
            CHECK(cr == 0 || cr == 1, "follower's cancel returned %d", cr);
            gc->books.cancels.fetch_add(1);
            fig.f_cancels.fetch_add(1);
            res = reinterpret_cast<sf_result *>(1);
            rc = sf_call_wait(call, -1, &res, &shared);
            CHECK(rc == SF_ECANCELED && res == nullptr, "wait after cancel got %s",
                  sf_err_name(rc));
        }
    } else if (c < 25) {
        auto *cc = new CallCtx{gc, key, 0, false, false, false};
        gc->books.on_done_pending.fetch_add(1);
        rc = sf_call_on_done(call, on_done_cb, cc);
        if (rc != SF_OK) {
            gc->books.on_done_pending.fetch_sub(1);
            delete cc;
            CHECK(enomem_ok(rc), "on_done returned %s", sf_err_name(rc));
        } else {
            CHECK(sf_call_on_done(call, on_done_cb, nullptr) == SF_ESTATE,
                  "second on_done not refused");
        }
        if (pct(w.r) < 50) {
            Waiting wt(w.slot, "sf_call_wait after on_done");
            rc = sf_call_wait(call, -1, &res, &shared);
            check_outcome(gc, key, rc, res, shared, 1, "wait after on_done");
            sf_result_release(res);
        }
    } else if (c < 45) {
        int fd = sf_call_fd(call);
        if (fd >= 0) {
            CHECK(sf_call_fd(call) == fd, "sf_call_fd changed its fd");
            struct pollfd p = {fd, POLLIN, 0};
            int pr;
            {
                Waiting wt(w.slot, "poll on sf_call_fd");
                pr = poll(&p, 1, int(w.r() % 5));
            }
            CHECK(pr >= 0, "poll failed: %s", std::strerror(errno));
            rc = sf_call_wait(call, 0, &res, &shared);
            if (pr == 1) {
                CHECK(rc != SF_ETIMEDOUT, "fd readable but the flight is not done");
            } else if (rc == SF_ETIMEDOUT) {
                // A poll (timeout 0) is not counted as a timeout.
                fig.f_timeout_waits.fetch_add(1);
                CHECK(res == nullptr, "ETIMEDOUT left *result set");
                Waiting wt(w.slot, "poll(-1) on sf_call_fd");
                pr = poll(&p, 1, -1);
                CHECK(pr == 1, "poll(-1) on the fd returned %d", pr);
                rc = sf_call_wait(call, 0, &res, &shared);
                CHECK(rc != SF_ETIMEDOUT, "fd readable but the flight is not done");
            }
            check_outcome(gc, key, rc, res, shared, 1, "fd wait");
            sf_result_release(res);
        } else {
            CHECK(fd == SF_EBUSY || enomem_ok(fd), "sf_call_fd returned %s", sf_err_name(fd));
        }
    } else {
        // Waits with random timeouts; some give up, the rest eventually wait
        // for good.
        int tries = 1 + int(w.r() % 4);
        bool forever = pct(w.r) < 70;
        for (int i = 0; i < tries || forever; i++) {
            int64_t to = (i >= tries) ? -1 : int64_t(w.r() % 3) * int64_t(w.r() % 1000000);
            Waiting wt(w.slot, "sf_call_wait");
            res = reinterpret_cast<sf_result *>(1);
            rc = sf_call_wait(call, to, &res, &shared);
            if (rc != SF_ETIMEDOUT) break;
            CHECK(to >= 0, "wait forever timed out");
            CHECK(res == nullptr, "ETIMEDOUT left *result set");
            if (to > 0) gc->books.timeouts.fetch_add(1);  // polls are not counted
            fig.f_timeout_waits.fetch_add(1);
        }
        if (rc != SF_ETIMEDOUT) {
            check_outcome(gc, key, rc, res, shared, 1, "wait");
            sf_result_release(res);
        }
    }
    // Releasing before the end is leaving too, and may abandon the flight.
    tracked_leave(gc->kt, key, [&] {
        sf_call_release(call);
        return 0;
    });
}

void op_two_phase(Worker &w, GroupCtx *gc, int key) {
    fig.begin_calls.fetch_add(1);
    const std::string &kb = key_bytes(key);
    uint64_t entry = gc->kt.forgets_now(key);
    sf_call *call = reinterpret_cast<sf_call *>(1);
    int rc = sf_group_begin(gc->g, kb.data(), kb.size(), &call);
    if (rc != SF_LEADER && rc != SF_FOLLOWER) {
        CHECK(call == nullptr, "failed begin left *call set");
        CHECK(enomem_ok(rc), "begin returned %s", sf_err_name(rc));
        return;
    }
    gc->books.calls.fetch_add(1);
    if (rc == SF_LEADER) two_phase_leader(w, gc, key, call, entry);
    else two_phase_follower(w, gc, key, call);
}

void op_forget(Worker &w, GroupCtx *gc, int key) {
    fig.forget_calls.fetch_add(1);
    const std::string &kb = key_bytes(key);
    bool unshared = pct(w.r) < 50;
    int rc = tracked_forget(gc->kt, key, [&] {
        return unshared ? sf_group_forget_unshared(gc->g, kb.data(), kb.size())
                        : sf_group_forget(gc->g, kb.data(), kb.size());
    });
    CHECK(rc == 0 || rc == 1, "forget returned %d", rc);
    if (rc == 1) gc->books.forgets.fetch_add(1);
}

void check_stats_shape(const sf_group_stats &s, const char *where) {
    CHECK(s.calls == s.leaders + s.followers,
          "%s: calls %" PRIu64 " != leaders %" PRIu64 " + followers %" PRIu64, where, s.calls,
          s.leaders, s.followers);
    CHECK(s.in_flight <= s.leaders, "%s: in_flight %" PRIu64 " > leaders %" PRIu64, where,
          s.in_flight, s.leaders);
    CHECK(s.panics + s.goexits <= s.leaders, "%s: more failed flights than flights", where);
}

void op_stats(GroupCtx *gc) {
    fig.stats_reads.fetch_add(1);
    sf_group_stats s;
    std::memset(&s, 0, sizeof s);
    s.version = SF_GROUP_STATS_VERSION;
    int rc = sf_group_stats_get(gc->g, &s);
    CHECK(rc == SF_OK, "stats_get returned %s", sf_err_name(rc));
    if (rc == SF_OK) check_stats_shape(s, "live stats");
}

// ---------------------------------------------------------------------------
// Rounds
// ---------------------------------------------------------------------------

std::atomic<bool> g_round_stop{false};

void worker_loop(Worker &w, GroupCtx *groups, int ngroups) {
    while (!g_round_stop.load(std::memory_order_relaxed)) {
        fig.ops.fetch_add(1, std::memory_order_relaxed);
        GroupCtx *gc = &groups[w.r() % unsigned(ngroups)];
        int key = int(w.r() % g_keys.size());
        int c = pct(w.r);
        if (c < 38) op_do(w, gc, key);
        else if (c < 55) op_async(w, gc, key);
        else if (c < 88) op_two_phase(w, gc, key);
        else if (c < 94) op_forget(w, gc, key);
        else if (c < 96) op_goexit(w, gc, key);
        else op_stats(gc);
    }
}

// Bursts of failing allocations while the workers run.
void oom_loop(std::mt19937_64 r) {
    while (!g_round_stop.load()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20 + r() % 60));
        if (g_round_stop.load()) break;
        fig.f_oom_bursts.fetch_add(1);
        sf::testing::fail_allocations_after(long(r() % 8));
        std::this_thread::sleep_for(std::chrono::microseconds(200 + r() % 3000));
        sf::testing::fail_allocations_after(-1);
    }
    sf::testing::fail_allocations_after(-1);
}

bool wait_until(const std::function<bool()> &done, int64_t limit_ns) {
    int64_t t0 = now_ns();
    while (!done()) {
        if (now_ns() - t0 > limit_ns) return false;
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return true;
}

void audit_and_free(GroupCtx &gc, int idx) {
    char where[64];
    std::snprintf(where, sizeof where, "round %" PRIu64 " group %d", fig.rounds.load(), idx);
    const int64_t limit = int64_t(cfg.margin_ms) * 1000000;
    CHECK(wait_until([&] { return gc.books.async_pending.load() == 0; }, limit),
          "%s: %" PRIu64 " do_async done callbacks never ran", where,
          gc.books.async_pending.load());
    CHECK(wait_until([&] { return gc.books.on_done_pending.load() == 0; }, limit),
          "%s: %" PRIu64 " on_done callbacks never ran", where, gc.books.on_done_pending.load());

    sf_group_stats s;
    std::memset(&s, 0, sizeof s);
    s.version = SF_GROUP_STATS_VERSION;
    // The built-in pool may still be leaving fn's frame after done ran.
    CHECK(wait_until([&] { return sf_group_stats_get(gc.g, &s) == SF_OK && s.in_flight == 0; },
                     limit),
          "%s: in_flight stuck at %" PRIu64, where, s.in_flight);
    check_stats_shape(s, where);
    const Books &b = gc.books;
    // A rejected do_async is not counted (no call, no execution), but the
    // flight it may have opened completed as a panic for whoever joined: it
    // shows in panics only, at most once per rejection.
    CHECK(s.leaders == b.leaders.load(),
          "%s: leaders %" PRIu64 " but the test started %" PRIu64 " flights", where, s.leaders,
          b.leaders.load());
    CHECK(s.calls == b.calls.load(), "%s: calls %" PRIu64 " but the test made %" PRIu64, where,
          s.calls, b.calls.load());
    // A refused do_async is counted nowhere, its flight included (the header).
    CHECK(s.panics == b.panics.load(),
          "%s: panics %" PRIu64 " but the test panicked %" PRIu64 " flights (%" PRIu64
          " refused do_async not counted)",
          where, s.panics, b.panics.load(), b.refused.load());
    CHECK(s.cancels == b.cancels.load(), "%s: cancels %" PRIu64 " but the test gave up %" PRIu64,
          where, s.cancels, b.cancels.load());
    CHECK(s.abandons == b.abandons.load(),
          "%s: abandons %" PRIu64 " but %" PRIu64 " abandon callbacks ran", where, s.abandons,
          b.abandons.load());
    CHECK(s.goexits == b.goexits.load(), "%s: goexits %" PRIu64 " but expected %" PRIu64, where,
          s.goexits, b.goexits.load());
    CHECK(s.timeouts == b.timeouts.load(), "%s: timeouts %" PRIu64 " but the test saw %" PRIu64,
          where, s.timeouts, b.timeouts.load());
    CHECK(s.forgets == b.forgets.load(), "%s: forgets %" PRIu64 " but the test saw %" PRIu64, where,
          s.forgets, b.forgets.load());
    for (size_t k = 0; k < g_keys.size(); k++)
        CHECK(gc.kt.k[k].running.empty(), "%s: key %zu still has executions", where, k);

    // Every key must be free again: a new call leads a fresh flight.
    for (size_t k = 0; k < g_keys.size(); k++) {
        sf_call *c = nullptr;
        int rc = sf_group_begin(gc.g, g_keys[k].data(), g_keys[k].size(), &c);
        CHECK(rc == SF_LEADER, "%s: key %zu is stuck (begin gave %s)", where, k, sf_err_name(rc));
        if (c) {
            sf_call_finish(c, 0);
            sf_call_release(c);
        }
    }
    int rc = sf_group_free(gc.g);
    CHECK(rc == SF_OK, "%s: sf_group_free returned %s", where, sf_err_name(rc));
    if (rc == SF_OK) fig.groups_freed.fetch_add(1);
    gc.g = nullptr;
}

void run_round(std::vector<Worker> &workers, uint64_t round_seed, int64_t round_ns) {
    GroupCtx groups[2];
    {
        sf_group_options o;
        CHECK(sf_group_options_init(&o, SF_GROUP_OPTIONS_VERSION) == SF_OK, "options_init failed");
        o.shards = (round_seed & 1) ? 1 : 0;  // a single shard maximises contention
        int rc = sf_group_new(&groups[0].g, &o);
        CHECK(rc == SF_OK, "group_new returned %s", sf_err_name(rc));
        sf_group_options o2 = SF_GROUP_OPTIONS_INIT;
        o2.executor = refusing_executor;
        o2.executor_payload = &groups[1].refuse_per_mille;
        groups[1].custom_executor = true;
        rc = sf_group_new(&groups[1].g, &o2);
        CHECK(rc == SF_OK, "group_new (custom executor) returned %s", sf_err_name(rc));
        if (!groups[0].g || !groups[1].g) {
            std::_Exit(3);
        }
    }
    g_round_stop.store(false);
    std::vector<std::thread> ths;
    for (auto &w : workers) ths.emplace_back([&w, &groups] { worker_loop(w, groups, 2); });
    std::thread oom;
    if (cfg.oom) oom = std::thread(oom_loop, std::mt19937_64(round_seed * 31 + 7));
    std::this_thread::sleep_for(std::chrono::nanoseconds(round_ns));
    g_round_stop.store(true);
    for (auto &t : ths) t.join();
    if (oom.joinable()) oom.join();
    sf::testing::fail_allocations_after(-1);

    for (int i = 0; i < 2; i++) audit_and_free(groups[i], i);
    CHECK(wait_until([] { return g_exec_threads.load() == 0; }, int64_t(cfg.margin_ms) * 1000000),
          "executor threads did not finish");
    fig.rounds.fetch_add(1);
}

void usage() {
    std::fprintf(stderr,
                 "usage: sf_stress [--seconds N] [--threads N] [--round-ms N] "
                 "[--margin-ms N] [--no-oom] [--seed N]\n");
    std::exit(64);
}

}  // namespace

int main(int argc, char **argv) {
    if (const char *e = std::getenv("SF_STRESS_SECONDS")) cfg.seconds = std::atof(e);
    cfg.seed = uint64_t(now_ns());
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto next = [&]() -> const char * {
            if (i + 1 >= argc) usage();
            return argv[++i];
        };
        if (a == "--seconds") cfg.seconds = std::atof(next());
        else if (a == "--threads") cfg.threads = std::atoi(next());
        else if (a == "--round-ms") cfg.round_ms = std::atoi(next());
        else if (a == "--margin-ms") cfg.margin_ms = std::atoi(next());
        else if (a == "--no-oom") cfg.oom = false;
        else if (a == "--seed") cfg.seed = std::strtoull(next(), nullptr, 0);
        else usage();
    }
    if (cfg.threads < 1 || cfg.seconds <= 0 || cfg.round_ms < 10) usage();
    init_keys();
    std::printf("sf_stress: seconds=%g threads=%d round_ms=%d oom=%d seed=%" PRIu64 "\n",
                cfg.seconds, cfg.threads, cfg.round_ms, int(cfg.oom), cfg.seed);
    std::fflush(stdout);

    std::vector<Slot> slots(size_t(cfg.threads));
    g_slots = &slots;
    std::thread dog(watchdog);
    std::vector<Worker> workers;
    for (int i = 0; i < cfg.threads; i++)
        workers.push_back(
            Worker{&slots[size_t(i)], std::mt19937_64(cfg.seed + uint64_t(i) * 7919)});

    int64_t end = now_ns() + int64_t(cfg.seconds * 1e9);
    uint64_t round = 0;
    while (now_ns() < end && g_failures.load() == 0) {
        int64_t left = end - now_ns();
        run_round(workers, cfg.seed + round++,
                  std::min<int64_t>(left, int64_t(cfg.round_ms) * 1000000));
    }
    g_watch_stop.store(true);
    dog.join();

    uint64_t created = fig.values_created.load(), destroyed = fig.values_destroyed.load();
    CHECK(created == destroyed, "values created %" PRIu64 " != destroyed %" PRIu64, created,
          destroyed);
    uint64_t faults = fig.f_error + fig.f_throw + fig.f_panic_call + fig.f_pthread_exit +
                      fig.f_sleep + fig.f_refuse + fig.f_release_leader + fig.f_timeout_waits +
                      fig.f_nested_deadlk + fig.f_oom_bursts;
    std::printf("sf_stress: rounds=%" PRIu64 " groups_freed=%" PRIu64 " ops=%" PRIu64
                " (do=%" PRIu64 " do_async=%" PRIu64 " begin=%" PRIu64 " forget=%" PRIu64
                " stats=%" PRIu64
                ")\n"
                "sf_stress: faults=%" PRIu64 " (errors=%" PRIu64 " throws=%" PRIu64
                " panics=%" PRIu64 " pthread_exits=%" PRIu64 " sleeps=%" PRIu64
                " refused_tasks=%" PRIu64 " leader_releases=%" PRIu64 " timed_out_waits=%" PRIu64
                " nested_deadlk=%" PRIu64 " oom_bursts=%" PRIu64 " enomem_returns=%" PRIu64
                " forgets_in_fn=%" PRIu64 " cancels=%" PRIu64 " abandons=%" PRIu64
                ")\n"
                "sf_stress: values created=%" PRIu64 " destroyed=%" PRIu64 " leaked=%" PRId64
                " hangs=0 failures=%" PRIu64 "\n",
                fig.rounds.load(), fig.groups_freed.load(), fig.ops.load(), fig.do_calls.load(),
                fig.async_calls.load(), fig.begin_calls.load(), fig.forget_calls.load(),
                fig.stats_reads.load(), faults, fig.f_error.load(), fig.f_throw.load(),
                fig.f_panic_call.load(), fig.f_pthread_exit.load(), fig.f_sleep.load(),
                fig.f_refuse.load(), fig.f_release_leader.load(), fig.f_timeout_waits.load(),
                fig.f_nested_deadlk.load(), fig.f_oom_bursts.load(), fig.f_enomem_returns.load(),
                fig.f_forget_in_fn.load(), fig.f_cancels.load(), fig.f_abandons.load(), created,
                destroyed, int64_t(created - destroyed), g_failures.load());
    if (g_failures.load() == 0) {
        std::puts("sf_stress: PASS");
    } else {
        std::printf("sf_stress: FAIL; same seed again: %s --seed %" PRIu64
                    " --seconds %g --threads %d --round-ms %d --margin-ms %d%s\n",
                    argv[0], cfg.seed, cfg.seconds, cfg.threads, cfg.round_ms, cfg.margin_ms,
                    cfg.oom ? "" : " --no-oom");
    }
    return g_failures.load() == 0 ? 0 : 1;
}
