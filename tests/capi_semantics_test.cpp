// The semantics table of docs/semantics.md, one behaviour per test, through the C API.
#include <gtest/gtest.h>
#include <poll.h>
#include <pthread.h>

#include <atomic>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "singleflight.h"
#include "test_util.hpp"

using namespace sftest;

namespace {

std::atomic<int> g_destroyed{0};
void count_destroy(void *p) {
    g_destroyed.fetch_add(1);
    delete static_cast<int *>(p);
}

struct Fetch {
    sf_group *g = nullptr;
    uint64_t wait_for_followers = 0;  // hold the flight open until they joined
    std::atomic<int> executions{0};
    int error = 0;
    int value = 7;
};

int fetch_fn(sf_call *call, void *payload) {
    auto *f = static_cast<Fetch *>(payload);
    f->executions.fetch_add(1);
    if (f->wait_for_followers) wait_followers(f->g, f->wait_for_followers);
    sf_call_set_value(call, new int(f->value), count_destroy);
    return f->error;
}

TEST(Do, ThirtyTwoThreadsOnOneColdKeyRunOnceAndShareOneValue) {
    constexpr int N = 32;
    GroupPtr g;
    Fetch fetch;
    fetch.g = g;
    fetch.wait_for_followers = N - 1;
    std::vector<void *> values(N);
    std::vector<int> shared(N, -1), rcs(N, -99);
    std::vector<sf_result *> results(N);
    pthread_barrier_t start;
    pthread_barrier_init(&start, nullptr, N);
    std::vector<std::thread> threads;
    for (int i = 0; i < N; ++i) {
        threads.emplace_back([&, i] {
            pthread_barrier_wait(&start);
            rcs[i] = sf_group_do(g, "cold", 4, fetch_fn, &fetch, &results[i], &shared[i]);
            values[i] = sf_result_value(results[i]);
        });
    }
    for (auto &t : threads) t.join();
    pthread_barrier_destroy(&start);

    EXPECT_EQ(fetch.executions.load(), 1);
    for (int i = 0; i < N; ++i) {
        EXPECT_EQ(rcs[i], SF_OK);
        EXPECT_EQ(values[i], values[0]) << "caller " << i << " got another value";
        EXPECT_EQ(shared[i], 1) << "caller " << i;  // the leader too: 31 joined
    }
    EXPECT_EQ(*static_cast<int *>(values[0]), 7);
    sf_group_stats st = stats_of(g);
    EXPECT_EQ(st.calls, uint64_t(N));
    EXPECT_EQ(st.leaders, 1u);
    EXPECT_EQ(st.followers, uint64_t(N - 1));
    EXPECT_EQ(st.calls, st.leaders + st.followers);
    EXPECT_EQ(st.in_flight, 0u);
    int before = g_destroyed.load();
    for (int i = 0; i < N - 1; ++i) sf_result_release(results[i]);
    EXPECT_EQ(g_destroyed.load(), before) << "destroyed while a reference remains";
    sf_result_release(results[N - 1]);
    EXPECT_EQ(g_destroyed.load(), before + 1);
}

TEST(Do, LoneLeaderIsNotShared) {
    GroupPtr g;
    Fetch fetch;
    int shared = -1;
    sf_result *r = nullptr;
    ASSERT_EQ(sf_group_do(g, "k", 1, fetch_fn, &fetch, &r, &shared), SF_OK);
    EXPECT_EQ(shared, 0);
    EXPECT_EQ(*static_cast<int *>(sf_result_value(r)), 7);
    sf_result_release(r);
}

TEST(Do, SequentialCallsEachRunFn) {
    GroupPtr g;
    Fetch fetch;
    for (int i = 0; i < 3; ++i)
        ASSERT_EQ(sf_group_do(g, "k", 1, fetch_fn, &fetch, nullptr, nullptr), SF_OK);
    EXPECT_EQ(fetch.executions.load(), 3);
    EXPECT_EQ(stats_of(g).leaders, 3u);
}

TEST(Do, UserErrorReachesEveryCallerWithStatusOk) {
    GroupPtr g;
    Fetch fetch;
    fetch.g = g;
    fetch.error = 42;
    fetch.wait_for_followers = 3;
    std::vector<std::thread> ts;
    std::atomic<int> ok{0};
    for (int i = 0; i < 4; ++i) {
        ts.emplace_back([&] {
            sf_result *r = nullptr;
            int rc = sf_group_do(g, "e", 1, fetch_fn, &fetch, &r, nullptr);
            if (rc == SF_OK && sf_result_error(r) == 42) ok.fetch_add(1);
            sf_result_release(r);
        });
    }
    for (auto &t : ts) t.join();
    EXPECT_EQ(ok.load(), 4);
    EXPECT_EQ(fetch.executions.load(), 1);
}

struct Thrower {
    sf_group *g;
    uint64_t followers;
    int kind;  // 0: std::runtime_error, 1: int, 2: sf_call_panic
};

int throwing_fn(sf_call *call, void *payload) {
    auto *t = static_cast<Thrower *>(payload);
    wait_followers(t->g, t->followers);
    sf_call_set_value(call, new int(5), count_destroy);
    if (t->kind == 0) throw std::runtime_error("boom");
    if (t->kind == 1) throw 17;
    EXPECT_EQ(sf_call_panic(call, "asked to panic"), SF_OK);
    return 0;
}

void expect_panic_everywhere(int kind, const char *message) {
    GroupPtr g;
    Thrower t{g, 2, kind};
    std::vector<std::thread> ts;
    std::atomic<int> panicked{0};
    for (int i = 0; i < 3; ++i) {
        ts.emplace_back([&] {
            sf_result *r = nullptr;
            int rc = sf_group_do(g, "p", 1, throwing_fn, &t, &r, nullptr);
            if (rc == SF_EPANIC && r && std::string(sf_result_panic_message(r)) == message &&
                *static_cast<int *>(sf_result_value(r)) == 5)
                panicked.fetch_add(1);
            sf_result_release(r);
        });
    }
    for (auto &th : ts) th.join();
    EXPECT_EQ(panicked.load(), 3);
    EXPECT_EQ(stats_of(g).panics, 1u);
    EXPECT_EQ(stats_of(g).in_flight, 0u);
}

TEST(Panic, StdExceptionReachesEveryCallerWithItsWhat) { expect_panic_everywhere(0, "boom"); }
TEST(Panic, NonStdExceptionReachesEveryCaller) {
    expect_panic_everywhere(1, "unknown C++ exception");
}
TEST(Panic, CallPanicInsideFnPanicsTheFlight) { expect_panic_everywhere(2, "asked to panic"); }

TEST(Panic, ResultOfNormalFlightHasNoPanicMessage) {
    GroupPtr g;
    Fetch fetch;
    sf_result *r = nullptr;
    ASSERT_EQ(sf_group_do(g, "k", 1, fetch_fn, &fetch, &r, nullptr), SF_OK);
    EXPECT_EQ(sf_result_panic_message(r), nullptr);
    sf_result_release(r);
}

struct Exiter {
    sf_group *g;
    bool cancel;  // else pthread_exit
    Event entered;
    std::atomic<bool> returned{false};
};

int exiting_fn(sf_call *, void *payload) {
    auto *e = static_cast<Exiter *>(payload);
    wait_followers(e->g, 1);
    if (!e->cancel) pthread_exit(nullptr);
    e->entered.set();
    for (;;) pthread_testcancel();
}

void *exiting_leader(void *arg) {
    auto *e = static_cast<Exiter *>(arg);
    sf_group_do(e->g, "x", 1, exiting_fn, e, nullptr, nullptr);
    e->returned = true;  // never reached: the thread exits inside fn
    return nullptr;
}

void expect_goexit(bool cancel) {
    GroupPtr g;
    Exiter e;
    e.g = g;
    e.cancel = cancel;
    pthread_t leader;
    ASSERT_EQ(pthread_create(&leader, nullptr, exiting_leader, &e), 0);
    while (stats_of(g).leaders < 1) std::this_thread::yield();
    int follower_rc = 0;
    sf_result *r = nullptr;
    std::thread follower([&] {
        Fetch never;
        follower_rc = sf_group_do(g, "x", 1, fetch_fn, &never, &r, nullptr);
        EXPECT_EQ(never.executions.load(), 0);
    });
    if (cancel) {
        e.entered.wait();
        pthread_cancel(leader);
    }
    follower.join();
    void *ret = nullptr;
    pthread_join(leader, &ret);
    EXPECT_EQ(follower_rc, SF_EGOEXIT);
    ASSERT_NE(r, nullptr) << "a completed flight still hands out its result";
    EXPECT_EQ(sf_result_panic_message(r), nullptr);
    sf_result_release(r);
    EXPECT_FALSE(e.returned.load()) << "sf_group_do returned although the thread was exiting";
    if (cancel) {
        EXPECT_EQ(ret, PTHREAD_CANCELED);
    }
    sf_group_stats st = stats_of(g);
    EXPECT_EQ(st.goexits, 1u);
    EXPECT_EQ(st.in_flight, 0u);
    // The key is free again: the next caller leads a fresh flight.
    Fetch next;
    int shared = -1;
    EXPECT_EQ(sf_group_do(g, "x", 1, fetch_fn, &next, nullptr, &shared), SF_OK);
    EXPECT_EQ(next.executions.load(), 1);
}

TEST(Goexit, PthreadExitInsideFnReleasesFollowers) { expect_goexit(false); }
TEST(Goexit, CancellationInsideFnReleasesFollowers) { expect_goexit(true); }

TEST(Goexit, TwoPhaseLeaderReleasingUnfinishedReleasesFollowers) {
    GroupPtr g;
    sf_call *leader = nullptr, *follower = nullptr;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &leader), SF_LEADER);
    ASSERT_EQ(sf_group_begin(g, "k", 1, &follower), SF_FOLLOWER);
    sf_call_release(leader);
    sf_result *r = nullptr;
    EXPECT_EQ(sf_call_wait(follower, -1, &r, nullptr), SF_EGOEXIT);
    sf_result_release(r);
    sf_call_release(follower);
    EXPECT_EQ(stats_of(g).goexits, 1u);
    sf_call *again = nullptr;
    EXPECT_EQ(sf_group_begin(g, "k", 1, &again), SF_LEADER);
    sf_call_release(again);
}

