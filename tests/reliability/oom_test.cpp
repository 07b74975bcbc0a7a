// Allocation failure: every internal allocation goes through a hook that the
// tests make fail.  The contract: the failing call returns SF_ENOMEM, writes no
// out-pointer it should not, runs no fn and no callback it should not, leaks
// nothing, and leaves the group consistent (stats add up, no key stuck,
// sf_group_free succeeds).

#include <singleflight.h>

#include "core/testing.hpp"

#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace {

using sf::testing::allocations;
using sf::testing::fail_allocations_after;

// Restores normal allocation even when an assertion returns early.
struct NoFailuresAfter {
    ~NoFailuresAfter() { fail_allocations_after(-1); }
};

std::atomic<int> g_live_values{0};
void destroy_counted(void *) { g_live_values--; }

int fn_value(sf_call *call, void *payload) {
    auto *ran = static_cast<int *>(payload);
    if (ran) (*ran)++;
    g_live_values++;
    sf_call_set_value(call, &g_live_values, destroy_counted);
    return 0;
}

int fn_panics(sf_call *call, void *) {
    sf_call_panic(call,
                  "a panic message long enough to need its own heap copy "
                  "................................................");
    return 0;
}

int fn_throws(sf_call *, void *) {
    throw std::runtime_error(
        "a thrown message long enough to need a heap copy "
        "..............................................");
}

sf_group_stats stats_of(const sf_group *g) {
    sf_group_stats s;
    std::memset(&s, 0, sizeof s);
    s.version = SF_GROUP_STATS_VERSION;
    EXPECT_EQ(sf_group_stats_get(g, &s), SF_OK);
    return s;
}

const std::string kLongKey(300, 'k');  // too long for any inline key storage

// After a failure: the group still works for every key used and frees.
void expect_consistent_and_free(sf_group *g, const std::vector<std::string> &keys) {
    fail_allocations_after(-1);
    sf_group_stats s = stats_of(g);
    EXPECT_EQ(s.in_flight, 0u);
    EXPECT_EQ(s.calls, s.leaders + s.followers);
    for (const std::string &k : keys) {
        sf_call *c = nullptr;
        EXPECT_EQ(sf_group_begin(g, k.data(), k.size(), &c), SF_LEADER)
            << "key of length " << k.size() << " is stuck";
        EXPECT_EQ(sf_call_finish(c, 0), SF_OK);
        sf_call_release(c);
    }
    EXPECT_EQ(sf_group_free(g), SF_OK);
    EXPECT_EQ(g_live_values.load(), 0) << "a value was leaked or destroyed twice";
}

