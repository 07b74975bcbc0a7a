// sf_call_fd when the process has no descriptor left: SF_EBUSY, no crash, and
// the call stays usable (wait works, a later sf_call_fd succeeds once
// descriptors are available again).

#include <singleflight.h>

#include <gtest/gtest.h>

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace {

// Lowers RLIMIT_NOFILE and fills every remaining slot; the destructor gives
// everything back even when an assertion returns early.
class FdExhaustion {
public:
    FdExhaustion() {
        getrlimit(RLIMIT_NOFILE, &saved_);
        struct rlimit low = saved_;
        // Leave room above the descriptors already open (gtest, sanitizers).
        low.rlim_cur = 256;
        if (low.rlim_cur > saved_.rlim_cur) low.rlim_cur = saved_.rlim_cur;
        lowered_ = setrlimit(RLIMIT_NOFILE, &low) == 0;
        for (;;) {
            int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
            if (fd < 0) {
                errno_at_end_ = errno;
                break;
            }
            fds_.push_back(fd);
            if (fds_.size() > 100000) break;  // a runaway limit: give up
        }
    }
    ~FdExhaustion() {
        give_back_all();
        setrlimit(RLIMIT_NOFILE, &saved_);
    }
    bool exhausted() const { return errno_at_end_ == EMFILE; }
    bool lowered() const { return lowered_; }
    void give_back_one() {
        if (!fds_.empty()) {
            close(fds_.back());
            fds_.pop_back();
        }
    }
    void give_back_all() {
        for (int fd : fds_) close(fd);
        fds_.clear();
    }

private:
    struct rlimit saved_ {};
    bool lowered_ = false;
    int errno_at_end_ = 0;
    std::vector<int> fds_;
};

TEST(FdExhaustion, CallFdReturnsBusyAndCallStaysUsable) {
    sf_group *g = nullptr;
    ASSERT_EQ(sf_group_new(&g, nullptr), SF_OK);
    sf_call *lead = nullptr, *fol = nullptr, *fol2 = nullptr;
    ASSERT_EQ(sf_group_begin(g, "fd", 2, &lead), SF_LEADER);
    ASSERT_EQ(sf_group_begin(g, "fd", 2, &fol), SF_FOLLOWER);
    ASSERT_EQ(sf_group_begin(g, "fd", 2, &fol2), SF_FOLLOWER);
    {
        FdExhaustion ex;
        ASSERT_TRUE(ex.lowered());
        ASSERT_TRUE(ex.exhausted()) << "could not exhaust descriptors";
        EXPECT_EQ(sf_call_fd(fol), SF_EBUSY);
        EXPECT_EQ(sf_call_fd(fol), SF_EBUSY) << "a failed attempt must be retryable";
        EXPECT_EQ(sf_call_fd(fol2), SF_EBUSY);

        // With one descriptor free again, the fd can be made.
        ex.give_back_one();
        int fd = sf_call_fd(fol);
        EXPECT_GE(fd, 0) << sf_err_name(fd);
        EXPECT_EQ(sf_call_fd(fol2), SF_EBUSY) << "only one descriptor was free";

        // The follower without an fd still completes through wait.
        sf_call_set_value(lead, &ex, nullptr);
        ASSERT_EQ(sf_call_finish(lead, 4), SF_OK);
        if (fd >= 0) {
            struct pollfd p = {fd, POLLIN, 0};
            EXPECT_EQ(poll(&p, 1, 10000), 1) << "the fd never became readable";
        }
        sf_result *r = nullptr;
        ASSERT_EQ(sf_call_wait(fol2, 0, &r, nullptr), SF_OK);
        EXPECT_EQ(sf_result_value(r), &ex);
        EXPECT_EQ(sf_result_error(r), 4);
        sf_result_release(r);
    }
    // Descriptors are back: a completed call can still give an fd, readable
    // at once.
    int fd2 = sf_call_fd(fol2);
    ASSERT_GE(fd2, 0) << sf_err_name(fd2);
    struct pollfd p = {fd2, POLLIN, 0};
    EXPECT_EQ(poll(&p, 1, 0), 1);
    sf_call_release(fol);
    sf_call_release(fol2);
    sf_call_release(lead);
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

// Many calls each holding an fd: releasing them gives the descriptors back.
// The library may keep a bounded cache of eventfds, so the check is that the
// count stops growing, not that it returns to the start.
TEST(FdExhaustion, ReleasedCallsReturnTheirDescriptors) {
    sf_group *g = nullptr;
    ASSERT_EQ(sf_group_new(&g, nullptr), SF_OK);
    auto count_open = [] {
        int n = 0;
        for (int fd = 0; fd < 4096; fd++)
            if (fcntl(fd, F_GETFD) != -1) n++;
        return n;
    };
    constexpr int kCalls = 64;
    int before = count_open();
    std::vector<int> after;
    for (int round = 0; round < 4; round++) {
        sf_call *lead = nullptr;
        ASSERT_EQ(sf_group_begin(g, "many", 4, &lead), SF_LEADER);
        std::vector<sf_call *> fols(kCalls);
        for (auto &c : fols) {
            ASSERT_EQ(sf_group_begin(g, "many", 4, &c), SF_FOLLOWER);
            ASSERT_GE(sf_call_fd(c), 0);
        }
        ASSERT_EQ(sf_call_finish(lead, 0), SF_OK);
        for (auto c : fols) sf_call_release(c);
        sf_call_release(lead);
        after.push_back(count_open());
    }
    EXPECT_LE(after[0], before + kCalls);
    for (size_t i = 1; i < after.size(); i++)
        EXPECT_EQ(after[i], after[0]) << "descriptors leaked in round " << i;
    EXPECT_EQ(sf_group_free(g), SF_OK);
    EXPECT_LE(count_open(), before + kCalls);
}

}  // namespace