TEST(Forget, DuringFlightNextCallerStartsNewFlightAndOldOneDeliversToItsOwn) {
    GroupPtr g;
    sf_call *l1, *f1, *l2, *f2;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &l1), SF_LEADER);
    ASSERT_EQ(sf_group_begin(g, "k", 1, &f1), SF_FOLLOWER);
    EXPECT_EQ(sf_group_forget(g, "k", 1), 1);
    EXPECT_EQ(sf_group_forget(g, "k", 1), 0) << "nothing left to forget";
    ASSERT_EQ(sf_group_begin(g, "k", 1, &l2), SF_LEADER);
    ASSERT_EQ(sf_group_begin(g, "k", 1, &f2), SF_FOLLOWER);
    int a = 1, b = 2;
    sf_call_set_value(l2, &b, nullptr);
    ASSERT_EQ(sf_call_finish(l2, 0), SF_OK);
    sf_call_set_value(l1, &a, nullptr);
    ASSERT_EQ(sf_call_finish(l1, 0), SF_OK);
    sf_result *r1, *r2;
    ASSERT_EQ(sf_call_wait(f1, -1, &r1, nullptr), SF_OK);
    ASSERT_EQ(sf_call_wait(f2, -1, &r2, nullptr), SF_OK);
    EXPECT_EQ(sf_result_value(r1), &a);
    EXPECT_EQ(sf_result_value(r2), &b);
    sf_result_release(r1);
    sf_result_release(r2);
    for (sf_call *c : {l1, f1, l2, f2}) sf_call_release(c);
    sf_group_stats st = stats_of(g);
    EXPECT_EQ(st.forgets, 1u);
    EXPECT_EQ(st.leaders, 2u);
    EXPECT_EQ(st.in_flight, 0u);
}

