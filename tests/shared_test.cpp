// Shared groups (SF_1.2): one execution per key across processes, woken at
// once, safe when a process dies.  Each test runs its processes with fork
// (children reopen the group by name, or use their parent's handle), or
// spawns this very program again for processes that are not related at
// all; children report through a shared anonymous mapping and exit with
// _exit.  Handshakes, never sleeps: a child says where it is through the
// mapping, and the group's own counters (summed over every process) say
// who has joined.
#include <gtest/gtest.h>
#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "core/group.hpp"
#include "core/shared.hpp"
#include "singleflight.h"
#include "test_util.hpp"

namespace {

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

// A name no other run of this program uses at the same time.
std::string unique_name(const char *what) {
    return std::string("sftest-") + what + "-" + std::to_string(getpid());
}

std::string shm_file(const std::string &name) { return "/dev/shm/libsingleflight." + name; }

bool exists(const std::string &path) { return access(path.c_str(), F_OK) == 0; }

sf_group *open_named(const std::string &name, const sf_shared_options *o = nullptr) {
    sf_group *g = nullptr;
    const int rc = sf_group_open_shared(name.c_str(), o, &g);
    EXPECT_EQ(rc, SF_OK) << sf_err_name(rc);
    return g;
}

// The core's shared group behind a handle, for the testing hooks.
sf::SharedGroup *shared_of(sf_group *g) { return reinterpret_cast<sf::Group *>(g)->shared(); }

sf_group_stats stats(const sf_group *g) {
    sf_group_stats st{};
    st.version = SF_GROUP_STATS_VERSION;
    sf_group_stats_get(g, &st);
    return st;
}

// Memory every forked child shares with the test: counters and flags.
struct Board {
    std::atomic<int> executions;
    std::atomic<int> ready;
    std::atomic<int> go;
    std::atomic<int> in_fn;
    std::atomic<int> release_fn;
    std::atomic<int> ok, goexit, other;
    std::atomic<int> callbacks;
    char bytes[64][128];
    std::atomic<int> nbytes;
};

Board *new_board() {
    void *p =
        mmap(nullptr, sizeof(Board), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    EXPECT_NE(p, MAP_FAILED);
    std::memset(p, 0, sizeof(Board));
    return static_cast<Board *>(p);
}

int wait_child(pid_t pid) {
    int status = 0;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {}
    return status;
}

template <class Pred>
bool wait_until(Pred pred, int seconds = 30) {
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(seconds);
    while (!pred()) {
        if (std::chrono::steady_clock::now() > end) return false;
        std::this_thread::yield();
    }
    return true;
}

// fork() once every other thread of this process sleeps.  Under ASan the
// child of a process whose other thread was inside the allocator inherits
// the allocator's lock held and deadlocks at its first allocation (gcc 12's
// libasan takes no lock around fork; glibc's malloc does): seen in CI as a
// forked child hanging, and here in the herd test with every child's thread
// waiting on __sanitizer::Mutex.  The other threads are the library's helper
// threads, busy only right after a peer attached or died; so the test waits
// until /proc says each of them is asleep (state S), then forks.
bool other_threads_asleep() {
    const long self = syscall(SYS_gettid);
    DIR *d = opendir("/proc/self/task");
    if (!d) return true;
    bool asleep = true;
    while (dirent *e = readdir(d)) {
        if (e->d_name[0] == '.' || std::atol(e->d_name) == self) continue;
        char path[64], buf[512];
        std::snprintf(path, sizeof path, "/proc/self/task/%s/stat", e->d_name);
        FILE *f = std::fopen(path, "r");
        if (!f) continue;  // the thread ended
        const size_t n = std::fread(buf, 1, sizeof buf - 1, f);
        std::fclose(f);
        buf[n] = 0;
        const char *p = std::strrchr(buf, ')');
        if (p && p[1] == ' ' && p[2] != 'S') asleep = false;
    }
    closedir(d);
    return asleep;
}
pid_t fork_quiet() {
    wait_until(other_threads_asleep, 10);
    return fork();
}

int no_op(sf_call *, void *) { return 0; }

// fn of the herd tests: counts an execution, holds the flight open until
// every other caller has joined (the group's followers counter, summed over
// every process), then stores the bytes everybody must read.
struct HerdFn {
    sf_group *g;
    Board *board;
    uint64_t followers;
};
int herd_fn(sf_call *call, void *p) {
    auto *h = static_cast<HerdFn *>(p);
    h->board->executions.fetch_add(1);
    wait_until([&] { return stats(h->g).followers >= h->followers; });
    const std::string v = "the one value, " + std::string(200, 'v');  // > 64 bytes: in the arena
    return sf_call_set_bytes(call, v.data(), v.size()) == SF_OK ? 0 : 1;
}

// ---------------------------------------------------------------------------
// Opening
// ---------------------------------------------------------------------------

TEST(SharedOpen, BadNamesAndOptionsAreEinval) {
    sf_group *g = nullptr;
    EXPECT_EQ(sf_group_open_shared("has/slash", nullptr, &g), SF_EINVAL);
    EXPECT_EQ(sf_group_open_shared(std::string(300, 'n').c_str(), nullptr, &g), SF_EINVAL);
    EXPECT_EQ(sf_group_open_shared("", nullptr, &g), SF_EINVAL);
    EXPECT_EQ(sf_group_open_shared(".hidden", nullptr, &g), SF_EINVAL);
    EXPECT_EQ(sf_group_open_shared("sp ace", nullptr, &g), SF_EINVAL);
    EXPECT_EQ(sf_group_open_shared(nullptr, nullptr, &g), SF_EINVAL);
    EXPECT_EQ(sf_group_open_shared("ok", nullptr, nullptr), SF_EINVAL);
    sf_shared_options o;
    ASSERT_EQ(sf_shared_options_init(&o, SF_SHARED_OPTIONS_VERSION), SF_OK);
    EXPECT_EQ(sf_shared_options_init(&o, 99), SF_EINVAL);
    o.path = "/tmp/x";
    EXPECT_EQ(sf_group_open_shared("both", &o, &g), SF_EINVAL) << "a name and a path";
    ASSERT_EQ(sf_shared_options_init(&o, SF_SHARED_OPTIONS_VERSION), SF_OK);
    o.max_processes = 65;
    EXPECT_EQ(sf_group_open_shared("x", &o, &g), SF_EINVAL);
    o.max_processes = 0;
    o.arena_bytes = 1 << 20;
    o.max_value_bytes = 1 << 19;
    EXPECT_EQ(sf_group_open_shared("x", &o, &g), SF_EINVAL)
        << "a value above a quarter of the arena";
    o.max_value_bytes = 0;
    o.flags = 0x80;
    EXPECT_EQ(sf_group_open_shared("x", &o, &g), SF_EINVAL);
    o.version = 7;
    EXPECT_EQ(sf_group_open_shared("x", &o, &g), SF_EINVAL);
    EXPECT_EQ(g, nullptr);
}

TEST(SharedOpen, TheLastCloseLeavesNothingBehind) {
    const std::string name = unique_name("close");
    sf_group *a = open_named(name), *b = open_named(name);
    ASSERT_TRUE(a && b);
    EXPECT_EQ(stats(a).processes, 2u) << "two attachments are two processes of the group";
    EXPECT_TRUE(exists(shm_file(name)));
    EXPECT_EQ(sf_group_free(a), SF_OK);
    EXPECT_TRUE(exists(shm_file(name)));
    EXPECT_EQ(sf_group_free(b), SF_OK);
    EXPECT_FALSE(exists(shm_file(name))) << "the last one removes the segment";
    EXPECT_FALSE(exists(shm_file(name) + ".bell.0"));
}

TEST(SharedOpen, ASegmentWiderThanAskedOrOfAnotherUserIsEperm) {
    const std::string name = unique_name("perm");
    const std::string file = shm_file(name);
    const int fd = open(file.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(fchmod(fd, 0666), 0);
    sf_group *g = nullptr;
    EXPECT_EQ(sf_group_open_shared(name.c_str(), nullptr, &g), SF_EPERM) << "0666 against 0600";
    ASSERT_EQ(fchmod(fd, 0600), 0);
    if (geteuid() == 0) {
        ASSERT_EQ(fchown(fd, 65534, 65534), 0);
        EXPECT_EQ(sf_group_open_shared(name.c_str(), nullptr, &g), SF_EPERM) << "another owner";
    }
    close(fd);
    unlink(file.c_str());
    EXPECT_EQ(g, nullptr);
}

TEST(SharedOpen, AnotherLayoutOrSizeIsEincompat) {
    const std::string name = unique_name("layout");
    sf_group *g = open_named(name);
    ASSERT_TRUE(g);
    sf_shared_options o;
    sf_shared_options_init(&o, SF_SHARED_OPTIONS_VERSION);
    o.table_slots = 8192;
    sf_group *other = nullptr;
    EXPECT_EQ(sf_group_open_shared(name.c_str(), &o, &other), SF_EINCOMPAT)
        << "asked for other sizes";
    // Another layout version, written by hand into the header.
    const int fd = open(shm_file(name).c_str(), O_RDWR);
    ASSERT_GE(fd, 0);
    uint32_t bad = sf::shm::kLayout + 1;
    ASSERT_EQ(pwrite(fd, &bad, sizeof bad, offsetof(sf::shm::Header, layout)), ssize_t(sizeof bad));
    EXPECT_EQ(sf_group_open_shared(name.c_str(), nullptr, &other), SF_EINCOMPAT);
    uint64_t magic = 0;
    ASSERT_EQ(pwrite(fd, &magic, sizeof magic, 0), ssize_t(sizeof magic));
    EXPECT_EQ(sf_group_open_shared(name.c_str(), nullptr, &other), SF_EINCOMPAT)
        << "not ours at all";
    close(fd);
    EXPECT_EQ(other, nullptr);
    // g has the header mapped: put it back before it detaches.
    const int fd2 = open(shm_file(name).c_str(), O_RDWR);
    uint32_t good = sf::shm::kLayout;
    uint64_t m = sf::shm::kMagic;
    pwrite(fd2, &good, sizeof good, offsetof(sf::shm::Header, layout));
    pwrite(fd2, &m, sizeof m, 0);
    close(fd2);
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

TEST(SharedOpen, AFilePathWorksLikeAName) {
    char dir[] = "/tmp/sftest-path-XXXXXX";
    ASSERT_NE(mkdtemp(dir), nullptr);
    const std::string path = std::string(dir) + "/group";
    sf_shared_options o;
    sf_shared_options_init(&o, SF_SHARED_OPTIONS_VERSION);
    o.path = path.c_str();
    sf_group *g = nullptr;
    ASSERT_EQ(sf_group_open_shared(nullptr, &o, &g), SF_OK);
    EXPECT_TRUE(exists(path));
    struct stat st;
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0600u) << "0600 by default";
    sf_result *r = nullptr;
    ASSERT_EQ(sf_group_do(
                  g, "k", 1,
                  [](sf_call *c, void *) { return sf_call_set_bytes(c, "v", 1) == SF_OK ? 0 : 1; },
                  nullptr, &r, nullptr),
              SF_OK);
    size_t n = 0;
    const void *v = sf_result_bytes(r, &n);
    EXPECT_EQ(std::string(static_cast<const char *>(v), n), "v");
    sf_result_release(r);
    EXPECT_EQ(sf_group_free(g), SF_OK);
    EXPECT_FALSE(exists(path));
    rmdir(dir);
}

// ---------------------------------------------------------------------------
// Values
// ---------------------------------------------------------------------------

TEST(SharedValues, APointerValueIsRefusedAndTheFlightPanicsSaying) {
    const std::string name = unique_name("pointer");
    sf_group *g = open_named(name);
    ASSERT_TRUE(g);
    static std::atomic<int> destroyed{0};
    sf_result *r = nullptr;
    EXPECT_EQ(sf_group_do(
                  g, "k", 1,
                  [](sf_call *c, void *) {
                      static int v = 1;
                      sf_call_set_value(c, &v, [](void *) { destroyed++; });
                      return 0;
                  },
                  nullptr, &r, nullptr),
              SF_EPANIC);
    EXPECT_EQ(destroyed.load(), 1) << "destroyed at once";
    ASSERT_NE(sf_result_panic_message(r), nullptr);
    EXPECT_NE(std::strstr(sf_result_panic_message(r), "sf_call_set_bytes"), nullptr);
    sf_result_release(r);
    sf_call *l = nullptr;
    ASSERT_EQ(sf_group_begin(g, "tp", 2, &l), SF_LEADER);
    static int v2 = 2;
    sf_call_set_value(l, &v2, nullptr);
    EXPECT_EQ(sf_call_finish(l, 0), SF_EINVAL) << "the two-phase leader hears it";
    sf_call_release(l);
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

TEST(SharedValues, ValuesOfEverySizeUpToTheLimitAndNotAbove) {
    const std::string name = unique_name("sizes");
    sf_shared_options o;
    sf_shared_options_init(&o, SF_SHARED_OPTIONS_VERSION);
    o.arena_bytes = 4 << 20;
    o.max_value_bytes = 1 << 20;
    sf_group *g = open_named(name, &o);
    ASSERT_TRUE(g);
    for (size_t len :
         {size_t(0), size_t(1), size_t(64), size_t(65), size_t(4000), size_t(1) << 20}) {
        std::string want(len, '\0');
        for (size_t i = 0; i < len; ++i) want[i] = char(i * 7 + len);
        sf_call *l = nullptr;
        ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
        ASSERT_EQ(sf_call_set_bytes(l, want.data(), want.size()), SF_OK) << len;
        ASSERT_EQ(sf_call_finish(l, 0), SF_OK);
        sf_result *r = nullptr;
        ASSERT_EQ(sf_call_wait(l, 0, &r, nullptr), SF_OK);
        size_t n = 99;
        const void *p = sf_result_bytes(r, &n);
        EXPECT_EQ(n, len);
        EXPECT_EQ(std::string(static_cast<const char *>(p), n), want);
        sf_result_release(r);
        sf_call_release(l);
    }
    sf_call *l = nullptr;
    ASSERT_EQ(sf_group_begin(g, "big", 3, &l), SF_LEADER);
    std::string too_big((1 << 20) + 1, 'x');
    EXPECT_EQ(sf_call_set_bytes(l, too_big.data(), too_big.size()), SF_EINVAL);
    ASSERT_EQ(sf_call_finish(l, 0), SF_OK);
    sf_call_release(l);
    EXPECT_EQ(stats(g).arena_used, 0u) << "every block came back";
    EXPECT_GT(stats(g).arena_high, uint64_t(1) << 20);
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

// The arena: a value that does not fit is SF_ENOMEM for the call that
// stores it while the flights holding the space go on; space given back
// serves any size again (before the buddy arena, a 1000-byte key found no
// room once the arena had been carved into 16 KiB blocks and freed).
TEST(SharedCapacity, AFullArenaIsEnomemForTheCallThatNeedsIt) {
    const std::string name = unique_name("arena");
    sf_shared_options o;
    sf_shared_options_init(&o, SF_SHARED_OPTIONS_VERSION);
    o.arena_bytes = 64 << 10;
    o.max_value_bytes = 16 << 10;
    sf_group *g = open_named(name, &o);
    ASSERT_TRUE(g);
    const std::string big(15000, 'b');
    auto fill = [&](std::vector<sf_call *> *held) {
        for (int i = 0; i < 4; ++i) {
            const std::string k = "big" + std::to_string(i);
            sf_call *c = nullptr;
            ASSERT_EQ(sf_group_begin(g, k.data(), k.size(), &c), SF_LEADER);
            ASSERT_EQ(sf_call_set_bytes(c, big.data(), big.size()), SF_OK) << i;
            held->push_back(c);
        }
    };
    std::vector<sf_call *> held;
    fill(&held);
    sf_call *extra = nullptr;
    ASSERT_EQ(sf_group_begin(g, "one more", 8, &extra), SF_LEADER);
    EXPECT_EQ(sf_call_set_bytes(extra, big.data(), big.size()), SF_ENOMEM) << "the arena is full";
    ASSERT_EQ(sf_call_finish(extra, 0), SF_OK);
    sf_call_release(extra);
    for (sf_call *c : held) {  // the flights holding the space are unaffected
        ASSERT_EQ(sf_call_finish(c, 0), SF_OK);
        sf_result *r = nullptr;
        ASSERT_EQ(sf_call_wait(c, 0, &r, nullptr), SF_OK);
        size_t n = 0;
        const void *v = sf_result_bytes(r, &n);
        EXPECT_EQ(std::string(static_cast<const char *>(v), n), big);
        sf_result_release(r);
        sf_call_release(c);
    }
    EXPECT_EQ(stats(g).arena_used, 0u);
    // Any size fits again: a long key, then many small values...
    const std::string long_key(1000, 'k');
    sf_call *c = nullptr;
    ASSERT_EQ(sf_group_begin(g, long_key.data(), long_key.size(), &c), SF_LEADER)
        << "room for a 1000-byte key in an empty arena";
    ASSERT_EQ(sf_call_finish(c, 0), SF_OK);
    sf_call_release(c);
    std::vector<sf_call *> small;
    for (int i = 0; i < 100; ++i) {
        const std::string k = "small" + std::to_string(i);
        ASSERT_EQ(sf_group_begin(g, k.data(), k.size(), &c), SF_LEADER);
        ASSERT_EQ(sf_call_set_bytes(c, big.data(), 200), SF_OK) << i;
        small.push_back(c);
    }
    for (sf_call *s : small) {
        sf_call_finish(s, 0);
        sf_call_release(s);
    }
    // ...and the halves merge back into blocks for the largest values.
    EXPECT_EQ(stats(g).arena_used, 0u);
    held.clear();
    fill(&held);
    for (sf_call *h : held) {
        sf_call_finish(h, 0);
        sf_call_release(h);
    }
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

TEST(SharedCapacity, AFullTableIsEnomemAndRunUnsharedRunsFn) {
    const std::string name = unique_name("full");
    sf_shared_options o;
    sf_shared_options_init(&o, SF_SHARED_OPTIONS_VERSION);
    o.table_slots = 64;  // one record per stripe
    sf_group *g = open_named(name, &o);
    ASSERT_TRUE(g);
    std::vector<sf_call *> held;
    int full = 0;
    for (int i = 0; i < 1000 && full == 0; ++i) {
        const std::string k = "key" + std::to_string(i);
        sf_call *c = nullptr;
        const int rc = sf_group_begin(g, k.data(), k.size(), &c);
        if (rc == SF_ENOMEM) {
            full = i;
            EXPECT_EQ(c, nullptr);
            // A flight already running is unaffected.
            ASSERT_EQ(sf_call_finish(held[0], 0), SF_OK);
        } else {
            ASSERT_EQ(rc, SF_LEADER);
            held.push_back(c);
        }
    }
    EXPECT_GT(full, 0);
    EXPECT_LE(full, 64);
    for (sf_call *c : held) {
        sf_call_finish(c, 0);
        sf_call_release(c);
    }
    EXPECT_GE(stats(g).in_flight_high, uint64_t(full)) << "the high-water mark";
    EXPECT_EQ(sf_group_free(g), SF_OK);
    // With the flag, the same pressure runs fn coalesced in-process instead.
    o.flags = SF_SHARED_RUN_UNSHARED;
    g = open_named(name + "u", &o);
    ASSERT_TRUE(g);
    held.clear();
    for (int i = 0; i < 64; ++i) {
        const std::string k = "key" + std::to_string(i);
        sf_call *c = nullptr;
        if (sf_group_begin(g, k.data(), k.size(), &c) == SF_LEADER) held.push_back(c);
    }
    int ran = 0;
    for (int i = 0; i < 100; ++i) {
        const std::string k = "more" + std::to_string(i);
        ASSERT_EQ(sf_group_do(
                      g, k.data(), k.size(),
                      [](sf_call *, void *p) {
                          ++*static_cast<int *>(p);
                          return 0;
                      },
                      &ran, nullptr, nullptr),
                  SF_OK);
    }
    EXPECT_EQ(ran, 100);
    for (sf_call *c : held) {
        sf_call_finish(c, 0);
        sf_call_release(c);
    }
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

// ---------------------------------------------------------------------------
// Many processes
// ---------------------------------------------------------------------------

// 8 processes x 4 threads on one cold key: exactly one execution, and every
// caller reads identical bytes.
TEST(SharedHerd, EightProcessesOfFourThreadsRunFnOnce) {
    const std::string name = unique_name("herd");
    sf_group *mine = open_named(name);  // keeps the segment while children come and go
    ASSERT_TRUE(mine);
    Board *b = new_board();
    constexpr int kProcs = 8, kThreads = 4;
    std::vector<pid_t> kids;
    for (int p = 0; p < kProcs; ++p) {
        const pid_t pid = fork_quiet();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            sf_group *g = nullptr;
            if (sf_group_open_shared(name.c_str(), nullptr, &g) != SF_OK) _exit(2);
            HerdFn h{g, b, kProcs * kThreads - 1};
            std::vector<std::thread> ts;
            for (int t = 0; t < kThreads; ++t) {
                ts.emplace_back([&] {
                    b->ready.fetch_add(1);
                    while (!b->go.load()) {}
                    sf_result *r = nullptr;
                    const int rc = sf_group_do(g, "cold", 4, herd_fn, &h, &r, nullptr);
                    if (rc == SF_OK) {
                        size_t n = 0;
                        const char *v = static_cast<const char *>(sf_result_bytes(r, &n));
                        const int slot = b->nbytes.fetch_add(1);
                        if (slot < 64 && n < sizeof b->bytes[0]) std::memcpy(b->bytes[slot], v, n);
                        if (slot < 64 && n >= sizeof b->bytes[0])
                            std::memcpy(b->bytes[slot], v, sizeof b->bytes[0] - 1);
                        b->ok.fetch_add(1);
                    } else {
                        b->other.fetch_add(1);
                    }
                    sf_result_release(r);
                });
            }
            for (auto &t : ts) t.join();
            sf_group_free(g);
            _exit(0);
        }
        kids.push_back(pid);
    }
    ASSERT_TRUE(wait_until([&] { return b->ready.load() == kProcs * kThreads; }));
    b->go.store(1);
    for (pid_t k : kids) EXPECT_EQ(wait_child(k), 0);
    EXPECT_EQ(b->executions.load(), 1);
    EXPECT_EQ(b->ok.load(), kProcs * kThreads);
    EXPECT_EQ(b->other.load(), 0);
    for (int i = 1; i < b->nbytes.load() && i < 64; ++i)
        EXPECT_STREQ(b->bytes[i], b->bytes[0]) << "caller " << i;
    EXPECT_EQ(std::string(b->bytes[0]).substr(0, 15), "the one value, ");
    const sf_group_stats st = stats(mine);
    EXPECT_EQ(st.leaders, 1u);
    EXPECT_EQ(st.followers, uint64_t(kProcs * kThreads - 1));
    EXPECT_EQ(st.in_flight, 0u);
    EXPECT_EQ(st.arena_used, 0u) << "the value's block came back";
    EXPECT_EQ(sf_group_free(mine), SF_OK);
    munmap(b, sizeof *b);
}

// The leader's process is killed inside fn: every follower, in every
// process, hears SF_EGOEXIT at once, and the next caller leads afresh.
TEST(SharedDeath, ALeaderProcessKilledInsideFnReleasesEveryFollower) {
    const std::string name = unique_name("killed");
    sf_group *g = open_named(name);
    ASSERT_TRUE(g);
    Board *b = new_board();
    const pid_t leader = fork_quiet();
    ASSERT_GE(leader, 0);
    if (leader == 0) {
        sf_group *lg = nullptr;
        if (sf_group_open_shared(name.c_str(), nullptr, &lg) != SF_OK) _exit(2);
        sf_group_do(
            lg, "k", 1,
            [](sf_call *, void *p) {
                static_cast<Board *>(p)->in_fn.store(1);
                for (;;) pause();  // until killed
                return 0;
            },
            b, nullptr, nullptr);
        _exit(3);
    }
    ASSERT_TRUE(wait_until([&] { return b->in_fn.load() == 1; }));
    // Followers: another process, and two threads of this one.
    const pid_t follower = fork_quiet();
    ASSERT_GE(follower, 0);
    if (follower == 0) {
        sf_group *fg = nullptr;
        if (sf_group_open_shared(name.c_str(), nullptr, &fg) != SF_OK) _exit(2);
        const int rc = sf_group_do(
            fg, "k", 1, [](sf_call *, void *) { return 0; }, nullptr, nullptr, nullptr);
        _exit(rc == SF_EGOEXIT ? 0 : 10 - rc);
    }
    std::atomic<int> rcs[2] = {{1000}, {1000}};
    std::vector<std::thread> ts;
    for (int t = 0; t < 2; ++t)
        ts.emplace_back([&, t] {
            rcs[t] = sf_group_do(
                g, "k", 1, [](sf_call *, void *) { return 0; }, nullptr, nullptr, nullptr);
        });
    ASSERT_TRUE(wait_until([&] { return stats(g).followers >= 3; }));
    const auto t0 = std::chrono::steady_clock::now();
    ASSERT_EQ(kill(leader, SIGKILL), 0);
    for (auto &t : ts) t.join();
    const auto released = std::chrono::steady_clock::now() - t0;
    EXPECT_EQ(rcs[0].load(), SF_EGOEXIT);
    EXPECT_EQ(rcs[1].load(), SF_EGOEXIT);
    EXPECT_EQ(wait_child(follower), 0) << "the follower process heard SF_EGOEXIT";
    const int st = wait_child(leader);
    EXPECT_TRUE(WIFSIGNALED(st));
    // Not a timing assertion of speed: a bound against a hang or a timer
    // (the target, 100 ms p99, is measured in bench/).
    EXPECT_LT(std::chrono::duration_cast<std::chrono::seconds>(released).count(), 10);
    // The key is not stuck: the next caller leads a fresh flight.
    int ran = 0;
    EXPECT_EQ(sf_group_do(
                  g, "k", 1,
                  [](sf_call *, void *p) {
                      ++*static_cast<int *>(p);
                      return 0;
                  },
                  &ran, nullptr, nullptr),
              SF_OK);
    EXPECT_EQ(ran, 1);
    EXPECT_GE(stats(g).goexits, 1u);
    EXPECT_EQ(sf_group_free(g), SF_OK);
    munmap(b, sizeof *b);
}

// A leader killed with nobody waiting: the key is not stuck either.
TEST(SharedDeath, ALeaderKilledWithNoFollowerLeavesTheKeyFree) {
    const std::string name = unique_name("alone");
    sf_group *g = open_named(name);
    ASSERT_TRUE(g);
    Board *b = new_board();
    const pid_t leader = fork_quiet();
    if (leader == 0) {
        sf_group *lg = nullptr;
        if (sf_group_open_shared(name.c_str(), nullptr, &lg) != SF_OK) _exit(2);
        sf_call *c = nullptr;
        sf_group_begin(lg, "k", 1, &c);
        b->in_fn.store(1);
        for (;;) pause();
    }
    ASSERT_TRUE(wait_until([&] { return b->in_fn.load() == 1; }));
    kill(leader, SIGKILL);
    wait_child(leader);
    sf_call *c = nullptr;
    EXPECT_EQ(sf_group_begin(g, "k", 1, &c), SF_LEADER) << "the dead leader's flight is gone";
    ASSERT_EQ(sf_call_finish(c, 0), SF_OK);
    sf_call_release(c);
    EXPECT_EQ(sf_group_free(g), SF_OK);
    munmap(b, sizeof *b);
}

// An opener reaps the processes that died before it claims a slot of its
// own.  Here a flight led by a dead process had a registration of another
// dead process (slot 0's bit), which nobody reaped because both were gone:
// the opener must not take slot 0's notification for its own (before the
// fix it did, and crashed delivering it with no per-process state yet).
TEST(SharedDeath, AnOpenerReapsTheDeadBeforeItHasASlot) {
    const std::string name = unique_name("reap-open");
    Board *b = new_board();
    const pid_t follower = fork_quiet();
    if (follower == 0) {
        sf_group *fg = nullptr;
        if (sf_group_open_shared(name.c_str(), nullptr, &fg) != SF_OK) _exit(2);
        b->ready.store(1);  // slot 0 is this process's
        while (b->in_fn.load() != 1) {}
        sf_call *c = nullptr;
        if (sf_group_begin(fg, "k", 1, &c) != SF_FOLLOWER) _exit(3);
        if (sf_call_fd(c) < 0) _exit(4);  // a registration: the record's bell bit 0
        b->ok.store(1);
        for (;;) pause();
    }
    ASSERT_TRUE(wait_until([&] { return b->ready.load() == 1; }));
    const pid_t leader = fork_quiet();
    if (leader == 0) {
        sf_group *lg = nullptr;
        if (sf_group_open_shared(name.c_str(), nullptr, &lg) != SF_OK) _exit(2);
        sf_call *c = nullptr;
        if (sf_group_begin(lg, "k", 1, &c) != SF_LEADER) _exit(3);
        b->in_fn.store(1);
        for (;;) pause();
    }
    ASSERT_TRUE(wait_until([&] { return b->ok.load() == 1; }));
    // Stopped, the follower's process cannot reap the leader's: both die
    // unreaped.
    kill(follower, SIGSTOP);
    kill(leader, SIGKILL);
    wait_child(leader);
    kill(follower, SIGKILL);
    wait_child(follower);
    sf_group *g = open_named(name);
    ASSERT_TRUE(g);
    EXPECT_EQ(stats(g).processes, 1u);
    sf_call *c = nullptr;
    EXPECT_EQ(sf_group_begin(g, "k", 1, &c), SF_LEADER) << "the dead leader's flight is gone";
    ASSERT_EQ(sf_call_finish(c, 0), SF_OK);
    sf_call_release(c);
    EXPECT_EQ(sf_group_free(g), SF_OK);
    munmap(b, sizeof *b);
}

// Followers killed while they wait and while they hold results: the
// arena space of the value comes back once they are gone.
TEST(SharedDeath, DeadFollowersGiveBackTheirHoldsAndTheArena) {
    const std::string name = unique_name("holders");
    sf_group *g = open_named(name);
    ASSERT_TRUE(g);
    Board *b = new_board();
    sf_call *l = nullptr;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
    std::vector<pid_t> kids;
    for (int i = 0; i < 4; ++i) {
        const pid_t pid = fork_quiet();
        if (pid == 0) {
            sf_group *fg = nullptr;
            if (sf_group_open_shared(name.c_str(), nullptr, &fg) != SF_OK) _exit(2);
            sf_call *f = nullptr;
            if (sf_group_begin(fg, "k", 1, &f) != SF_FOLLOWER) _exit(3);
            sf_result *r = nullptr;
            b->ready.fetch_add(1);
            if (i % 2 == 0) {
                for (;;) pause();  // killed while it waits
            }
            sf_call_wait(f, -1, &r, nullptr);  // then holds the result until killed
            b->ok.fetch_add(1);
            for (;;) pause();
        }
        kids.push_back(pid);
    }
    ASSERT_TRUE(wait_until([&] { return b->ready.load() == 4; }));
    const std::string big(1000, 'b');
    ASSERT_EQ(sf_call_set_bytes(l, big.data(), big.size()), SF_OK);
    ASSERT_EQ(sf_call_finish(l, 0), SF_OK);
    ASSERT_TRUE(wait_until([&] { return b->ok.load() == 2; }));
    sf_call_release(l);
    EXPECT_GT(stats(g).arena_used, 0u) << "held by the two followers with results";
    for (pid_t k : kids) {
        kill(k, SIGKILL);
        wait_child(k);
    }
    EXPECT_TRUE(wait_until([&] { return stats(g).arena_used == 0 && stats(g).processes == 1; }))
        << "the dead holders' space comes back (arena_used " << stats(g).arena_used << ")";
    EXPECT_EQ(sf_group_free(g), SF_OK);
    munmap(b, sizeof *b);
}

// A follower in this process waits on a done callback and an eventfd while
// a leader in another process finishes: both are told, without a thread of
// ours blocked (the library's helper runs the callback).
TEST(SharedWake, CallbacksAndEventfdsHearOfAnotherProcesssCompletion) {
    const std::string name = unique_name("wake");
    sf_group *g = open_named(name);
    ASSERT_TRUE(g);
    Board *b = new_board();
    const pid_t leader = fork_quiet();
    if (leader == 0) {
        sf_group *lg = nullptr;
        if (sf_group_open_shared(name.c_str(), nullptr, &lg) != SF_OK) _exit(2);
        sf_call *c = nullptr;
        if (sf_group_begin(lg, "k", 1, &c) != SF_LEADER) _exit(3);
        b->in_fn.store(1);
        while (!b->release_fn.load()) {}
        sf_call_set_bytes(c, "done", 4);
        sf_call_finish(c, 0);
        sf_call_release(c);
        sf_group_free(lg);
        _exit(0);
    }
    ASSERT_TRUE(wait_until([&] { return b->in_fn.load() == 1; }));
    sf_call *f1 = nullptr, *f2 = nullptr;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &f1), SF_FOLLOWER);
    ASSERT_EQ(sf_group_begin(g, "k", 1, &f2), SF_FOLLOWER);
    struct Seen {
        std::atomic<int> runs{0};
        std::string bytes;
    } seen;
    ASSERT_EQ(sf_call_on_done(
                  f1,
                  [](int status, sf_result *r, int shared, void *p) {
                      auto *s = static_cast<Seen *>(p);
                      size_t n = 0;
                      const void *v = sf_result_bytes(r, &n);
                      if (status == SF_OK && shared && v)
                          s->bytes.assign(static_cast<const char *>(v), n);
                      s->runs++;
                  },
                  &seen),
              SF_OK);
    const int fd = sf_call_fd(f2);
    ASSERT_GE(fd, 0);
    struct pollfd p = {fd, POLLIN, 0};
    EXPECT_EQ(poll(&p, 1, 0), 0) << "not yet";
    b->release_fn.store(1);
    int rc;
    do {
        rc = poll(&p, 1, 30000);
    } while (rc < 0 && errno == EINTR);
    EXPECT_EQ(rc, 1) << "the eventfd became readable";
    EXPECT_TRUE(wait_until([&] { return seen.runs.load() == 1; }));
    EXPECT_EQ(seen.bytes, "done");
    EXPECT_EQ(wait_child(leader), 0);
    sf_call_release(f1);
    sf_call_release(f2);
    EXPECT_EQ(sf_group_free(g), SF_OK);
    munmap(b, sizeof *b);
}

// What an OpenResty cosocket does with a doorbell: connect to the
// "unix:<path>" address and send the 8-byte token, little-endian.
int connect_and_send(const char *addr, sf_u64 t) {
    const int s = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un un {};
    un.sun_family = AF_UNIX;
    std::strncpy(un.sun_path, addr + 5, sizeof un.sun_path - 1);
    EXPECT_EQ(connect(s, reinterpret_cast<sockaddr *>(&un), sizeof un), 0);
    unsigned char bytes[8];
    for (int i = 0; i < 8; ++i) bytes[i] = (unsigned char)(t >> (8 * i));
    EXPECT_EQ(send(s, bytes, 8, 0), 8);
    return s;
}

// An event loop that can only connect a stream socket (OpenResty) waits on
// the process's doorbell: it sends the call's token and reads one byte
// once another process completes the flight.
TEST(SharedWake, TheDoorbellAnswersAStreamConnectionWhenTheFlightCompletes) {
    const std::string name = unique_name("door");
    sf_group *g = open_named(name);
    ASSERT_TRUE(g);
    Board *b = new_board();
    const pid_t leader = fork_quiet();
    if (leader == 0) {
        sf_group *lg = nullptr;
        if (sf_group_open_shared(name.c_str(), nullptr, &lg) != SF_OK) _exit(2);
        sf_call *c = nullptr;
        if (sf_group_begin(lg, "k", 1, &c) != SF_LEADER) _exit(3);
        b->in_fn.store(1);
        while (!b->release_fn.load()) {}
        sf_call_set_bytes(c, "rung", 4);
        sf_call_finish(c, 0);
        sf_call_release(c);
        sf_group_free(lg);
        _exit(0);
    }
    ASSERT_TRUE(wait_until([&] { return b->in_fn.load() == 1; }));
    sf_call *f = nullptr;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &f), SF_FOLLOWER);
    char address[256];
    sf_u64 token = 0;
    ASSERT_EQ(sf_call_doorbell(f, address, sizeof address, &token), SF_OK);
    ASSERT_EQ(std::strncmp(address, "unix:", 5), 0);
    EXPECT_EQ(sf_call_doorbell(f, address, 4, &token), SF_EINVAL) << "too short a buffer";
    const int s = connect_and_send(address, token);
    // A second waiter that gives up: it closes first, and nothing breaks.
    const int quitter = connect_and_send(address, token);
    close(quitter);
    struct pollfd p = {s, POLLIN, 0};
    EXPECT_EQ(poll(&p, 1, 0), 0) << "not answered before the flight completes";
    b->release_fn.store(1);
    char byte = 0;
    EXPECT_EQ(recv(s, &byte, 1, 0), 1) << "one byte once it completed";
    EXPECT_EQ(recv(s, &byte, 1, 0), 0) << "then closed";
    close(s);
    sf_result *r = nullptr;
    ASSERT_EQ(sf_call_wait(f, 0, &r, nullptr), SF_OK);
    size_t n = 0;
    const void *v = sf_result_bytes(r, &n);
    EXPECT_EQ(std::string(static_cast<const char *>(v), n), "rung");
    sf_result_release(r);
    // Asked after completion: answered at once.
    const int late = connect_and_send(address, token);
    EXPECT_EQ(recv(late, &byte, 1, 0), 1);
    close(late);
    sf_call_release(f);
    EXPECT_EQ(wait_child(leader), 0);
    // A local group has no doorbell.
    sf_group *local = nullptr;
    ASSERT_EQ(sf_group_new(&local, nullptr), SF_OK);
    sf_call *lc = nullptr;
    ASSERT_EQ(sf_group_begin(local, "k", 1, &lc), SF_LEADER);
    EXPECT_EQ(sf_call_doorbell(lc, address, sizeof address, &token), SF_ESTATE);
    sf_call_finish(lc, 0);
    sf_call_release(lc);
    sf_group_free(local);
    EXPECT_EQ(sf_group_free(g), SF_OK);
    munmap(b, sizeof *b);
}

// The leader in the same process as the doorbell's waiter rings no bell
// (its own process delivers): the doorbell must be answered all the same.
TEST(SharedWake, TheDoorbellIsAnsweredWhenTheLeaderIsInTheSameProcess) {
    const std::string name = unique_name("door-here");
    sf_group *g = open_named(name);
    ASSERT_TRUE(g);
    sf_call *l = nullptr, *f = nullptr;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
    ASSERT_EQ(sf_group_begin(g, "k", 1, &f), SF_FOLLOWER);
    char address[256];
    sf_u64 token = 0;
    ASSERT_EQ(sf_call_doorbell(f, address, sizeof address, &token), SF_OK);
    const int s = connect_and_send(address, token);
    // The helper has read the token and waits for the flight.
    ASSERT_TRUE(wait_until([&] { return sf::testing_shm::doors_waiting(shared_of(g)) == 1; }));
    ASSERT_EQ(sf_call_set_bytes(l, "here", 4), SF_OK);
    ASSERT_EQ(sf_call_finish(l, 0), SF_OK);
    struct pollfd p = {s, POLLIN, 0};
    EXPECT_EQ(poll(&p, 1, 10000), 1) << "answered (before the fix: never)";
    char byte = 0;
    EXPECT_EQ(recv(s, &byte, 1, MSG_DONTWAIT), 1);
    close(s);
    EXPECT_TRUE(wait_until([&] { return sf::testing_shm::doors_waiting(shared_of(g)) == 0; }));
    sf_call_release(l);
    sf_call_release(f);
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

// Giving up across processes: the leader's process hears of the
// abandonment (its abandon callback runs there) when the last interested
// caller, in another process, gives up.
TEST(SharedGiveUp, TheLastCallerInAnotherProcessAbandonsTheLeadersFlight) {
    const std::string name = unique_name("abandon");
    sf_group *g = open_named(name);
    ASSERT_TRUE(g);
    Board *b = new_board();
    sf_call *l = nullptr;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
    std::atomic<int> abandoned{0};
    ASSERT_EQ(sf_call_on_abandon(
                  l,
                  [](sf_call *c, void *p) {
                      EXPECT_EQ(sf_call_abandoned(c), 1);
                      static_cast<std::atomic<int> *>(p)->fetch_add(1);
                  },
                  &abandoned),
              SF_OK);
    const pid_t follower = fork_quiet();
    if (follower == 0) {
        sf_group *fg = nullptr;
        if (sf_group_open_shared(name.c_str(), nullptr, &fg) != SF_OK) _exit(2);
        sf_call *f = nullptr;
        if (sf_group_begin(fg, "k", 1, &f) != SF_FOLLOWER) _exit(3);
        b->ready.store(1);
        while (!b->go.load()) {}
        const int rc = sf_call_cancel(f);
        sf_call_release(f);
        sf_group_free(fg);
        _exit(rc == 1 ? 0 : 20 + rc);
    }
    ASSERT_TRUE(wait_until([&] { return b->ready.load() == 1; }));
    EXPECT_EQ(sf_call_cancel(l), 0) << "the follower is still interested";
    b->go.store(1);
    EXPECT_EQ(wait_child(follower), 0) << "its cancel abandoned the flight";
    EXPECT_TRUE(wait_until([&] { return abandoned.load() == 1; })) << "the callback ran here";
    EXPECT_EQ(sf_call_abandoned(l), 1);
    ASSERT_EQ(sf_call_finish(l, 0), SF_OK);
    sf_call_release(l);
    sf_call *again = nullptr;
    EXPECT_EQ(sf_group_begin(g, "k", 1, &again), SF_LEADER) << "abandoned: the key is free";
    sf_call_finish(again, 0);
    sf_call_release(again);
    EXPECT_EQ(stats(g).abandons, 1u);
    EXPECT_EQ(sf_group_free(g), SF_OK);
    munmap(b, sizeof *b);
}

// A forked child uses its parent's handle (it becomes a process of the
// group of its own), and coalesces with the parent.
TEST(SharedFork, AForkedChildUsesItsParentsGroup) {
    const std::string name = unique_name("fork");
    sf_group *g = open_named(name);
    ASSERT_TRUE(g);
    Board *b = new_board();
    sf_call *l = nullptr;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
    const pid_t kid = fork_quiet();
    if (kid == 0) {
        sf_result *r = nullptr;
        const int rc = sf_group_do(
            g, "k", 1, [](sf_call *, void *) { return 0; }, nullptr, &r, nullptr);
        size_t n = 0;
        const void *v = sf_result_bytes(r, &n);
        const bool ok =
            rc == SF_OK && v && std::string(static_cast<const char *>(v), n) == "parent's";
        sf_result_release(r);
        _exit(ok ? 0 : 1);
    }
    ASSERT_TRUE(wait_until([&] { return stats(g).followers == 1; }));
    EXPECT_EQ(stats(g).processes, 2u);
    sf_call_set_bytes(l, "parent's", 8);
    ASSERT_EQ(sf_call_finish(l, 0), SF_OK);
    EXPECT_EQ(wait_child(kid), 0);
    sf_call_release(l);
    EXPECT_EQ(sf_group_free(g), SF_OK);
    munmap(b, sizeof *b);
}

// ---------------------------------------------------------------------------
// Many keys, many processes, a seeded mix; and the same protocol with two
// attachments in one process, where ThreadSanitizer sees both sides.
// ---------------------------------------------------------------------------

constexpr int kKeys = 64;

// Per key: callers running fn for it right now (must never exceed 1).
struct Inside {
    std::atomic<int> running[kKeys];
    std::atomic<int> overlaps;
    std::atomic<int> executions;
    std::atomic<int> bad_values;
};

struct MixCtx {
    Inside *in;
    int key;
};

int set_value_for(sf_call *call, int key) {
    char v[100];
    const int n = std::snprintf(v, sizeof v, "value of key %d %s", key,
                                key % 3 ? "" : std::string(70, 'x').c_str());
    return sf_call_set_bytes(call, v, size_t(n)) == SF_OK ? 0 : 1;
}

// A caller runs the key's work: nobody else may be running it.
void enter(Inside *in, int key) {
    if (in->running[key].fetch_add(1) != 0) in->overlaps.fetch_add(1);
    in->executions.fetch_add(1);
}
void leave(Inside *in, int key) { in->running[key].fetch_sub(1); }

int mix_fn(sf_call *call, void *p) {
    auto *m = static_cast<MixCtx *>(p);
    enter(m->in, m->key);
    const int rc = set_value_for(call, m->key);
    leave(m->in, m->key);
    return rc;
}

bool value_ok(sf_result *r, int key) {
    size_t n = 0;
    const char *v = static_cast<const char *>(sf_result_bytes(r, &n));
    char want[100];
    const int w = std::snprintf(want, sizeof want, "value of key %d %s", key,
                                key % 3 ? "" : std::string(70, 'x').c_str());
    return v && n == size_t(w) && std::memcmp(v, want, n) == 0;
}

// One caller's seeded share of the mix: do, two-phase (finish, give up,
// or release early), waits bounded and unbounded.  (No forget: a
// forgotten flight may rightly run beside its key's next one.)
void run_mix(sf_group *g, Inside *in, uint32_t seed, int ops) {
    uint32_t x = seed * 2654435761u + 1;
    auto next = [&] { return x = x * 1664525u + 1013904223u, x >> 8; };
    for (int op = 0; op < ops; ++op) {
        const int key = int(next() % kKeys);
        const std::string k = "mix-" + std::to_string(key);
        MixCtx m{in, key};
        if (next() % 2 == 0) {
            sf_result *r = nullptr;
            const int rc = sf_group_do(g, k.data(), k.size(), mix_fn, &m, &r, nullptr);
            if (rc == SF_OK && sf_result_error(r) == 0 && !value_ok(r, key))
                in->bad_values.fetch_add(1);
            if (rc != SF_OK && rc != SF_EGOEXIT) in->bad_values.fetch_add(1);
            sf_result_release(r);
            continue;
        }
        sf_call *c = nullptr;
        const int rc = sf_group_begin(g, k.data(), k.size(), &c);
        if (rc == SF_LEADER) {
            enter(in, key);
            const unsigned how = next() % 4;
            if (how == 0) {  // a leader that walks away: Goexit for its followers
                leave(in, key);
                sf_call_release(c);
                continue;
            }
            set_value_for(c, key);
            leave(in, key);
            // A leader giving up before it finishes: the flight may be
            // abandoned (and the key led anew) once it has left.
            if (how == 1) sf_call_cancel(c);
            sf_call_finish(c, 0);
            sf_call_release(c);
        } else if (rc == SF_FOLLOWER) {
            const unsigned how = next() % 3;
            sf_result *r = nullptr;
            if (how == 0) {
                sf_call_cancel(c);
            } else {
                const int w = sf_call_wait(c, how == 1 ? -1 : 2000000, &r, nullptr);
                if (w == SF_OK && sf_result_error(r) == 0 && !value_ok(r, key))
                    in->bad_values.fetch_add(1);
                sf_result_release(r);
            }
            sf_call_release(c);
        } else {
            in->bad_values.fetch_add(1);
        }
    }
}

TEST(SharedMix, TwoAttachmentsInOneProcessUnderASeededMix) {
    const std::string name = unique_name("mix1");
    sf_group *a = open_named(name), *b = open_named(name);
    ASSERT_TRUE(a && b);
    auto *in = new Inside{};
    std::vector<std::thread> ts;
    for (int t = 0; t < 4; ++t)
        ts.emplace_back([&, t] { run_mix(t % 2 ? a : b, in, uint32_t(t + 1), 3000); });
    for (auto &t : ts) t.join();
    EXPECT_EQ(in->overlaps.load(), 0) << "a key ran twice at once";
    EXPECT_EQ(in->bad_values.load(), 0);
    EXPECT_GT(in->executions.load(), 0);
    const sf_group_stats st = stats(a);
    EXPECT_EQ(st.in_flight, 0u);
    EXPECT_EQ(st.arena_used, 0u) << "every value's block came back";
    EXPECT_EQ(sf_group_free(a), SF_OK);
    EXPECT_EQ(sf_group_free(b), SF_OK);
    EXPECT_FALSE(exists(shm_file(name)));
    delete in;
}

// Processes come and go (each opens, runs a share of the mix, closes,
// opens again) while others run: the same invariants, across processes.
TEST(SharedMix, ProcessesJoiningAndLeavingUnderASeededMix) {
    const std::string name = unique_name("mixp");
    sf_group *mine = open_named(name);
    ASSERT_TRUE(mine);
    void *mem =
        mmap(nullptr, sizeof(Inside), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ASSERT_NE(mem, MAP_FAILED);
    auto *in = new (mem) Inside{};
    std::vector<pid_t> kids;
    for (int p = 0; p < 6; ++p) {
        const pid_t pid = fork_quiet();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            for (int round = 0; round < 3; ++round) {
                sf_group *g = nullptr;
                if (sf_group_open_shared(name.c_str(), nullptr, &g) != SF_OK) _exit(2);
                std::vector<std::thread> ts;
                for (int t = 0; t < 2; ++t)
                    ts.emplace_back(
                        [&, t] { run_mix(g, in, uint32_t(100 * p + 10 * round + t), 400); });
                for (auto &t : ts) t.join();
                if (sf_group_free(g) != SF_OK) _exit(3);
            }
            _exit(0);
        }
        kids.push_back(pid);
    }
    for (pid_t k : kids) EXPECT_EQ(wait_child(k), 0);
    EXPECT_EQ(in->overlaps.load(), 0) << "a key ran twice at once";
    EXPECT_EQ(in->bad_values.load(), 0);
    const sf_group_stats st = stats(mine);
    EXPECT_EQ(st.in_flight, 0u);
    EXPECT_EQ(st.arena_used, 0u);
    EXPECT_EQ(st.processes, 1u);
    EXPECT_EQ(sf_group_free(mine), SF_OK);
    munmap(mem, sizeof(Inside));
}

// The threads of this process, from /proc.
int thread_count() {
    FILE *f = std::fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    int n = -1;
    while (std::fgets(line, sizeof line, f))
        if (std::strncmp(line, "Threads:", 8) == 0) n = std::atoi(line + 8);
    std::fclose(f);
    return n;
}

// A process frees its attachment while a done callback of it still runs on
// the library's helper thread: the result the callback was given is the
// attachment's last object, dropped by the helper itself after the
// callback.  Before the fix the helper then detached from inside its own
// loop (joining itself, freeing the group it went on reading): a crash in
// 3 of 3 runs (found through the Go binding).  Now the helper ends the
// attachment and itself when its loop ends.
TEST(SharedClose, FreedWhileADoneCallbackRunsOnTheHelper) {
    const std::string name = unique_name("close-in-done");
    sf_group *g = open_named(name);
    ASSERT_TRUE(g);
    sf_call *lead = nullptr;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &lead), SF_LEADER);
    Board *b = new_board();
    const pid_t kid = fork_quiet();
    if (kid == 0) {
        alarm(20);
        sf_group *cg = nullptr;
        if (sf_group_open_shared(name.c_str(), nullptr, &cg) != SF_OK) _exit(2);
        sf_call *c = nullptr;
        if (sf_group_begin(cg, "k", 1, &c) != SF_FOLLOWER) _exit(3);
        static std::atomic<int> in_callback{0}, freed{0};
        if (sf_call_on_done(
                c,
                [](int, sf_result *, int, void *) {
                    in_callback.store(1);
                    while (!freed.load()) {}  // returns only once the group was freed
                },
                nullptr) != SF_OK)
            _exit(4);
        b->ready.store(1);
        while (!in_callback.load()) {}
        sf_call_release(c);
        const int rc = sf_group_free(cg);
        freed.store(1);
        if (rc != SF_OK) _exit(5);
        // The helper thread ends with the attachment.
        if (!wait_until([] { return thread_count() == 1; }, 10)) _exit(6);
        _exit(0);
    }
    ASSERT_TRUE(wait_until([&] { return b->ready.load() == 1; }));
    ASSERT_EQ(sf_call_finish(lead, 0), SF_OK);
    sf_call_release(lead);
    const int st = wait_child(kid);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "the child's status " << st;
    EXPECT_TRUE(wait_until([&] { return stats(g).processes == 1; }));
    EXPECT_EQ(sf_group_free(g), SF_OK);
    munmap(b, sizeof *b);
}

// A forked child's first calls on its parent's group come from several
// threads at once: one re-attaches and the others wait for it (before,
// each re-attached: they closed each other's descriptor, claimed a slot
// each, and a child failed with SF_ENOMEM or hung in flock, in a few of 200
// children; found by the multi-process demo).
TEST(SharedFork, AForkedChildsFirstCallsFromManyThreadsAtOnce) {
    const std::string name = unique_name("fork-threads");
    sf_group *g = open_named(name);
    ASSERT_TRUE(g);
    constexpr int kChildren = 100, kThreads = 8;
    int failed = 0;
    for (int n = 0; n < kChildren; ++n) {
        const pid_t kid = fork_quiet();
        ASSERT_GE(kid, 0);
        if (kid == 0) {
            alarm(20);  // a hang is a failure, not a stuck test
            std::atomic<int> ready{0}, bad{0};
            std::vector<std::thread> threads;
            for (int t = 0; t < kThreads; ++t)
                threads.emplace_back([&, t] {
                    ready.fetch_add(1);
                    while (ready.load() < kThreads) {}
                    const std::string k = "t" + std::to_string(t);
                    if (sf_group_do(g, k.data(), k.size(), no_op, nullptr, nullptr, nullptr) !=
                        SF_OK)
                        bad.fetch_add(1);
                });
            for (std::thread &th : threads) th.join();
            _exit(bad.load() == 0 && stats(g).processes >= 2 ? 0 : 1);
        }
        const int st = wait_child(kid);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) ++failed;
    }
    EXPECT_EQ(failed, 0) << "children whose first calls failed or hung";
    EXPECT_TRUE(wait_until([&] { return stats(g).processes == 1; })) << "every child reaped";
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

// ---------------------------------------------------------------------------
// Unrelated processes: not forked from each other, sharing only the name
// ---------------------------------------------------------------------------

// The other program's part: this test binary run again (posix_spawn, so
// nothing is inherited but the environment), told its role there.  Disabled
// so that only the spawn runs it.  Its exit status is its verdict.
TEST(SharedUnrelated, DISABLED_TheOtherProgram) {
    const char *name = std::getenv("SF_SHARED_NAME");
    const char *role = std::getenv("SF_SHARED_ROLE");
    if (!name || !role) _exit(10);
    sf_group *g = nullptr;
    if (sf_group_open_shared(name, nullptr, &g) != SF_OK) _exit(11);
    sf_call *c = nullptr;
    if (std::strcmp(role, "follow") == 0) {
        if (sf_group_begin(g, "k", 1, &c) != SF_FOLLOWER) _exit(12);
        sf_result *r = nullptr;
        if (sf_call_wait(c, -1, &r, nullptr) != SF_OK) _exit(13);
        size_t n = 0;
        const void *v = sf_result_bytes(r, &n);
        if (std::string(static_cast<const char *>(v), n) != "from the first") _exit(14);
        sf_result_release(r);
    } else {
        if (sf_group_begin(g, "k2", 2, &c) != SF_LEADER) _exit(15);
        if (!wait_until([&] { return stats(g).followers >= 2; })) _exit(16);
        sf_call_set_bytes(c, "from the second", 15);
        if (sf_call_finish(c, 0) != SF_OK) _exit(17);
    }
    sf_call_release(c);
    _exit(sf_group_free(g) == SF_OK ? 0 : 18);
}

pid_t spawn_other(const std::string &name, const char *role) {
    std::vector<std::string> env;
    for (char **e = environ; *e; ++e) env.push_back(*e);
    env.push_back("SF_SHARED_NAME=" + name);
    env.push_back(std::string("SF_SHARED_ROLE=") + role);
    std::vector<char *> envp;
    for (std::string &e : env) envp.push_back(&e[0]);
    envp.push_back(nullptr);
    std::string self = "/proc/self/exe", filter = "--gtest_filter=SharedUnrelated.DISABLED_*",
                also = "--gtest_also_run_disabled_tests";
    char *argv[] = {&self[0], &filter[0], &also[0], nullptr};
    pid_t pid = -1;
    EXPECT_EQ(posix_spawn(&pid, "/proc/self/exe", nullptr, nullptr, argv, envp.data()), 0);
    return pid;
}

TEST(SharedUnrelated, TwoProgramsSharingOnlyTheNameRunFnOnce) {
    const std::string name = unique_name("unrelated");
    sf_group *g = open_named(name);
    ASSERT_TRUE(g);
    // This program leads; the other follows.
    sf_call *l = nullptr;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &l), SF_LEADER);
    const pid_t follower = spawn_other(name, "follow");
    ASSERT_GT(follower, 0);
    ASSERT_TRUE(wait_until([&] { return stats(g).followers >= 1; })) << "the other joined";
    ASSERT_EQ(sf_call_set_bytes(l, "from the first", 14), SF_OK);
    ASSERT_EQ(sf_call_finish(l, 0), SF_OK);
    sf_call_release(l);
    int st = wait_child(follower);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "the other's verdict: " << st;
    // The other leads; this program follows.
    const uint64_t leaders = stats(g).leaders;
    const pid_t leader = spawn_other(name, "lead");
    ASSERT_GT(leader, 0);
    ASSERT_TRUE(wait_until([&] { return stats(g).leaders > leaders; })) << "the other leads";
    sf_call *f = nullptr;
    ASSERT_EQ(sf_group_begin(g, "k2", 2, &f), SF_FOLLOWER);
    sf_result *r = nullptr;
    ASSERT_EQ(sf_call_wait(f, -1, &r, nullptr), SF_OK);
    size_t n = 0;
    const void *v = sf_result_bytes(r, &n);
    EXPECT_EQ(std::string(static_cast<const char *>(v), n), "from the second");
    sf_result_release(r);
    sf_call_release(f);
    st = wait_child(leader);
    EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "the other's verdict: " << st;
    EXPECT_EQ(stats(g).leaders, leaders + 1) << "fn ran once per key";
    EXPECT_EQ(sf_group_free(g), SF_OK);
    EXPECT_FALSE(exists(shm_file(name)));
}

