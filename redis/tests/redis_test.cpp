// The Redis tier against a real redis-server that the fixture starts on a
// free loopback port and stops (issue 19's test list).  Two sf_redis handles
// in one process stand in for two hosts (each has its own front group);
// forked processes are used where a process must die or stop.
//
// Ordering is by handshakes (pipes, latches), not sleeps; the time bounds
// asserted are generous ("returns within its bound", not speed).

#include <singleflight_redis.h>

#include "redis/tests/redis_server.hpp"
#include "tests/test_util.hpp"

#include <gtest/gtest.h>
#include <hiredis/hiredis.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
using sfredis_test::Server;

long long ms_since(Clock::time_point t) {
    return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - t).count();
}

// An admin connection for looking at and poking the keys.
struct Admin {
    redisContext *c = nullptr;
    explicit Admin(int port) { c = redisConnect("127.0.0.1", port); }
    ~Admin() {
        if (c) redisFree(c);
    }
    std::string get(const std::string &k) {
        auto *r = static_cast<redisReply *>(redisCommand(c, "GET %b", k.data(), k.size()));
        std::string v = r && r->type == REDIS_REPLY_STRING ? std::string(r->str, r->len) : "";
        if (r) freeReplyObject(r);
        return v;
    }
    std::string hget(const std::string &k, const char *field) {
        auto *r =
            static_cast<redisReply *>(redisCommand(c, "HGET %b %s", k.data(), k.size(), field));
        std::string v = r && r->type == REDIS_REPLY_STRING ? std::string(r->str, r->len) : "";
        if (r) freeReplyObject(r);
        return v;
    }
    void cmd(const std::vector<std::string> &a) {
        std::vector<const char *> v;
        std::vector<size_t> l;
        for (auto &s : a) {
            v.push_back(s.data());
            l.push_back(s.size());
        }
        auto *r = static_cast<redisReply *>(
            redisCommandArgv(c, static_cast<int>(v.size()), v.data(), l.data()));
        if (r) freeReplyObject(r);
    }
};

std::string base_of(const std::string &key) { return "{sf:" + key + "}"; }

sf_redis_options opts_for(int port) {
    sf_redis_options o;
    sf_redis_options_init(&o, SF_REDIS_OPTIONS_VERSION);
    o.port = port;
    o.lease_ms = 1000;
    o.renew_ms = 250;
    o.command_timeout_ms = 300;
    o.connect_timeout_ms = 300;
    return o;
}

// fn that stores the string payload points to.
int fn_value(sf_call *call, void *payload) {
    auto *s = static_cast<std::string *>(payload);
    sf_call_set_bytes(call, s->data(), s->size());
    return 0;
}

std::string bytes_of(sf_result *r) {
    size_t n = 0;
    const void *p = sf_result_bytes(r, &n);
    return p ? std::string(static_cast<const char *>(p), n) : std::string();
}

// The outcome of one sf_redis_do as a string (or the status name).
std::string get(sf_redis *r, const std::string &key, sf_fn fn, void *payload) {
    sf_result *res = nullptr;
    int s = sf_redis_do(r, key.data(), key.size(), fn, payload, &res);
    if (s != SF_OK) return sf_redis_err_name(s);
    std::string v = bytes_of(res);
    sf_result_release(res);
    return v;
}

sf_redis_stats stats(sf_redis *r) {
    sf_redis_stats s;
    s.version = SF_REDIS_STATS_VERSION;
    sf_redis_stats_get(r, &s);
    return s;
}

using Latch = sftest::Event;

// Coalescing is back once a call on a new key takes a Redis lease again;
// the handle reconnects on its own, so this only retries (bounded).
bool resumes(sf_redis *r, const std::string &prefix, std::string *value) {
    for (int i = 0; i < 100; i++) {
        get(r, prefix + std::to_string(i), fn_value, value);
        if (stats(r).lease_wins >= 1) return true;
        usleep(50000);
    }
    return false;
}