TEST(Forget, UnsharedForgetsOnlyAFlightNobodyJoined) {
    GroupPtr g;
    sf_call *l, *f;
    ASSERT_EQ(sf_group_begin(g, "alone", 5, &l), SF_LEADER);
    EXPECT_EQ(sf_group_forget_unshared(g, "alone", 5), 1);
    sf_call_release(l);
    ASSERT_EQ(sf_group_begin(g, "shared", 6, &l), SF_LEADER);
    ASSERT_EQ(sf_group_begin(g, "shared", 6, &f), SF_FOLLOWER);
    EXPECT_EQ(sf_group_forget_unshared(g, "shared", 6), 0);
    EXPECT_EQ(sf_group_forget_unshared(g, "absent", 6), 0);
    sf_call *f2;
    EXPECT_EQ(sf_group_begin(g, "shared", 6, &f2), SF_FOLLOWER) << "still in the table";
    sf_call_finish(l, 0);
    for (sf_call *c : {l, f, f2}) sf_call_release(c);
}

struct Recursive {
    sf_group *g;
    int inner_rc = 0;
    sf_result *inner_result = reinterpret_cast<sf_result *>(1);
};

int recursive_fn(sf_call *, void *payload) {
    auto *r = static_cast<Recursive *>(payload);
    r->inner_rc = sf_group_do(r->g, "self", 4, recursive_fn, r, &r->inner_result, nullptr);
    return 0;
}

TEST(Deadlock, DoOnTheKeyThisThreadLeadsReturnsEdeadlkAtOnce) {
    GroupPtr g;
    Recursive rec{g};
    ASSERT_EQ(sf_group_do(g, "self", 4, recursive_fn, &rec, nullptr, nullptr), SF_OK);
    EXPECT_EQ(rec.inner_rc, SF_EDEADLK);
    EXPECT_EQ(rec.inner_result, nullptr);
    sf_group_stats st = stats_of(g);
    EXPECT_EQ(st.calls, 1u) << "a rejected call does not count";
    EXPECT_EQ(st.leaders, 1u);
}

TEST(Deadlock, LeaderWaitingOnItsOwnUnfinishedFlightIsEdeadlk) {
    GroupPtr g;
    sf_call *l;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
    EXPECT_EQ(sf_call_wait(l, -1, nullptr, nullptr), SF_EDEADLK);
    ASSERT_EQ(sf_call_finish(l, 3), SF_OK);
    sf_result *r;
    int shared = -1;
    EXPECT_EQ(sf_call_wait(l, -1, &r, &shared), SF_OK) << "a leader may read its own result";
    EXPECT_EQ(sf_result_error(r), 3);
    EXPECT_EQ(shared, 0);
    sf_result_release(r);
    sf_call_release(l);
}

