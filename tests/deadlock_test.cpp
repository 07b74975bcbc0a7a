// Which waits are deadlocks.  1.0's rule: a leader waiting on its own
// unfinished flight, and sf_group_do on a key whose flight the calling
// thread leads, are SF_EDEADLK; a two-phase follower may always wait,
// because the leader's handle may have been handed to another thread that
// finishes it.  1.1 added the cases where waiting is certain to deadlock
// (fn's own thread waiting on its key) and, since 1.2, the stricter check
// for a two-phase flight is the caller's to ask for (sf_call_lead_here).
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <thread>

#include "singleflight.h"
#include "test_util.hpp"

using namespace sftest;

namespace {

sf_call *begin(sf_group *g, const char *key, int want) {
    sf_call *c = nullptr;
    EXPECT_EQ(sf_group_begin(g, key, std::strlen(key), &c), want) << key;
    return c;
}

int trivial_fn(sf_call *, void *) { return 0; }

// A valid 1.0 program: begin on this thread, hand the leader's handle to a
// worker, wait for the result here.  1.1.0 refused the wait at once.
TEST(OneZeroRule, AFollowerOnTheBeginningThreadWaitsForTheLeaderHandedToAWorker) {
    GroupPtr g;
    sf_call *l = begin(g, "k", SF_LEADER);
    sf_call *f = begin(g, "k", SF_FOLLOWER);
    Event waiting;
    std::thread worker([&] {
        waiting.wait();
        static int value = 11;
        sf_call_set_value(l, &value, nullptr);
        EXPECT_EQ(sf_call_finish(l, 0), SF_OK);
    });
    waiting.set();
    sf_result *r = nullptr;
    ASSERT_EQ(sf_call_wait(f, -1, &r, nullptr), SF_OK);
    EXPECT_EQ(*static_cast<int *>(sf_result_value(r)), 11);
    sf_result_release(r);
    worker.join();
    sf_call_release(f);
    sf_call_release(l);
}

TEST(OneZeroRule, ALeaderWaitingOnItsOwnUnfinishedFlightIsStillEdeadlk) {
    GroupPtr g;
    sf_call *l = begin(g, "k", SF_LEADER);
    EXPECT_EQ(sf_call_wait(l, -1, nullptr, nullptr), SF_EDEADLK);
    EXPECT_EQ(sf_call_wait(l, 1000, nullptr, nullptr), SF_EDEADLK);
    ASSERT_EQ(sf_call_finish(l, 0), SF_OK);
    EXPECT_EQ(sf_call_wait(l, -1, nullptr, nullptr), SF_OK) << "after finishing: its result";
    sf_call_release(l);
}

// 1.0 refused sf_group_do on a key the thread began (it recorded the
// two-phase leader's thread); that stays, and sf_call_disown lifts it.
TEST(OneZeroRule, DoOnAKeyThisThreadBeganIsEdeadlkUntilDisowned) {
    GroupPtr g;
    sf_call *l = begin(g, "k", SF_LEADER);
    EXPECT_EQ(sf_group_do(g, "k", 1, trivial_fn, nullptr, nullptr, nullptr), SF_EDEADLK);
    ASSERT_EQ(sf_call_disown(l), SF_OK);
    std::thread worker([&] {
        wait_followers(g, 1);
        EXPECT_EQ(sf_call_finish(l, 3), SF_OK);
    });
    sf_result *r = nullptr;
    EXPECT_EQ(sf_group_do(g, "k", 1, trivial_fn, nullptr, &r, nullptr), SF_OK) << "joins";
    EXPECT_EQ(sf_result_error(r), 3);
    sf_result_release(r);
    worker.join();
    sf_call_release(l);
}

// A follower waiting forever inside fn on fn's own key can only deadlock:
// that is refused whatever the caller asked for (since 1.1).
TEST(CertainDeadlock, AFollowerWaitingForeverInsideFnOnItsOwnKeyIsEdeadlk) {
    GroupPtr g;
    struct S {
        sf_group *g;
        int begin_rc = 0, forever = 0, bounded = 0;
    } s{g};
    ASSERT_EQ(sf_group_do(
                  g, "own", 3,
                  [](sf_call *, void *p) {
                      auto *ps = static_cast<S *>(p);
                      sf_call *f = nullptr;
                      ps->begin_rc = sf_group_begin(ps->g, "own", 3, &f);
                      if (ps->begin_rc != SF_FOLLOWER) return 1;
                      ps->forever = sf_call_wait(f, -1, nullptr, nullptr);
                      ps->bounded = sf_call_wait(f, 1000000, nullptr, nullptr);
                      sf_call_release(f);
                      return 0;
                  },
                  &s, nullptr, nullptr),
              SF_OK);
    EXPECT_EQ(s.begin_rc, SF_FOLLOWER);
    EXPECT_EQ(s.forever, SF_EDEADLK);
    EXPECT_EQ(s.bounded, SF_ETIMEDOUT);
}

// The stricter check, asked for: an event loop or a coroutine scheduler
// whose two-phase work runs on its own thread.
TEST(LeadHere, AskedForAFollowerWaitingForeverOnTheLeadersThreadIsEdeadlk) {
    GroupPtr g;
    sf_call *l = begin(g, "k", SF_LEADER);
    sf_call *f = begin(g, "k", SF_FOLLOWER);
    ASSERT_EQ(sf_call_lead_here(l), SF_OK);
    EXPECT_EQ(sf_call_wait(f, -1, nullptr, nullptr), SF_EDEADLK);
    EXPECT_EQ(sf_call_wait(f, 1000, nullptr, nullptr), SF_ETIMEDOUT) << "a bounded wait ends";
    EXPECT_EQ(sf_group_do(g, "k", 1, trivial_fn, nullptr, nullptr, nullptr), SF_EDEADLK);
    // Another thread is not the leader's: it waits.
    std::atomic<int> other{1000};
    std::thread t([&] { other = sf_call_wait(f, -1, nullptr, nullptr); });
    wait_followers(g, 1);
    // Disowning lifts it again.
    ASSERT_EQ(sf_call_disown(l), SF_OK);
    std::thread worker([&] { EXPECT_EQ(sf_call_finish(l, 0), SF_OK); });
    EXPECT_EQ(sf_call_wait(f, -1, nullptr, nullptr), SF_OK);
    worker.join();
    t.join();
    EXPECT_EQ(other.load(), SF_OK);
    sf_call_release(f);
    sf_call_release(l);
}

TEST(LeadHere, MovesTheLeadToTheCallingThread) {
    GroupPtr g;
    sf_call *l = begin(g, "k", SF_LEADER);
    sf_call *f = begin(g, "k", SF_FOLLOWER);
    std::thread loop([&] { EXPECT_EQ(sf_call_lead_here(l), SF_OK); });
    loop.join();
    // Led by the (finished) loop thread now, not by this one: waiting here
    // is not the deadlock the check is for.
    std::thread worker([&] { EXPECT_EQ(sf_call_finish(l, 0), SF_OK); });
    EXPECT_EQ(sf_call_wait(f, -1, nullptr, nullptr), SF_OK);
    worker.join();
    sf_call_release(f);
    sf_call_release(l);
}

TEST(LeadHere, OnlyATwoPhaseLeaderMayAsk) {
    GroupPtr g;
    sf_call *l = begin(g, "k", SF_LEADER);
    sf_call *f = begin(g, "k", SF_FOLLOWER);
    EXPECT_EQ(sf_call_lead_here(f), SF_ESTATE);
    EXPECT_EQ(sf_call_lead_here(nullptr), SF_EINVAL);
    EXPECT_EQ(
        sf_group_do(
            g, "d", 1,
            [](sf_call *call, void *) { return sf_call_lead_here(call) == SF_ESTATE ? 0 : 1; },
            nullptr, nullptr, nullptr),
        SF_OK)
        << "fn's call is led by fn's thread already";
    ASSERT_EQ(sf_call_finish(l, 0), SF_OK);
    sf_call_release(f);
    sf_call_release(l);
}

}  // namespace
