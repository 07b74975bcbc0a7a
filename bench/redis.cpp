// The Redis tier's two figures (issue 19), against a redis-server of its own
// on a free loopback port:
//
//  1. Follower latency: a leader host finishes a flight; how long until a
//     follower on another host has the value.  Measured in the same run for
//     the tier's pub/sub wake-up, a BuildBuddy-style waiter that polls every
//     1 s, and a redsync-style waiter that retries after 50-250 ms.  The
//     leader finishes at a random moment (seeded), as in real traffic, so the
//     pollers' phase is not fixed.
//  2. Dead-leader takeover: a leader process is SIGKILLed inside fn while a
//     follower host waits; the time from the kill to the follower having the
//     value it produced after taking over, against the lease duration.
//
//   sfredisbench [--short]     --short: a few rounds, for the ctest smoke
//                              test, which checks behaviour only (every
//                              waiter got the value; one execution per
//                              takeover), never timing.

#include <singleflight_redis.h>

#include "redis/tests/redis_server.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;

double ms_between(Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
}

double pct(std::vector<double> v, double p) {
    if (v.empty()) return 0;
    std::sort(v.begin(), v.end());
    size_t i = static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
    return v[std::min(i, v.size() - 1)];
}

sf_redis_options opts(int port, unsigned lease_ms) {
    sf_redis_options o;
    sf_redis_options_init(&o, SF_REDIS_OPTIONS_VERSION);
    o.port = port;
    o.lease_ms = lease_ms;
    o.renew_ms = lease_ms / 3;
    o.wait_ms = 30000;
    return o;
}

sf_redis_stats stats(sf_redis *r) {
    sf_redis_stats s;
    s.version = SF_REDIS_STATS_VERSION;
    sf_redis_stats_get(r, &s);
    return s;
}

bool get(sf_redis *r, const std::string &key, sf_fn fn, void *payload, const char *want) {
    sf_result *res = nullptr;
    if (sf_redis_do(r, key.data(), key.size(), fn, payload, &res) != SF_OK) return false;
    size_t n = 0;
    const void *p = sf_result_bytes(res, &n);
    bool ok = p && n == std::strlen(want) && std::memcmp(p, want, n) == 0;
    sf_result_release(res);
    return ok;
}

int never(sf_call *, void *) { return 99; }

// A waiter that reads the value key itself, sleeping between reads: the
// polling designs the tier is compared with.
struct Poller {
    redisContext *c;
    explicit Poller(int port) : c(redisConnect("127.0.0.1", port)) {}
    ~Poller() { redisFree(c); }
    bool has(const std::string &key) {
        std::string k = "{sf:" + key + "}:val";
        auto *r = static_cast<redisReply *>(redisCommand(c, "HEXISTS %b d", k.data(), k.size()));
        bool yes = r && r->type == REDIS_REPLY_INTEGER && r->integer == 1;
        if (r) freeReplyObject(r);
        return yes;
    }
};

struct LeaderArg {
    std::atomic<bool> *in_fn;
    sf_redis *follower;
    sf_u64 waits_before;
    unsigned delay_ms;
    Clock::time_point done;
};

int leader_fn(sf_call *call, void *payload) {
    auto *a = static_cast<LeaderArg *>(payload);
    a->in_fn->store(true);
    // The follower host must be waiting (not merely arriving later to a
    // cached value), then the flight ends at a random moment.
    while (stats(a->follower).waits <= a->waits_before) std::this_thread::yield();
    std::this_thread::sleep_for(std::chrono::milliseconds(a->delay_ms));
    a->done = Clock::now();
    sf_call_set_bytes(call, "value", 5);
    return 0;
}