TEST(Timeout, AWaiterGivingUpDoesNotDisturbTheOthers) {
    GroupPtr g;
    sf_call *l, *quitter, *patient;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
    ASSERT_EQ(sf_group_begin(g, "k", 1, &quitter), SF_FOLLOWER);
    ASSERT_EQ(sf_group_begin(g, "k", 1, &patient), SF_FOLLOWER);
    sf_result *r = reinterpret_cast<sf_result *>(1);
    int rc_patient = 0;
    sf_result *rp = nullptr;
    std::thread t([&] { rc_patient = sf_call_wait(patient, -1, &rp, nullptr); });
    EXPECT_EQ(sf_call_wait(quitter, 2000000, &r, nullptr), SF_ETIMEDOUT);
    EXPECT_EQ(r, nullptr);
    EXPECT_EQ(sf_call_wait(quitter, 0, nullptr, nullptr), SF_ETIMEDOUT) << "0 polls";
    int v = 9;
    sf_call_set_value(l, &v, nullptr);
    ASSERT_EQ(sf_call_finish(l, 0), SF_OK);
    t.join();
    EXPECT_EQ(rc_patient, SF_OK);
    EXPECT_EQ(sf_result_value(rp), &v);
    EXPECT_EQ(sf_call_wait(quitter, 0, &r, nullptr), SF_OK)
        << "waiting again after a timeout works";
    EXPECT_EQ(sf_result_value(r), &v);
    sf_result_release(r);
    sf_result_release(rp);
    for (sf_call *c : {l, quitter, patient}) sf_call_release(c);
    EXPECT_EQ(stats_of(g).timeouts, 1u) << "polls (timeout 0) are not timeouts";
}

TEST(TwoPhase, FollowerSharedIsOneLeaderSharedWhenJoined) {
    GroupPtr g;
    sf_call *l, *f;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
    ASSERT_EQ(sf_group_begin(g, "k", 1, &f), SF_FOLLOWER);
    EXPECT_EQ(sf_call_role(l), SF_LEADER);
    EXPECT_EQ(sf_call_role(f), SF_FOLLOWER);
    sf_call_finish(l, 0);
    int sl = -1, sfl = -1;
    sf_call_wait(l, -1, nullptr, &sl);
    sf_call_wait(f, -1, nullptr, &sfl);
    EXPECT_EQ(sl, 1);
    EXPECT_EQ(sfl, 1);
    sf_call_release(l);
    sf_call_release(f);
}

TEST(TwoPhase, PanicGivesEveryCallerTheMessage) {
    GroupPtr g;
    sf_call *l, *f;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
    ASSERT_EQ(sf_group_begin(g, "k", 1, &f), SF_FOLLOWER);
    ASSERT_EQ(sf_call_panic(l, "kaput"), SF_OK);
    sf_result *r;
    ASSERT_EQ(sf_call_wait(f, -1, &r, nullptr), SF_EPANIC);
    EXPECT_STREQ(sf_result_panic_message(r), "kaput");
    sf_result_release(r);
    EXPECT_EQ(sf_call_panic(l, "again"), SF_ESTATE);
    sf_call_release(l);
    sf_call_release(f);
}

TEST(TwoPhase, FinishTwiceAndFinishByFollowerAreEstate) {
    GroupPtr g;
    sf_call *l, *f;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
    ASSERT_EQ(sf_group_begin(g, "k", 1, &f), SF_FOLLOWER);
    EXPECT_EQ(sf_call_finish(f, 0), SF_ESTATE);
    EXPECT_EQ(sf_call_panic(f, "no"), SF_ESTATE);
    EXPECT_EQ(sf_call_finish(l, 0), SF_OK);
    EXPECT_EQ(sf_call_finish(l, 0), SF_ESTATE);
    sf_call_release(l);
    sf_call_release(f);
    EXPECT_EQ(stats_of(g).in_flight, 0u);
}

int finish_inside_fn(sf_call *call, void *payload) {
    *static_cast<int *>(payload) = sf_call_finish(call, 0);
    return 0;
}

TEST(TwoPhase, FinishInsideDoFnIsEstate) {
    GroupPtr g;
    int rc = 0;
    ASSERT_EQ(sf_group_do(g, "k", 1, finish_inside_fn, &rc, nullptr, nullptr), SF_OK);
    EXPECT_EQ(rc, SF_ESTATE);
}

TEST(Values, RefusedValueIsDestroyedAtOnce) {
    GroupPtr g;
    sf_call *l, *f;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
    ASSERT_EQ(sf_group_begin(g, "k", 1, &f), SF_FOLLOWER);
    int before = g_destroyed.load();
    sf_call_set_value(f, new int(1), count_destroy);
    EXPECT_EQ(g_destroyed.load(), before + 1) << "a follower's value is refused";
    sf_call_set_value(nullptr, new int(1), count_destroy);
    EXPECT_EQ(g_destroyed.load(), before + 2);
    sf_call_set_value(l, new int(1), count_destroy);
    sf_call_set_value(l, new int(2), count_destroy);
    EXPECT_EQ(g_destroyed.load(), before + 3) << "replacing destroys the old value";
    sf_call_finish(l, 0);
    sf_call_set_value(l, new int(3), count_destroy);
    EXPECT_EQ(g_destroyed.load(), before + 4) << "after finish the value is refused";
    sf_result *r;
    sf_call_wait(f, -1, &r, nullptr);
    EXPECT_EQ(*static_cast<int *>(sf_result_value(r)), 2);
    sf_call_release(l);
    sf_call_release(f);
    EXPECT_EQ(g_destroyed.load(), before + 4);
    sf_result_release(r);
    EXPECT_EQ(g_destroyed.load(), before + 5) << "destroy after the last reference";
}