// Executions across processes: each run of fn appends one byte to a file.
struct ExecLog {
    std::string path;
    ExecLog() {
        char t[] = "/tmp/sf-redis-exec-XXXXXX";
        int fd = mkstemp(t);
        close(fd);
        path = t;
    }
    ~ExecLog() { unlink(path.c_str()); }
    void add(char c) const {
        int fd = open(path.c_str(), O_WRONLY | O_APPEND);
        ssize_t w = write(fd, &c, 1);
        (void)w;
        close(fd);
    }
    std::string read_all() const {
        std::string s;
        int fd = open(path.c_str(), O_RDONLY);
        char b[256];
        ssize_t n;
        while ((n = read(fd, b, sizeof b)) > 0) s.append(b, static_cast<size_t>(n));
        close(fd);
        return s;
    }
};

pid_t spawn(const std::function<int()> &f) {
    pid_t p = fork();
    if (p == 0) _exit(f());
    return p;
}

int exit_code(pid_t p) {
    int st = 0;
    waitpid(p, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
}

char read_byte(int fd) {
    char c = 0;
    return read(fd, &c, 1) == 1 ? c : 0;
}

void write_byte(int fd, char c) {
    ssize_t w = write(fd, &c, 1);
    (void)w;
}

class RedisTier : public ::testing::Test {
protected:
    Server server;
    void SetUp() override { ASSERT_TRUE(server.start()); }
    void TearDown() override { server.stop(); }
};

// ---------------------------------------------------------------------------

TEST_F(RedisTier, OptionsAndStatuses) {
    sf_redis_options o;
    EXPECT_EQ(sf_redis_options_init(nullptr, 1), SF_EINVAL);
    EXPECT_EQ(sf_redis_options_init(&o, 99), SF_EINVAL);
    ASSERT_EQ(sf_redis_options_init(&o, SF_REDIS_OPTIONS_VERSION), SF_OK);
    EXPECT_EQ(o.on_down, SF_REDIS_FALLBACK);
    EXPECT_LT(o.renew_ms, o.lease_ms);
    sf_redis *r = nullptr;
    o.port = server.port;
    // Renewal and hard TTL follow lease and soft TTL unless set: changing
    // only those is valid.
    o.lease_ms = 300;
    o.soft_ttl_ms = 120000;
    ASSERT_EQ(sf_redis_new(&r, &o), SF_OK);
    sf_redis_free(r);
    o.hard_ttl_ms = 1000;  // below the soft TTL
    EXPECT_EQ(sf_redis_new(&r, &o), SF_EINVAL);
    o.hard_ttl_ms = 0;
    o.renew_ms = o.lease_ms;  // a renewal no shorter than the lease is wrong
    EXPECT_EQ(sf_redis_new(&r, &o), SF_EINVAL);
    EXPECT_STREQ(sf_redis_err_name(SF_REDIS_EAUTH), "SF_REDIS_EAUTH");
    EXPECT_STREQ(sf_redis_err_name(SF_EINVAL), "SF_EINVAL");
    EXPECT_NE(std::string(sf_redis_strerror(SF_REDIS_EUNAVAILABLE)), sf_strerror(12345));
}

TEST_F(RedisTier, FreshValueIsServedWithoutRunningFnAgain) {
    sf_redis_options o = opts_for(server.port);
    sf_redis *a = nullptr, *b = nullptr;
    ASSERT_EQ(sf_redis_new(&a, &o), SF_OK);
    ASSERT_EQ(sf_redis_new(&b, &o), SF_OK);
    std::string v1 = "one", v2 = "two";
    EXPECT_EQ(get(a, "k", fn_value, &v1), "one");
    EXPECT_EQ(get(b, "k", fn_value, &v2), "one");  // another host: cached
    EXPECT_EQ(stats(a).executions, 1u);
    EXPECT_EQ(stats(b).executions, 0u);
    EXPECT_EQ(stats(b).hits, 1u);
    EXPECT_EQ(sf_redis_forget(b, "k", 1), SF_OK);
    EXPECT_EQ(get(b, "k", fn_value, &v2), "two");
    sf_redis_free(a);
    sf_redis_free(b);
}

TEST_F(RedisTier, UserErrorsAreSharedAndCachedOnlyForErrorTtl) {
    sf_redis_options o = opts_for(server.port);
    o.error_ttl_ms = 60000;
    sf_redis *a = nullptr, *b = nullptr;
    ASSERT_EQ(sf_redis_new(&a, &o), SF_OK);
    ASSERT_EQ(sf_redis_new(&b, &o), SF_OK);
    auto fail = [](sf_call *c, void *) -> int {
        sf_call_set_bytes(c, "why", 3);
        return 42;
    };
    sf_result *res = nullptr;
    ASSERT_EQ(sf_redis_do(a, "e", 1, fail, nullptr, &res), SF_OK);
    EXPECT_EQ(sf_result_error(res), 42);
    EXPECT_EQ(bytes_of(res), "why");
    sf_result_release(res);
    std::string v = "ok";
    ASSERT_EQ(sf_redis_do(b, "e", 1, fn_value, &v, &res), SF_OK);
    EXPECT_EQ(sf_result_error(res), 42);  // within error_ttl: shared
    sf_result_release(res);
    // Once the error's freshness is gone it is not served stale.
    Admin ad(server.port);
    ad.cmd({"DEL", base_of("e") + ":fresh"});
    EXPECT_EQ(get(b, "e", fn_value, &v), "ok");
    sf_redis_free(a);
    sf_redis_free(b);
}

TEST_F(RedisTier, PanicReachesTheCaller) {
    sf_redis_options o = opts_for(server.port);
    sf_redis *a = nullptr;
    ASSERT_EQ(sf_redis_new(&a, &o), SF_OK);
    auto boom = [](sf_call *c, void *) -> int {
        sf_call_panic(c, "boom");
        return 0;
    };
    sf_result *res = nullptr;
    ASSERT_EQ(sf_redis_do(a, "p", 1, boom, nullptr, &res), SF_EPANIC);
    EXPECT_STREQ(sf_result_panic_message(res), "boom");
    sf_result_release(res);
    sf_redis_free(a);
}

// fn calling back in: for its own key it is refused at once with
// SF_EDEADLK (it would wait for itself), for another key it is an ordinary
// call; the outer call then completes as if nothing happened.
TEST_F(RedisTier, FnCallingBackInForItsOwnKeyIsRefused) {
    sf_redis_options o = opts_for(server.port);
    o.wait_ms = 60000;  // a wait for itself would outlive the test's timeout
    struct Ctx {
        sf_redis *r;
        int same = 1, other = 1;
        std::string other_value;
    } ctx;
    ASSERT_EQ(sf_redis_new(&ctx.r, &o), SF_OK);
    auto reenter = [](sf_call *c, void *p) -> int {
        auto *x = static_cast<Ctx *>(p);
        sf_result *res = nullptr;
        std::string never = "never";
        x->same = sf_redis_do(x->r, "outer", 5, fn_value, &never, &res);
        if (res) sf_result_release(res);
        std::string inner = "inner";
        x->other_value = get(x->r, "other", fn_value, &inner);
        sf_call_set_bytes(c, "outer value", 11);
        return 0;
    };
    EXPECT_EQ(get(ctx.r, "outer", reenter, &ctx), "outer value");
    EXPECT_EQ(ctx.same, SF_EDEADLK);
    EXPECT_EQ(ctx.other_value, "inner");
    EXPECT_EQ(stats(ctx.r).executions, 2u);  // outer and other; never the refused one
    sf_redis_free(ctx.r);
}

// 4 processes x 8 threads on one cold key: fn runs once fleet-wide, and
// Redis hands out one lease in all (at most one per process).
TEST_F(RedisTier, FourProcessesEightThreadsRunFnOnce) {
    ExecLog log;
    int go[2];
    ASSERT_EQ(pipe(go), 0);
    std::vector<pid_t> kids;
    for (int p = 0; p < 4; p++) {
        kids.push_back(spawn([&]() -> int {
            close(go[1]);
            sf_redis_options o = opts_for(server.port);
            sf_redis *r = nullptr;
            if (sf_redis_new(&r, &o) != SF_OK) return 2;
            read_byte(go[0]);  // every process starts together
            std::atomic<int> bad{0};
            struct P {
                const ExecLog *log;
            } pl{&log};
            auto fn = [](sf_call *c, void *payload) -> int {
                static_cast<P *>(payload)->log->add('x');
                usleep(200000);  // long enough for the others to pile up
                sf_call_set_bytes(c, "cold-value", 10);
                return 0;
            };
            std::vector<std::thread> ts;
            for (int t = 0; t < 8; t++)
                ts.emplace_back([&] {
                    if (get(r, "cold", fn, &pl) != "cold-value") bad++;
                });
            for (auto &t : ts) t.join();
            sf_redis_stats s = stats(r);
            sf_redis_free(r);
            if (bad) return 3;
            return s.lease_wins <= 1 ? 0 : 4;
        }));
    }
    close(go[0]);
    close(go[1]);  // EOF releases every process at once
    for (pid_t k : kids) EXPECT_EQ(exit_code(k), 0);
    EXPECT_EQ(log.read_all(), "x");
    Admin ad(server.port);
    EXPECT_EQ(ad.get(base_of("cold") + ":tok"), "1");  // INCRs: one lease
}

// The leader process is SIGKILLed inside fn: another takes over within one
// renewal period plus grace (the lease), runs fn once more, and all of its
// callers get that value.
TEST_F(RedisTier, KilledLeaderIsReplacedOnce) {
    ExecLog log;
    int started[2];
    ASSERT_EQ(pipe(started), 0);
    pid_t a = spawn([&]() -> int {
        sf_redis_options o = opts_for(server.port);
        sf_redis *r = nullptr;
        if (sf_redis_new(&r, &o) != SF_OK) return 2;
        struct P {
            const ExecLog *log;
            int fd;
        } pl{&log, started[1]};
        auto fn = [](sf_call *, void *payload) -> int {
            auto *p = static_cast<P *>(payload);
            p->log->add('a');
            write_byte(p->fd, 's');
            for (;;) pause();  // until killed
        };
        get(r, "dead", fn, &pl);
        return 5;
    });
    ASSERT_EQ(read_byte(started[0]), 's');
    sf_redis_options o = opts_for(server.port);
    // B's callers wait for A (who holds the lease), then one takes over.
    pid_t b = spawn([&]() -> int {
        sf_redis *r = nullptr;
        if (sf_redis_new(&r, &o) != SF_OK) return 2;
        struct P {
            const ExecLog *log;
        } pl{&log};
        auto fn = [](sf_call *c, void *payload) -> int {
            static_cast<P *>(payload)->log->add('b');
            sf_call_set_bytes(c, "from-b", 6);
            return 0;
        };
        std::atomic<int> bad{0};
        std::vector<std::thread> ts;
        for (int t = 0; t < 4; t++)
            ts.emplace_back([&] {
                if (get(r, "dead", fn, &pl) != "from-b") bad++;
            });
        for (auto &t : ts) t.join();
        sf_redis_stats s = stats(r);
        sf_redis_free(r);
        return bad ? 3 : (s.takeovers + s.lease_wins >= 1 ? 0 : 4);
    });
    auto killed = Clock::now();
    kill(a, SIGKILL);
    EXPECT_EQ(exit_code(a), 100 + SIGKILL);
    EXPECT_EQ(exit_code(b), 0);
    // Lease (1 s) + a generous grace for a loaded machine.
    EXPECT_LT(ms_since(killed), 1000 + 3000);
    EXPECT_EQ(log.read_all(), "ab");
}

// A leader stopped past its lease: a new one runs, the old one's late write
// is refused (fenced), and the newer value stays.
TEST_F(RedisTier, StoppedLeaderIsFencedOut) {
    int started[2], resume[2], report[2];
    ASSERT_EQ(pipe(started), 0);
    ASSERT_EQ(pipe(resume), 0);
    ASSERT_EQ(pipe(report), 0);
    pid_t a = spawn([&]() -> int {
        sf_redis_options o = opts_for(server.port);
        sf_redis *r = nullptr;
        if (sf_redis_new(&r, &o) != SF_OK) return 2;
        int fds[2] = {started[1], resume[0]};
        auto fn = [](sf_call *c, void *payload) -> int {
            int *f = static_cast<int *>(payload);
            write_byte(f[0], 's');
            read_byte(f[1]);
            sf_call_set_bytes(c, "old", 3);
            return 0;
        };
        std::string v = get(r, "fence", fn, fds);
        sf_redis_stats s = stats(r);
        sf_redis_free(r);
        write_byte(report[1], s.fenced == 1 ? 'F' : 'n');
        return v == "old" ? 0 : 3;  // its own callers keep its own value
    });
    ASSERT_EQ(read_byte(started[0]), 's');
    kill(a, SIGSTOP);  // the watchdog stops with it: the lease lapses
    {
        sf_redis_options o = opts_for(server.port);
        sf_redis *b = nullptr;
        ASSERT_EQ(sf_redis_new(&b, &o), SF_OK);
        std::string nv = "new";
        EXPECT_EQ(get(b, "fence", fn_value, &nv), "new");
        EXPECT_EQ(stats(b).executions, 1u);
        sf_redis_free(b);
    }
    kill(a, SIGCONT);
    write_byte(resume[1], 'g');
    EXPECT_EQ(read_byte(report[0]), 'F');
    EXPECT_EQ(exit_code(a), 0);
    sf_redis_options o = opts_for(server.port);
    sf_redis *c = nullptr;
    ASSERT_EQ(sf_redis_new(&c, &o), SF_OK);
    std::string never = "never";
    EXPECT_EQ(get(c, "fence", fn_value, &never), "new");
    sf_redis_free(c);
}

// Redis paused (SIGSTOP): every caller returns within its bound, by the
// policy; when it resumes, coalescing does too.
TEST_F(RedisTier, PausedRedisFallsBackOrFailsWithinBound) {
    sf_redis_options o = opts_for(server.port);
    sf_redis *fb = nullptr, *fl = nullptr;
    ASSERT_EQ(sf_redis_new(&fb, &o), SF_OK);
    o.on_down = SF_REDIS_FAIL;
    ASSERT_EQ(sf_redis_new(&fl, &o), SF_OK);
    kill(server.pid, SIGSTOP);
    std::string v = "local";
    std::vector<std::thread> ts;
    std::atomic<int> wrong{0};
    auto t0 = Clock::now();
    for (int i = 0; i < 4; i++) {
        ts.emplace_back([&] {
            if (get(fb, "paused", fn_value, &v) != "local") wrong++;
        });
        ts.emplace_back([&] {
            if (get(fl, "paused", fn_value, &v) != "SF_REDIS_EUNAVAILABLE") wrong++;
        });
    }
    for (auto &t : ts) t.join();
    EXPECT_EQ(wrong.load(), 0);
    EXPECT_LT(ms_since(t0), 3000);  // a few command timeouts of 300 ms
    EXPECT_GE(stats(fb).fallbacks, 1u);
    EXPECT_GE(stats(fl).unavailable, 1u);
    EXPECT_EQ(stats(fl).fallbacks, 0u);
    kill(server.pid, SIGCONT);
    EXPECT_TRUE(resumes(fb, "after", &v));
    sf_redis_free(fb);
    sf_redis_free(fl);
}

// Redis stopped while a leader runs fn and another host waits, then
// restarted on the same port: the waiter returns within its bound, the
// leader keeps its own value, coalescing resumes.
TEST_F(RedisTier, RedisStoppedMidFlightAndRestarted) {
    sf_redis_options o = opts_for(server.port);
    sf_redis *a = nullptr, *b = nullptr;
    ASSERT_EQ(sf_redis_new(&a, &o), SF_OK);
    ASSERT_EQ(sf_redis_new(&b, &o), SF_OK);
    Latch in_fn, go;
    struct P {
        Latch *in, *go;
    } pl{&in_fn, &go};
    auto slow = [](sf_call *c, void *payload) -> int {
        auto *p = static_cast<P *>(payload);
        p->in->set();
        p->go->wait();
        sf_call_set_bytes(c, "lead", 4);
        return 0;
    };
    std::string va, vb;
    std::thread ta([&] { va = get(a, "mid", slow, &pl); });
    in_fn.wait();
    std::string local = "b-local";
    auto t0 = Clock::now();
    std::thread tb([&] { vb = get(b, "mid", fn_value, &local); });
    int port = server.port;
    server.stop();
    tb.join();
    EXPECT_LT(ms_since(t0), 4000);
    EXPECT_EQ(vb, "b-local");  // fallback: it ran fn itself
    go.set();
    ta.join();
    EXPECT_EQ(va, "lead");
    EXPECT_GE(stats(a).unavailable, 1u);  // its write found Redis gone
    ASSERT_TRUE(server.start(port));
    EXPECT_TRUE(resumes(b, "again", &local));
    sf_redis_free(a);
    sf_redis_free(b);
}

// Past the soft TTL: everyone gets the old value at once while exactly one
// caller (fleet-wide) runs fn; that caller returns the new value.
TEST_F(RedisTier, StaleWhileRevalidate) {
    sf_redis_options o = opts_for(server.port);
    o.soft_ttl_ms = 60000;
    o.hard_ttl_ms = 120000;
    sf_redis *a = nullptr, *b = nullptr;
    ASSERT_EQ(sf_redis_new(&a, &o), SF_OK);
    ASSERT_EQ(sf_redis_new(&b, &o), SF_OK);
    std::string v1 = "v1";
    ASSERT_EQ(get(a, "swr", fn_value, &v1), "v1");
    Admin ad(server.port);
    ad.cmd({"DEL", base_of("swr") + ":fresh"});  // as if soft_ttl passed
    Latch release;
    std::atomic<int> runs{0};
    struct P {
        Latch *l;
        std::atomic<int> *runs;
    } pl{&release, &runs};
    auto refresh = [](sf_call *c, void *payload) -> int {
        auto *p = static_cast<P *>(payload);
        (*p->runs)++;
        p->l->wait();  // the others must not need this to return
        sf_call_set_bytes(c, "v2", 2);
        return 0;
    };
    std::mutex m;
    std::condition_variable cv;
    int old_ones = 0, new_ones = 0;
    std::vector<std::thread> ts;
    for (int i = 0; i < 16; i++)
        ts.emplace_back([&, i] {
            std::string v = get(i % 2 ? a : b, "swr", refresh, &pl);
            std::lock_guard<std::mutex> g(m);
            (v == "v1" ? old_ones : v == "v2" ? new_ones : old_ones += 1000)++;
            cv.notify_all();
        });
    {
        std::unique_lock<std::mutex> g(m);
        EXPECT_TRUE(cv.wait_for(g, std::chrono::seconds(20), [&] { return old_ones >= 15; }));
    }
    EXPECT_EQ(old_ones, 15);  // returned while fn was still blocked
    release.set();
    for (auto &t : ts) t.join();
    EXPECT_EQ(new_ones, 1);
    EXPECT_EQ(runs.load(), 1);
    std::string v3 = "v3";
    EXPECT_EQ(get(b, "swr", fn_value, &v3), "v2");
    sf_redis_free(a);
    sf_redis_free(b);
}

// A refresh whose fn fails keeps the stale value (and gives the lease up):
// its caller gets the error, and the next caller past the soft TTL refreshes
// again.
TEST_F(RedisTier, FailedRefreshKeepsTheStaleValue) {
    sf_redis_options o = opts_for(server.port);
    o.hard_ttl_ms = 120000;
    sf_redis *a = nullptr;
    ASSERT_EQ(sf_redis_new(&a, &o), SF_OK);
    std::string v1 = "v1";
    ASSERT_EQ(get(a, "rf", fn_value, &v1), "v1");
    Admin ad(server.port);
    ad.cmd({"DEL", base_of("rf") + ":fresh"});
    auto fail = [](sf_call *, void *) -> int { return 7; };
    sf_result *res = nullptr;
    ASSERT_EQ(sf_redis_do(a, "rf", 2, fail, nullptr, &res), SF_OK);
    EXPECT_EQ(sf_result_error(res), 7);  // the refresher's own outcome
    sf_result_release(res);
    EXPECT_EQ(ad.get(base_of("rf") + ":lease"), "");
    std::string kept = ad.hget(base_of("rf") + ":val", "d");
    EXPECT_EQ(kept.substr(kept.size() - 2), "v1");
    std::string v2 = "v2", v3 = "v3";
    EXPECT_EQ(get(a, "rf", fn_value, &v2), "v2");  // the next caller refreshes
    EXPECT_EQ(get(a, "rf", fn_value, &v3), "v2");  // and it landed, fresh
    EXPECT_EQ(stats(a).executions, 3u);
    sf_redis_free(a);
}

TEST_F(RedisTier, PureCoalescingDoesNotCache) {
    sf_redis_options o = opts_for(server.port);
    o.cache = 0;
    sf_redis *a = nullptr;
    ASSERT_EQ(sf_redis_new(&a, &o), SF_OK);
    std::string v1 = "1", v2 = "2";
    EXPECT_EQ(get(a, "nc", fn_value, &v1), "1");
    EXPECT_EQ(get(a, "nc", fn_value, &v2), "2");
    EXPECT_EQ(stats(a).executions, 2u);
    sf_redis_free(a);
}

TEST_F(RedisTier, ValueOverTheLimitIsAClearError) {
    sf_redis_options o = opts_for(server.port);
    o.max_value_bytes = 16;
    sf_redis *a = nullptr, *b = nullptr;
    ASSERT_EQ(sf_redis_new(&a, &o), SF_OK);
    ASSERT_EQ(sf_redis_new(&b, &o), SF_OK);
    std::string big(17, 'x'), fits(16, 'y');
    EXPECT_EQ(get(a, "big", fn_value, &big), "SF_REDIS_ETOOBIG");
    EXPECT_EQ(get(a, "fits", fn_value, &fits), fits);
    EXPECT_EQ(get(b, "fits", fn_value, &big), fits);
    sf_redis_free(a);
    sf_redis_free(b);
}

TEST_F(RedisTier, BinaryAndHugeKeys) {
    sf_redis_options o = opts_for(server.port);
    sf_redis *a = nullptr, *b = nullptr;
    ASSERT_EQ(sf_redis_new(&a, &o), SF_OK);
    ASSERT_EQ(sf_redis_new(&b, &o), SF_OK);
    std::string every;
    for (int i = 0; i < 256; i++) every.push_back(static_cast<char>(i));
    std::string huge(64 * 1024, '\xff');
    huge[100] = '\0';
    std::string near = every.substr(0, 255);  // differs only in its end
    std::string v1 = "every", v2 = "huge", v3 = "near", wrong = "wrong";
    EXPECT_EQ(get(a, every, fn_value, &v1), "every");
    EXPECT_EQ(get(a, huge, fn_value, &v2), "huge");
    EXPECT_EQ(get(a, near, fn_value, &v3), "near");
    EXPECT_EQ(get(b, every, fn_value, &wrong), "every");
    EXPECT_EQ(get(b, huge, fn_value, &wrong), "huge");
    EXPECT_EQ(get(b, near, fn_value, &wrong), "near");
    EXPECT_EQ(stats(b).executions, 0u);
    sf_redis_free(a);
    sf_redis_free(b);
}

TEST_F(RedisTier, WrongPasswordIsRefused) {
    Admin ad(server.port);
    ad.cmd({"CONFIG", "SET", "requirepass", "right"});
    sf_redis_options o = opts_for(server.port);
    sf_redis *r = nullptr;
    EXPECT_EQ(sf_redis_new(&r, &o), SF_REDIS_EAUTH);  // none given
    o.password = "wrong";
    EXPECT_EQ(sf_redis_new(&r, &o), SF_REDIS_EAUTH);
    o.password = "right";
    ASSERT_EQ(sf_redis_new(&r, &o), SF_OK);
    std::string v = "authed";
    EXPECT_EQ(get(r, "pw", fn_value, &v), "authed");
    EXPECT_EQ(stats(r).lease_wins, 1u);
    sf_redis_free(r);
    ad.cmd({"CONFIG", "SET", "requirepass", ""});
}

TEST_F(RedisTier, NotRedisIsAProtocolError) {
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(ls, reinterpret_cast<sockaddr *>(&sa), sizeof sa), 0);
    socklen_t l = sizeof sa;
    getsockname(ls, reinterpret_cast<sockaddr *>(&sa), &l);
    listen(ls, 4);
    std::thread srv([ls] {
        int c = accept(ls, nullptr, nullptr);
        char buf[256];
        ssize_t n = read(c, buf, sizeof buf);
        (void)n;
        const char resp[] = "HTTP/1.1 400 Bad Request\r\n\r\n";
        n = write(c, resp, sizeof resp - 1);
        close(c);
    });
    sf_redis_options o = opts_for(ntohs(sa.sin_port));
    sf_redis *r = nullptr;
    EXPECT_EQ(sf_redis_new(&r, &o), SF_REDIS_EPROTO);
    srv.join();
    close(ls);
}

