// group::begin / flight<T>: the two-phase form through the C++ wrapper.
#include "singleflight.hpp"
#include "support.hpp"

#include <gtest/gtest.h>
#include <poll.h>

#include <chrono>
#include <string>
#include <thread>

namespace {

using namespace std::chrono_literals;
using singleflight::flight;
using singleflight::group;

struct custom_error : std::runtime_error {
    custom_error(const char *what, int tag_) : std::runtime_error(what), tag(tag_) {}
    int tag;
};

class Flight : public ::testing::Test {
protected:
    void TearDown() override { EXPECT_EQ(g.stats().in_flight, 0u); }
    group g;
};

// Expects f.wait() to throw singleflight::error with the given code.
template <class T>
void expect_wait_error(flight<T> &f, int code) {
    try {
        f.wait();
        ADD_FAILURE() << "wait() returned";
    } catch (const singleflight::error &e) {
        EXPECT_EQ(e.code(), code) << e.what();
    }
}

TEST_F(Flight, FirstBeginLeadsAndLaterBeginsFollow) {
    auto leader = g.begin<std::string>("k");
    auto follower = g.begin<std::string>("k");
    EXPECT_TRUE(leader.leader());
    EXPECT_FALSE(follower.leader());
    EXPECT_FALSE(follower.wait_for(0ns).has_value()) << "nothing finished yet";
    EXPECT_EQ(g.stats().timeouts, 0u) << "a poll is not a timeout";
    EXPECT_FALSE(follower.wait_for(1ms).has_value());
    EXPECT_EQ(g.stats().timeouts, 1u);

    leader.finish("v");
    auto r = follower.wait();
    EXPECT_EQ(r.value(), "v");
    EXPECT_TRUE(r.shared());
    auto own = leader.wait();
    EXPECT_EQ(&own.value(), &r.value());
    EXPECT_TRUE(own.shared()) << "a follower joined before the finish";
}

TEST_F(Flight, LeaderAloneIsNotShared) {
    auto leader = g.begin<int>("k");
    leader.finish(3);
    auto r = leader.wait_for(1s);
    ASSERT_TRUE(r.has_value());
    EXPECT_EQ(**r, 3);
    EXPECT_FALSE(r->shared());
}

TEST_F(Flight, KeysAreComparedAsBytes) {
    const std::string nul("a\0b", 3);
    auto a = g.begin<int>(nul);
    auto b = g.begin<int>("a");
    auto c = g.begin<int>(nul);
    auto empty = g.begin<int>("");
    EXPECT_TRUE(a.leader());
    EXPECT_TRUE(b.leader()) << "\"a\" is not \"a\\0b\"";
    EXPECT_FALSE(c.leader());
    EXPECT_TRUE(empty.leader());
    a.finish(1);
    b.finish(2);
    empty.finish(3);
    EXPECT_EQ(c.wait().value(), 1);
}

TEST_F(Flight, FollowerOnAnotherThreadWakesWhenTheLeaderFinishes) {
    auto leader = g.begin<int>("k");
    auto follower = g.begin<int>("k");
    int got = 0;
    std::thread t([&] { got = follower.wait().value(); });
    leader.finish(17);
    t.join();
    EXPECT_EQ(got, 17);
}

TEST_F(Flight, LeaderWaitingOnItsOwnUnfinishedFlightIsADeadlockError) {
    auto leader = g.begin<int>("k");
    expect_wait_error(leader, SF_EDEADLK);
    leader.finish(1);
}

TEST_F(Flight, DroppedLeaderReleasesFollowersWithGoexit) {
    auto follower = [&] {
        auto leader = g.begin<int>("k");
        return g.begin<int>("k");
    }();
    expect_wait_error(follower, SF_EGOEXIT);
    EXPECT_EQ(g.stats().goexits, 1u);
    EXPECT_TRUE(g.begin<int>("k").leader()) << "the key must be free again";
}

TEST_F(Flight, FailRethrowsTheOriginalExceptionInEveryCaller) {
    auto leader = g.begin<int>("k");
    auto follower = g.begin<int>("k");
    leader.fail(std::make_exception_ptr(custom_error("bad", 3)));
    for (auto *f : {&follower, &leader}) {
        try {
            f->wait();
            ADD_FAILURE() << "wait() returned";
        } catch (const custom_error &e) {
            EXPECT_EQ(e.tag, 3);
            EXPECT_STREQ(e.what(), "bad");
        }
    }
    EXPECT_EQ(g.stats().panics, 1u);
}

TEST_F(Flight, OnlyTheLeaderFinishesAndOnlyOnce) {
    auto leader = g.begin<int>("k");
    auto follower = g.begin<int>("k");
    try {
        follower.finish(2);
        ADD_FAILURE() << "a follower finished the flight";
    } catch (const singleflight::error &e) {
        EXPECT_EQ(e.code(), SF_ESTATE);
    }
    leader.finish(1);
    try {
        leader.finish(3);
        ADD_FAILURE() << "finished twice";
    } catch (const singleflight::error &e) {
        EXPECT_EQ(e.code(), SF_ESTATE);
    }
    EXPECT_EQ(follower.wait().value(), 1) << "refused values must not replace the result";
}

TEST_F(Flight, FailNeedsAnException) {
    auto leader = g.begin<int>("k");
    EXPECT_THROW(leader.fail(nullptr), singleflight::error);
    leader.finish(1);
}

TEST_F(Flight, FdBecomesReadableOnCompletion) {
    auto leader = g.begin<int>("k");
    auto follower = g.begin<int>("k");
    pollfd p{follower.fd(), POLLIN, 0};
    ASSERT_GE(p.fd, 0);
    EXPECT_EQ(poll(&p, 1, 0), 0) << "readable before the flight completed";
    leader.finish(1);
    EXPECT_EQ(poll(&p, 1, 5000), 1);
    EXPECT_EQ(follower.wait().value(), 1);
}

TEST_F(Flight, MovedHandleKeepsItsRole) {
    auto leader = g.begin<int>("k");
    auto follower = g.begin<int>("k");
    flight<int> moved = std::move(leader);
    EXPECT_TRUE(moved.leader());
    moved.finish(4);
    EXPECT_EQ(follower.wait().value(), 4);
}

TEST_F(Flight, RunJoinsATwoPhaseFlightOfTheSameType) {
    auto leader = g.begin<int>("k");
    int got = 0;
    bool shared = false;
    std::thread t([&] {
        auto r = g.run("k", [] { return -1; });
        got = r.value();
        shared = r.shared();
    });
    ASSERT_TRUE(sftest::eventually([&] { return g.stats().followers == 1; }));
    leader.finish(6);
    t.join();
    EXPECT_EQ(got, 6);
    EXPECT_TRUE(shared);
}

TEST_F(Flight, PanicFromACLeaderReachesCppCallersAsPanicError) {
    sf_call *c = nullptr;
    ASSERT_EQ(sf_group_begin(g.native_handle(), "k", 1, &c), SF_LEADER);
    auto follower = g.begin<int>("k");
    ASSERT_EQ(sf_call_panic(c, "from C"), SF_OK);
    try {
        follower.wait();
        ADD_FAILURE() << "wait() returned";
    } catch (const singleflight::panic_error &e) {
        EXPECT_EQ(e.code(), SF_EPANIC);
        EXPECT_EQ(e.message(), "from C");
    }
    sf_call_release(c);
}

}  // namespace