TEST(Values, RetainAddsAReferenceAndResultsOutliveTheGroup) {
    sf_group *g;
    ASSERT_EQ(sf_group_new(&g, nullptr), SF_OK);
    Fetch fetch;
    sf_result *r;
    ASSERT_EQ(sf_group_do(g, "k", 1, fetch_fn, &fetch, &r, nullptr), SF_OK);
    EXPECT_EQ(sf_result_retain(r), r);
    ASSERT_EQ(sf_group_free(g), SF_OK);
    int before = g_destroyed.load();
    EXPECT_EQ(*static_cast<int *>(sf_result_value(r)), 7);
    sf_result_release(r);
    EXPECT_EQ(g_destroyed.load(), before);
    sf_result_release(r);
    EXPECT_EQ(g_destroyed.load(), before + 1);
}

struct AsyncLog {
    std::mutex mu;
    std::vector<int> statuses;
    std::vector<void *> values;
    std::vector<int> shared;
    std::string message;
    Latch *latch;
};

void async_done(int status, sf_result *r, int shared, void *payload) {
    auto *log = static_cast<AsyncLog *>(payload);
    {
        std::lock_guard<std::mutex> l(log->mu);
        log->statuses.push_back(status);
        log->values.push_back(sf_result_value(r));
        log->shared.push_back(shared);
        if (sf_result_panic_message(r)) log->message = sf_result_panic_message(r);
    }
    log->latch->count_down();
}

struct Gate {
    Event open;
    std::atomic<int> executions{0};
    int value = 11;
    int mode = 0;  // 0 value, 1 throw, 2 pthread_exit
};

int gated_fn(sf_call *call, void *payload) {
    auto *gate = static_cast<Gate *>(payload);
    gate->executions.fetch_add(1);
    gate->open.wait();
    if (gate->mode == 1) throw std::logic_error("async boom");
    if (gate->mode == 2) pthread_exit(nullptr);
    sf_call_set_value(call, &gate->value, nullptr);
    return 0;
}

void run_async_flight(sf_group *g, Gate &gate, AsyncLog &log, int callers) {
    for (int i = 0; i < callers; ++i)
        ASSERT_EQ(sf_group_do_async(g, "a", 1, gated_fn, &gate, async_done, &log), SF_OK);
    gate.open.set();
    log.latch->wait();
}

TEST(DoAsync, BuiltInPoolRunsOnceAndCallsEveryDoneOnce) {
    GroupPtr g;
    Gate gate;
    Latch latch(5);
    AsyncLog log;
    log.latch = &latch;
    run_async_flight(g, gate, log, 5);
    EXPECT_EQ(gate.executions.load(), 1);
    ASSERT_EQ(log.statuses.size(), 5u);
    for (size_t i = 0; i < 5; ++i) {
        EXPECT_EQ(log.statuses[i], SF_OK);
        EXPECT_EQ(log.values[i], &gate.value);
        EXPECT_EQ(log.shared[i], 1);
    }
}

TEST(DoAsync, PanicIsDeliveredToEveryDone) {
    GroupPtr g;
    Gate gate;
    gate.mode = 1;
    Latch latch(3);
    AsyncLog log;
    log.latch = &latch;
    run_async_flight(g, gate, log, 3);
    ASSERT_EQ(log.statuses.size(), 3u);
    for (int s : log.statuses) EXPECT_EQ(s, SF_EPANIC);
    EXPECT_EQ(log.message, "async boom");
}

TEST(DoAsync, ThreadExitInPoolGivesGoexitAndThePoolKeepsWorking) {
    GroupPtr g;
    {
        Gate gate;
        gate.mode = 2;
        Latch latch(3);
        AsyncLog log;
        log.latch = &latch;
        run_async_flight(g, gate, log, 3);
        for (int s : log.statuses) EXPECT_EQ(s, SF_EGOEXIT);
    }
    Gate gate;
    Latch latch(1);
    AsyncLog log;
    log.latch = &latch;
    run_async_flight(g, gate, log, 1);
    ASSERT_EQ(log.statuses.size(), 1u);
    EXPECT_EQ(log.statuses[0], SF_OK);
    EXPECT_EQ(log.shared[0], 0);
}

struct ThreadExecutor {
    std::atomic<int> submitted{0};
    std::vector<std::thread> threads;
    std::mutex mu;
    bool refuse = false;
    sf_group *g = nullptr;
    AsyncLog *join_log = nullptr;
};

int thread_executor(sf_task_fn task, void *arg, void *payload) {
    auto *ex = static_cast<ThreadExecutor *>(payload);
    if (ex->refuse) {
        // Someone joins the flight before the refusal: they must not hang.
        Gate unused;
        EXPECT_EQ(sf_group_do_async(ex->g, "a", 1, gated_fn, &unused, async_done, ex->join_log),
                  SF_OK);
        return -1;
    }
    ex->submitted.fetch_add(1);
    std::lock_guard<std::mutex> l(ex->mu);
    ex->threads.emplace_back(task, arg);
    return 0;
}

