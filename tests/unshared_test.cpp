// sf_call_finish_unshared (SF_1.1): a two-phase leader that nobody joined
// finishes and releases in one call, so a binding's value never has to
// leave the host language; anyone who joined makes it the usual way.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "singleflight.h"
#include "test_util.hpp"

using namespace sftest;

namespace {

sf_call *begin(sf_group *g, int want) {
    sf_call *c = nullptr;
    EXPECT_EQ(sf_group_begin(g, "k", 1, &c), want);
    return c;
}

TEST(Unshared, AloneItFinishesReleasesAndFreesTheKey) {
    GroupPtr g;
    sf_call *l = begin(g, SF_LEADER);
    EXPECT_EQ(sf_call_finish_unshared(l, 3), 0);  // l is gone now
    sf_group_stats st = stats_of(g);
    EXPECT_EQ(st.in_flight, 0u);
    EXPECT_EQ(st.leaders, 1u);
    sf_call *again = begin(g, SF_LEADER);
    EXPECT_EQ(sf_call_finish_unshared(again, 0), 0);
    EXPECT_EQ(sf_group_free(g.g), SF_OK) << "no handle left behind";
    g.g = nullptr;
}

TEST(Unshared, WithAFollowerItChangesNothingAndTheUsualWayDelivers) {
    GroupPtr g;
    sf_call *l = begin(g, SF_LEADER);
    sf_call *f = begin(g, SF_FOLLOWER);
    EXPECT_EQ(sf_call_finish_unshared(l, 0), 1);
    static int value = 9;
    sf_call_set_value(l, &value, nullptr);
    ASSERT_EQ(sf_call_finish(l, 4), SF_OK);
    sf_result *r = nullptr;
    int shared = 0;
    ASSERT_EQ(sf_call_wait(f, 0, &r, &shared), SF_OK);
    EXPECT_EQ(sf_result_value(r), &value);
    EXPECT_EQ(sf_result_error(r), 4);
    sf_result_release(r);
    ASSERT_EQ(sf_call_wait(l, 0, nullptr, &shared), SF_OK);
    EXPECT_EQ(shared, 1);
    sf_call_release(f);
    sf_call_release(l);
}

TEST(Unshared, AFollowerThatJoinedAndLeftStillCounts) {
    GroupPtr g;
    sf_call *l = begin(g, SF_LEADER);
    sf_call_release(begin(g, SF_FOLLOWER));
    EXPECT_EQ(sf_call_finish_unshared(l, 0), 1) << "Go's dups counts it: shared";
    sf_call_finish(l, 0);
    sf_call_release(l);
}

TEST(Unshared, ForgottenOrFinishedOrNotALeader) {
    GroupPtr g;
    sf_call *l = begin(g, SF_LEADER);
    ASSERT_EQ(sf_group_forget(g, "k", 1), 1);
    EXPECT_EQ(sf_call_finish_unshared(l, 0), 1) << "out of the table by a forget: the usual way";
    sf_call *f2 = nullptr;
    sf_call *l2 = begin(g, SF_LEADER);
    ASSERT_EQ(sf_group_begin(g, "k", 1, &f2), SF_FOLLOWER);
    EXPECT_EQ(sf_call_finish_unshared(f2, 0), SF_ESTATE) << "a follower";
    ASSERT_EQ(sf_call_finish(l, 0), SF_OK);
    EXPECT_EQ(sf_call_finish_unshared(l, 0), SF_ESTATE) << "already finished";
    EXPECT_EQ(sf_call_finish_unshared(nullptr, 0), SF_EINVAL);
    sf_call_finish(l2, 0);
    for (sf_call *c : {l, l2, f2}) sf_call_release(c);
    EXPECT_EQ(sf_group_do(
                  g, "d", 1,
                  [](sf_call *call, void *) {
                      return sf_call_finish_unshared(call, 0) == SF_ESTATE ? 0 : 1;
                  },
                  nullptr, nullptr, nullptr),
              SF_OK)
        << "fn's call: fn's return finishes it";
}

TEST(Unshared, TheLeadersOwnDoneCallbackStillRuns) {
    GroupPtr g;
    sf_call *l = begin(g, SF_LEADER);
    static std::atomic<int> status{99}, shared{99};
    ASSERT_EQ(sf_call_on_done(
                  l,
                  [](int st, sf_result *r, int sh, void *) {
                      status = st;
                      shared = sh;
                      EXPECT_EQ(sf_result_error(r), 6);
                  },
                  nullptr),
              SF_OK);
    EXPECT_EQ(sf_call_finish_unshared(l, 6), 0);
    EXPECT_EQ(status.load(), SF_OK);
    EXPECT_EQ(shared.load(), 0);
}

// Joining and finishing at once: the follower either joins first (1: the
// usual way follows, and it gets the value) or arrives after (it leads a new
// flight).  Never a follower of a flight finished without its value.
TEST(Unshared, AJoinRacingTheFinishGetsAValueOrLeads) {
    GroupPtr g;
    int joined = 0, led = 0;
    for (int round = 0; round < 500; ++round) {
        sf_call *l = begin(g, SF_LEADER);
        std::atomic<bool> running{false};
        sf_call *n = nullptr;
        int role = 0;
        std::thread t([&] {
            running = true;
            role = sf_group_begin(g, "k", 1, &n);
        });
        while (!running) {}
        for (volatile int i = 0; i < (round % 32) * 20; ++i) {}
        static int value = 1;
        if (sf_call_finish_unshared(l, 0) == 1) {
            sf_call_set_value(l, &value, nullptr);
            sf_call_finish(l, 0);
            sf_call_release(l);
        }
        t.join();
        if (role == SF_FOLLOWER) {
            ++joined;
            sf_result *r = nullptr;
            ASSERT_EQ(sf_call_wait(n, -1, &r, nullptr), SF_OK);
            EXPECT_EQ(sf_result_value(r), &value) << "joined a flight finished without its value";
            sf_result_release(r);
        } else {
            ++led;
            ASSERT_EQ(role, SF_LEADER);
            sf_call_finish(n, 0);
        }
        sf_call_release(n);
        if (::testing::Test::HasFailure()) break;
    }
    std::printf("join vs finish_unshared: %d joined, %d led afresh\n", joined, led);
    EXPECT_EQ(stats_of(g).in_flight, 0u);
}

}  // namespace