// ---------------------------------------------------------------------------
// Trust: a wedged peer or a stray write is an error, never a hang or a trap
// ---------------------------------------------------------------------------

// The segment as a peer's mapping sees it.
sf::shm::Header *header_of(sf_group *g) {
    size_t len = 0;
    return static_cast<sf::shm::Header *>(sf::testing_shm::segment_bytes(shared_of(g), &len));
}
std::vector<std::atomic<uint32_t> *> stripe_locks(sf_group *g) {
    sf::shm::Header *h = header_of(g);
    auto *stripes =
        reinterpret_cast<sf::shm::Stripe *>(reinterpret_cast<char *>(h) + h->off_stripes);
    std::vector<std::atomic<uint32_t> *> locks;
    for (uint32_t s = 0; s < h->stripes; ++s) locks.push_back(&stripes[s].lock);
    return locks;
}
pthread_mutex_t *arena_lock(sf_group *g) {
    sf::shm::Header *h = header_of(g);
    return &reinterpret_cast<sf::shm::Arena *>(reinterpret_cast<char *>(h) + h->off_arena)->lock;
}

TEST(SharedTrust, ALockAPeerHoldsTooLongIsEincompatThenItsDeathFreesIt) {
    const std::string name = unique_name("wedged");
    sf_group *g = open_named(name);
    ASSERT_TRUE(g);
    sf::testing_shm::set_lock_patience(100 * 1000 * 1000);
    Board *b = new_board();
    const pid_t peer = fork_quiet();
    if (peer == 0) {
        // A peer wedged inside the table: every stripe lock held, alive.
        sf_group *pg = nullptr;
        if (sf_group_open_shared(name.c_str(), nullptr, &pg) != SF_OK) _exit(2);
        sf::testing_shm::hold_stripes(shared_of(pg));
        b->ready.store(1);
        for (;;) pause();
    }
    ASSERT_TRUE(wait_until([&] { return b->ready.load() == 1; }));
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_EQ(sf_group_do(g, "k", 1, no_op, nullptr, nullptr, nullptr), SF_EINCOMPAT);
    const auto waited = std::chrono::steady_clock::now() - t0;
    EXPECT_GE(waited, std::chrono::milliseconds(100)) << "it waited its patience";
    kill(peer, SIGKILL);
    wait_child(peer);
    // The holder died: the next lock takes it over, repairs and goes on.
    EXPECT_EQ(sf_group_do(g, "k", 1, no_op, nullptr, nullptr, nullptr), SF_OK);
    sf::testing_shm::set_lock_patience(int64_t(2) * 1000 * 1000 * 1000);
    EXPECT_EQ(sf_group_free(g), SF_OK);
    munmap(b, sizeof *b);
}

