// group::run: Go's Do through the C++ wrapper.
#include "singleflight.hpp"
#include "support.hpp"

#include <gtest/gtest.h>
#include <pthread.h>

#include <atomic>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace {

using sftest::await_followers;
using sftest::gate;
using singleflight::group;

// An exception type the C library has never heard of: only the wrapper's
// exception_ptr can bring it back intact.
struct custom_error : std::runtime_error {
    custom_error(const char *what, int tag_) : std::runtime_error(what), tag(tag_) {}
    int tag;
};

// Counts live instances, so a leak or a double destroy of the shared value
// shows up as a number.
struct tracked {
    static std::atomic<int> live;
    explicit tracked(int v) : value(v) { ++live; }
    tracked(const tracked &o) : value(o.value) { ++live; }
    tracked(tracked &&o) noexcept : value(o.value) { ++live; }
    ~tracked() { --live; }
    int value;
};
std::atomic<int> tracked::live{0};

// Every test leaves its group with nothing in flight.
class Run : public ::testing::Test {
protected:
    void TearDown() override { EXPECT_EQ(g.stats().in_flight, 0u); }
    group g;
};

TEST_F(Run, LoneCallerGetsTheValueNotShared) {
    auto r = g.run("k", [] { return std::string("v"); });
    EXPECT_EQ(r.value(), "v");
    EXPECT_EQ(*r, "v");
    EXPECT_EQ(r->size(), 1u);
    EXPECT_FALSE(r.shared());
    auto s = g.stats();
    EXPECT_EQ(s.leaders, 1u);
    EXPECT_EQ(s.followers, 0u);
}

TEST_F(Run, SequentialCallersEachRunFn) {
    int executions = 0;
    for (int i = 1; i <= 3; ++i) {
        auto r = g.run("k", [&] { return ++executions; });
        EXPECT_EQ(r.value(), i);
        EXPECT_FALSE(r.shared());
    }
    EXPECT_EQ(executions, 3);
}

TEST_F(Run, ConcurrentCallersShareOneExecutionAndOneObject) {
    constexpr int n = 8;
    std::atomic<int> executions{0};
    std::vector<const std::string *> seen(n, nullptr);
    std::vector<std::string> values(n);
    std::vector<int> shared(n, -1);
    std::vector<std::thread> threads;
    for (int i = 0; i < n; ++i) {
        threads.emplace_back([&, i] {
            auto r = g.run("hot", [&] {
                ++executions;
                await_followers(g, n - 1);
                return std::string("payload");
            });
            seen[i] = &r.value();
            values[i] = r.value();
            shared[i] = r.shared();
        });
    }
    for (auto &t : threads) t.join();
    EXPECT_EQ(executions.load(), 1);
    for (int i = 0; i < n; ++i) {
        EXPECT_EQ(values[i], "payload");
        EXPECT_EQ(seen[i], seen[0]) << "every caller must see the same object";
        EXPECT_EQ(shared[i], 1) << "caller " << i;
    }
    auto s = g.stats();
    EXPECT_EQ(s.calls, unsigned(n));
    EXPECT_EQ(s.leaders, 1u);
    EXPECT_EQ(s.followers, unsigned(n - 1));
}

TEST_F(Run, ExceptionIsRethrownWithItsTypeInEveryCaller) {
    constexpr int n = 4;
    std::atomic<int> executions{0};
    std::atomic<int> caught{0};
    std::vector<std::thread> threads;
    for (int i = 0; i < n; ++i) {
        threads.emplace_back([&] {
            try {
                g.run("k", [&]() -> int {
                    ++executions;
                    await_followers(g, n - 1);
                    throw custom_error("boom", 7);
                });
                ADD_FAILURE() << "run returned instead of throwing";
            } catch (const custom_error &e) {
                EXPECT_EQ(e.tag, 7);
                EXPECT_STREQ(e.what(), "boom");
                ++caught;
            } catch (...) {
                ADD_FAILURE() << "wrong exception type";
            }
        });
    }
    for (auto &t : threads) t.join();
    EXPECT_EQ(executions.load(), 1);
    EXPECT_EQ(caught.load(), n);
    EXPECT_EQ(g.stats().panics, 1u);
}

