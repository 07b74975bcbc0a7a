// group::run_async with giving up: one caller's cancel() never fails the
// others; when every caller has given up, the work is told (abandon_token).
// Every wait is a handshake (a gate, the group's counters), never a delay.
#include "singleflight.hpp"
#include "support.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

namespace {

using sftest::await_followers;
using sftest::eventually;
using sftest::gate;
using singleflight::abandon_token;
using singleflight::group;

class Abandon : public ::testing::Test {
protected:
    void TearDown() override {
        // The work of each test has finished or been told to: nothing runs on.
        EXPECT_TRUE(eventually([&] { return g.stats().in_flight == 0; }));
    }
    group g;
};

template <class T>
void expect_canceled(singleflight::future<T> &f) {
    try {
        f.get();
        ADD_FAILURE() << "get() returned after cancel()";
    } catch (const singleflight::error &e) {
        EXPECT_EQ(e.code(), SF_ECANCELED) << e.what();
    }
}

// The work of these tests: waits until released or abandoned, and reports
// which.
struct work_probe {
    gate release;
    gate registered;  // the work has registered its abandon callback
    gate told;        // opened by the abandon callback
    std::atomic<int> runs{0};
    std::atomic<bool> saw_abandoned{false};
    std::atomic<std::thread::id> told_on{};