// A stray write over the stripes' lock words makes them name a holder that
// does not exist: the next call takes each over, repairs it and goes on.
TEST(SharedTrust, LockWordsOverwrittenWithGarbageAreTakenOver) {
    const std::string name = unique_name("garbage");
    sf_group *g = open_named(name);
    ASSERT_TRUE(g);
    for (std::atomic<uint32_t> *w : stripe_locks(g)) w->store(0x7fffffffu);  // pid 2^22 - 1: none
    EXPECT_EQ(sf_group_do(g, "k", 1, no_op, nullptr, nullptr, nullptr), SF_OK);
    sf_call *c = nullptr;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &c), SF_LEADER);
    ASSERT_EQ(sf_call_finish(c, 0), SF_OK);
    sf_call_release(c);
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

// A stray write over a mutex's type word (glibc keeps it in the shared
// mutex) once made the next lock take the lock-elision path and trap
// (found by fuzz_shared on the stripes' mutexes, which are lock words
// now).  The arena's and the registry's locks are still mutexes: one with
// a corrupted type is an error, never a trap.
TEST(SharedTrust, AMutexWhoseTypeWasOverwrittenIsAnError) {
    const std::string name = unique_name("kind");
    sf_group *g = open_named(name);
    ASSERT_TRUE(g);
    pthread_mutex_t *m = arena_lock(g);
    const int saved = m->__data.__kind;
    m->__data.__kind = 0x7fffff00;
    sf_call *c = nullptr;
    ASSERT_EQ(sf_group_begin(g, "k", 1, &c), SF_LEADER);
    const std::string big(200, 'b');  // a value for the arena
    EXPECT_EQ(sf_call_set_bytes(c, big.data(), big.size()), SF_ENOMEM);
    ASSERT_EQ(sf_call_finish(c, 0), SF_OK);
    sf_call_release(c);
    m->__data.__kind = saved;
    EXPECT_EQ(sf_group_do(g, "k", 1, no_op, nullptr, nullptr, nullptr), SF_OK);
    EXPECT_EQ(sf_group_free(g), SF_OK);
}