TEST(DoAsync, CallersExecutorRunsTheTask) {
    ThreadExecutor ex;
    sf_group_options o;
    ASSERT_EQ(sf_group_options_init(&o, SF_GROUP_OPTIONS_VERSION), SF_OK);
    o.executor = thread_executor;
    o.executor_payload = &ex;
    {
        GroupPtr g(&o);
        Gate gate;
        Latch latch(2);
        AsyncLog log;
        log.latch = &latch;
        run_async_flight(g, gate, log, 2);
        EXPECT_EQ(ex.submitted.load(), 1);
        for (auto &t : ex.threads) t.join();
        EXPECT_EQ(log.statuses, (std::vector<int>{SF_OK, SF_OK}));
    }
}

TEST(DoAsync, RefusedTaskReturnsEbusyAndJoinedCallersGetPanic) {
    ThreadExecutor ex;
    sf_group_options o = SF_GROUP_OPTIONS_INIT;
    o.executor = thread_executor;
    o.executor_payload = &ex;
    GroupPtr g(&o);
    ex.refuse = true;
    ex.g = g;
    Latch latch(1);
    AsyncLog log;
    log.latch = &latch;
    ex.join_log = &log;
    Gate gate;
    EXPECT_EQ(sf_group_do_async(g, "a", 1, gated_fn, &gate, async_done, &log), SF_EBUSY);
    latch.wait();
    ASSERT_EQ(log.statuses.size(), 1u) << "done runs for the joiner only";
    EXPECT_EQ(log.statuses[0], SF_EPANIC);
    EXPECT_NE(log.message.find("refused"), std::string::npos);
    EXPECT_EQ(gate.executions.load(), 0);
    sf_group_stats st = stats_of(g);
    EXPECT_EQ(st.in_flight, 0u);
    EXPECT_EQ(st.leaders, 0u) << "the refused call does not count, nothing was executed";
    EXPECT_EQ(st.followers, 1u);
    EXPECT_EQ(st.calls, st.leaders + st.followers);
}

void plain_done(int status, sf_result *r, int shared, void *payload) {
    auto *log = static_cast<std::vector<int> *>(payload);
    log->push_back(status);
    log->push_back(sf_result_error(r));
    log->push_back(shared);
}

TEST(OnDone, RunsOnceOnFinishEvenAfterReleaseAndAtOnceWhenAlreadyDone) {
    GroupPtr g;
    sf_call *l, *f;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
    ASSERT_EQ(sf_group_begin(g, "k", 1, &f), SF_FOLLOWER);
    std::vector<int> log_f, log_l;
    ASSERT_EQ(sf_call_on_done(f, plain_done, &log_f), SF_OK);
    EXPECT_EQ(sf_call_on_done(f, plain_done, &log_f), SF_ESTATE) << "one callback per call";
    sf_call_release(f);  // released before completion: still runs
    EXPECT_TRUE(log_f.empty());
    ASSERT_EQ(sf_call_finish(l, 4), SF_OK);
    EXPECT_EQ(log_f, (std::vector<int>{SF_OK, 4, 1}));
    ASSERT_EQ(sf_call_on_done(l, plain_done, &log_l), SF_OK);
    EXPECT_EQ(log_l, (std::vector<int>{SF_OK, 4, 1})) << "already done: runs at once";
    sf_call_release(l);
}

TEST(Fd, BecomesReadableWhenTheFlightCompletes) {
    GroupPtr g;
    sf_call *l, *f;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
    ASSERT_EQ(sf_group_begin(g, "k", 1, &f), SF_FOLLOWER);
    int fd = sf_call_fd(f);
    ASSERT_GE(fd, 0);
    EXPECT_EQ(sf_call_fd(f), fd) << "same fd every time";
    struct pollfd p = {fd, POLLIN, 0};
    EXPECT_EQ(poll(&p, 1, 0), 0);
    sf_call_finish(l, 0);
    EXPECT_EQ(poll(&p, 1, 1000), 1);
    EXPECT_TRUE(p.revents & POLLIN);
    int lfd = sf_call_fd(l);
    ASSERT_GE(lfd, 0);
    struct pollfd pl = {lfd, POLLIN, 0};
    EXPECT_EQ(poll(&pl, 1, 0), 1) << "already done: readable at once";
    sf_call_release(l);
    sf_call_release(f);
}