    std::function<int(const abandon_token &)> fn(int value) {
        return [this, value](const abandon_token &t) {
            ++runs;
            t.on_abandon([this] {
                told_on = std::this_thread::get_id();
                told.open();
            });
            registered.open();
            release.wait();
            saw_abandoned = t.abandoned();
            return value;
        };
    }
};

TEST_F(Abandon, OneFollowerGivingUpDoesNotFailTheOthers) {
    work_probe w;
    auto leader = g.run_async("k", w.fn(7));
    auto a = g.run_async("k", w.fn(-1));
    auto b = g.run_async("k", w.fn(-1));
    EXPECT_TRUE(leader.leader());
    EXPECT_FALSE(a.leader());
    EXPECT_TRUE(a.cancel());
    EXPECT_FALSE(a.cancel()) << "nothing left to give up";
    expect_canceled(a);
    w.release.open();
    EXPECT_EQ(b.get().value(), 7);
    EXPECT_EQ(leader.get().value(), 7);
    EXPECT_FALSE(w.saw_abandoned.load());
    EXPECT_EQ(w.runs.load(), 1);
    EXPECT_EQ(g.stats().cancels, 1u);
    EXPECT_EQ(g.stats().abandons, 0u);
}

TEST_F(Abandon, TheLeadersCallerGivingUpLeavesTheWorkToTheOthers) {
    work_probe w;
    auto leader = g.run_async("k", w.fn(8));
    auto follower = g.run_async("k", w.fn(-1));
    EXPECT_TRUE(leader.cancel());
    expect_canceled(leader);
    w.release.open();
    auto r = follower.get();
    EXPECT_EQ(r.value(), 8);
    EXPECT_TRUE(r.shared());
    EXPECT_FALSE(w.saw_abandoned.load());
    EXPECT_EQ(g.stats().abandons, 0u);
}

TEST_F(Abandon, EveryCallerGivingUpTellsTheWorkOnTheLastOnesThread) {
    work_probe w;
    auto leader = g.run_async("k", w.fn(1));
    auto follower = g.run_async("k", w.fn(-1));
    w.registered.wait();
    EXPECT_TRUE(leader.cancel());
    EXPECT_TRUE(follower.cancel());
    // The abandon callback ran inside the last cancel(), on this thread.
    EXPECT_EQ(w.told_on.load(), std::this_thread::get_id());
    EXPECT_EQ(g.stats().abandons, 1u);
    // The key is free at once: a new caller starts a new flight.
    auto next = g.run_async("k", [] { return 2; });
    EXPECT_TRUE(next.leader());
    EXPECT_EQ(next.get().value(), 2);
    w.release.open();
    EXPECT_TRUE(eventually([&] { return w.saw_abandoned.load(); }))
        << "the work's token says abandoned";
    expect_canceled(leader);
}

TEST_F(Abandon, DestroyingTheFuturesIsGivingUp) {
    work_probe w;
    {
        auto leader = g.run_async("k", w.fn(1));
        auto follower = g.run_async("k", w.fn(-1));
    }
    w.told.wait();
    EXPECT_EQ(g.stats().abandons, 1u);
    EXPECT_EQ(g.stats().cancels, 2u);
    w.release.open();
}

TEST_F(Abandon, ACallbackRegisteredAfterAbandonmentRunsAtOnce) {
    gate registered, go;
    std::atomic<bool> ran_inline{false};
    {
        auto f = g.run_async("k", [&](const abandon_token &t) {
            go.wait();
            const auto me = std::this_thread::get_id();
            t.on_abandon([&, me] { ran_inline = std::this_thread::get_id() == me; });
            registered.open();
            return 0;
        });
    }  // abandoned before the work registers its callback
    go.open();
    registered.wait();
    EXPECT_TRUE(ran_inline.load());
}

TEST_F(Abandon, OneCallbackPerFlight) {
    gate done;
    std::atomic<int> code{0};
    auto f = g.run_async("k", [&](const abandon_token &t) {
        t.on_abandon([] {});
        try {
            t.on_abandon([] {});
        } catch (const singleflight::error &e) {
            code = e.code();
        }
        return 0;
    });
    EXPECT_EQ(f.get().value(), 0);
    EXPECT_EQ(code.load(), SF_ESTATE);
}

TEST_F(Abandon, CancelAfterCompletionGivesNothingUp) {
    auto f = g.run_async("k", [] { return 4; });
    f.wait();
    EXPECT_FALSE(f.cancel());
    EXPECT_EQ(f.get().value(), 4) << "the value stands";
}

TEST_F(Abandon, FnWithoutATokenStillRuns) {
    auto f = g.run_async("k", [] { return std::string("plain"); });
    EXPECT_EQ(f.get().value(), "plain");
}

// A caller-provided executor, here a thread per task; a throwing one
// completes the flight for the callers that joined.
TEST_F(Abandon, AnExecutorRunsTheWork) {
    std::vector<std::thread> threads;
    auto exec = [&](std::function<void()> task) { threads.emplace_back(std::move(task)); };
    auto f = g.run_async(
        "k", [] { return 5; }, exec);
    EXPECT_EQ(f.get().value(), 5);
    for (auto &t : threads) t.join();
    EXPECT_EQ(threads.size(), 1u);
}

TEST_F(Abandon, AnExecutorThatThrowsFailsTheFlight) {
    // A follower joins between begin and the executor call, through the
    // executor itself, to see the flight fail rather than hang.
    std::vector<singleflight::future<int>> joined;
    auto exec = [&](std::function<void()>) {
        joined.push_back(g.run_async(
            "k", [] { return -1; }, [](std::function<void()>) {}));
        throw std::runtime_error("executor full");
    };
    EXPECT_THROW(g.run_async(
                     "k", [] { return 6; }, exec),
                 std::runtime_error);
    ASSERT_EQ(joined.size(), 1u);
    EXPECT_THROW(joined[0].get(), singleflight::panic_error);
}

TEST_F(Abandon, AnExecutorThatDropsTheTaskFailsTheFlight) {
    auto f = g.run_async(
        "k", [] { return 6; }, [](std::function<void()>) {});
    EXPECT_THROW(f.get(), singleflight::panic_error);
}

// Many callers on threads, each giving up or not by a seeded choice: those
// that stay get the value; the work is told iff all gave up.
TEST_F(Abandon, CallersGivingUpAtRandomNeverFailTheOthers) {
    unsigned seed = 12;
    if (const char *s = std::getenv("SF_TEST_SEED"))
        seed = static_cast<unsigned>(std::strtoul(s, nullptr, 10));
    std::printf("seed %u (SF_TEST_SEED=... to replay)\n", seed);
    unsigned x = seed;
    auto next = [&] {
        x = x * 1103515245u + 12345u;
        return (x >> 16) & 0x7fff;
    };
    for (int round = 0; round < 100; ++round) {
        group rg;
        work_probe w;
        const int n = 1 + static_cast<int>(next() % 6);
        std::vector<singleflight::future<int>> fs;
        std::vector<bool> stay;
        for (int i = 0; i < n; ++i) {
            fs.push_back(rg.run_async("k", w.fn(round)));
            stay.push_back(next() % 3 != 0);
        }
        std::vector<std::thread> quitters;
        for (int i = 0; i < n; ++i)
            if (!stay[i]) quitters.emplace_back([&fs, i] { fs[static_cast<size_t>(i)].cancel(); });
        for (auto &t : quitters) t.join();
        bool all_left = true;
        for (bool s : stay) all_left = all_left && !s;
        EXPECT_EQ(rg.stats().abandons, all_left ? 1u : 0u) << "seed " << seed << " round " << round;
        w.release.open();
        for (int i = 0; i < n; ++i) {
            if (stay[static_cast<size_t>(i)])
                EXPECT_EQ(fs[static_cast<size_t>(i)].get().value(), round);
            else expect_canceled(fs[static_cast<size_t>(i)]);
        }
        EXPECT_TRUE(eventually([&] { return rg.stats().in_flight == 0; }));
        if (::testing::Test::HasFailure()) break;
    }
}

}  // namespace