// ---------------------------------------------------------------------------
// Death at every named point of publish, join, complete and free: a child
// process is killed (SIGKILL) exactly there, and the survivors go on with
// nothing lost or stuck: the key leads afresh or completes, values are
// right, and the table and arena come back to what they held before.
// ---------------------------------------------------------------------------

// What the segment holds, read through a mapping of the test's own: the
// records in use (each stripe keeps its exact count) and the arena bytes.
struct Usage {
    uint64_t in_use, arena_used;
};
Usage usage_of(const std::string &name) {
    Usage u{~0ull, ~0ull};
    const int fd = open(shm_file(name).c_str(), O_RDONLY);
    if (fd < 0) return u;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        close(fd);
        return u;
    }
    void *p = mmap(nullptr, size_t(st.st_size), PROT_READ, MAP_SHARED, fd, 0);
    close(fd);
    if (p == MAP_FAILED) return u;
    auto *h = static_cast<const sf::shm::Header *>(p);
    auto *stripes =
        reinterpret_cast<const sf::shm::Stripe *>(static_cast<const char *>(p) + h->off_stripes);
    u.in_use = 0;
    for (uint32_t s = 0; s < h->stripes; ++s) u.in_use += stripes[s].used;
    u.arena_used = h->arena_used.load();
    munmap(p, size_t(st.st_size));
    return u;
}