// A key of the wrong type makes the script fail: a clear error with FAIL, a
// local run with FALLBACK, and the key is left as it was.
TEST_F(RedisTier, ScriptErrorIsClearAndCorruptsNothing) {
    Admin ad(server.port);
    ad.cmd({"SET", base_of("wt") + ":val", "not-a-hash"});
    sf_redis_options o = opts_for(server.port);
    o.on_down = SF_REDIS_FAIL;
    sf_redis *f = nullptr, *fb = nullptr;
    ASSERT_EQ(sf_redis_new(&f, &o), SF_OK);
    o.on_down = SF_REDIS_FALLBACK;
    ASSERT_EQ(sf_redis_new(&fb, &o), SF_OK);
    std::string v = "local";
    EXPECT_EQ(get(f, "wt", fn_value, &v), "SF_REDIS_EPROTO");
    EXPECT_EQ(get(fb, "wt", fn_value, &v), "local");
    EXPECT_EQ(stats(fb).fallbacks, 1u);
    EXPECT_EQ(ad.get(base_of("wt") + ":val"), "not-a-hash");
    sf_redis_free(f);
    sf_redis_free(fb);
}

// A shared group in front: the callers of every process on the host
// coalesce there, and only its leader talks to Redis.
TEST_F(RedisTier, SharedGroupInFront) {
    sf_shared_options so;
    sf_shared_options_init(&so, SF_SHARED_OPTIONS_VERSION);
    std::string name = "sf-redis-test-" + std::to_string(getpid());
    sf_group *g = nullptr;
    ASSERT_EQ(sf_group_open_shared(name.c_str(), &so, &g), SF_OK);
    sf_redis_options o = opts_for(server.port);
    o.front = g;
    sf_redis *r = nullptr;
    ASSERT_EQ(sf_redis_new(&r, &o), SF_OK);
    std::string v = "shared-front";
    EXPECT_EQ(get(r, "sg", fn_value, &v), "shared-front");
    EXPECT_EQ(get(r, "sg", fn_value, &v), "shared-front");
    EXPECT_EQ(stats(r).executions, 1u);
    sf_redis_free(r);
    sf_group_free(g);
}

}  // namespace
