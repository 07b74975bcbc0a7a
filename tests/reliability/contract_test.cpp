// The header's promises where the v1 contract was silent or broken under
// hostile use: set_value racing finish, the built-in pool's thread cap, a
// C++ executor that throws, a refused do_async in the counters, and a pool
// worker whose done callback meets a pending cancellation.
//
// SF_RACE_SECONDS sets how long the set_value/finish race runs (default 10).

#include <singleflight.h>

#include <gtest/gtest.h>

#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "tests/test_util.hpp"

using namespace sftest;

namespace {

// ---------------------------------------------------------------------------
// sf_call_set_value racing sf_call_finish on one leader handle
// ---------------------------------------------------------------------------

constexpr uint32_t kAlive = 0xA11CE, kDead = 0xDEAD;

struct Value {
    std::atomic<uint32_t> state{kAlive};
    std::atomic<bool> refused{false};  // destroyed during sf_call_set_value
    std::atomic<bool> in_set_value{false};
};
std::atomic<long> g_values_created{0}, g_values_destroyed{0};

void destroy_value(void *p) {
    auto *v = static_cast<Value *>(p);
    // A second destroy, or a destroy of a value somebody still reads, is
    // what the race produced: the state says which.
    EXPECT_EQ(v->state.exchange(kDead), kAlive) << "value destroyed twice";
    if (v->in_set_value.load()) v->refused = true;
    g_values_destroyed.fetch_add(1);
    // Not freed here: the test frees every value at the end of its round, so
    // a late reader finds kDead instead of freed memory in the plain build.
}

struct Seen {
    std::atomic<int> calls{0};
    std::atomic<Value *> value{nullptr};
    sf_result *result = nullptr;
};

void record_done(int status, sf_result *r, int shared, void *payload) {
    auto *s = static_cast<Seen *>(payload);
    EXPECT_EQ(status, SF_OK);
    EXPECT_EQ(shared, 1);
    s->result = sf_result_retain(r);
    s->value.store(static_cast<Value *>(sf_result_value(r)));
    s->calls.fetch_add(1);
}

// A group whose last done callback may still be returning on a pool thread
// is briefly busy: free it once it is idle.
void free_when_idle(sf_group *g) {
    int rc;
    while ((rc = sf_group_free(g)) == SF_EBUSY) std::this_thread::yield();
    EXPECT_EQ(rc, SF_OK);
}

double race_seconds() {
    const char *s = std::getenv("SF_RACE_SECONDS");
    return s ? std::atof(s) : 10.0;
}

TEST(SetValueRace, NeverWritesAfterCompletionNorDestroysWhatCallersHold) {
    GroupPtr g;
    const auto until =
        std::chrono::steady_clock::now() + std::chrono::duration<double>(race_seconds());
    long rounds = 0, late_refusals = 0;
    while (std::chrono::steady_clock::now() < until) {
        ++rounds;
        sf_call *leader = nullptr, *follower = nullptr;
        ASSERT_EQ(sf_group_begin(g, "k", 1, &leader), SF_LEADER);
        ASSERT_EQ(sf_group_begin(g, "k", 1, &follower), SF_FOLLOWER);
        Seen seen;
        ASSERT_EQ(sf_call_on_done(follower, record_done, &seen), SF_OK);

        std::vector<Value *> values;
        std::atomic<bool> setter_started{false};
        std::thread setter([&] {
            // Replace the value until the library refuses one: from then on
            // the flight is complete and nothing may be written.
            for (;;) {
                auto *v = new Value;
                g_values_created.fetch_add(1);
                values.push_back(v);
                v->in_set_value = true;
                sf_call_set_value(leader, v, destroy_value);
                v->in_set_value = false;
                setter_started.store(true);
                if (v->refused.load()) break;
            }
        });
        while (!setter_started.load()) std::this_thread::yield();
        ASSERT_EQ(sf_call_finish(leader, 0), SF_OK);
        setter.join();

        // The value the follower received is the flight's value, and it is
        // alive for as long as the follower's reference is held.
        ASSERT_EQ(seen.calls.load(), 1);
        Value *held = seen.value.load();
        sf_result *mine = nullptr;
        ASSERT_EQ(sf_call_wait(leader, 0, &mine, nullptr), SF_OK);
        EXPECT_EQ(sf_result_value(mine), held) << "the value changed after completion";
        if (held) {
            EXPECT_EQ(held->state.load(), kAlive)
                << "round " << rounds << ": a value a caller holds was destroyed";
        } else {
            ++late_refusals;  // finish won before the first set_value
        }
        sf_result_release(mine);
        sf_result_release(seen.result);
        sf_call_release(follower);
        sf_call_release(leader);
        // Every value was destroyed exactly once: refused at once, replaced,
        // or with the last reference.
        for (Value *v : values) {
            EXPECT_EQ(v->state.load(), kDead);
            delete v;
        }
        if (::testing::Test::HasFailure()) break;
    }
    EXPECT_EQ(g_values_created.load(), g_values_destroyed.load());
    EXPECT_EQ(stats_of(g).in_flight, 0u);
    std::printf("set_value/finish race: %ld rounds (%ld where finish came first)\n", rounds,
                late_refusals);
}

// ---------------------------------------------------------------------------
// The built-in pool's thread cap
// ---------------------------------------------------------------------------

// A barrier that gives up after a deadline instead of hanging the suite.
class TimedBarrier {
public:
    explicit TimedBarrier(int n) : n_(n) {}
    bool arrive_and_wait(std::chrono::seconds limit) {
        std::unique_lock<std::mutex> l(mu_);
        if (++arrived_ == n_) cv_.notify_all();
        return cv_.wait_for(l, limit, [&] { return arrived_ >= n_; });
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    int n_, arrived_ = 0;
};

struct Interdependent {
    TimedBarrier barrier{80};
    std::mutex mu;
    std::condition_variable cv;
    int ok = 0, failed = 0;
};

int wait_for_all_fn(sf_call *, void *payload) {
    auto *s = static_cast<Interdependent *>(payload);
    return s->barrier.arrive_and_wait(std::chrono::seconds(20)) ? 0 : 1;
}

void interdependent_done(int status, sf_result *r, int, void *payload) {
    auto *s = static_cast<Interdependent *>(payload);
    std::lock_guard<std::mutex> l(s->mu);
    if (status == SF_OK && sf_result_error(r) == 0) ++s->ok;
    else ++s->failed;
    s->cv.notify_all();
}

TEST(PoolCap, OptionsVersion2CarriesTheCapAndVersion1StillWorks) {
    sf_group_options o1, o2;
    ASSERT_EQ(sf_group_options_init(&o1, 1), SF_OK);
    EXPECT_EQ(o1.version, 1u);
    ASSERT_EQ(sf_group_options_init(&o2, SF_GROUP_OPTIONS_VERSION), SF_OK);
    EXPECT_EQ(o2.version, 2u);
    EXPECT_EQ(o2.max_threads, 0u);  // 0: the default
    sf_group_options lit = SF_GROUP_OPTIONS_INIT;
    EXPECT_EQ(lit.version, 2u);
    sf_group *g = nullptr;
    ASSERT_EQ(sf_group_new(&g, &o1), SF_OK);  // a v1 caller passes a v1 struct
    ASSERT_EQ(sf_group_free(g), SF_OK);
    o2.max_threads = SF_POOL_MAX_THREADS + 1;
    EXPECT_EQ(sf_group_new(&g, &o2), SF_EINVAL);
    sf_group_options bad;
    EXPECT_EQ(sf_group_options_init(&bad, 3), SF_EINVAL);
}

// A group whose built-in pool is capped at max_threads.
sf_group *group_with_cap(unsigned max_threads) { return group_with(0, max_threads); }

TEST(PoolCap, RaisedCapRunsEightyFnsThatWaitForEachOther) {
    sf_group *g = group_with_cap(100);
    ASSERT_NE(g, nullptr);
    Interdependent s;
    for (int i = 0; i < 80; ++i) {
        std::string key = "k" + std::to_string(i);
        ASSERT_EQ(sf_group_do_async(g, key.data(), key.size(), wait_for_all_fn, &s,
                                    interdependent_done, &s),
                  SF_OK);
    }
    {
        std::unique_lock<std::mutex> l(s.mu);
        s.cv.wait(l, [&] { return s.ok + s.failed == 80; });
    }
    EXPECT_EQ(s.ok, 80) << "fns waiting for each other need a thread each";
    free_when_idle(g);
}

struct Ordered {
    std::mutex mu;
    std::condition_variable cv;
    bool release_first = false;
    std::vector<int> started, finished;
};
struct Task {
    Ordered *o;
    int id;
};

int ordered_fn(sf_call *, void *payload) {
    auto *t = static_cast<Task *>(payload);
    std::unique_lock<std::mutex> l(t->o->mu);
    t->o->started.push_back(t->id);
    t->o->cv.notify_all();
    if (t->id == 1) t->o->cv.wait(l, [&] { return t->o->release_first; });
    t->o->finished.push_back(t->id);
    t->o->cv.notify_all();
    return 0;
}
void ignore_done(int, sf_result *, int, void *) {}

TEST(PoolCap, AtTheCapTasksWaitInOrderForAFreeWorker) {
    sf_group *g = group_with_cap(1);
    ASSERT_NE(g, nullptr);
    Ordered ord;
    Task t1{&ord, 1}, t2{&ord, 2}, t3{&ord, 3};
    ASSERT_EQ(sf_group_do_async(g, "1", 1, ordered_fn, &t1, ignore_done, nullptr), SF_OK);
    {
        std::unique_lock<std::mutex> l(ord.mu);
        ord.cv.wait(l, [&] { return ord.started.size() == 1; });
    }
    ASSERT_EQ(sf_group_do_async(g, "2", 1, ordered_fn, &t2, ignore_done, nullptr), SF_OK);
    ASSERT_EQ(sf_group_do_async(g, "3", 1, ordered_fn, &t3, ignore_done, nullptr), SF_OK);
    {
        std::unique_lock<std::mutex> l(ord.mu);
        // The only worker is busy: the queued tasks have not started.
        EXPECT_EQ(ord.started, std::vector<int>{1});
        ord.release_first = true;
        ord.cv.notify_all();
        ord.cv.wait(l, [&] { return ord.finished.size() == 3; });
        EXPECT_EQ(ord.started, (std::vector<int>{1, 2, 3}));
    }
    free_when_idle(g);
}

// ---------------------------------------------------------------------------
// Executors that refuse by throwing, and what a refusal counts as
// ---------------------------------------------------------------------------

struct Refusal {
    sf_group *g = nullptr;
    bool throw_it = false;
    sf_call *joined = nullptr;  // a caller that joined before the refusal
};

int refusing_executor(sf_task_fn, void *, void *payload) {
    auto *r = static_cast<Refusal *>(payload);
    // Join the flight the task belongs to, as another thread could have.
    EXPECT_EQ(sf_group_begin(r->g, "k", 1, &r->joined), SF_FOLLOWER);
    if (r->throw_it) throw std::bad_alloc();
    return -1;
}

int never_runs_fn(sf_call *, void *) {
    ADD_FAILURE() << "a refused task ran";
    return 0;
}

void expect_refusal(bool throw_it) {
    Refusal r;
    r.throw_it = throw_it;
    sf_group_options o;
    ASSERT_EQ(sf_group_options_init(&o, SF_GROUP_OPTIONS_VERSION), SF_OK);
    o.executor = refusing_executor;
    o.executor_payload = &r;
    ASSERT_EQ(sf_group_new(&r.g, &o), SF_OK);
    EXPECT_EQ(sf_group_do_async(r.g, "k", 1, never_runs_fn, nullptr, ignore_done, nullptr),
              SF_EBUSY);
    ASSERT_NE(r.joined, nullptr);
    sf_result *res = nullptr;
    EXPECT_EQ(sf_call_wait(r.joined, 0, &res, nullptr), SF_EPANIC);
    EXPECT_NE(sf_result_panic_message(res), nullptr);
    sf_result_release(res);
    sf_call_release(r.joined);
    // The refused call is not counted, nor is its flight: panics and
    // goexits never exceed leaders, and calls = leaders + followers.
    sf_group_stats st = stats_of(r.g);
    EXPECT_EQ(st.leaders, 0u);
    EXPECT_EQ(st.followers, 1u);
    EXPECT_EQ(st.calls, 1u);
    EXPECT_EQ(st.panics, 0u);
    EXPECT_EQ(st.in_flight, 0u);
    EXPECT_EQ(sf_group_free(r.g), SF_OK);
}

TEST(Executor, ReturningNonZeroIsARefusalCountedNowhere) { expect_refusal(false); }
TEST(Executor, ThrowingIsContainedAsARefusal) { expect_refusal(true); }

// ---------------------------------------------------------------------------
// A pool worker whose fn leaves a cancellation pending
// ---------------------------------------------------------------------------

int cancel_self_fn(sf_call *, void *) {
    pthread_cancel(pthread_self());  // pending: fn reaches no cancellation point
    return 0;
}

struct Done {
    std::mutex mu;
    std::condition_variable cv;
    int runs = 0, ok = 0;
};

void syscall_done(int status, sf_result *, int, void *payload) {
    auto *d = static_cast<Done *>(payload);
    int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);  // cancellation points
    if (fd >= 0) {
        ssize_t n = write(fd, "x", 1);
        (void)n;
        close(fd);
    }
    std::lock_guard<std::mutex> l(d->mu);
    ++d->runs;
    if (status == SF_OK) ++d->ok;
    d->cv.notify_all();
}

TEST(PoolCancel, DoneCallbackMeetingAPendingCancelRunsAndThePoolGoesOn) {
    GroupPtr g;
    Done d;
    ASSERT_EQ(sf_group_do_async(g, "k", 1, cancel_self_fn, nullptr, syscall_done, &d), SF_OK);
    {
        std::unique_lock<std::mutex> l(d.mu);
        d.cv.wait(l, [&] { return d.runs == 1; });
    }
    EXPECT_EQ(d.ok, 1) << "fn returned normally: the flight is not a Goexit";
    // The pool still serves (the cancelled worker leaves at a safe point).
    ASSERT_EQ(sf_group_do_async(
                  g, "k2", 2, [](sf_call *, void *) { return 0; }, nullptr, syscall_done, &d),
              SF_OK);
    std::unique_lock<std::mutex> l(d.mu);
    d.cv.wait(l, [&] { return d.runs == 2; });
    EXPECT_EQ(d.ok, 2);
}

}  // namespace