struct Scenario {
    const char *point;
    // What the child does (it is killed at `point` on the way); the parent
    // may lead key "k" first (parent_leads) so that the child joins.
    bool parent_leads;
    void (*child)(sf_group *g, Board *b);
};

const std::string kBig(300, 'B');  // a value in the arena

void child_do(sf_group *g, Board *) {
    sf_result *r = nullptr;
    sf_group_do(
        g, "k", 1,
        [](sf_call *c, void *) {
            return sf_call_set_bytes(c, kBig.data(), kBig.size()) == SF_OK ? 0 : 1;
        },
        nullptr, &r, nullptr);
    sf_result_release(r);
}

void child_two_phase_big(sf_group *g, Board *) {
    sf_call *c = nullptr;
    if (sf_group_begin(g, "k", 1, &c) != SF_LEADER) return;
    sf_call_set_bytes(c, kBig.data(), kBig.size());
    sf_call_finish(c, 0);
    sf_call_release(c);
}

void child_follow_then_release(sf_group *g, Board *b) {
    sf_call *c = nullptr;
    if (sf_group_begin(g, "k", 1, &c) != SF_FOLLOWER) return;
    b->ready.store(1);
    sf_result *r = nullptr;
    sf_call_wait(c, -1, &r, nullptr);
    sf_result_release(r);
    sf_call_release(c);
}

