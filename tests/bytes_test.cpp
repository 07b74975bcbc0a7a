// Values as bytes (sf_call_set_bytes, sf_result_bytes; SF_1.2): every
// caller reads the same bytes, of any length, in each size class the
// library keeps them in; the rules of sf_call_set_value (who may set, when,
// replacing) hold for them; bad arguments are refused.
#include <gtest/gtest.h>

#include <atomic>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "singleflight.h"
#include "test_util.hpp"

using namespace sftest;

namespace {

std::string pattern(size_t n) {
    std::string s(n, '\0');
    for (size_t i = 0; i < n; ++i) s[i] = char((i * 131 + n) & 0xff);
    return s;
}

std::string bytes_of(sf_result *r) {
    size_t n = 12345;
    const void *p = sf_result_bytes(r, &n);
    EXPECT_TRUE(p != nullptr || n == 0);
    return p ? std::string(static_cast<const char *>(p), n) : std::string();
}

// Lengths on both sides of each size class (56 and 120 bytes in recycled
// blocks, larger on the heap), and empty.
const size_t kLengths[] = {0, 1, 7, 8, 55, 56, 57, 64, 119, 120, 121, 4096, size_t(1) << 20};

TEST(Bytes, TheLeaderAndEveryFollowerReadTheSameBytes) {
    GroupPtr g;
    for (size_t len : kLengths) {
        const std::string want = pattern(len);
        sf_call *l = nullptr, *f1 = nullptr, *f2 = nullptr;
        ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
        ASSERT_EQ(sf_group_begin(g, "k", 1, &f1), SF_FOLLOWER);
        ASSERT_EQ(sf_group_begin(g, "k", 1, &f2), SF_FOLLOWER);
        ASSERT_EQ(sf_call_set_bytes(l, want.data(), want.size()), SF_OK);
        ASSERT_EQ(sf_call_finish(l, 0), SF_OK);
        sf_result *r[3] = {};
        ASSERT_EQ(sf_call_wait(l, 0, &r[0], nullptr), SF_OK);
        ASSERT_EQ(sf_call_wait(f1, 0, &r[1], nullptr), SF_OK);
        ASSERT_EQ(sf_call_wait(f2, 0, &r[2], nullptr), SF_OK);
        for (sf_result *x : r) {
            EXPECT_EQ(bytes_of(x), want) << len << " bytes";
            size_t n = 0;
            EXPECT_EQ(sf_result_value(x), sf_result_bytes(x, &n)) << "the value is their address";
            EXPECT_EQ(sf_result_bytes(x, nullptr), sf_result_bytes(r[0], nullptr)) << "one copy";
        }
        for (sf_result *x : r) sf_result_release(x);
        for (sf_call *c : {f1, f2, l}) sf_call_release(c);
    }
}

TEST(Bytes, InsideFnOfDoAndDoAsync) {
    GroupPtr g;
    const std::string want = pattern(100);
    auto fn = [](sf_call *call, void *p) {
        auto *s = static_cast<const std::string *>(p);
        return sf_call_set_bytes(call, s->data(), s->size()) == SF_OK ? 0 : 1;
    };
    sf_result *r = nullptr;
    ASSERT_EQ(sf_group_do(g, "d", 1, fn, const_cast<std::string *>(&want), &r, nullptr), SF_OK);
    EXPECT_EQ(sf_result_error(r), 0);
    EXPECT_EQ(bytes_of(r), want);
    sf_result_release(r);
    struct Got {
        Event done;
        std::string bytes;
    } got;
    ASSERT_EQ(sf_group_do_async(
                  g, "a", 1, fn, const_cast<std::string *>(&want),
                  [](int status, sf_result *res, int, void *p) {
                      auto *gp = static_cast<Got *>(p);
                      if (status == SF_OK) gp->bytes = bytes_of(res);
                      gp->done.set();
                  },
                  &got),
              SF_OK);
    got.done.wait();
    EXPECT_EQ(got.bytes, want);
}

TEST(Bytes, SettingAgainReplacesTheBytesAndAnyPointerValue) {
    GroupPtr g;
    static std::atomic<int> destroyed{0};
    sf_call *l = nullptr;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
    static int v = 1;
    sf_call_set_value(l, &v, [](void *) { destroyed++; });
    ASSERT_EQ(sf_call_set_bytes(l, "first", 5), SF_OK);
    EXPECT_EQ(destroyed.load(), 1) << "the pointer value it replaced is destroyed";
    const std::string big = pattern(300);
    ASSERT_EQ(sf_call_set_bytes(l, big.data(), big.size()), SF_OK);
    ASSERT_EQ(sf_call_set_bytes(l, "last", 4), SF_OK);
    ASSERT_EQ(sf_call_finish(l, 0), SF_OK);
    sf_result *r = nullptr;
    ASSERT_EQ(sf_call_wait(l, 0, &r, nullptr), SF_OK);
    EXPECT_EQ(bytes_of(r), "last");
    sf_result_release(r);
    sf_call_release(l);
}

TEST(Bytes, APointerValueHasNoBytes) {
    GroupPtr g;
    static int v = 7;
    sf_result *r = nullptr;
    ASSERT_EQ(sf_group_do(
                  g, "k", 1,
                  [](sf_call *call, void *) {
                      sf_call_set_value(call, &v, nullptr);
                      return 0;
                  },
                  nullptr, &r, nullptr),
              SF_OK);
    size_t n = 99;
    EXPECT_EQ(sf_result_bytes(r, &n), nullptr);
    EXPECT_EQ(n, 0u);
    EXPECT_EQ(sf_result_value(r), &v);
    sf_result_release(r);
    n = 99;
    EXPECT_EQ(sf_result_bytes(nullptr, &n), nullptr);
    EXPECT_EQ(n, 0u);
    EXPECT_EQ(sf_result_bytes(nullptr, nullptr), nullptr);
}

TEST(Bytes, WhoMaySetAndBadArguments) {
    GroupPtr g;
    sf_call *l = nullptr, *f = nullptr;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
    ASSERT_EQ(sf_group_begin(g, "k", 1, &f), SF_FOLLOWER);
    EXPECT_EQ(sf_call_set_bytes(f, "x", 1), SF_ESTATE) << "a follower sets nothing";
    EXPECT_EQ(sf_call_set_bytes(nullptr, "x", 1), SF_EINVAL);
    EXPECT_EQ(sf_call_set_bytes(l, nullptr, 1), SF_EINVAL);
    EXPECT_EQ(sf_call_set_bytes(l, "x", size_t(PTRDIFF_MAX) + 1), SF_EINVAL);
    EXPECT_EQ(sf_call_set_bytes(l, nullptr, 0), SF_OK) << "empty bytes";
    ASSERT_EQ(sf_call_finish(l, 0), SF_OK);
    EXPECT_EQ(sf_call_set_bytes(l, "late", 4), SF_ESTATE) << "after the finish, refused";
    sf_result *r = nullptr;
    ASSERT_EQ(sf_call_wait(f, 0, &r, nullptr), SF_OK);
    size_t n = 99;
    EXPECT_NE(sf_result_bytes(r, &n), nullptr) << "empty bytes are bytes";
    EXPECT_EQ(n, 0u);
    sf_result_release(r);
    sf_call_release(f);
    sf_call_release(l);
}

// A setter on one thread replacing the bytes while another finishes: the
// follower's bytes are one of the values set, whole, and never change.
TEST(Bytes, SetBytesRacingFinishNeverTearsOrChangesAResult) {
    GroupPtr g;
    for (int round = 0; round < 500; ++round) {
        sf_call *l = nullptr, *f = nullptr;
        ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
        ASSERT_EQ(sf_group_begin(g, "k", 1, &f), SF_FOLLOWER);
        std::atomic<bool> go{false};
        std::thread setter([&] {
            while (!go.load()) {}
            for (int i = 0;; ++i) {
                const std::string v = pattern(size_t(40 + i % 100));
                if (sf_call_set_bytes(l, v.data(), v.size()) != SF_OK) break;
            }
        });
        go = true;
        ASSERT_EQ(sf_call_finish(l, 0), SF_OK);
        setter.join();
        sf_result *r = nullptr;
        ASSERT_EQ(sf_call_wait(f, 0, &r, nullptr), SF_OK);
        const std::string got = bytes_of(r);
        if (!got.empty()) EXPECT_EQ(got, pattern(got.size())) << "round " << round;
        EXPECT_EQ(bytes_of(r), got) << "unchanged after completion";
        sf_result_release(r);
        sf_call_release(f);
        sf_call_release(l);
    }
}

}  // namespace