TEST_F(Run, NonStandardExceptionIsRethrownToo) {
    std::atomic<int> caught{0};
    auto call = [&] {
        try {
            g.run("k", [&]() -> int {
                await_followers(g, 1);
                throw 42;
            });
        } catch (int v) {
            EXPECT_EQ(v, 42);
            ++caught;
        } catch (...) {
            ADD_FAILURE() << "wrong exception type";
        }
    };
    std::thread a(call), b(call);
    a.join();
    b.join();
    EXPECT_EQ(caught.load(), 2);
}

TEST_F(Run, PanicDoesNotPoisonTheKey) {
    EXPECT_THROW(g.run("k", []() -> int { throw custom_error("once", 1); }), custom_error);
    EXPECT_EQ(g.run("k", [] { return 5; }).value(), 5);
}

TEST_F(Run, RunOnOwnKeyInsideFnIsADeadlockError) {
    bool inner_ran = false;
    try {
        g.run("k", [&] {
            return g
                .run("k",
                     [&] {
                         inner_ran = true;
                         return 1;
                     })
                .value();
        });
        FAIL() << "expected singleflight::error";
    } catch (const singleflight::error &e) {
        EXPECT_EQ(e.code(), SF_EDEADLK);
    }
    EXPECT_FALSE(inner_ran);
}

TEST_F(Run, OtherKeyInsideFnRunsNormally) {
    auto r = g.run("outer", [&] { return g.run("inner", [] { return 3; }).value() + 1; });
    EXPECT_EQ(r.value(), 4);
}

// Runs g.run("k") on a raw pthread whose fn exits the thread once a follower
// has joined: Go's runtime.Goexit inside fn.
struct exiting_leader {
    group *g;
    std::atomic<bool> entered{false};
    static void *main(void *arg) {
        auto *self = static_cast<exiting_leader *>(arg);
        self->g->run("k", [self]() -> int {
            self->entered = true;
            await_followers(*self->g, 1);
            pthread_exit(nullptr);
        });
        ADD_FAILURE() << "run returned on an exiting thread";
        return nullptr;
    }
};

TEST_F(Run, LeaderThreadExitReleasesFollowersWithGoexit) {
    exiting_leader leader{&g};
    pthread_t tid;
    ASSERT_EQ(pthread_create(&tid, nullptr, &exiting_leader::main, &leader), 0);
    ASSERT_TRUE(sftest::eventually([&] { return leader.entered.load(); }));
    int code = 0;
    try {
        g.run("k", [] { return 0; });
    } catch (const singleflight::error &e) {
        code = e.code();
    }
    ASSERT_EQ(pthread_join(tid, nullptr), 0);
    EXPECT_EQ(code, SF_EGOEXIT);
    EXPECT_EQ(g.stats().goexits, 1u);
    EXPECT_EQ(g.run("k", [] { return 9; }).value(), 9) << "the key must be free again";
}

TEST_F(Run, ForgetStartsANewFlightWhileTheOldOneDeliversToItsCallers) {
    gate entered, release;
    int first = 0;
    std::thread a([&] {
        first = g.run("k", [&] {
                     entered.open();
                     release.wait();
                     return 1;
                 }).value();
    });
    entered.wait();
    EXPECT_TRUE(g.forget("k"));
    auto second = g.run("k", [] { return 2; });
    EXPECT_EQ(second.value(), 2);
    EXPECT_FALSE(second.shared());
    release.open();
    a.join();
    EXPECT_EQ(first, 1);
    EXPECT_EQ(g.stats().leaders, 2u);
    EXPECT_EQ(g.stats().forgets, 1u);
    EXPECT_FALSE(g.forget("k")) << "nothing is in flight any more";
}

TEST_F(Run, ForgetUnsharedRefusesAFlightSomeoneJoined) {
    gate entered, release;
    std::thread leader([&] {
        g.run("k", [&] {
            entered.open();
            release.wait();
            return 1;
        });
    });
    entered.wait();
    std::thread follower([&] { EXPECT_EQ(g.run("k", [] { return 2; }).value(), 1); });
    ASSERT_TRUE(sftest::eventually([&] { return g.stats().followers == 1; }));
    EXPECT_FALSE(g.forget_unshared("k"));
    release.open();
    leader.join();
    follower.join();
}

