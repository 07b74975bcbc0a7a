// The core's internals: hashing, block recycling, the allocation budget and
// the built-in pool.  Links the static library to reach internal symbols.
#include <gtest/gtest.h>
#include <pthread.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/cache.hpp"
#include "core/hash.hpp"
#include "core/pool.hpp"
#include "core/testing.hpp"
#include "singleflight.h"
#include "test_util.hpp"

using namespace sftest;

namespace {

TEST(Hash, DistinguishesLengthsPrefixesAndEveryByte) {
    std::set<uint64_t> seen;
    std::string base(100, 'a');
    for (size_t n = 0; n <= base.size(); ++n) seen.insert(sf::detail::hash_bytes(base.data(), n, 1));
    EXPECT_EQ(seen.size(), base.size() + 1) << "all prefixes hash differently";
    for (size_t i = 0; i < 40; ++i) {
        std::string k(40, '\0');
        k[i] = 1;
        seen.insert(sf::detail::hash_bytes(k.data(), k.size(), 1));
    }
    EXPECT_EQ(seen.size(), base.size() + 1 + 40);
    EXPECT_NE(sf::detail::hash_bytes("key", 3, 1), sf::detail::hash_bytes("key", 3, 2))
        << "the seed changes placement";
}

TEST(BlockCache, RecyclesBlocksOnTheSameThread) {
    auto c = sf::detail::call_cache();
    void *a = c.get();
    ASSERT_NE(a, nullptr);
    c.put(a);
    EXPECT_EQ(c.get(), a);
    c.put(a);
}

TEST(BlockCache, BlocksFreedOnAnotherThreadComeBack) {
    // A producer thread allocates, this thread frees: the surplus must travel
    // back through the shared list instead of piling up.
    auto c = sf::detail::flight_cache();
    std::vector<void *> blocks(1000);
    std::thread producer([&] {
        for (auto &b : blocks) b = c.get();
    });
    producer.join();
    for (void *b : blocks) c.put(b);
    unsigned long before = sf::testing::allocations();
    std::thread consumer([&] {
        for (int i = 0; i < 500; ++i) c.put(c.get());
    });
    consumer.join();
    EXPECT_EQ(sf::testing::allocations(), before) << "served from recycled blocks";
}

int trivial_fn(sf_call *, void *) { return 0; }

TEST(Allocation, SteadyStateCallsDoNotAllocate) {
    GroupPtr g;
    std::string key(48, 'k');  // the longest key kept inline
    for (int i = 0; i < 100; ++i) sf_group_do(g, key.data(), key.size(), trivial_fn, nullptr, nullptr, nullptr);
    sf_call *warm;
    sf_group_begin(g, key.data(), key.size(), &warm);
    sf_call_finish(warm, 0);
    sf_call_release(warm);
    unsigned long before = sf::testing::allocations();
    for (int i = 0; i < 10000; ++i) {
        key[i % 48] = static_cast<char>('a' + i % 26);
        sf_result *r;
        ASSERT_EQ(sf_group_do(g, key.data(), key.size(), trivial_fn, nullptr, &r, nullptr), SF_OK);
        sf_result_release(r);
        sf_call *c;
        ASSERT_EQ(sf_group_begin(g, key.data(), key.size(), &c), SF_LEADER);
        sf_call_finish(c, 0);
        sf_call_release(c);
    }
    EXPECT_EQ(sf::testing::allocations() - before, 0u);
}

TEST(Allocation, FailureIsEnomemAndLeavesTheGroupConsistent) {
    sf_group *g = nullptr;
    sf::testing::fail_allocations_after(0);
    EXPECT_EQ(sf_group_new(&g, nullptr), SF_ENOMEM);
    sf::testing::fail_allocations_after(-1);
    ASSERT_EQ(sf_group_new(&g, nullptr), SF_OK);
    std::string long_key(200, 'L');  // needs a heap copy
    sf_call *c = nullptr;
    sf::testing::fail_allocations_after(0);
    int rc = sf_group_begin(g, long_key.data(), long_key.size(), &c);
    sf::testing::fail_allocations_after(-1);
    EXPECT_EQ(rc, SF_ENOMEM);
    EXPECT_EQ(c, nullptr);
    sf_group_stats st = stats_of(g);
    EXPECT_EQ(st.calls, 0u);
    EXPECT_EQ(st.in_flight, 0u);
    ASSERT_EQ(sf_group_begin(g, long_key.data(), long_key.size(), &c), SF_LEADER)
        << "the key is not stuck";
    sf_call_finish(c, 0);
    sf_call_release(c);
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

TEST(Pool, RunsEveryTaskAndSurvivesAWorkerExiting) {
    sf::Pool *p = sf::Pool::create(0);
    ASSERT_NE(p, nullptr);
    Latch done(50);
    struct Arg { Latch *latch; bool exit; };
    auto task = [](void *a) {
        auto *arg = static_cast<Arg *>(a);
        arg->latch->count_down();
        if (arg->exit) pthread_exit(nullptr);
    };
    std::vector<Arg> args(50);
    for (int i = 0; i < 50; ++i) {
        args[i] = Arg{&done, i % 10 == 0};
        ASSERT_EQ(p->submit(task, &args[i]), SF_OK);
    }
    done.wait();
    sf::Pool::destroy(p);  // joins every worker, dead or alive
}

// An interleaving that AbandonRace.LastCallerLeavingAsTheLeaderFinishes
// (cancel_test.cpp) met about once in five CI runs under ASan, held here
// so it happens every time.  The leader has given up; its follower, the
// last interested party, is leaving and has seen nobody interested; before
// it takes the flight out of the table, the leader finishes (which takes
// the flight out itself and completes it).  The follower must then find a
// finished flight, which is never abandoned, rather than wait for an
// "unpublished" mark that only a non-leader sets: it used to spin forever.
TEST(Interleaving, LastFollowerLeavingJustAsItsLeaderFinishes) {
    GroupPtr g;
    sf_call *l = nullptr, *f = nullptr;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
    ASSERT_EQ(sf_group_begin(g, "k", 1, &f), SF_FOLLOWER);
    static std::atomic<int> abandon_runs;
    abandon_runs = 0;
    ASSERT_EQ(sf_call_on_abandon(l, [](sf_call *, void *) { ++abandon_runs; }, nullptr), SF_OK);
    ASSERT_EQ(sf_call_cancel(l), 0) << "the follower is still interested";

    struct Hold {
        Event at_point, go_on;
    };
    static Hold *hold;  // outlives a thread that never returns (the old bug)
    hold = new Hold;
    sf::testing::set_pause(sf::testing::Point::kAbandonUnpublish, [](void *) {
        hold->at_point.set();
        hold->go_on.wait();
    }, nullptr);
    static std::atomic<int> cancel_rc;
    static Event left;
    std::thread t([f] {
        cancel_rc = sf_call_cancel(f);
        left.set();
    });
    hold->at_point.wait();
    sf::testing::set_pause(sf::testing::Point::kAbandonUnpublish, nullptr, nullptr);
    EXPECT_EQ(sf_call_finish(l, 7), SF_OK);
    hold->go_on.set();
    if (!left.wait_for_ms(10000)) {
        // A watchdog for the failure only: the passing run never waits here.
        std::fprintf(stderr, "sf_call_cancel of the last follower never returned\n");
        std::abort();
    }
    t.join();
    EXPECT_EQ(cancel_rc.load(), 0) << "it left; the flight was not abandoned";
    EXPECT_EQ(abandon_runs.load(), 0);
    EXPECT_EQ(sf_call_abandoned(l), 0);
    sf_result *r = nullptr;
    EXPECT_EQ(sf_call_wait(f, 0, &r, nullptr), SF_ECANCELED) << "the follower gave up";
    sf_call_release(f);
    sf_call_release(l);
    sf_call *n = nullptr;
    EXPECT_EQ(sf_group_begin(g, "k", 1, &n), SF_LEADER) << "the key is free";
    sf_call_finish(n, 0);
    sf_call_release(n);
    EXPECT_EQ(stats_of(g).in_flight, 0u);
    delete hold;
}

}  // namespace
