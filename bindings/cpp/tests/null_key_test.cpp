// Keys given as C strings: a null pointer (getenv's "not set") is an error
// the caller can catch, never a crash, and a literal nullptr does not compile.
#include "singleflight.hpp"

#include <gtest/gtest.h>

#include <cstddef>
#include <cstdlib>
#include <future>
#include <string>
#include <type_traits>
#include <utility>

namespace {

using singleflight::group;

// ---- compile time: which key types each entry point accepts ----------------

using fn_t = int (*)();

template <class K, class = void>
struct runs_with : std::false_type {};
template <class K>
struct runs_with<
    K, std::void_t<decltype(std::declval<group &>().run(std::declval<K>(), std::declval<fn_t>()))>>
    : std::true_type {};

template <class K, class = void>
struct runs_async_with : std::false_type {};
template <class K>
struct runs_async_with<K, std::void_t<decltype(std::declval<group &>().run_async(
                              std::declval<K>(), std::declval<fn_t>()))>> : std::true_type {};

template <class K, class = void>
struct begins_with : std::false_type {};
template <class K>
struct begins_with<K, std::void_t<decltype(std::declval<group &>().begin<int>(std::declval<K>()))>>
    : std::true_type {};

template <class K, class = void>
struct forgets_with : std::false_type {};
template <class K>
struct forgets_with<
    K, std::void_t<decltype(std::declval<group &>().forget(std::declval<K>()),
                            std::declval<group &>().forget_unshared(std::declval<K>()))>>
    : std::true_type {};

// The detectors are not vacuous: every ordinary key type is accepted...
static_assert(runs_with<const char *>::value && runs_with<char *>::value &&
                  runs_with<std::string>::value && runs_with<std::string_view>::value &&
                  runs_with<const char (&)[2]>::value,
              "run takes C strings, std::string and std::string_view keys");
static_assert(runs_async_with<const char *>::value && runs_async_with<std::string>::value,
              "run_async takes the same keys as run");
static_assert(begins_with<const char *>::value && begins_with<std::string>::value,
              "begin takes the same keys as run");
static_assert(forgets_with<const char *>::value && forgets_with<std::string>::value,
              "forget and forget_unshared take the same keys as run");

// ...and a literal nullptr is refused at compile time, everywhere.
static_assert(!runs_with<std::nullptr_t>::value, "run(nullptr, fn) must not compile");
static_assert(!runs_async_with<std::nullptr_t>::value, "run_async(nullptr, fn) must not compile");
static_assert(!begins_with<std::nullptr_t>::value, "begin<T>(nullptr) must not compile");
static_assert(!forgets_with<std::nullptr_t>::value, "forget(nullptr) must not compile");

// ---- run time: a null C string ----------------------------------------------

// The way a null key reaches real code: an environment variable that is not
// set.  Opaque to the compiler, as it is in such code.
const char *unset_variable() {
    ::unsetenv("SF_CPP_TEST_UNSET_KEY");
    return std::getenv("SF_CPP_TEST_UNSET_KEY");
}

template <class Op>
void expect_einval(Op op) {
    try {
        op();
        ADD_FAILURE() << "expected singleflight::error(SF_EINVAL)";
    } catch (const singleflight::error &e) {
        EXPECT_EQ(e.code(), SF_EINVAL) << e.what();
    }
}

class NullKey : public ::testing::Test {
protected:
    void TearDown() override {
        auto s = g.stats();
        EXPECT_EQ(s.calls, 0u) << "a rejected key must not reach the library";
        EXPECT_EQ(s.in_flight, 0u);
    }
    group g;
    const char *key = unset_variable();
    bool ran = false;
    int fn() {
        ran = true;
        return 1;
    }
};

TEST_F(NullKey, RunThrowsEinvalAndDoesNotRunFn) {
    ASSERT_EQ(key, nullptr);
    expect_einval([&] { g.run(key, [&] { return fn(); }); });
    EXPECT_FALSE(ran);
}

TEST_F(NullKey, RunAsyncThrowsEinvalAndDoesNotRunFn) {
    expect_einval([&] { g.run_async(key, [&] { return fn(); }); });
    EXPECT_FALSE(ran);
}

TEST_F(NullKey, BeginThrowsEinval) {
    expect_einval([&] { g.begin<int>(key); });
}

TEST_F(NullKey, ForgetAndForgetUnsharedThrowEinval) {
    expect_einval([&] { g.forget(key); });
    expect_einval([&] { g.forget_unshared(key); });
}

TEST(CStringKey, IsTheSameKeyAsItsStdString) {
    group g;
    char buf[] = "user:42";
    char *mutable_key = buf;  // what getenv returns
    auto leader = g.begin<int>(std::string("user:42"));
    ASSERT_TRUE(leader.leader());
    auto follower = g.begin<int>(mutable_key);
    EXPECT_FALSE(follower.leader());
    leader.finish(7);
    EXPECT_EQ(follower.wait().value(), 7);
    EXPECT_EQ(g.run(static_cast<const char *>(buf), [] { return 8; }).value(), 8);
}

}  // namespace
