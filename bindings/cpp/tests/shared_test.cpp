// shared_group: one flight per key across processes, through the C++
// wrapper.  The processes are fork()ed children that each open the group by
// name, as unrelated workers would; they report what they saw through a
// pipe, and the parent asserts.  Every wait is on an observable condition
// (the segment's follower count), never on elapsed time.
#include "singleflight.hpp"
#include "support.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <new>
#include <string>
#include <thread>
#include <vector>

namespace {

using singleflight::shared_group;

constexpr int kChildren = 4;

// A name no other test run on the host uses at the same time.
std::string unique_name(const char *what) {
    return "sfcpp-" + std::to_string(::getpid()) + "-" + what;
}

// Bytes that a mix-up would change: NULs, high bytes, a length past the
// library's 64 inline bytes (so the value lives in the arena).
std::string payload(std::size_t n) {
    std::string s(n, '\0');
    for (std::size_t i = 0; i < n; ++i) s[i] = static_cast<char>((i * 131 + 7) % 256);
    return s;
}

// Counters every process sees: an anonymous shared mapping made before the
// forks.
struct shared_counts {
    std::atomic<int> executions{0};
};

shared_counts *map_counts() {
    void *p = ::mmap(nullptr, sizeof(shared_counts), PROT_READ | PROT_WRITE,
                     MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::runtime_error("mmap failed");
    return new (p) shared_counts();
}

struct child_report {
    int status;          // from waitpid
    std::string output;  // what the child wrote
};

// Runs body in n forked children and collects each one's output and exit
// status.  A child never returns into the test framework: it writes what
// body returned (or the exception it threw) and _exits.
std::vector<child_report> run_children(int n, const std::function<std::string()> &body) {
    std::vector<pid_t> pids;
    std::vector<int> fds;
    for (int i = 0; i < n; ++i) {
        int p[2];
        if (::pipe(p) != 0) throw std::runtime_error("pipe failed");
        pid_t pid = ::fork();
        if (pid < 0) throw std::runtime_error("fork failed");
        if (pid == 0) {
            ::close(p[0]);
            std::string out;
            try {
                out = body();
            } catch (const std::exception &e) {
                out = std::string("uncaught: ") + e.what();
            }
            const char *d = out.data();
            std::size_t left = out.size();
            while (left > 0) {
                ssize_t w = ::write(p[1], d, left);
                if (w <= 0) ::_exit(3);
                d += w;
                left -= static_cast<std::size_t>(w);
            }
            ::_exit(0);
        }
        ::close(p[1]);
        pids.push_back(pid);
        fds.push_back(p[0]);
    }
    std::vector<child_report> reports;
    for (int i = 0; i < n; ++i) {
        std::string out;
        char buf[4096];
        for (;;) {
            ssize_t r = ::read(fds[i], buf, sizeof buf);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            out.append(buf, static_cast<std::size_t>(r));
        }
        ::close(fds[i]);
        int status = 0;
        while (::waitpid(pids[i], &status, 0) < 0 && errno == EINTR) {}
        reports.push_back({status, out});
    }
    return reports;
}

bool exited_ok(const child_report &r) { return WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0; }

// Inside a leader's fn: returns once n callers have joined, counted over
// every process (the segment's stats).
void await_followers(const shared_group &g, unsigned long long n) {
    if (!sftest::eventually([&] { return g.stats().followers >= n; }))
        throw std::runtime_error("followers never joined");
}

bool segment_exists(const std::string &name) {
    return ::access(("/dev/shm/libsingleflight." + name).c_str(), F_OK) == 0;
}

TEST(SharedGroup, ProcessesOnOneColdKeyShareOneExecutionAndTheSameBytes) {
    const std::string name = unique_name("cold");
    shared_counts *counts = map_counts();
    const std::string want = payload(5000);
    {
        shared_group parent(name);  // to read the segment's stats after
        auto reports = run_children(kChildren, [&] {
            shared_group g(name);
            auto r = g.run("cold", [&] {
                counts->executions.fetch_add(1);
                await_followers(g, kChildren - 1);
                return payload(5000);
            });
            return std::string(r.shared() ? "S" : "U") + r.value();
        });
        for (const auto &r : reports) {
            ASSERT_TRUE(exited_ok(r)) << r.output;
            EXPECT_EQ(r.output, "S" + want) << "every caller, the leader too, has the same bytes";
        }
        EXPECT_EQ(counts->executions.load(), 1);
        auto s = parent.stats();
        EXPECT_EQ(s.leaders, 1u);
        EXPECT_EQ(s.followers, static_cast<unsigned long long>(kChildren - 1));
        EXPECT_EQ(s.in_flight, 0u);
        EXPECT_TRUE(segment_exists(name));
    }
    EXPECT_FALSE(segment_exists(name)) << "the last process to close removes the segment";
    ::munmap(counts, sizeof(shared_counts));
}

// A leader's exception cannot cross a process: it rethrows its own, with
// its type; every follower throws panic_error with its what().
struct custom_error : std::runtime_error {
    using std::runtime_error::runtime_error;
};

TEST(SharedGroup, AThrowingLeaderRethrowsAndFollowersGetItsMessage) {
    const std::string name = unique_name("throw");
    shared_group parent(name);
    auto reports = run_children(kChildren, [&] {
        shared_group g(name);
        try {
            g.run("k", [&]() -> std::string {
                await_followers(g, kChildren - 1);
                throw custom_error("db down");
            });
            return std::string("no exception");
        } catch (const custom_error &e) {
            return std::string("leader:") + e.what();
        } catch (const singleflight::panic_error &e) {
            return "follower:" + e.message();
        }
    });
    int leaders = 0, followers = 0;
    for (const auto &r : reports) {
        ASSERT_TRUE(exited_ok(r)) << r.output;
        if (r.output == "leader:db down") ++leaders;
        else if (r.output == "follower:db down") ++followers;
        else ADD_FAILURE() << "unexpected: " << r.output;
    }
    EXPECT_EQ(leaders, 1);
    EXPECT_EQ(followers, kChildren - 1);
    EXPECT_EQ(parent.stats().panics, 1u);
}

TEST(SharedGroup, AKilledLeaderReleasesFollowersAndTheKeyLeadsAfresh) {
    const std::string name = unique_name("kill");
    shared_group parent(name);
    auto reports = run_children(kChildren, [&] {
        shared_group g(name);
        try {
            g.run("k", [&]() -> std::string {
                await_followers(g, kChildren - 1);
                ::kill(::getpid(), SIGKILL);
                ::pause();  // not reached: SIGKILL cannot be caught
                return "unreachable";
            });
            return std::string("no exception");
        } catch (const singleflight::error &e) {
            return std::string(sf_err_name(e.code()));
        }
    });
    int killed = 0, goexits = 0;
    for (const auto &r : reports) {
        if (WIFSIGNALED(r.status) && WTERMSIG(r.status) == SIGKILL) ++killed;
        else if (exited_ok(r) && r.output == "SF_EGOEXIT") ++goexits;
        else ADD_FAILURE() << "status " << r.status << ": " << r.output;
    }
    EXPECT_EQ(killed, 1);
    EXPECT_EQ(goexits, kChildren - 1);
    int executions = 0;
    auto r = parent.run("k", [&] {
        ++executions;
        return std::string("fresh");
    });
    EXPECT_EQ(executions, 1) << "the key is not stuck";
    EXPECT_EQ(r.value(), "fresh");
    EXPECT_FALSE(r.shared());
}

TEST(SharedGroup, TwoPhaseLeaderInOneProcessFinishesForAFollowerInAnother) {
    const std::string name = unique_name("twophase");
    shared_group parent(name);
    auto lead = parent.begin("k");
    ASSERT_TRUE(lead.leader());
    std::vector<unsigned char> bytes{0, 1, 2, 255, 0};
    // The child joins, then waits; the parent finishes only once the
    // segment counts it as a follower.
    std::vector<child_report> reports;
    std::thread finisher([&] {
        await_followers(parent, 1);
        lead.finish(bytes);
    });
    reports = run_children(1, [&] {
        shared_group g(name);
        auto f = g.begin("k");
        if (f.leader()) return std::string("leader?");
        auto r = f.wait();
        return std::string(r.shared() ? "S" : "U") + r.value();
    });
    finisher.join();
    ASSERT_EQ(reports.size(), 1u);
    ASSERT_TRUE(exited_ok(reports[0])) << reports[0].output;
    EXPECT_EQ(reports[0].output, std::string("S") + std::string("\0\1\2\xff\0", 5));
    auto mine = lead.wait();
    EXPECT_EQ(mine.value(), std::string("\0\1\2\xff\0", 5));
    EXPECT_TRUE(mine.shared());
}

TEST(SharedGroup, ByteContainersAndAnEmptyValue) {
    shared_group g(unique_name("containers"));
    auto v = g.run("vec", [] { return std::vector<std::byte>{std::byte{0x41}, std::byte{0}}; });
    EXPECT_EQ(v.value(), std::string("A\0", 2));
    auto e = g.run("empty", [] { return std::string(); });
    EXPECT_TRUE(e.value().empty());
    auto sv = g.run("view", [] { return std::string_view("static"); });
    EXPECT_EQ(*sv, "static");
}

TEST(SharedGroup, AValueAboveTheLimitIsAnErrorForTheLeader) {
    singleflight::shared_options o;
    o.arena_bytes = 1 << 20;
    o.max_value_bytes = 1024;
    shared_group g(unique_name("limit"), o);
    try {
        g.run("big", [] { return std::string(2048, 'x'); });
        FAIL() << "a value above max_value_bytes was accepted";
    } catch (const singleflight::error &e) {
        EXPECT_EQ(e.code(), SF_EINVAL);
    }
    EXPECT_EQ(g.run("small", [] { return std::string(1024, 'y'); }).value().size(), 1024u);
}

TEST(SharedGroup, FnRunningItsOwnKeyIsADeadlockError) {
    shared_group g(unique_name("self"));
    try {
        g.run("k", [&] { return g.run("k", [] { return std::string("inner"); }).value(); });
        FAIL() << "the nested call did not fail";
    } catch (const singleflight::panic_error &) {
        FAIL() << "the leader should rethrow the original error";
    } catch (const singleflight::error &e) {
        EXPECT_EQ(e.code(), SF_EDEADLK);
    }
}

TEST(SharedGroup, BadNamesAndOptionsAreErrors) {
    for (const char *bad : {"", "a/b", ".hidden"}) {
        try {
            shared_group g(bad);
            ADD_FAILURE() << "opened \"" << bad << "\"";
        } catch (const singleflight::error &e) {
            EXPECT_EQ(e.code(), SF_EINVAL) << bad;
        }
    }
    try {
        singleflight::shared_options o;
        o.arena_bytes = 1 << 20;
        o.max_value_bytes = 1 << 20;  // more than a quarter of the arena
        shared_group g(unique_name("opts"), o);
        ADD_FAILURE() << "opened with max_value_bytes above a quarter of the arena";
    } catch (const singleflight::error &e) {
        EXPECT_EQ(e.code(), SF_EINVAL);
    }
}

TEST(SharedGroup, MovesKeepOneAttachment) {
    const std::string name = unique_name("move");
    shared_group a(name);
    shared_group b(std::move(a));
    EXPECT_EQ(a.native_handle(), nullptr);
    shared_group c(unique_name("move2"));
    c = std::move(b);
    EXPECT_EQ(c.run("k", [] { return std::string("v"); }).value(), "v");
    EXPECT_EQ(c.stats().processes, 1u);
}

TEST(SharedGroup, AFilePathGroupIsSharedByTwoAttachments) {
    singleflight::shared_options o;
    o.path = "/tmp/" + unique_name("path") + ".shm";
    std::string x, y;
    {
        shared_group a("", o), b("", o);
        EXPECT_EQ(a.stats().processes, 2u) << "each attachment counts as a process";
        // Whichever attachment begins first leads; the other joins through
        // its own attachment.
        auto call = [](shared_group &g, const char *v) {
            auto r = g.run("k", [&] {
                await_followers(g, 1);
                return std::string(v);
            });
            return r.value() + (r.shared() ? " shared" : " alone");
        };
        std::thread t([&] { x = call(a, "from a"); });
        y = call(b, "from b");
        t.join();
    }
    EXPECT_EQ(x, y) << "one execution, the same bytes";
    EXPECT_NE(x.find(" shared"), std::string::npos) << x;
    ::unlink(o.path.c_str());
}

}  // namespace