void child_follow_then_cancel(sf_group *g, Board *b) {
    sf_call *c = nullptr;
    if (sf_group_begin(g, "k", 1, &c) != SF_FOLLOWER) return;
    b->ready.store(1);
    sf_call_cancel(c);
    sf_call_release(c);
}

const Scenario kScenarios[] = {
    {"publish.allocated", false, child_do},
    {"publish.linked", false, child_do},
    {"join.marked", true, child_follow_then_release},
    {"value.stored", false, child_two_phase_big},
    {"complete.unlinked", false, child_two_phase_big},
    {"complete.published", false, child_two_phase_big},
    {"release.cleared", true, child_follow_then_release},
    {"free.unlinked", false, child_do},
    {"leave.cleared", true, child_follow_then_cancel},
    {"arena.splitting", false, child_two_phase_big},
    {"arena.merging", false, child_do},
};

TEST(SharedCrash, EveryNamedPointIsCovered) {
    ASSERT_EQ(sizeof kScenarios / sizeof kScenarios[0], size_t(sf::testing_shm::kKillPointCount));
    for (int i = 0; i < sf::testing_shm::kKillPointCount; ++i)
        EXPECT_STREQ(kScenarios[i].point, sf::testing_shm::kKillPoints[i]);
}

TEST(SharedCrash, DeathAtEachNamedPointLeavesTheSurvivorsWhole) {
    for (const Scenario &sc : kScenarios) {
        SCOPED_TRACE(sc.point);
        const std::string name = unique_name("crash");
        sf_group *g = open_named(name);
        ASSERT_TRUE(g);
        Board *b = new_board();
        const Usage before = usage_of(name);
        sf_call *lead = nullptr;
        if (sc.parent_leads) ASSERT_EQ(sf_group_begin(g, "k", 1, &lead), SF_LEADER);
        const pid_t kid = fork_quiet();
        ASSERT_GE(kid, 0);
        if (kid == 0) {
            sf_group *cg = nullptr;
            if (sf_group_open_shared(name.c_str(), nullptr, &cg) != SF_OK) _exit(2);
            sf::testing_shm::kill_at(sc.point);
            sc.child(cg, b);
            _exit(9);  // the point was never reached: the test fails below
        }
        if (sc.parent_leads) {
            // The child joins (killed there, or goes on to wait); then the parent
            // finishes with a value, and may itself be the last to hold.
            // The group counts a follower before its joining can be cut.
            ASSERT_TRUE(wait_until([&] { return stats(g).followers >= 1; }));
            sf_call_set_bytes(lead, kBig.data(), kBig.size());
            sf_call_finish(lead, 0);
        }
        const int st = wait_child(kid);
        EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL)
            << "the child reached the point and died there (status " << st << ")";
        if (lead) sf_call_release(lead);
        // The survivor goes on: the key completes or leads afresh.
        sf_result *r = nullptr;
        const int rc = sf_group_do(
            g, "k", 1,
            [](sf_call *c, void *) { return sf_call_set_bytes(c, "after", 5) == SF_OK ? 0 : 1; },
            nullptr, &r, nullptr);
        EXPECT_TRUE(rc == SF_OK || rc == SF_EGOEXIT) << sf_err_name(rc);
        sf_result_release(r);
        EXPECT_EQ(sf_group_do(
                      g, "k2", 2, [](sf_call *, void *) { return 0; }, nullptr, nullptr, nullptr),
                  SF_OK);
        // Nothing is lost: once the dead child is reaped, the table and the
        // arena hold what they held before it.
        EXPECT_TRUE(wait_until([&] {
            const Usage u = usage_of(name);
            return u.in_use == before.in_use && u.arena_used == before.arena_used;
        })) << "in use "
            << usage_of(name).in_use << " (was " << before.in_use << "), arena "
            << usage_of(name).arena_used << " (was " << before.arena_used << ")";
        EXPECT_TRUE(wait_until([&] { return stats(g).processes == 1; })) << "the child is reaped";
        EXPECT_EQ(stats(g).in_flight, 0u);
        EXPECT_EQ(sf_group_free(g), SF_OK);
        EXPECT_FALSE(exists(shm_file(name)));
        munmap(b, sizeof *b);
    }
}

}  // namespace