TEST(Group, FreeWhileBusyIsEbusyAndLeavesTheGroupUsable) {
    sf_group *g;
    ASSERT_EQ(sf_group_new(&g, nullptr), SF_OK);
    sf_call *l;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
    EXPECT_EQ(sf_group_free(g), SF_EBUSY);
    sf_call_finish(l, 0);
    EXPECT_EQ(sf_group_free(g), SF_EBUSY) << "a handle is still held";
    sf_call_release(l);
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

struct FreeFromPool {
    sf_group *g;
    int rc = 0;
    Event done;
};

void free_in_done(int, sf_result *, int, void *payload) {
    auto *f = static_cast<FreeFromPool *>(payload);
    f->rc = sf_group_free(f->g);  // on the pool's own thread
    f->done.set();
}

int trivial_async_fn(sf_call *, void *) { return 0; }

TEST(Group, FreeFromItsOwnPoolThreadIsEbusyNotASelfJoin) {
    FreeFromPool f;
    ASSERT_EQ(sf_group_new(&f.g, nullptr), SF_OK);
    ASSERT_EQ(sf_group_do_async(f.g, "k", 1, trivial_async_fn, nullptr, free_in_done, &f), SF_OK);
    f.done.wait();
    EXPECT_EQ(f.rc, SF_EBUSY);
    EXPECT_EQ(sf_group_free(f.g), SF_OK) << "from another thread it frees";
}

TEST(Group, ShardOptionIsHonouredAndKeysSpreadAcrossIt) {
    sf_group_options o = SF_GROUP_OPTIONS_INIT;
    o.shards = 3;  // rounded up to 4
    GroupPtr g(&o);
    ASSERT_NE(g.g, nullptr);
    std::vector<sf_call *> calls;
    for (int i = 0; i < 200; ++i) {
        std::string k = "key" + std::to_string(i);
        sf_call *c;
        ASSERT_EQ(sf_group_begin(g, k.data(), k.size(), &c), SF_LEADER) << k;
        calls.push_back(c);
    }
    EXPECT_EQ(stats_of(g).in_flight, 200u);
    for (sf_call *c : calls) {
        sf_call_finish(c, 0);
        sf_call_release(c);
    }
    EXPECT_EQ(stats_of(g).in_flight, 0u);
}

TEST(Keys, AreArbitraryBytes) {
    GroupPtr g;
    const char a[] = {'a', '\0', 'b'}, b[] = {'a', '\0', 'c'};
    std::string big(4096, 'x'), big2 = big;
    big2[4095] = 'y';
    sf_call *c[8];
    EXPECT_EQ(sf_group_begin(g, a, 3, &c[0]), SF_LEADER);
    EXPECT_EQ(sf_group_begin(g, b, 3, &c[1]), SF_LEADER) << "bytes after a NUL count";
    EXPECT_EQ(sf_group_begin(g, a, 2, &c[2]), SF_LEADER) << "a prefix is another key";
    EXPECT_EQ(sf_group_begin(g, nullptr, 0, &c[3]), SF_LEADER);
    EXPECT_EQ(sf_group_begin(g, "", 0, &c[4]), SF_FOLLOWER) << "all empty keys are one key";
    EXPECT_EQ(sf_group_begin(g, big.data(), big.size(), &c[5]), SF_LEADER);
    EXPECT_EQ(sf_group_begin(g, big2.data(), big2.size(), &c[6]), SF_LEADER);
    std::string copy = big;
    EXPECT_EQ(sf_group_begin(g, copy.data(), copy.size(), &c[7]), SF_FOLLOWER);
    for (sf_call *x : c) {
        if (sf_call_role(x) == SF_LEADER) sf_call_finish(x, 0);
    }
    for (sf_call *x : c) sf_call_release(x);
}

TEST(BadInput, EveryNullOrInvalidArgumentGetsAStatus) {
    sf_group *g = reinterpret_cast<sf_group *>(1);
    EXPECT_EQ(sf_group_new(nullptr, nullptr), SF_EINVAL);
    sf_group_options o = SF_GROUP_OPTIONS_INIT;
    o.version = 99;
    EXPECT_EQ(sf_group_new(&g, &o), SF_EINVAL);
    EXPECT_EQ(g, reinterpret_cast<sf_group *>(1)) << "out-pointers are written only on success";
    EXPECT_EQ(sf_group_options_init(&o, SF_GROUP_OPTIONS_VERSION + 1), SF_EINVAL);
    EXPECT_EQ(sf_group_options_init(&o, 0), SF_EINVAL);
    EXPECT_EQ(sf_group_options_init(nullptr, SF_GROUP_OPTIONS_VERSION), SF_EINVAL);
    EXPECT_EQ(sf_group_free(nullptr), SF_EINVAL);
    GroupPtr gp;
    Fetch fetch;
    sf_result *r = reinterpret_cast<sf_result *>(1);
    int shared = 5;
    EXPECT_EQ(sf_group_do(nullptr, "k", 1, fetch_fn, &fetch, &r, &shared), SF_EINVAL);
    EXPECT_EQ(r, nullptr);
    EXPECT_EQ(shared, 0);
    EXPECT_EQ(sf_group_do(gp, "k", 1, nullptr, nullptr, &r, nullptr), SF_EINVAL);
    EXPECT_EQ(sf_group_do(gp, nullptr, 3, fetch_fn, &fetch, &r, nullptr), SF_EINVAL);
    EXPECT_EQ(sf_group_do_async(gp, "k", 1, fetch_fn, &fetch, nullptr, nullptr), SF_EINVAL);
    EXPECT_EQ(sf_group_do_async(gp, "k", 1, nullptr, nullptr, plain_done, nullptr), SF_EINVAL);
    EXPECT_EQ(sf_group_do_async(nullptr, "k", 1, fetch_fn, nullptr, plain_done, nullptr),
              SF_EINVAL);
    sf_call *c = reinterpret_cast<sf_call *>(1);
    EXPECT_EQ(sf_group_begin(gp, nullptr, 1, &c), SF_EINVAL);
    EXPECT_EQ(c, nullptr);
    EXPECT_EQ(sf_group_begin(gp, "k", 1, nullptr), SF_EINVAL);
    EXPECT_EQ(sf_group_begin(nullptr, "k", 1, &c), SF_EINVAL);
    EXPECT_EQ(sf_call_finish(nullptr, 0), SF_EINVAL);
    EXPECT_EQ(sf_call_panic(nullptr, "x"), SF_EINVAL);
    EXPECT_EQ(sf_call_wait(nullptr, 0, &r, nullptr), SF_EINVAL);
    EXPECT_EQ(sf_call_on_done(nullptr, plain_done, nullptr), SF_EINVAL);
    EXPECT_EQ(sf_call_fd(nullptr), SF_EINVAL);
    EXPECT_EQ(sf_call_role(nullptr), SF_EINVAL);
    sf_call_release(nullptr);
    EXPECT_EQ(sf_group_forget(nullptr, "k", 1), SF_EINVAL);
    EXPECT_EQ(sf_group_forget(gp, nullptr, 1), SF_EINVAL);
    EXPECT_EQ(sf_group_forget_unshared(nullptr, "k", 1), SF_EINVAL);
    EXPECT_EQ(sf_result_value(nullptr), nullptr);
    EXPECT_EQ(sf_result_error(nullptr), 0);
    EXPECT_EQ(sf_result_panic_message(nullptr), nullptr);
    EXPECT_EQ(sf_result_retain(nullptr), nullptr);
    sf_result_release(nullptr);
    sf_group_stats st{};
    st.version = 77;
    EXPECT_EQ(sf_group_stats_get(gp, &st), SF_EINVAL);
    st.version = SF_GROUP_STATS_VERSION;
    EXPECT_EQ(sf_group_stats_get(nullptr, &st), SF_EINVAL);
    EXPECT_EQ(sf_group_stats_get(gp, nullptr), SF_EINVAL);
    sf_call *l;
    ASSERT_EQ(sf_group_begin(gp, "k", 1, &l), SF_LEADER);
    EXPECT_EQ(sf_call_on_done(l, nullptr, nullptr), SF_EINVAL);
    sf_call_release(l);
    EXPECT_EQ(stats_of(gp).calls, 1u);
}

TEST(Status, EveryCodeHasANameAndADescription) {
    struct Row {
        int code;
        const char *name;
    } rows[] = {
#define ROW(name, value, text) {value, #name},
        SF_STATUS_MAP(ROW)
#undef ROW
    };
    EXPECT_EQ(sizeof rows / sizeof rows[0], 14u);
    for (auto &row : rows) {
        EXPECT_STREQ(sf_err_name(row.code), row.name);
        EXPECT_STRNE(sf_strerror(row.code), "unknown status") << row.name;
    }
    EXPECT_STREQ(sf_err_name(SF_EPANIC), "SF_EPANIC");
    EXPECT_EQ(SF_EPANIC, -3);
    EXPECT_EQ(SF_ESTATE, -8);
    EXPECT_STREQ(sf_err_name(12345), "SF_UNKNOWN");
    EXPECT_STREQ(sf_strerror(-999), "unknown status");
}

TEST(Version, CompileTimeMatchesRunTime) {
    EXPECT_EQ(sf_version_number(), SF_VERSION_NUMBER);
    EXPECT_STREQ(sf_version_string(), SF_VERSION_STRING);
    std::string expect = std::to_string(SF_VERSION_MAJOR) + "." + std::to_string(SF_VERSION_MINOR) +
                         "." + std::to_string(SF_VERSION_PATCH);
    EXPECT_EQ(expect, sf_version_string());
}

TEST(Concurrency, ManyThreadsManyKeysEachFlightRunsOnceAtATime) {
    // Every key has an "inside" counter: two executions of one key at once
    // would push it to 2.  Leaders hold the flight until a follower joined
    // or a bounded number of spins passed.
    constexpr int kThreads = 8, kKeys = 16, kIters = 2000;
    GroupPtr g;
    struct KeyState {
        std::atomic<int> inside{0};
        std::atomic<int> overlap{0};
    };
    std::vector<KeyState> keys(kKeys);
    struct Arg {
        KeyState *k;
    };
    auto fn = [](sf_call *, void *p) -> int {
        auto *k = static_cast<KeyState *>(p);
        if (k->inside.fetch_add(1) != 0) k->overlap.fetch_add(1);
        for (int i = 0; i < 200; ++i) std::this_thread::yield();
        k->inside.fetch_sub(1);
        return 0;
    };
    std::vector<std::thread> ts;
    for (int t = 0; t < kThreads; ++t) {
        ts.emplace_back([&, t] {
            for (int i = 0; i < kIters / kThreads * 4; ++i) {
                int k = (i * 7 + t) % kKeys;
                char key[8];
                int n = snprintf(key, sizeof key, "k%d", k);
                ASSERT_EQ(sf_group_do(g, key, n, fn, &keys[k], nullptr, nullptr), SF_OK);
            }
        });
    }
    for (auto &t : ts) t.join();
    for (auto &k : keys) EXPECT_EQ(k.overlap.load(), 0);
    sf_group_stats st = stats_of(g);
    EXPECT_EQ(st.calls, st.leaders + st.followers);
    EXPECT_EQ(st.in_flight, 0u);
}

}  // namespace
