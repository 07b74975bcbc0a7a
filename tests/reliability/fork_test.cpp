// What a group is in a child after fork(), as docs/reliability.md defines it:
//  - the child may keep using every group; its first use resets the group to
//    empty, so flights in flight in the parent are not visible and a call on
//    such a key leads a new flight in the child;
//  - no lock held by another parent thread at fork time blocks the child;
//  - handles and results obtained before fork stay valid memory; a handle of a
//    flight in flight at fork time is orphaned: a timed wait returns
//    SF_ETIMEDOUT and releasing it is safe; a handle of a completed flight
//    still reads its result;
//  - the built-in do_async pool starts fresh threads in the child;
//  - the parent is not affected in any way.
// Every child runs under alarm() so that a hang is a failed test (the child
// dies of SIGALRM), never a hung test run.

#include <singleflight.h>

#include <gtest/gtest.h>

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>

namespace {

constexpr unsigned kChildAlarmSeconds = 20;

// Runs body in a forked child and returns its exit code; a child killed by a
// signal (the alarm included) fails the test with the signal's name.
template <class F>
int in_child(F body) {
    std::fflush(nullptr);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(kChildAlarmSeconds);
        int code = 100;
        try {
            code = body();
        } catch (...) {
            code = 101;
        }
        std::fflush(nullptr);
        _exit(code);
    }
    EXPECT_GT(pid, 0) << std::strerror(errno);
    if (pid <= 0) return -1;
    int st = 0;
    EXPECT_EQ(waitpid(pid, &st, 0), pid);
    if (WIFSIGNALED(st)) {
        ADD_FAILURE() << "child killed by signal " << WTERMSIG(st) << " ("
                      << strsignal(WTERMSIG(st)) << ")"
                      << (WTERMSIG(st) == SIGALRM ? ": it hung" : "");
        return -1;
    }
    return WEXITSTATUS(st);
}