bool follower_latency(int port, int rounds) {
    sf_redis_options o = opts(port, 3000);
    sf_redis *lead = nullptr, *follow = nullptr;
    if (sf_redis_new(&lead, &o) != SF_OK || sf_redis_new(&follow, &o) != SF_OK) return false;
    std::mt19937 rng(19);
    std::vector<double> pubsub, poll1s, retry;
    bool ok = true;
    for (int i = 0; i < rounds; i++) {
        std::string key = "lat" + std::to_string(i);
        std::atomic<bool> in_fn{false};
        LeaderArg a{&in_fn,
                    follow,
                    stats(follow).waits,
                    std::uniform_int_distribution<unsigned>(0, 1000)(rng),
                    {}};
        unsigned seed = rng();
        Clock::time_point t_follow, t_poll, t_retry;
        bool lead_ok = false, follow_ok = false;
        std::thread tl([&] { lead_ok = get(lead, key, leader_fn, &a, "value"); });
        // The follower host arrives once the leader holds the lease.
        while (!in_fn.load()) std::this_thread::yield();
        std::thread tf([&] {
            follow_ok = get(follow, key, never, nullptr, "value");
            t_follow = Clock::now();
        });
        // The pollers start with the follower, as their waiters would.
        std::thread tp([&] {
            Poller p(port);
            while (!p.has(key)) std::this_thread::sleep_for(std::chrono::seconds(1));
            t_poll = Clock::now();
        });
        std::thread tr([&] {
            Poller p(port);
            std::mt19937 r(seed);
            while (!p.has(key))
                std::this_thread::sleep_for(
                    std::chrono::milliseconds(std::uniform_int_distribution<int>(50, 250)(r)));
            t_retry = Clock::now();
        });
        tl.join();
        tf.join();
        tp.join();
        tr.join();
        ok &= lead_ok && follow_ok;
        pubsub.push_back(ms_between(a.done, t_follow));
        poll1s.push_back(ms_between(a.done, t_poll));
        retry.push_back(ms_between(a.done, t_retry));
    }
    ok &= stats(follow).executions == 0 && stats(follow).wakeups >= 1;
    std::printf(
        "follower latency, %d rounds (ms from the leader's fn returning to the "
        "follower having the value):\n",
        rounds);
    std::printf("  %-32s p50 %8.2f  p99 %8.2f\n", "redis tier (pub/sub push)", pct(pubsub, .5),
                pct(pubsub, .99));
    std::printf("  %-32s p50 %8.2f  p99 %8.2f\n", "BuildBuddy-style 1 s polling", pct(poll1s, .5),
                pct(poll1s, .99));
    std::printf("  %-32s p50 %8.2f  p99 %8.2f\n", "redsync-style 50-250 ms retries", pct(retry, .5),
                pct(retry, .99));
    sf_redis_free(lead);
    sf_redis_free(follow);
    return ok;
}

bool takeover(int port, unsigned lease_ms, int rounds) {
    std::mt19937 rng(lease_ms);
    std::vector<double> t;
    bool ok = true;
    for (int i = 0; i < rounds; i++) {
        std::string key = "dead" + std::to_string(lease_ms) + "-" + std::to_string(i);
        int started[2];
        if (pipe(started) != 0) return false;
        // The dead leader is a process of its own, forked before this
        // process starts any thread of a handle.
        pid_t a = fork();
        if (a == 0) {
            sf_redis_options o = opts(port, lease_ms);
            sf_redis *r = nullptr;
            if (sf_redis_new(&r, &o) != SF_OK) _exit(2);
            auto hang = [](sf_call *, void *p) -> int {
                char c = 's';
                ssize_t w = write(*static_cast<int *>(p), &c, 1);
                (void)w;
                for (;;) pause();
            };
            get(r, key, hang, &started[1], "");
            _exit(3);
        }
        char c = 0;
        ok &= read(started[0], &c, 1) == 1;
        close(started[0]);
        close(started[1]);
        sf_redis_options o = opts(port, lease_ms);
        sf_redis *b = nullptr;
        if (sf_redis_new(&b, &o) != SF_OK) return false;
        Clock::time_point t_done;
        std::thread tb([&] {
            ok &= get(
                b, key,
                [](sf_call *call, void *) -> int {
                    sf_call_set_bytes(call, "taken", 5);
                    return 0;
                },
                nullptr, "taken");
            t_done = Clock::now();
        });
        while (stats(b).waits < 1) std::this_thread::yield();
        // Death comes at a random moment of the lease's life (seeded), so
        // the time since the last renewal varies as it would.
        std::this_thread::sleep_for(
            std::chrono::milliseconds(std::uniform_int_distribution<unsigned>(0, lease_ms)(rng)));
        auto killed = Clock::now();
        kill(a, SIGKILL);
        waitpid(a, nullptr, 0);
        tb.join();
        ok &= stats(b).executions == 1 && stats(b).takeovers == 1;
        t.push_back(ms_between(killed, t_done));
        sf_redis_free(b);
    }
    std::printf("  lease %5u ms, renewal %4u ms: takeover p50 %8.2f  p99 %8.2f ms (%d rounds)\n",
                lease_ms, lease_ms / 3, pct(t, .5), pct(t, .99), rounds);
    return ok;
}

}  // namespace

int main(int argc, char **argv) {
    bool quick = argc > 1 && std::strcmp(argv[1], "--short") == 0;
    sfredis_test::Server server;
    if (!server.start()) {
        std::fprintf(stderr, "sfredisbench: redis-server did not start\n");
        return 1;
    }
    // Takeovers first: they fork, and must do so before any handle's thread
    // exists in this process.
    std::printf(
        "dead-leader takeover (ms from SIGKILL to the follower having the new "
        "value):\n");
    bool ok = true;
    for (unsigned lease :
         quick ? std::vector<unsigned>{300} : std::vector<unsigned>{500, 1000, 2000})
        ok &= takeover(server.port, lease, quick ? 2 : 10);
    ok &= follower_latency(server.port, quick ? 3 : 40);
    server.stop();
    if (!ok) std::fprintf(stderr, "sfredisbench: a waiter did not get the expected value\n");
    return ok ? 0 : 1;
}
