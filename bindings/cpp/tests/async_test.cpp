// group::run_async: Go's DoChan through the C++ wrapper.
#include "singleflight.hpp"
#include "support.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <future>
#include <string>
#include <thread>
#include <vector>

namespace {

using sftest::await_followers;
using singleflight::group;

struct custom_error : std::runtime_error {
    custom_error(const char *what, int tag_) : std::runtime_error(what), tag(tag_) {}
    int tag;
};

// Counts live copies of a callable, so a leaked or double-freed async state
// shows up as a number.
struct counted {
    static std::atomic<int> live;
    counted() { ++live; }
    counted(const counted &) { ++live; }
    counted(counted &&) noexcept { ++live; }
    ~counted() { --live; }
};
std::atomic<int> counted::live{0};

class Async : public ::testing::Test {
protected:
    void TearDown() override { EXPECT_EQ(g.stats().in_flight, 0u); }
    group g;
};

TEST_F(Async, CallersShareOneExecutionOnThePool) {
    constexpr int n = 4;
    std::atomic<int> executions{0};
    const auto caller = std::this_thread::get_id();
    std::atomic<bool> ran_elsewhere{false};
    std::vector<singleflight::future<std::string>> futures;
    for (int i = 0; i < n; ++i) {
        futures.push_back(g.run_async("k", [&] {
            ++executions;
            ran_elsewhere = std::this_thread::get_id() != caller;
            await_followers(g, n - 1);
            return std::string("async");
        }));
    }
    std::vector<singleflight::result<std::string>> results;
    for (auto &f : futures) results.push_back(f.get());
    EXPECT_EQ(executions.load(), 1);
    EXPECT_TRUE(ran_elsewhere.load()) << "fn must run on the executor";
    for (auto &r : results) {
        EXPECT_EQ(r.value(), "async");
        EXPECT_EQ(&r.value(), &results[0].value());
        EXPECT_TRUE(r.shared());
    }
}

TEST_F(Async, ExceptionReachesEveryFutureWithItsType) {
    auto throwing = [&]() -> int {
        await_followers(g, 1);
        throw custom_error("async boom", 9);
    };
    auto a = g.run_async("k", throwing);
    auto b = g.run_async("k", throwing);
    for (auto *f : {&a, &b}) {
        try {
            f->get();
            ADD_FAILURE() << "get() returned";
        } catch (const custom_error &e) {
            EXPECT_EQ(e.tag, 9);
            EXPECT_STREQ(e.what(), "async boom");
        }
    }
    EXPECT_EQ(g.stats().panics, 1u);
}

TEST_F(Async, FnIsOwnedByTheCallAndFreedOnceItsOutcomeIsKnown) {
    ASSERT_EQ(counted::live.load(), 0);
    singleflight::future<int> f;
    {
        counted token;
        f = g.run_async("k", [token] { return 5; });
    }  // the caller's copy is gone; the call keeps its own
    EXPECT_EQ(f.get().value(), 5);
    // async_done frees the state just after fulfilling the promise, on the
    // pool thread: wait for that observable effect rather than a delay.
    EXPECT_TRUE(sftest::eventually([] { return counted::live.load() == 0; }));
}

// From another thread: the thread that called run_async is, for the C
// library, the leader of the two-phase flight it began, so a blocking run()
// there is refused with SF_EDEADLK (see docs/bindings.md).
TEST_F(Async, RunJoinsAnAsyncFlight) {
    auto f = g.run_async("k", [&] {
        await_followers(g, 1);
        return 3;
    });
    auto r = std::async(std::launch::async, [&] { return g.run("k", [] { return -1; }); }).get();
    EXPECT_EQ(r.value(), 3);
    EXPECT_TRUE(r.shared());
    EXPECT_EQ(&f.get().value(), &r.value());
}

// The thread that started an async flight is not its leader: its own
// blocking run() joins and waits instead of failing with SF_EDEADLK.
TEST_F(Async, SameThreadRunJoinsItsOwnAsyncFlight) {
    auto f = g.run_async("k", [&] {
        await_followers(g, 1);
        return 4;
    });
    auto r = g.run("k", [] { return -1; });
    EXPECT_EQ(r.value(), 4);
    EXPECT_TRUE(r.shared());
    EXPECT_EQ(&f.get().value(), &r.value());
}

}  // namespace