// Child-side checks report which one failed through the exit code, since
// gtest's state in a child is not reported back.
#define CHILD_CHECK(code, cond)                                               \
    do {                                                                      \
        if (!(cond)) {                                                        \
            std::fprintf(stderr, "child check %d failed: %s\n", code, #cond); \
            return code;                                                      \
        }                                                                     \
    } while (0)

int set_value_fn(sf_call *call, void *payload) {
    sf_call_set_value(call, payload, nullptr);
    return 7;
}

struct Gate {
    std::mutex mu;
    std::condition_variable cv;
    bool open = false;
    void release() {
        std::lock_guard<std::mutex> lk(mu);
        open = true;
        cv.notify_all();
    }
    void wait() {
        std::unique_lock<std::mutex> lk(mu);
        cv.wait(lk, [&] { return open; });
    }
};

sf_group *new_group() {
    sf_group *g = nullptr;
    EXPECT_EQ(sf_group_new(&g, nullptr), SF_OK);
    return g;
}

sf_group_stats stats_of(sf_group *g) {
    sf_group_stats s;
    std::memset(&s, 0, sizeof s);
    s.version = SF_GROUP_STATS_VERSION;
    EXPECT_EQ(sf_group_stats_get(g, &s), SF_OK);
    return s;
}

TEST(Fork, IdleGroupIsUsableInChild) {
    sf_group *g = new_group();
    int v = 0;
    sf_result *r = nullptr;
    ASSERT_EQ(sf_group_do(g, "k", 1, set_value_fn, &v, &r, nullptr), SF_OK);
    sf_result_release(r);

    int code = in_child([&]() -> int {
        int cv = 0;
        sf_result *cr = nullptr;
        int shared = -1;
        CHILD_CHECK(1, sf_group_do(g, "k", 1, set_value_fn, &cv, &cr, &shared) == SF_OK);
        CHILD_CHECK(2, sf_result_value(cr) == &cv && sf_result_error(cr) == 7);
        CHILD_CHECK(3, shared == 0);
        sf_result_release(cr);
        sf_call *c = nullptr;
        CHILD_CHECK(4, sf_group_begin(g, "x", 1, &c) == SF_LEADER);
        CHILD_CHECK(5, sf_call_finish(c, 0) == SF_OK);
        sf_call_release(c);
        CHILD_CHECK(6, sf_group_free(g) == SF_OK);
        return 0;
    });
    EXPECT_EQ(code, 0);
    EXPECT_EQ(sf_group_free(g), SF_OK) << "the child's free must not touch the parent";
}

// A flight led by another parent thread, a follower handle and a completed
// handle, all crossing fork().
TEST(Fork, InFlightFlightIsInvisibleAndOrphanedInChild) {
    sf_group *g = new_group();
    int parent_value = 11;

    // A completed flight whose handle and result the child inherits.
    sf_call *done_call = nullptr;
    ASSERT_EQ(sf_group_begin(g, "done", 4, &done_call), SF_LEADER);
    sf_call_set_value(done_call, &parent_value, nullptr);
    ASSERT_EQ(sf_call_finish(done_call, 3), SF_OK);
    sf_result *kept = nullptr;
    ASSERT_EQ(sf_call_wait(done_call, 0, &kept, nullptr), SF_OK);

    // A flight led by a thread that will not exist in the child.
    Gate started, finish;
    sf_call *leader = nullptr;
    std::thread lead([&] {
        ASSERT_EQ(sf_group_begin(g, "busy", 4, &leader), SF_LEADER);
        started.release();
        finish.wait();
        sf_call_set_value(leader, &parent_value, nullptr);
        EXPECT_EQ(sf_call_finish(leader, 0), SF_OK);
        sf_call_release(leader);
    });
    started.wait();
    sf_call *follower = nullptr;
    ASSERT_EQ(sf_group_begin(g, "busy", 4, &follower), SF_FOLLOWER);
    ASSERT_EQ(stats_of(g).in_flight, 1u);

    int code = in_child([&]() -> int {
        // Results and completed handles stay readable.
        CHILD_CHECK(1, sf_result_value(kept) == &parent_value);
        CHILD_CHECK(2, sf_result_error(kept) == 3);
        sf_result *again = nullptr;
        CHILD_CHECK(3, sf_call_wait(done_call, 0, &again, nullptr) == SF_OK);
        CHILD_CHECK(4, sf_result_value(again) == &parent_value);
        sf_result_release(again);

        // The orphaned follower times out instead of hanging.
        sf_result *r = reinterpret_cast<sf_result *>(1);
        CHILD_CHECK(5, sf_call_wait(follower, 20 * 1000 * 1000, &r, nullptr) == SF_ETIMEDOUT);
        CHILD_CHECK(6, r == nullptr);

        // The parent's flight is not visible: the child leads a new one.
        int child_value = 0;
        sf_result *cr = nullptr;
        int shared = -1;
        CHILD_CHECK(7,
                    sf_group_do(g, "busy", 4, set_value_fn, &child_value, &cr, &shared) == SF_OK);
        CHILD_CHECK(8, sf_result_value(cr) == &child_value && shared == 0);
        sf_result_release(cr);

        sf_group_stats s;
        std::memset(&s, 0, sizeof s);
        s.version = SF_GROUP_STATS_VERSION;
        CHILD_CHECK(9, sf_group_stats_get(g, &s) == SF_OK);
        CHILD_CHECK(10, s.in_flight == 0);
        CHILD_CHECK(11, s.calls == s.leaders + s.followers);

        // Releasing inherited handles is safe, and then the group frees.
        sf_call_release(follower);
        sf_call_release(done_call);
        sf_result_release(kept);
        int rc = sf_group_free(g);
        if (rc != SF_OK) std::fprintf(stderr, "child free: %s\n", sf_err_name(rc));
        CHILD_CHECK(12, rc == SF_OK);
        return 0;
    });
    EXPECT_EQ(code, 0);

    // The parent is untouched: its flight still completes for its follower.
    EXPECT_EQ(stats_of(g).in_flight, 1u);
    finish.release();
    lead.join();
    sf_result *r = nullptr;
    int shared = -1;
    ASSERT_EQ(sf_call_wait(follower, -1, &r, &shared), SF_OK);
    EXPECT_EQ(sf_result_value(r), &parent_value);
    EXPECT_EQ(shared, 1);
    sf_result_release(r);
    sf_call_release(follower);
    sf_call_release(done_call);
    sf_result_release(kept);
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

struct AsyncBox {
    std::mutex mu;
    std::condition_variable cv;
    int done = 0;
    int status = 99;
    int error = 0;
};

int return_five(sf_call *, void *) { return 5; }

void async_done(int status, sf_result *result, int, void *payload) {
    auto *b = static_cast<AsyncBox *>(payload);
    std::lock_guard<std::mutex> lk(b->mu);
    b->status = status;
    b->error = sf_result_error(result);
    b->done++;
    b->cv.notify_all();
}

bool wait_async(AsyncBox &b, int count) {
    std::unique_lock<std::mutex> lk(b.mu);
    return b.cv.wait_for(lk, std::chrono::seconds(10), [&] { return b.done >= count; });
}

#if defined(__SANITIZE_THREAD__)
#define SF_UNDER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SF_UNDER_TSAN 1
#endif
#endif

TEST(Fork, BuiltInPoolWorksInChild) {
#ifdef SF_UNDER_TSAN
    // TSan's runtime cannot start threads in the child of a multi-threaded
    // parent ("dup thread with used id", exit 66): a limit of the tool, not
    // of the library.  The ASan and plain builds run this test.
    GTEST_SKIP() << "ThreadSanitizer cannot run new threads after a multi-threaded fork";
#endif
    sf_group *g = new_group();
    AsyncBox parent_box;
    // Start the pool's threads in the parent first: the child inherits none
    // of them and must start its own.
    ASSERT_EQ(sf_group_do_async(g, "p", 1, return_five, nullptr, async_done, &parent_box), SF_OK);
    ASSERT_TRUE(wait_async(parent_box, 1));
    ASSERT_EQ(parent_box.status, SF_OK);

    int code = in_child([&]() -> int {
        AsyncBox b;
        for (int i = 0; i < 4; i++) {
            std::string key = "c" + std::to_string(i);
            CHILD_CHECK(1, sf_group_do_async(g, key.data(), key.size(), return_five, nullptr,
                                             async_done, &b) == SF_OK);
        }
        CHILD_CHECK(2, wait_async(b, 4));
        CHILD_CHECK(3, b.status == SF_OK && b.error == 5);
        CHILD_CHECK(4, sf_group_free(g) == SF_OK);
        return 0;
    });
    EXPECT_EQ(code, 0);

    AsyncBox after;
    ASSERT_EQ(sf_group_do_async(g, "p", 1, return_five, nullptr, async_done, &after), SF_OK);
    ASSERT_TRUE(wait_async(after, 1));
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

// Other parent threads hold the group's internal locks at arbitrary moments
// when fork() happens; the child must never block on them.
TEST(Fork, LocksHeldByOtherThreadsDoNotBlockChild) {
    sf_group *g = new_group();
    std::atomic<bool> stop{false};
    std::atomic<unsigned long> parent_ops{0};
    auto hammer = [&](int id) {
        std::string key = "h" + std::to_string(id % 2);
        while (!stop.load()) {
            sf_call *c = nullptr;
            int rc = sf_group_begin(g, key.data(), key.size(), &c);
            if (rc == SF_LEADER) {
                sf_call_finish(c, 0);
            } else if (rc == SF_FOLLOWER) {
                sf_call_wait(c, 1000, nullptr, nullptr);
            }
            sf_call_release(c);
            sf_group_forget(g, key.data(), key.size());
            parent_ops++;
        }
    };
    std::thread t1(hammer, 0), t2(hammer, 1), t3(hammer, 2);
    while (parent_ops.load() < 1000) std::this_thread::yield();

    for (int i = 0; i < 25; i++) {
        int code = in_child([&]() -> int {
            for (int k = 0; k < 2; k++) {
                std::string key = "h" + std::to_string(k);
                int v = 0;
                sf_result *r = nullptr;
                CHILD_CHECK(1, sf_group_do(g, key.data(), key.size(), set_value_fn, &v, &r,
                                           nullptr) == SF_OK);
                CHILD_CHECK(2, sf_result_value(r) == &v);
                sf_result_release(r);
            }
            CHILD_CHECK(3, sf_group_free(g) == SF_OK);
            return 0;
        });
        EXPECT_EQ(code, 0) << "fork #" << i;
        if (code != 0) break;  // still join the hammers below
    }
    stop = true;
    t1.join();
    t2.join();
    t3.join();
    sf_group_stats s = stats_of(g);
    EXPECT_EQ(s.in_flight, 0u);
    EXPECT_EQ(s.calls, s.leaders + s.followers);
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

// A group created in the child is an ordinary group, and the child's own
// children can fork again.
TEST(Fork, GroupsCreatedInChildAndNestedFork) {
    int code = in_child([]() -> int {
        sf_group *g = nullptr;
        CHILD_CHECK(1, sf_group_new(&g, nullptr) == SF_OK);
        sf_call *c = nullptr;
        CHILD_CHECK(2, sf_group_begin(g, "n", 1, &c) == SF_LEADER);
        pid_t pid = fork();
        if (pid == 0) {
            int v = 0;
            sf_result *r = nullptr;
            if (sf_group_do(g, "n", 1, set_value_fn, &v, &r, nullptr) != SF_OK) _exit(1);
            if (sf_result_value(r) != &v) _exit(2);
            sf_result_release(r);
            _exit(sf_group_free(g) == SF_OK ? 0 : 3);
        }
        int st = 0;
        CHILD_CHECK(3, waitpid(pid, &st, 0) == pid);
        CHILD_CHECK(4, WIFEXITED(st) && WEXITSTATUS(st) == 0);
        CHILD_CHECK(5, sf_call_finish(c, 0) == SF_OK);
        sf_call_release(c);
        CHILD_CHECK(6, sf_group_free(g) == SF_OK);
        return 0;
    });
    EXPECT_EQ(code, 0);
}

}  // namespace