TEST(Oom, HookCountsAllocations) {
    unsigned long before = allocations();
    sf_group *g = nullptr;
    ASSERT_EQ(sf_group_new(&g, nullptr), SF_OK);
    EXPECT_GT(allocations(), before) << "sf_group_new allocated nothing through the hook";
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

TEST(Oom, GroupNewFailsCleanly) {
    NoFailuresAfter restore;
    sf_group *sentinel = reinterpret_cast<sf_group *>(0x1);
    sf_group *g = sentinel;
    fail_allocations_after(0);
    EXPECT_EQ(sf_group_new(&g, nullptr), SF_ENOMEM);
    EXPECT_EQ(g, sentinel) << "out-pointer written on failure";
    // Failing at every later allocation step of group creation must also be
    // clean (leaks show under ASan/LSan).
    fail_allocations_after(-1);
    unsigned long a0 = allocations();
    ASSERT_EQ(sf_group_new(&g, nullptr), SF_OK);
    unsigned long needed = allocations() - a0;
    ASSERT_EQ(sf_group_free(g), SF_OK);
    for (unsigned long n = 0; n < needed; n++) {
        g = sentinel;
        fail_allocations_after(long(n));
        int rc = sf_group_new(&g, nullptr);
        fail_allocations_after(-1);
        EXPECT_EQ(rc, SF_ENOMEM) << "after " << n << " of " << needed << " allocations";
        if (rc == SF_OK) sf_group_free(g);
    }
}

TEST(Oom, DoWithLongKeyFailsWithoutRunningFn) {
    NoFailuresAfter restore;
    sf_group *g = nullptr;
    ASSERT_EQ(sf_group_new(&g, nullptr), SF_OK);
    int ran = 0;
    sf_result *r = reinterpret_cast<sf_result *>(0x1);
    int shared = -7;
    fail_allocations_after(0);
    int rc = sf_group_do(g, kLongKey.data(), kLongKey.size(), fn_value, &ran, &r, &shared);
    fail_allocations_after(-1);
    EXPECT_EQ(rc, SF_ENOMEM);
    EXPECT_EQ(ran, 0) << "fn ran although the call failed";
    EXPECT_EQ(r, nullptr) << "*result must be NULL when the call fails";
    sf_group_stats s = stats_of(g);
    EXPECT_EQ(s.calls, 0u) << "a rejected call was counted";
    EXPECT_EQ(s.in_flight, 0u);
    expect_consistent_and_free(g, {kLongKey});
}

// One scenario touching every allocating path, run with the n-th allocation
// failing for every n until it runs through without a failure.  Each step
// either succeeds or reports SF_ENOMEM; what depends on a failed step is
// skipped.  After each run the group must be consistent.
struct AsyncWait {
    std::mutex mu;
    std::condition_variable cv;
    int pending = 0;
    int delivered = 0;
    void done() {
        std::lock_guard<std::mutex> lk(mu);
        pending--;
        delivered++;
        cv.notify_all();
    }
    bool drain() {
        std::unique_lock<std::mutex> lk(mu);
        return cv.wait_for(lk, std::chrono::seconds(10), [&] { return pending == 0; });
    }
};

void async_done(int status, sf_result *r, int, void *payload) {
    EXPECT_TRUE(status == SF_OK || status == SF_EPANIC) << sf_err_name(status);
    if (status == SF_OK) {
        EXPECT_EQ(sf_result_value(r), &g_live_values);
    }
    static_cast<AsyncWait *>(payload)->done();
}

void on_done_cb(int status, sf_result *r, int, void *payload) {
    EXPECT_EQ(status, SF_EPANIC);  // the scenario's two-phase leader panics
    EXPECT_NE(sf_result_panic_message(r), nullptr);
    static_cast<AsyncWait *>(payload)->done();
}

bool ok_or_enomem(int rc, int success, int *enomems) {
    if (rc == SF_ENOMEM) {
        (*enomems)++;
        return false;
    }
    EXPECT_EQ(rc, success) << sf_err_name(rc);
    return rc == success;
}

// Returns the number of SF_ENOMEM results seen.
int scenario(sf_group *g, AsyncWait &aw) {
    int enomem = 0;
    int ran = 0;
    sf_result *r = nullptr;
    int rc = sf_group_do(g, "short", 5, fn_value, &ran, &r, nullptr);
    if (ok_or_enomem(rc, SF_OK, &enomem)) {
        EXPECT_EQ(ran, 1);
        EXPECT_EQ(sf_result_value(r), &g_live_values);
        sf_result_release(r);
    } else {
        EXPECT_EQ(r, nullptr);
    }
    r = nullptr;
    rc = sf_group_do(g, kLongKey.data(), kLongKey.size(), fn_value, nullptr, &r, nullptr);
    if (ok_or_enomem(rc, SF_OK, &enomem)) sf_result_release(r);

    // The panic message copy may be what fails; the flight must still
    // complete as a panic for the caller.
    r = nullptr;
    rc = sf_group_do(g, "p", 1, fn_panics, nullptr, &r, nullptr);
    if (ok_or_enomem(rc, SF_EPANIC, &enomem)) {
        EXPECT_NE(sf_result_panic_message(r), nullptr);
        sf_result_release(r);
    }
    r = nullptr;
    rc = sf_group_do(g, "t", 1, fn_throws, nullptr, &r, nullptr);
    if (ok_or_enomem(rc, SF_EPANIC, &enomem)) {
        EXPECT_NE(sf_result_panic_message(r), nullptr);
        sf_result_release(r);
    }

    // Two-phase with a follower, its fd and an on_done callback.
    sf_call *lead = nullptr, *fol = nullptr;
    rc = sf_group_begin(g, kLongKey.data(), kLongKey.size(), &lead);
    if (ok_or_enomem(rc, SF_LEADER, &enomem)) {
        rc = sf_group_begin(g, kLongKey.data(), kLongKey.size(), &fol);
        if (ok_or_enomem(rc, SF_FOLLOWER, &enomem)) {
            int fd = sf_call_fd(fol);
            if (fd < 0) {
                EXPECT_TRUE(fd == SF_ENOMEM || fd == SF_EBUSY) << sf_err_name(fd);
            }
            if (fd == SF_ENOMEM) enomem++;
            {
                std::lock_guard<std::mutex> lk(aw.mu);
                aw.pending++;
            }
            rc = sf_call_on_done(fol, on_done_cb, &aw);
            if (!ok_or_enomem(rc, SF_OK, &enomem)) {
                std::lock_guard<std::mutex> lk(aw.mu);
                aw.pending--;
            }
        } else {
            EXPECT_EQ(fol, nullptr);
        }
        g_live_values++;
        sf_call_set_value(lead, &g_live_values, destroy_counted);
        // A NULL message needs no copy, so this cannot fail.
        EXPECT_EQ(sf_call_panic(lead, nullptr), SF_OK);
        sf_call_release(lead);
        if (fol) {
            r = nullptr;
            rc = sf_call_wait(fol, -1, &r, nullptr);
            EXPECT_EQ(rc, SF_EPANIC) << sf_err_name(rc);
            sf_result_release(r);
            sf_call_release(fol);
        }
    } else {
        EXPECT_EQ(lead, nullptr);
    }

    // do_async on the built-in pool.
    {
        std::lock_guard<std::mutex> lk(aw.mu);
        aw.pending++;
    }
    rc = sf_group_do_async(g, "async", 5, fn_value, nullptr, async_done, &aw);
    if (!ok_or_enomem(rc, SF_OK, &enomem)) {
        std::lock_guard<std::mutex> lk(aw.mu);
        aw.pending--;
    }
    EXPECT_TRUE(aw.drain()) << "a callback never ran";

    // Forget allocates nothing, but must cope with the state left above.
    rc = sf_group_forget(g, kLongKey.data(), kLongKey.size());
    EXPECT_TRUE(rc == 0 || rc == 1);
    return enomem;
}

TEST(Oom, EveryAllocationFailureInScenarioIsClean) {
    NoFailuresAfter restore;
    // First a clean run to learn how many allocations the scenario makes.
    sf_group *g = nullptr;
    ASSERT_EQ(sf_group_new(&g, nullptr), SF_OK);
    AsyncWait aw;
    unsigned long a0 = allocations();
    ASSERT_EQ(scenario(g, aw), 0);
    unsigned long needed = allocations() - a0;
    expect_consistent_and_free(g, {"short", kLongKey, "p", "t", "async"});
    ASSERT_GT(needed, 0u) << "the scenario allocated nothing: the hook is not wired";

    int total_enomem = 0;
    for (unsigned long n = 0; n <= needed + 2; n++) {
        SCOPED_TRACE("failing from allocation " + std::to_string(n));
        ASSERT_EQ(sf_group_new(&g, nullptr), SF_OK);
        AsyncWait w;
        fail_allocations_after(long(n));
        int e = scenario(g, w);
        fail_allocations_after(-1);
        total_enomem += e;
        expect_consistent_and_free(g, {"short", kLongKey, "p", "t", "async"});
        if (::testing::Test::HasFailure()) break;
    }
    EXPECT_GT(total_enomem, 0) << "no call ever reported SF_ENOMEM";
    std::printf("scenario: %lu allocations, %d SF_ENOMEM results over %lu runs\n", needed,
                total_enomem, needed + 3);
}

// Steady state: a failing allocator must not matter once nothing needs to be
// allocated, and calls that would allocate fail one by one, not the group.
TEST(Oom, GroupSurvivesLongOutage) {
    NoFailuresAfter restore;
    sf_group *g = nullptr;
    ASSERT_EQ(sf_group_new(&g, nullptr), SF_OK);
    fail_allocations_after(0);
    int enomem = 0, ok = 0;
    for (int i = 0; i < 200; i++) {
        std::string key = (i % 2) ? kLongKey + std::to_string(i) : std::to_string(i);
        sf_result *r = nullptr;
        int rc = sf_group_do(g, key.data(), key.size(), fn_value, nullptr, &r, nullptr);
        if (rc == SF_ENOMEM) {
            enomem++;
            EXPECT_EQ(r, nullptr);
        } else {
            EXPECT_EQ(rc, SF_OK);
            ok++;
            sf_result_release(r);
        }
    }
    fail_allocations_after(-1);
    EXPECT_GE(enomem, 100) << "long keys must need an allocation";
    sf_group_stats s = stats_of(g);
    EXPECT_EQ(s.calls, uint64_t(ok)) << "rejected calls were counted";
    expect_consistent_and_free(g, {kLongKey, "0"});
}

}  // namespace
