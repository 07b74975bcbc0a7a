// The flight table's rare paths, forced: a table of one home slot (every
// key but one waits in the overflow table), keys that share a home, a
// joiner count past its 16 bits, forget of overflowed flights, the overflow
// table growing, moving and shrinking under a seeded mix checked against a
// model, and many threads racing on a tiny table.  Through the public API,
// as users see it.
#include <gtest/gtest.h>
#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "singleflight.h"
#include "test_util.hpp"

using namespace sftest;

namespace {

sf_group *tiny_group(unsigned slots) { return group_with(slots, 0); }

std::string key(int i) { return "key-" + std::to_string(i); }

TEST(Table, OneSlotHoldsManyKeysInFlightEachWithItsOwnFlight) {
    sf_group *g = tiny_group(1);
    ASSERT_NE(g, nullptr);
    constexpr int N = 300;
    std::vector<sf_call *> leaders(N), followers(N);
    for (int i = 0; i < N; ++i) {
        std::string k = key(i);
        ASSERT_EQ(sf_group_begin(g, k.data(), k.size(), &leaders[i]), SF_LEADER) << k;
    }
    // Every key finds its own flight, in the home slot or down the chain.
    for (int i = 0; i < N; ++i) {
        std::string k = key(i);
        ASSERT_EQ(sf_group_begin(g, k.data(), k.size(), &followers[i]), SF_FOLLOWER) << k;
    }
    EXPECT_EQ(stats_of(g).in_flight, uint64_t(N));
    // Finish in an order unrelated to the chain's, each with its own value.
    std::vector<int> order(N);
    for (int i = 0; i < N; ++i) order[i] = (i * 7919) % N;
    for (int i : order) {
        sf_call_set_value(leaders[i], reinterpret_cast<void *>(uintptr_t(i + 1)), nullptr);
        ASSERT_EQ(sf_call_finish(leaders[i], 0), SF_OK);
    }
    for (int i = 0; i < N; ++i) {
        sf_result *r = nullptr;
        int shared = 0;
        ASSERT_EQ(sf_call_wait(followers[i], 0, &r, &shared), SF_OK);
        EXPECT_EQ(sf_result_value(r), reinterpret_cast<void *>(uintptr_t(i + 1))) << key(i);
        EXPECT_EQ(shared, 1);
        sf_result_release(r);
        sf_call_release(followers[i]);
        sf_call_release(leaders[i]);
    }
    sf_group_stats st = stats_of(g);
    EXPECT_EQ(st.leaders, uint64_t(N));
    EXPECT_EQ(st.followers, uint64_t(N));
    EXPECT_EQ(st.in_flight, 0u);
    // The chain is gone: every key leads again.
    for (int i = 0; i < N; ++i) {
        std::string k = key(i);
        sf_call *c;
        ASSERT_EQ(sf_group_begin(g, k.data(), k.size(), &c), SF_LEADER);
        sf_call_finish(c, 0);
        sf_call_release(c);
    }
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

TEST(Table, ForgetReachesFlightsInTheChainAndInTheHomeSlot) {
    sf_group *g = tiny_group(1);
    ASSERT_NE(g, nullptr);
    sf_call *a, *b, *c, *a2, *b2;
    ASSERT_EQ(sf_group_begin(g, "a", 1, &a), SF_LEADER);  // the home slot
    ASSERT_EQ(sf_group_begin(g, "b", 1, &b), SF_LEADER);  // the chain
    ASSERT_EQ(sf_group_begin(g, "c", 1, &c), SF_LEADER);  // the chain
    EXPECT_EQ(sf_group_forget(g, "b", 1), 1);
    EXPECT_EQ(sf_group_forget(g, "a", 1), 1);
    EXPECT_EQ(sf_group_forget(g, "zz", 2), 0);
    // Forgotten keys lead afresh; the others still join.
    ASSERT_EQ(sf_group_begin(g, "a", 1, &a2), SF_LEADER);
    ASSERT_EQ(sf_group_begin(g, "b", 1, &b2), SF_LEADER);
    sf_call *cf;
    ASSERT_EQ(sf_group_begin(g, "c", 1, &cf), SF_FOLLOWER);
    for (sf_call *l : {a, b, c, a2, b2}) {
        ASSERT_EQ(sf_call_finish(l, 0), SF_OK);
        sf_call_release(l);
    }
    ASSERT_EQ(sf_call_wait(cf, 0, nullptr, nullptr), SF_OK);
    sf_call_release(cf);
    EXPECT_EQ(stats_of(g).forgets, 2u);
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

TEST(Table, ForgetUnsharedSeesJoinersOfAChainedFlight) {
    sf_group *g = tiny_group(1);
    ASSERT_NE(g, nullptr);
    sf_call *home, *chained, *joiner;
    ASSERT_EQ(sf_group_begin(g, "home", 4, &home), SF_LEADER);
    ASSERT_EQ(sf_group_begin(g, "chained", 7, &chained), SF_LEADER);
    ASSERT_EQ(sf_group_begin(g, "chained", 7, &joiner), SF_FOLLOWER);
    EXPECT_EQ(sf_group_forget_unshared(g, "chained", 7), 0);
    EXPECT_EQ(sf_group_forget_unshared(g, "home", 4), 1);
    for (sf_call *c : {home, chained}) {
        sf_call_finish(c, 0);
        sf_call_release(c);
    }
    sf_call_release(joiner);
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

TEST(Table, JoinersPastTheSlotCountJoinTheFlightItself) {
    // The slot word counts 65535 joiners; the next ones join the flight
    // directly.  Every one of them must get the result, and every
    // reference must come back.
    GroupPtr g;
    constexpr int N = 70000;
    sf_call *leader;
    ASSERT_EQ(sf_group_begin(g, "hot", 3, &leader), SF_LEADER);
    std::vector<sf_call *> f(N);
    for (int i = 0; i < N; ++i) ASSERT_EQ(sf_group_begin(g, "hot", 3, &f[i]), SF_FOLLOWER);
    // A third of them give up before the end.
    for (int i = 0; i < N; i += 3) {
        sf_call_release(f[i]);
        f[i] = nullptr;
    }
    static int destroyed = 0;
    destroyed = 0;
    sf_call_set_value(leader, &destroyed, [](void *p) { ++*static_cast<int *>(p); });
    ASSERT_EQ(sf_call_finish(leader, 0), SF_OK);
    int shared = 0;
    sf_result *mine = nullptr;
    ASSERT_EQ(sf_call_wait(leader, 0, &mine, &shared), SF_OK);
    EXPECT_EQ(shared, 1);
    for (sf_call *c : f) {
        if (!c) continue;
        sf_result *r = nullptr;
        ASSERT_EQ(sf_call_wait(c, 0, &r, nullptr), SF_OK);
        ASSERT_EQ(r, mine);
        sf_result_release(r);
        sf_call_release(c);
    }
    sf_call_release(leader);
    EXPECT_EQ(destroyed, 0) << "a reference is still held";
    sf_result_release(mine);
    EXPECT_EQ(destroyed, 1) << "the value is destroyed once, with the last reference";
    EXPECT_EQ(stats_of(g).followers, uint64_t(N));
}

// Many threads, a handful of keys, a table of two slots: publish into the
// home slot or the chain, join in either, unpublish from either, followers
// giving up, all at once.  Each key's flights must never overlap.
TEST(Table, ThreadsRacingOnATinyTableNeverRunAKeyTwiceAtOnce) {
    sf_group *g = tiny_group(2);
    ASSERT_NE(g, nullptr);
    constexpr int kKeys = 7, kThreads = 6, kIters = 4000;
    std::atomic<int> running[kKeys] = {};
    std::atomic<int> overlaps{0}, bad_status{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            std::mt19937 rng(uint32_t(1234 + t));  // a seed per thread: the same choices every run
            for (int i = 0; i < kIters; ++i) {
                const int k = int(rng() % kKeys);
                const std::string ks = key(k);
                sf_call *c = nullptr;
                const int role = sf_group_begin(g, ks.data(), ks.size(), &c);
                if (role == SF_LEADER) {
                    if (running[k].fetch_add(1) != 0) overlaps++;
                    for (unsigned spin = rng() % 64; spin; --spin) std::this_thread::yield();
                    running[k].fetch_sub(1);
                    if (sf_call_finish(c, 0) != SF_OK) bad_status++;
                } else if (role == SF_FOLLOWER) {
                    if (rng() % 4 == 0) {  // give up without waiting
                        sf_call_release(c);
                        continue;
                    }
                    if (sf_call_wait(c, -1, nullptr, nullptr) != SF_OK) bad_status++;
                } else {
                    bad_status++;
                    continue;
                }
                sf_call_release(c);
            }
        });
    }
    for (auto &th : threads) th.join();
    EXPECT_EQ(overlaps.load(), 0);
    EXPECT_EQ(bad_status.load(), 0);
    sf_group_stats st = stats_of(g);
    EXPECT_EQ(st.in_flight, 0u);
    EXPECT_EQ(st.calls, uint64_t(kThreads) * kIters);
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

// A seeded mix of begins (new keys, and keys in flight: those must join),
// finishes, forgets and early releases over thousands of keys that share one
// or two home slots, so that the overflow table grows, moves its entries
// between its two arrays a few at a time, and shrinks again, while every
// operation is checked against a model of what is in flight.
void churn(unsigned slots, uint32_t seed) {
    sf_group *g = tiny_group(slots);
    ASSERT_NE(g, nullptr);
    std::mt19937 rng(seed);
    struct InFlight {
        sf_call *leader;
        std::vector<sf_call *> followers;
    };
    std::map<int, InFlight> model;     // key -> its flight's handles
    std::vector<sf_call *> forgotten;  // leaders of forgotten flights, still to finish
    int next_key = 0;
    uint64_t ops = 0;
    auto pick = [&]() { return std::next(model.begin(), long(rng() % model.size())); };
    // Grow to about `target` keys in flight, then drain; three waves.
    for (int wave = 0; wave < 3; ++wave) {
        const size_t target = 2000 + size_t(wave) * 3000;
        for (int phase = 0; phase < 2; ++phase) {
            while (phase == 0 ? model.size() < target : !model.empty()) {
                ++ops;
                const unsigned r = rng() % 100;
                const bool grow = phase == 0 ? r < 70 : r < 20;
                if (grow || model.empty()) {
                    // A new key (it must lead), or sometimes a key in flight
                    // (it must join that flight).
                    const bool again = !model.empty() && rng() % 4 == 0;
                    const int k = again ? pick()->first : next_key++;
                    const std::string ks = key(k);
                    sf_call *c = nullptr;
                    const int rc = sf_group_begin(g, ks.data(), ks.size(), &c);
                    if (again) {
                        ASSERT_EQ(rc, SF_FOLLOWER) << ks << " is in flight (op " << ops << ")";
                        model[k].followers.push_back(c);
                    } else {
                        ASSERT_EQ(rc, SF_LEADER) << ks << " is new (op " << ops << ")";
                        model[k] = InFlight{c, {}};
                    }
                    continue;
                }
                auto it = pick();
                const std::string ks = key(it->first);
                if (r % 10 == 0) {
                    // Forget: the next caller leads afresh; the old flight
                    // still finishes for its own callers.
                    ASSERT_EQ(sf_group_forget(g, ks.data(), ks.size()), 1) << ks;
                    sf_call *again = nullptr;
                    ASSERT_EQ(sf_group_begin(g, ks.data(), ks.size(), &again), SF_LEADER) << ks;
                    for (sf_call *f : it->second.followers) sf_call_release(f);
                    forgotten.push_back(it->second.leader);
                    it->second = InFlight{again, {}};
                    continue;
                }
                if (r % 10 == 1 && !it->second.followers.empty()) {
                    // A follower leaves early; the flight goes on.
                    sf_call_release(it->second.followers.back());
                    it->second.followers.pop_back();
                    continue;
                }
                sf_call_set_value(it->second.leader,
                                  reinterpret_cast<void *>(uintptr_t(it->first + 1)), nullptr);
                ASSERT_EQ(sf_call_finish(it->second.leader, 0), SF_OK) << ks;
                for (sf_call *f : it->second.followers) {
                    sf_result *res = nullptr;
                    ASSERT_EQ(sf_call_wait(f, 0, &res, nullptr), SF_OK) << ks;
                    EXPECT_EQ(sf_result_value(res),
                              reinterpret_cast<void *>(uintptr_t(it->first + 1)));
                    sf_result_release(res);
                    sf_call_release(f);
                }
                sf_call_release(it->second.leader);
                model.erase(it);
                // Nothing of the key is left in the table: it leads afresh.
                sf_call *fresh = nullptr;
                ASSERT_EQ(sf_group_begin(g, ks.data(), ks.size(), &fresh), SF_LEADER) << ks;
                ASSERT_EQ(sf_call_finish(fresh, 0), SF_OK);
                sf_call_release(fresh);
            }
        }
    }
    for (sf_call *l : forgotten) {
        ASSERT_EQ(sf_call_finish(l, 0), SF_OK);
        sf_call_release(l);
    }
    sf_group_stats st = stats_of(g);
    EXPECT_EQ(st.in_flight, 0u);
    EXPECT_GT(ops, 20000u);
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

TEST(Table, OverflowGrowsMovesAndShrinksUnderASeededMixOneHome) { churn(1, 1); }
TEST(Table, OverflowGrowsMovesAndShrinksUnderASeededMixTwoHomes) { churn(2, 2); }
TEST(Table, OverflowGrowsMovesAndShrinksUnderASeededMixManyHomes) { churn(64, 3); }

// A request above 2^31 slots used to loop forever in the rounding; the
// header caps the table at 2^20 home slots.
TEST(Table, AHugeShardsRequestIsCappedNotAHang) {
    for (unsigned shards : {0x80000001u, 0xffffffffu, (1u << 20) + 1}) {
        sf_group *g = group_with(shards, 0);
        ASSERT_NE(g, nullptr) << shards;
        sf_call *c = nullptr;
        ASSERT_EQ(sf_group_begin(g, "k", 1, &c), SF_LEADER);
        ASSERT_EQ(sf_call_finish(c, 0), SF_OK);
        sf_call_release(c);
        EXPECT_EQ(sf_group_free(g), SF_OK);
    }
}

}  // namespace
