// Giving up and abandonment (SF_1.1): one caller leaving never fails the
// others; the work is told to stop only when every interested caller has
// gone; an abandoned flight leaves the table at once.  Rows of
// docs/semantics.md ("Giving up"), races included.
#include <gtest/gtest.h>
#include <poll.h>
#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "singleflight.h"
#include "test_util.hpp"

using namespace sftest;

namespace {

// A few hundred nanoseconds, different each round, so that both sides of a
// race get to go first (the assertions hold either way).
void stagger(int round, int side) {
    for (volatile int i = 0; i < ((round * 7 + side * 13) % 32) * 20; ++i) {}
}

struct Abandon {
    std::atomic<int> runs{0};
    std::atomic<uint64_t> thread{0};
};

uint64_t self_id() { return uint64_t(pthread_self()); }

void on_abandon(sf_call *call, void *payload) {
    auto *a = static_cast<Abandon *>(payload);
    EXPECT_EQ(sf_call_abandoned(call), 1);
    a->thread = self_id();
    a->runs++;
}

sf_call *begin(sf_group *g, const char *key, int want) {
    sf_call *c = nullptr;
    EXPECT_EQ(sf_group_begin(g, key, std::strlen(key), &c), want) << key;
    return c;
}

sf_group_stats stats2(sf_group *g) {
    sf_group_stats st{};
    st.version = 2;
    EXPECT_EQ(sf_group_stats_get(g, &st), SF_OK);
    return st;
}

TEST(Cancel, OneFollowerGivingUpLeavesTheOthersTheirResult) {
    GroupPtr g;
    sf_call *l = begin(g, "k", SF_LEADER);
    sf_call *a = begin(g, "k", SF_FOLLOWER);
    sf_call *b = begin(g, "k", SF_FOLLOWER);
    EXPECT_EQ(sf_call_cancel(a), 0);
    sf_result *r = reinterpret_cast<sf_result *>(1);
    EXPECT_EQ(sf_call_wait(a, -1, &r, nullptr), SF_ECANCELED);
    EXPECT_EQ(r, nullptr);
    EXPECT_EQ(sf_call_cancel(a), SF_ESTATE) << "a handle gives up once";
    static int value = 42;
    sf_call_set_value(l, &value, nullptr);
    ASSERT_EQ(sf_call_finish(l, 0), SF_OK);
    int shared = 0;
    ASSERT_EQ(sf_call_wait(b, 0, &r, &shared), SF_OK);
    EXPECT_EQ(sf_result_value(r), &value);
    EXPECT_EQ(shared, 1);
    sf_result_release(r);
    EXPECT_EQ(sf_call_wait(a, 0, nullptr, nullptr), SF_ECANCELED) << "stays given up";
    EXPECT_EQ(sf_call_abandoned(l), 0);
    for (sf_call *c : {a, b, l}) sf_call_release(c);
    sf_group_stats st = stats2(g);
    EXPECT_EQ(st.cancels, 1u);
    EXPECT_EQ(st.abandons, 0u);
    EXPECT_EQ(st.in_flight, 0u);
}

TEST(Cancel, ADoneCallbackRunsExactlyOnceWithEcanceledAndNoResult) {
    GroupPtr g;
    sf_call *l = begin(g, "k", SF_LEADER);
    sf_call *f = begin(g, "k", SF_FOLLOWER);
    Done d;
    ASSERT_EQ(sf_call_on_done(f, record_done, &d), SF_OK);
    EXPECT_EQ(d.runs.load(), 0);
    EXPECT_EQ(sf_call_cancel(f), 0);
    EXPECT_EQ(d.runs.load(), 1) << "on this thread, now";
    EXPECT_EQ(d.status.load(), SF_ECANCELED);
    EXPECT_FALSE(d.had_result.load());
    ASSERT_EQ(sf_call_finish(l, 0), SF_OK);
    EXPECT_EQ(d.runs.load(), 1) << "and not again at completion";
    sf_call_release(f);
    sf_call_release(l);
}

TEST(Cancel, TheEventfdBecomesReadableSoAPollLoopWakes) {
    GroupPtr g;
    sf_call *l = begin(g, "k", SF_LEADER);
    sf_call *f = begin(g, "k", SF_FOLLOWER);
    int fd = sf_call_fd(f);
    ASSERT_GE(fd, 0);
    struct pollfd p = {fd, POLLIN, 0};
    EXPECT_EQ(poll(&p, 1, 0), 0);
    EXPECT_EQ(sf_call_cancel(f), 0);
    EXPECT_EQ(poll(&p, 1, 0), 1);
    EXPECT_EQ(sf_call_wait(f, 0, nullptr, nullptr), SF_ECANCELED);
    sf_call_release(f);
    sf_call_finish(l, 0);
    sf_call_release(l);
}

TEST(Cancel, AfterCompletionItIsEstateAndTheResultStands) {
    GroupPtr g;
    sf_call *l = begin(g, "k", SF_LEADER);
    sf_call *f = begin(g, "k", SF_FOLLOWER);
    ASSERT_EQ(sf_call_finish(l, 7), SF_OK);
    EXPECT_EQ(sf_call_cancel(f), SF_ESTATE);
    EXPECT_EQ(sf_call_cancel(l), SF_ESTATE);
    sf_result *r = nullptr;
    ASSERT_EQ(sf_call_wait(f, 0, &r, nullptr), SF_OK);
    EXPECT_EQ(sf_result_error(r), 7);
    sf_result_release(r);
    sf_call_release(f);
    sf_call_release(l);
    EXPECT_EQ(stats2(g).cancels, 0u);
}

TEST(Cancel, FnsCallAndBadArgumentsAreRefused) {
    GroupPtr g;
    EXPECT_EQ(sf_call_cancel(nullptr), SF_EINVAL);
    EXPECT_EQ(sf_call_abandoned(nullptr), 0);
    EXPECT_EQ(sf_call_on_abandon(nullptr, on_abandon, nullptr), SF_EINVAL);
    sf_call *l = begin(g, "k", SF_LEADER);
    EXPECT_EQ(sf_call_on_abandon(l, nullptr, nullptr), SF_EINVAL);
    sf_call *f = begin(g, "k", SF_FOLLOWER);
    Abandon a;
    EXPECT_EQ(sf_call_on_abandon(f, on_abandon, &a), SF_ESTATE) << "the leader's handle only";
    ASSERT_EQ(sf_call_on_abandon(l, on_abandon, &a), SF_OK);
    EXPECT_EQ(sf_call_on_abandon(l, on_abandon, &a), SF_ESTATE) << "one per flight";
    sf_call_release(f);
    sf_call_finish(l, 0);
    sf_call_release(l);
    // Inside fn of sf_group_do, the caller is running fn: it cannot give up.
    EXPECT_EQ(sf_group_do(
                  g, "d", 1,
                  [](sf_call *call, void *) { return sf_call_cancel(call) == SF_ESTATE ? 0 : 1; },
                  nullptr, nullptr, nullptr),
              SF_OK);
    EXPECT_EQ(a.runs.load(), 0);
}

TEST(Abandon, WhenEveryCallerGivesUpTheLastOneRunsTheCallbackAndTheKeyIsFree) {
    GroupPtr g;
    sf_call *l = begin(g, "k", SF_LEADER);
    sf_call *a = begin(g, "k", SF_FOLLOWER);
    sf_call *b = begin(g, "k", SF_FOLLOWER);
    Abandon ab;
    ASSERT_EQ(sf_call_on_abandon(l, on_abandon, &ab), SF_OK);
    EXPECT_EQ(sf_call_cancel(l), 0) << "followers are still interested";
    EXPECT_EQ(sf_call_cancel(a), 0);
    EXPECT_EQ(sf_call_abandoned(l), 0);
    uint64_t last = 0;
    std::thread([&] {
        last = self_id();
        EXPECT_EQ(sf_call_cancel(b), 1) << "this one abandons it";
    }).join();
    EXPECT_EQ(ab.runs.load(), 1);
    EXPECT_EQ(ab.thread.load(), last) << "on the thread of the last caller to leave";
    EXPECT_EQ(sf_call_abandoned(l), 1);
    EXPECT_EQ(sf_call_abandoned(a), 1);
    // Out of the table: the next caller starts afresh.
    sf_call *fresh = begin(g, "k", SF_LEADER);
    // The old leader still finishes; its result reaches nobody.
    EXPECT_EQ(sf_call_finish(l, 0), SF_OK);
    EXPECT_EQ(sf_call_wait(l, 0, nullptr, nullptr), SF_ECANCELED);
    EXPECT_EQ(sf_call_wait(b, 0, nullptr, nullptr), SF_ECANCELED);
    sf_call_finish(fresh, 0);
    for (sf_call *c : {a, b, l, fresh}) sf_call_release(c);
    EXPECT_EQ(ab.runs.load(), 1);
    sf_group_stats st = stats2(g);
    EXPECT_EQ(st.abandons, 1u);
    EXPECT_EQ(st.cancels, 3u);
    EXPECT_EQ(st.in_flight, 0u);
}

TEST(Abandon, ReleasingBeforeTheEndIsLeavingToo) {
    GroupPtr g;
    sf_call *l = begin(g, "k", SF_LEADER);
    sf_call *f = begin(g, "k", SF_FOLLOWER);
    Abandon ab;
    ASSERT_EQ(sf_call_on_abandon(l, on_abandon, &ab), SF_OK);
    EXPECT_EQ(sf_call_cancel(l), 0);
    sf_call_release(f);  // the last interested caller walks away
    EXPECT_EQ(ab.runs.load(), 1);
    {  // the key is free
        sf_call *n = begin(g, "k", SF_LEADER);
        sf_call_finish(n, 0);
        sf_call_release(n);
    }
    sf_call_finish(l, 0);
    sf_call_release(l);
}

TEST(Abandon, ALateRegistrationRunsAtOnceAndAPollSeesIt) {
    GroupPtr g;
    sf_call *l = begin(g, "k", SF_LEADER);
    EXPECT_EQ(sf_call_cancel(l), 1) << "the leader alone: giving up abandons it";
    EXPECT_EQ(sf_call_abandoned(l), 1);
    Abandon ab;
    ASSERT_EQ(sf_call_on_abandon(l, on_abandon, &ab), SF_OK);
    EXPECT_EQ(ab.runs.load(), 1);
    EXPECT_EQ(ab.thread.load(), self_id());
    sf_call_finish(l, 0);
    sf_call_release(l);
}

TEST(Abandon, ADoFlightIsNeverAbandonedItsLeaderIsRunningFn) {
    GroupPtr g;
    struct Ctx {
        sf_group *g;
        int rc = 99;
    } ctx{g};
    ASSERT_EQ(sf_group_do(
                  g, "k", 1,
                  [](sf_call *call, void *p) {
                      auto *c = static_cast<Ctx *>(p);
                      std::thread([&] {
                          sf_call *f = nullptr;
                          sf_group_begin(c->g, "k", 1, &f);
                          c->rc = sf_call_cancel(f);
                          sf_call_release(f);
                      }).join();
                      return sf_call_abandoned(call);
                  },
                  &ctx, nullptr, nullptr),
              SF_OK);
    EXPECT_EQ(ctx.rc, 0);
    EXPECT_EQ(stats2(g).abandons, 0u);
}

// A flight of key "race" whose leader's caller has given up, with one
// follower left: that follower's leaving abandons it (ab counts the
// callback's runs).
struct OneFollowerLeft {
    sf_call *l, *f;
    Abandon ab;
    explicit OneFollowerLeft(sf_group *g)
        : l(begin(g, "race", SF_LEADER)), f(begin(g, "race", SF_FOLLOWER)) {
        EXPECT_EQ(sf_call_on_abandon(l, on_abandon, &ab), SF_OK);
        EXPECT_EQ(sf_call_cancel(l), 0);
    }
};

// The last interested caller leaves at the instant fn completes: either the
// flight completes first (no abandonment) or it is abandoned first (the
// callback runs, the finish still succeeds); never both half-way, never a
// hang, and the key is free afterwards.
TEST(AbandonRace, LastCallerLeavingAsTheLeaderFinishes) {
    GroupPtr g;
    int abandoned = 0, completed = 0;
    for (int round = 0; round < 1000; ++round) {
        OneFollowerLeft x(g);
        sf_call *l = x.l, *f = x.f;
        Abandon &ab = x.ab;
        pthread_barrier_t go;
        pthread_barrier_init(&go, nullptr, 2);
        int finish_rc = 99, cancel_rc = 99;
        std::thread t([&] {
            pthread_barrier_wait(&go);
            stagger(round, 0);
            cancel_rc = sf_call_cancel(f);
        });
        pthread_barrier_wait(&go);
        stagger(round, 1);
        finish_rc = sf_call_finish(l, 0);
        t.join();
        pthread_barrier_destroy(&go);
        EXPECT_EQ(finish_rc, SF_OK);
        if (ab.runs.load() == 1) {
            ++abandoned;
            EXPECT_EQ(cancel_rc, 1);
            EXPECT_EQ(sf_call_abandoned(l), 1);
        } else {
            ++completed;
            EXPECT_EQ(ab.runs.load(), 0);
            // The follower gave up, or completion came first and it was late.
            EXPECT_TRUE(cancel_rc == 0 || cancel_rc == SF_ESTATE) << cancel_rc;
            EXPECT_EQ(sf_call_abandoned(l), 0);
        }
        sf_call_release(f);
        sf_call_release(l);
        sf_call *n = begin(g, "race", SF_LEADER);  // the key is free either way
        sf_call_finish(n, 0);
        sf_call_release(n);
        if (::testing::Test::HasFailure()) break;
    }
    std::printf("last leaving vs finish: %d abandoned first, %d completed first\n", abandoned,
                completed);
    EXPECT_EQ(stats2(g).in_flight, 0u);
}

// A new caller arrives at the instant the last one leaves: it joins the old
// flight (which then is not abandoned, and delivers to it) or starts a new
// one (the old was abandoned and left the table).  Never a join of an
// abandoned flight.
TEST(AbandonRace, NewCallerJoiningAsTheLastOneLeaves) {
    GroupPtr g;
    int joined = 0, fresh = 0;
    for (int round = 0; round < 1000; ++round) {
        OneFollowerLeft x(g);
        sf_call *l = x.l, *f = x.f;
        Abandon &ab = x.ab;
        std::atomic<bool> running{false};
        sf_call *n = nullptr;
        int role = 0;
        std::thread t([&] {
            running = true;  // spinning, not parked: both sides start together
            stagger(round, 0);
            role = sf_group_begin(g, "race", 4, &n);
        });
        while (!running) {}
        stagger(round, 1);
        sf_call_cancel(f);
        t.join();
        if (role == SF_FOLLOWER) {
            ++joined;
            EXPECT_EQ(ab.runs.load(), 0) << "joined a flight that was abandoned";
            ASSERT_EQ(sf_call_finish(l, 5), SF_OK);
            sf_result *r = nullptr;
            ASSERT_EQ(sf_call_wait(n, 0, &r, nullptr), SF_OK) << "the late joiner gets the result";
            EXPECT_EQ(sf_result_error(r), 5);
            sf_result_release(r);
        } else {
            ++fresh;
            EXPECT_EQ(role, SF_LEADER);
            EXPECT_EQ(ab.runs.load(), 1) << "a new flight while the old one was still wanted";
            sf_call_finish(l, 0);
            sf_call_finish(n, 0);
        }
        for (sf_call *c : {f, l, n}) sf_call_release(c);
        if (::testing::Test::HasFailure()) break;
    }
    std::printf("new caller vs last leaving: %d joined, %d started afresh\n", joined, fresh);
    EXPECT_EQ(stats2(g).in_flight, 0u);
}

// A two-phase leader whose work runs elsewhere, marked as led here
// (sf_call_lead_here): once disowned, the thread that began it may wait on
// the key like anyone else.  (Without the mark it may anyway: the 1.0 rule,
// tests/deadlock_test.cpp.)
TEST(Disown, AWaitOnTheBeginningThreadIsNoLongerADeadlock) {
    GroupPtr g;
    sf_call *l = begin(g, "k", SF_LEADER);
    sf_call *f = begin(g, "k", SF_FOLLOWER);
    ASSERT_EQ(sf_call_lead_here(l), SF_OK);
    EXPECT_EQ(sf_call_wait(f, -1, nullptr, nullptr), SF_EDEADLK) << "led here: refused";
    EXPECT_EQ(sf_call_disown(f), SF_ESTATE) << "a follower leads nothing";
    EXPECT_EQ(sf_call_disown(nullptr), SF_EINVAL);
    ASSERT_EQ(sf_call_disown(l), SF_OK);
    std::thread worker([&] { EXPECT_EQ(sf_call_finish(l, 8), SF_OK); });
    sf_result *r = nullptr;
    EXPECT_EQ(sf_call_wait(f, -1, &r, nullptr), SF_OK) << "waits for the work elsewhere";
    EXPECT_EQ(sf_result_error(r), 8);
    sf_result_release(r);
    worker.join();
    sf_call_release(f);
    sf_call_release(l);
    EXPECT_EQ(sf_group_do(
                  g, "d", 1,
                  [](sf_call *call, void *) { return sf_call_disown(call) == SF_ESTATE ? 0 : 1; },
                  nullptr, nullptr, nullptr),
              SF_OK)
        << "fn runs on its thread: it cannot disown it";
}

}  // namespace