TEST_F(Run, CallerExpectingAnotherTypeGetsAnErrorNotGarbage) {
    gate entered;
    std::thread leader([&] {
        auto r = g.run("k", [&] {
            entered.open();
            await_followers(g, 1);
            return 1;
        });
        EXPECT_EQ(r.value(), 1);
    });
    entered.wait();
    try {
        g.run("k", [] { return std::string("not an int"); });
        ADD_FAILURE() << "expected a type mismatch error";
    } catch (const singleflight::error &e) {
        EXPECT_EQ(e.code(), SF_EINVAL);
    }
    leader.join();
}

TEST_F(Run, ValueIsDestroyedOnceAfterTheLastReference) {
    ASSERT_EQ(tracked::live.load(), 0);
    std::shared_ptr<const tracked> kept;
    {
        auto r = g.run("k", [] { return tracked(5); });
        EXPECT_EQ(tracked::live.load(), 1);
        auto copy = r;
        auto moved = std::move(copy);
        EXPECT_EQ(moved->value, 5);
        EXPECT_EQ(&moved.value(), &r.value());
        kept = r.share();
    }
    EXPECT_EQ(tracked::live.load(), 1) << "share() must keep the value alive";
    EXPECT_EQ(kept->value, 5);
    kept.reset();
    EXPECT_EQ(tracked::live.load(), 0);
}

TEST_F(Run, ResultOutlivesItsGroup) {
    auto other = std::make_unique<group>();
    auto r = other->run("k", [] { return tracked(8); });
    other.reset();
    EXPECT_EQ(r->value, 8);
}

TEST_F(Run, MoveOnlyValuesAreShared) {
    auto r = g.run("k", [] { return std::make_unique<int>(11); });
    EXPECT_EQ(**r, 11);
}

TEST_F(Run, FnIsInvokedAsTheValueCategoryItWasPassedIn) {
    struct callable {
        int operator()() & { return 1; }
        int operator()() && { return 2; }
    };
    callable c;
    EXPECT_EQ(g.run("lvalue", c).value(), 1);
    EXPECT_EQ(g.run("rvalue", callable{}).value(), 2);
}

int answer() { return 42; }

TEST_F(Run, PlainFunctionsAndConstCallablesWork) {
    EXPECT_EQ(g.run("function", answer).value(), 42);
    EXPECT_EQ(g.run("pointer", &answer).value(), 42);
    const auto lambda = [] { return 43; };
    EXPECT_EQ(g.run("const", lambda).value(), 43);
}

TEST_F(Run, EmptyKeysAndKeysWithNulAreAccepted) {
    const std::string nul("a\0b", 3);
    EXPECT_EQ(g.run(nul, [] { return 1; }).value(), 1);
    EXPECT_EQ(g.run("", [] { return 2; }).value(), 2);
    EXPECT_EQ(g.stats().leaders, 2u);
}

TEST(Group, MovedFromGroupRejectsCallsAndTheTargetWorks) {
    group a;
    group b(std::move(a));
    try {
        a.run("k", [] { return 1; });  // NOLINT(bugprone-use-after-move): on purpose
        FAIL() << "expected SF_EINVAL";
    } catch (const singleflight::error &e) {
        EXPECT_EQ(e.code(), SF_EINVAL);
    }
    EXPECT_EQ(b.run("k", [] { return 1; }).value(), 1);
    a = std::move(b);
    EXPECT_EQ(a.run("k", [] { return 2; }).value(), 2);
}

TEST(Error, CarriesTheCodeAndItsName) {
    singleflight::error e(SF_ETIMEDOUT, "detail");
    EXPECT_EQ(e.code(), SF_ETIMEDOUT);
    EXPECT_NE(std::string(e.what()).find("SF_ETIMEDOUT"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("detail"), std::string::npos);
}

}  // namespace
