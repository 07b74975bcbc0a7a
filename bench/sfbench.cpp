// sfbench: one cell of the benchmark matrix, or one wake-latency experiment,
// for the native contenders: libsingleflight's C API, a hand-written
// mutex + unordered_map + shared_future baseline, and "floor" (no
// singleflight at all: what the harness and the OS cost by themselves).
//
// The Go program in bench/go and the binding programs implement the same
// workload and print the same JSON line, so bench/run.py can put them side by
// side.  See docs/performance.md for the workload definition.
#include <singleflight.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <future>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include <linux/futex.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "alloc_count.h"

namespace {

// CPU time of the whole process (all threads, user + system).  On a shared
// machine wall time includes time spent descheduled; CPU time per call does not.
std::uint64_t cpu_ns() {
    rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    auto tv = [](const timeval &t) {
        return std::uint64_t(t.tv_sec) * 1000000000u + std::uint64_t(t.tv_usec) * 1000u;
    };
    return tv(ru.ru_utime) + tv(ru.ru_stime);
}

std::uint64_t now_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return std::uint64_t(ts.tv_sec) * 1000000000u + std::uint64_t(ts.tv_nsec);
}

[[noreturn]] void die(const char *what) {
    std::fprintf(stderr, "sfbench: %s\n", what);
    std::exit(2);
}

enum class Fn { trivial, spin, sleep };

// Per-thread tallies: kept thread-local so that counting never shares a cache
// line between threads and so cannot itself become the contention measured.
thread_local std::uint64_t tl_execs = 0;

// The work every contender runs.  Returns the value the flight publishes: the
// finish timestamp for the timed kinds (followers subtract it from their own
// return time to get the wake latency), a constant otherwise.
std::uint64_t run_work(void *ctx) {
    ++tl_execs;
    switch (*static_cast<const Fn *>(ctx)) {
        case Fn::trivial:
            return 1;
        case Fn::spin: {
            std::uint64_t t0 = now_ns();
            std::uint64_t t;
            while ((t = now_ns()) - t0 < 1000) {}
            return t;
        }
        case Fn::sleep: {
            timespec ts{0, 1000000};
            nanosleep(&ts, nullptr);
            return now_ns();
        }
    }
    return 0;
}

// ---------------------------------------------------------------- contenders

// The work a flight runs: a plain function pointer plus context, the same
// indirection for every contender.
using WorkFn = std::uint64_t (*)(void *ctx);
struct Work {
    WorkFn fn;
    void *ctx;
};

struct CapiContender {
    sf_group *g = nullptr;
    CapiContender() {
        int rc = sf_group_new(&g, nullptr);
        if (rc != SF_OK) die("sf_group_new failed");
    }
    ~CapiContender() {
        if (sf_group_free(g) != SF_OK) std::fprintf(stderr, "sfbench: sf_group_free failed\n");
    }
    static int trampoline(sf_call *call, void *payload) {
        auto *w = static_cast<const Work *>(payload);
        std::uint64_t v = w->fn(w->ctx);
        // The value is the number itself, smuggled in the pointer: no
        // allocation and no destroy callback, which is what a caller handing
        // out a pointer to existing data would do.
        sf_call_set_value(call, reinterpret_cast<void *>(std::uintptr_t(v)), nullptr);
        return 0;
    }
    std::uint64_t call(const char *key, std::size_t len, Work w) {
        sf_result *r = nullptr;
        int shared = 0;
        int rc = sf_group_do(g, key, len, &trampoline, &w, &r, &shared);
        if (rc != SF_OK) die("sf_group_do failed");
        auto v = std::uint64_t(reinterpret_cast<std::uintptr_t>(sf_result_value(r)));
        sf_result_release(r);
        return v;
    }
    // Followers that have joined so far, for the wake experiment.
    std::uint64_t followers() const {
        sf_group_stats st;
        std::memset(&st, 0, sizeof st);
        st.version = SF_GROUP_STATS_VERSION;
        if (sf_group_stats_get(g, &st) != SF_OK) return 0;
        return st.followers;
    }
    static constexpr bool knows_followers = true;
};

// The API's shape with nothing behind it (bench/apifloor.c): what four
// calls into a shared library and a callback cost on this machine.
extern "C" {
struct floor_call;
int floor_group_do(void *g, const void *key, std::size_t key_len, int (*fn)(floor_call *, void *),
                   void *payload, floor_call **result, int *shared);
void floor_call_set_value(floor_call *call, void *value, void (*destroy)(void *));
void *floor_result_value(const floor_call *r);
void floor_result_release(floor_call *r);
}

struct ApiFloorContender {
    int group = 0;  // any non-null pointer
    static int trampoline(floor_call *call, void *payload) {
        auto *w = static_cast<const Work *>(payload);
        std::uint64_t v = w->fn(w->ctx);
        floor_call_set_value(call, reinterpret_cast<void *>(std::uintptr_t(v)), nullptr);
        return 0;
    }
    std::uint64_t call(const char *key, std::size_t len, Work w) {
        floor_call *r = nullptr;
        int shared = 0;
        if (floor_group_do(&group, key, len, &trampoline, &w, &r, &shared) != 0)
            die("floor_group_do");
        auto v = std::uint64_t(reinterpret_cast<std::uintptr_t>(floor_result_value(r)));
        floor_result_release(r);
        return v;
    }
    std::uint64_t followers() const { return 0; }
    static constexpr bool knows_followers = false;
};

// What a careful user writes by hand: correct, and no cleverer than needed.
struct NaiveContender {
    std::mutex mu;
    std::unordered_map<std::string, std::shared_future<std::uint64_t>> inflight;
    std::uint64_t call(const char *key, std::size_t len, Work w) {
        std::string k(key, len);
        std::unique_lock<std::mutex> lk(mu);
        auto it = inflight.find(k);
        if (it != inflight.end()) {
            std::shared_future<std::uint64_t> f = it->second;
            lk.unlock();
            return f.get();
        }
        std::promise<std::uint64_t> p;
        std::shared_future<std::uint64_t> f = p.get_future().share();
        inflight.emplace(k, f);
        lk.unlock();
        std::uint64_t v = w.fn(w.ctx);
        // Unpublish before waking anyone, as Go's doCall does under its lock:
        // otherwise returning followers rejoin the finished flight and read a
        // stale value while the leader queues for the mutex.
        lk.lock();
        inflight.erase(k);
        lk.unlock();
        p.set_value(v);
        return v;
    }
    std::uint64_t followers() const { return 0; }
    static constexpr bool knows_followers = false;
};

// Not a singleflight: the floor under every contender on this machine.  In
// the matrix it calls the work directly (what the harness itself costs); in
// the wake experiment it is one futex word that followers sleep on and the
// leader broadcasts, with no spinning (what waking parked OS threads costs,
// before any library does anything).
struct FloorContender {
    std::atomic<std::uint32_t> gen{0};
    std::atomic<int> busy{0};
    std::atomic<std::uint64_t> value{0};
    bool wake_mode = false;
    std::uint64_t call(const char *, std::size_t, Work w) {
        if (!wake_mode) return w.fn(w.ctx);
        std::uint32_t g0 = gen.load(std::memory_order_acquire);
        if (busy.exchange(1) == 0) {
            std::uint64_t v = w.fn(w.ctx);
            value.store(v);
            busy.store(0);
            gen.fetch_add(1, std::memory_order_release);
            syscall(SYS_futex, reinterpret_cast<std::uint32_t *>(&gen), FUTEX_WAKE_PRIVATE,
                    INT32_MAX, nullptr, nullptr, 0);
            return v;
        }
        while (gen.load(std::memory_order_acquire) == g0)
            syscall(SYS_futex, reinterpret_cast<std::uint32_t *>(&gen), FUTEX_WAIT_PRIVATE, g0,
                    nullptr, nullptr, 0);
        return value.load();
    }
    std::uint64_t followers() const { return 0; }
    static constexpr bool knows_followers = false;
};

// ---------------------------------------------------------------- options

struct Options {
    std::string contender = "capi";
    int threads = 1;
    long keys = 1;  // 0: all-unique
    Fn fn = Fn::trivial;
    std::string fn_name = "trivial";
    int duration_ms = 200;
    int warmup_ms = 50;
    int keylen = 0;          // 0: natural "key:NNNN" keys
    int wake = 0;            // >0: wake experiment with this many followers
    int wake_callbacks = 0;  // >0: the same with callback followers (capi)
    int cancel = 0;          // >0: cancellation latency with this many followers (capi)
    int handoff = 0;         // >0: this many cache-line round trips between two threads
    int rounds = 20;
};

Options parse(int argc, char **argv) {
    Options o;
    for (int i = 1; i < argc; ++i) {
        std::string_view a = argv[i];
        auto val = [&]() -> const char * {
            if (i + 1 >= argc) die("missing value");
            return argv[++i];
        };
        if (a == "--contender") o.contender = val();
        else if (a == "--threads") o.threads = std::atoi(val());
        else if (a == "--keys") {
            std::string_view v = val();
            o.keys = v == "unique" ? 0 : std::atol(v.data());
            if (v != "unique" && o.keys < 1) die("--keys takes a positive count or unique");
        } else if (a == "--fn") {
            o.fn_name = val();
            if (o.fn_name == "trivial") o.fn = Fn::trivial;
            else if (o.fn_name == "spin") o.fn = Fn::spin;
            else if (o.fn_name == "sleep") o.fn = Fn::sleep;
            else die("unknown --fn");
        } else if (a == "--duration-ms") o.duration_ms = std::atoi(val());
        else if (a == "--warmup-ms") o.warmup_ms = std::atoi(val());
        else if (a == "--keylen") o.keylen = std::atoi(val());
        else if (a == "--wake") o.wake = std::atoi(val());
        else if (a == "--wake-callbacks") o.wake_callbacks = std::atoi(val());
        else if (a == "--cancel-latency") o.cancel = std::atoi(val());
        else if (a == "--handoff") o.handoff = std::atoi(val());
        else if (a == "--rounds") o.rounds = std::atoi(val());
        else if (a == "--help" || a == "-h") {
            std::puts(
                "sfbench --contender capi|naive|floor|apifloor --threads T --keys N|unique "
                "--fn trivial|spin|sleep [--duration-ms D] [--warmup-ms W] [--keylen L]\n"
                "sfbench --contender capi|naive|floor --wake N [--rounds R]\n"
                "sfbench --wake-callbacks N [--rounds R]    (sf_call_on_done followers)\n"
                "sfbench --cancel-latency N [--rounds R]    (last cancel to abandon callback)\n"
                "sfbench --handoff N                        (one cache line between 2 threads)\n"
                "Prints one JSON line.  SFBENCH_ALLOC_TRACE=N prints the stacks of the first N\n"
                "allocations made inside the measured loop.");
            std::exit(0);
        } else die("unknown argument (try --help)");
    }
    if (o.threads < 1 || o.keys < 0 || o.duration_ms < 1 || o.warmup_ms < 0 || o.keylen < 0 ||
        o.keylen > 4096 || o.wake < 0 || o.rounds < 1 || o.wake_callbacks < 0 || o.cancel < 0 ||
        o.handoff < 0)
        die("bad option value");
    return o;
}

// Keys are fixed-size slots built before the clock starts so that no
// contender pays for formatting or allocating them inside the loop.
struct KeySet {
    std::vector<char> bytes;
    std::vector<std::uint32_t> len;
    std::size_t stride = 0;
    std::size_t count = 0;
    const char *at(std::size_t i) const { return bytes.data() + i * stride; }
};

KeySet make_keys(std::size_t n, const std::string &prefix, int keylen) {
    KeySet ks;
    ks.count = n;
    ks.stride = std::size_t(std::max(keylen, 48)) + 16;
    ks.bytes.assign(n * ks.stride, 'x');
    ks.len.resize(n);
    for (std::size_t i = 0; i < n; ++i) {
        char *p = ks.bytes.data() + i * ks.stride;
        int w = std::snprintf(p, ks.stride, "%s%04zu", prefix.c_str(), i);
        std::size_t l = std::size_t(w);
        if (keylen > 0) {
            // Pad (with the 'x' already there) or truncate from the left so
            // the distinguishing digits survive.
            if (l > std::size_t(keylen)) {
                std::memmove(p, p + (l - std::size_t(keylen)), std::size_t(keylen));
            } else {
                p[l] = 'x';
            }
            l = std::size_t(keylen);
        }
        ks.len[i] = std::uint32_t(l);
    }
    return ks;
}

// Per-thread keys for the all-unique workload: distinct from every other
// thread's, so no two calls in flight ever share a key and every call leads.
constexpr std::size_t kUniquePerThread = 4096;

struct ThreadResult {
    std::uint64_t ops = 0, execs = 0, allocs = 0;
    std::vector<std::uint32_t> wake;  // ns, followers only
};

template <class C>
void run_cell(const Options &o) {
    C c;
    Fn fn = o.fn;
    const Work work{&run_work, &fn};
    KeySet shared_keys;
    std::vector<KeySet> own_keys;
    if (o.keys > 0) {
        shared_keys = make_keys(std::size_t(o.keys), "key:", o.keylen);
    } else {
        for (int t = 0; t < o.threads; ++t)
            own_keys.push_back(
                make_keys(kUniquePerThread, "u:" + std::to_string(t) + ":", o.keylen));
    }
    const bool timed = o.fn != Fn::trivial;

    std::atomic<int> phase{0};  // 0 warmup, 1 ready, 2 measure, 3 stop
    std::atomic<int> ready{0};
    // Threads that made at least one measured call: the window closes only
    // once every thread has, so a thread descheduled for the whole window
    // on a loaded machine cannot leave a cell with no calls at all (whose
    // exec/call then reads 0 and fails the check).
    std::atomic<int> measured{0};
    std::vector<ThreadResult> results(std::size_t(o.threads));
    std::vector<std::thread> threads;

    for (int t = 0; t < o.threads; ++t) {
        threads.emplace_back([&, t] {
            const KeySet &ks = o.keys > 0 ? shared_keys : own_keys[std::size_t(t)];
            const std::size_t n = ks.count;
            // Threads start spread over the key ring and walk it in step, so
            // with K keys and T threads they meet on a key only when K is small.
            std::size_t idx = (std::size_t(t) * n) / std::size_t(o.threads);
            ThreadResult &res = results[std::size_t(t)];
            res.wake.reserve(timed ? 1u << 16 : 0);

            auto one = [&](bool record) {
                const char *k = ks.at(idx);
                std::size_t kl = ks.len[idx];
                if (++idx == n) idx = 0;
                std::uint64_t e0 = tl_execs;
                std::uint64_t v = c.call(k, kl, work);
                if (record && timed && tl_execs == e0 && res.wake.size() < res.wake.capacity()) {
                    std::uint64_t d = now_ns() - v;
                    res.wake.push_back(std::uint32_t(std::min<std::uint64_t>(d, UINT32_MAX)));
                }
            };
            while (phase.load(std::memory_order_relaxed) == 0) one(false);
            ready.fetch_add(1);
            while (phase.load(std::memory_order_acquire) < 2) std::this_thread::yield();
            sfbench::trace_allocs(true);
            std::uint64_t a0 = sfbench::thread_allocs(), e0 = tl_execs, ops = 0;
            while (phase.load(std::memory_order_relaxed) == 2) {
                one(true);
                if (++ops == 1) measured.fetch_add(1);
            }
            res.allocs = sfbench::thread_allocs() - a0;
            sfbench::trace_allocs(false);
            res.execs = tl_execs - e0;
            res.ops = ops;
        });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(o.warmup_ms));
    phase.store(1);
    while (ready.load() < o.threads) std::this_thread::yield();
    std::uint64_t c0 = cpu_ns();
    std::uint64_t t0 = now_ns();
    phase.store(2, std::memory_order_release);
    std::this_thread::sleep_for(std::chrono::milliseconds(o.duration_ms));
    while (measured.load() < o.threads) std::this_thread::yield();
    phase.store(3);
    for (auto &th : threads) th.join();
    std::uint64_t wall = now_ns() - t0;
    std::uint64_t cpu = cpu_ns() - c0;

    std::uint64_t ops = 0, execs = 0, allocs = 0;
    std::vector<std::uint32_t> wake;
    for (auto &r : results) {
        ops += r.ops;
        execs += r.execs;
        allocs += r.allocs;
        wake.insert(wake.end(), r.wake.begin(), r.wake.end());
    }
    auto pct = [&](double p) -> double {
        if (wake.empty()) return -1;
        std::size_t i = std::size_t(p * double(wake.size() - 1));
        std::nth_element(wake.begin(), wake.begin() + long(i), wake.end());
        return double(wake[i]);
    };
    double p50 = pct(0.50), p99 = pct(0.99);
    std::printf(
        "{\"kind\":\"cell\",\"contender\":\"%s\",\"threads\":%d,\"keys\":\"%s\",\"fn\":\"%s\","
        "\"keylen\":%d,\"ops\":%llu,\"wall_ns\":%llu,\"ns_per_op\":%.3f,\"cpu_ns_per_op\":%.3f,"
        "\"execs_per_call\":%.6f,"
        "\"allocs_per_call\":%.6f,\"wake_n\":%zu,\"wake_p50_ns\":%.0f,\"wake_p99_ns\":%.0f}\n",
        o.contender.c_str(), o.threads, o.keys ? std::to_string(o.keys).c_str() : "unique",
        o.fn_name.c_str(), o.keylen, (unsigned long long)ops, (unsigned long long)wall,
        ops ? double(wall) / double(ops) : 0.0, ops ? double(cpu) / double(ops) : 0.0,
        ops ? double(execs) / double(ops) : 0.0, ops ? double(allocs) / double(ops) : 0.0,
        wake.size(), p50, p99);
}

// ---------------------------------------------------------------- wake

// N followers park on one key; the leader's fn waits until every one of them
// has joined, lets them settle into their parked state, stamps the time and
// returns.  Each follower's latency is its return time minus that stamp.
template <class C>
void run_wake(const Options &o) {
    C c;
    if constexpr (std::is_same_v<C, FloorContender>) c.wake_mode = true;
    const int n = o.wake;
    static const char key[] = "wake";
    std::atomic<int> arrived{0};
    std::atomic<bool> leader_in{false};
    std::atomic<int> late{0};

    std::mutex mu;
    std::condition_variable cv;
    int round = -1;  // guarded by mu
    int done = 0;    // guarded by mu
    std::vector<std::uint32_t> samples;
    samples.reserve(std::size_t(n) * std::size_t(o.rounds));

    // A follower that arrives after the flight finished leads a flight of its
    // own: it is counted as late and contributes no sample.
    Fn trivial = Fn::trivial;
    const Work follower_work{&run_work, &trivial};

    std::vector<std::thread> followers;
    for (int i = 0; i < n; ++i) {
        followers.emplace_back([&] {
            int seen = -1;
            for (;;) {
                {
                    std::unique_lock<std::mutex> lk(mu);
                    cv.wait(lk, [&] { return round != seen; });
                    seen = round;
                    if (seen >= o.rounds) return;
                }
                while (!leader_in.load()) std::this_thread::yield();
                arrived.fetch_add(1);
                std::uint64_t e0 = tl_execs;
                std::uint64_t v = c.call(key, sizeof key - 1, follower_work);
                std::uint64_t t = now_ns();
                std::lock_guard<std::mutex> lk(mu);
                if (tl_execs != e0) late.fetch_add(1);
                else samples.push_back(std::uint32_t(std::min<std::uint64_t>(t - v, UINT32_MAX)));
                if (++done == n) cv.notify_all();
            }
        });
    }

    struct LeaderCtx {
        C *c;
        int n;
        std::atomic<int> *arrived;
        std::atomic<bool> *leader_in;
        std::uint64_t followers0;
    };
    auto leader_fn = [](void *p) -> std::uint64_t {
        auto *x = static_cast<LeaderCtx *>(p);
        x->leader_in->store(true);
        std::uint64_t deadline = now_ns() + 2000000000ull;
        while (x->arrived->load() < x->n && now_ns() < deadline)
            std::this_thread::sleep_for(std::chrono::microseconds(50));
        // Where the library can say who has joined, wait for exactly that;
        // elsewhere arrival plus the settle time below has to do.
        if constexpr (C::knows_followers) {
            while (x->c->followers() - x->followers0 < std::uint64_t(x->n) && now_ns() < deadline)
                std::this_thread::sleep_for(std::chrono::microseconds(50));
        }
        // Long enough for every follower to stop spinning and park, so the
        // figure is the wake path, not a lucky spinner.
        std::this_thread::sleep_for(std::chrono::milliseconds(3));
        return now_ns();
    };

    for (int r = 0; r < o.rounds; ++r) {
        arrived.store(0);
        leader_in.store(false);
        LeaderCtx ctx{&c, n, &arrived, &leader_in, c.followers()};
        {
            std::lock_guard<std::mutex> lk(mu);
            done = 0;
            round = r;
        }
        cv.notify_all();
        c.call(key, sizeof key - 1, Work{leader_fn, &ctx});
        std::unique_lock<std::mutex> lk(mu);
        cv.wait(lk, [&] { return done == n; });
    }
    {
        std::lock_guard<std::mutex> lk(mu);
        round = o.rounds;
    }
    cv.notify_all();
    for (auto &th : followers) th.join();

    auto pct = [&](double p) -> double {
        if (samples.empty()) return -1;
        std::size_t i = std::size_t(p * double(samples.size() - 1));
        std::nth_element(samples.begin(), samples.begin() + long(i), samples.end());
        return double(samples[i]);
    };
    double p50 = pct(0.5), p99 = pct(0.99), mx = pct(1.0);
    std::printf(
        "{\"kind\":\"wake\",\"contender\":\"%s\",\"followers\":%d,\"rounds\":%d,\"samples\":%zu,"
        "\"late\":%d,\"wake_p50_ns\":%.0f,\"wake_p99_ns\":%.0f,\"wake_max_ns\":%.0f}\n",
        o.contender.c_str(), n, o.rounds, samples.size(), late.load(), p50, p99, mx);
}

// ------------------------------------------------------- callback followers
//
// 64 followers that wait without a thread each (sf_group_begin +
// sf_call_on_done, as an event loop's futures do): the leader's finish runs
// every done callback.  A sample is the time from the start of the finish
// to the last callback's return, i.e. until all N completions were
// delivered.
struct CallbackRound {
    std::atomic<int> left{0};
    std::uint64_t last_ns = 0;
};

void count_done(int status, sf_result *, int, void *payload) {
    auto *r = static_cast<CallbackRound *>(payload);
    if (status != SF_OK) die("callback follower: status not SF_OK");
    if (r->left.fetch_sub(1) == 1) r->last_ns = now_ns();
}

std::vector<std::uint32_t> percentile_sort(std::vector<std::uint32_t> v) {
    std::sort(v.begin(), v.end());
    return v;
}

void print_latency(const char *kind, int n, int rounds, std::vector<std::uint32_t> samples) {
    samples = percentile_sort(std::move(samples));
    auto pct = [&](double p) -> double {
        return samples.empty() ? -1 : double(samples[std::size_t(p * double(samples.size() - 1))]);
    };
    std::printf(
        "{\"kind\":\"%s\",\"contender\":\"capi\",\"followers\":%d,\"rounds\":%d,"
        "\"samples\":%zu,\"p50_ns\":%.0f,\"p99_ns\":%.0f,\"max_ns\":%.0f}\n",
        kind, n, rounds, samples.size(), pct(0.5), pct(0.99), pct(1.0));
}

void run_wake_callbacks(int n, int rounds) {
    CapiContender c;
    std::vector<sf_call *> calls(static_cast<std::size_t>(n), nullptr);
    std::vector<std::uint32_t> samples;
    for (int r = 0; r < rounds + 10; ++r) {  // the first 10 warm the caches
        sf_call *leader = nullptr;
        if (sf_group_begin(c.g, "cb", 2, &leader) != SF_LEADER) die("callback wake: no leader");
        CallbackRound round;
        round.left = n;
        for (auto &f : calls) {
            if (sf_group_begin(c.g, "cb", 2, &f) != SF_FOLLOWER) die("callback wake: no follower");
            if (sf_call_on_done(f, count_done, &round) != SF_OK) die("callback wake: on_done");
        }
        std::uint64_t t0 = now_ns();
        if (sf_call_finish(leader, 0) != SF_OK) die("callback wake: finish");
        if (round.left.load() != 0) die("callback wake: a callback did not run during finish");
        if (r >= 10) samples.push_back(std::uint32_t(round.last_ns - t0));
        for (auto *f : calls) sf_call_release(f);
        sf_call_release(leader);
    }
    print_latency("wake_callbacks", n, rounds, std::move(samples));
}

// ------------------------------------------------------------ cancellation
//
// The time from the last interested caller giving up (sf_call_cancel on the
// last follower, the leader's caller having given up already) to the
// abandon callback running: what a binding's "stop the work" waits for.
void on_abandon_stamp(sf_call *, void *payload) {
    *static_cast<std::uint64_t *>(payload) = now_ns();
}

void run_cancel_latency(int n, int rounds) {
    CapiContender c;
    std::vector<sf_call *> calls(static_cast<std::size_t>(n), nullptr);
    std::vector<std::uint32_t> samples;
    for (int r = 0; r < rounds + 10; ++r) {
        sf_call *leader = nullptr;
        if (sf_group_begin(c.g, "cx", 2, &leader) != SF_LEADER) die("cancel: no leader");
        std::uint64_t stamped = 0;
        if (sf_call_on_abandon(leader, on_abandon_stamp, &stamped) != SF_OK)
            die("cancel: on_abandon");
        for (auto &f : calls)
            if (sf_group_begin(c.g, "cx", 2, &f) != SF_FOLLOWER) die("cancel: no follower");
        if (sf_call_cancel(leader) != 0) die("cancel: abandoned too early");
        for (int i = 0; i + 1 < n; ++i)
            if (sf_call_cancel(calls[std::size_t(i)]) != 0) die("cancel: abandoned too early");
        std::uint64_t t0 = now_ns();
        if (sf_call_cancel(calls[std::size_t(n - 1)]) != 1)
            die("cancel: the last one did not abandon");
        if (r >= 10) samples.push_back(std::uint32_t(stamped - t0));
        sf_call_finish(leader, 0);
        for (auto *f : calls) sf_call_release(f);
        sf_call_release(leader);
    }
    print_latency("cancel_latency", n, rounds, std::move(samples));
}

// ------------------------------------------------------ core-to-core handoff
//
// No library at all: two threads take turns writing one cache line (each
// waits, spinning, for the other's write, then writes).  ns per one-way
// handoff is the floor under any call that writes state the other core
// wrote last, which is what a hot key on two threads does at least once
// per call.  The figure depends on where the host placed the two vCPUs
// (two hyperthreads of one core, two cores, two sockets), not on us.
void run_handoff(int round_trips) {
    alignas(64) static std::atomic<std::uint32_t> line{0};
    line.store(0);
    constexpr int kChunk = 1000;  // round trips per sample
    const int chunks = std::max(1, round_trips / kChunk);
    std::vector<std::uint32_t> samples;
    samples.reserve(std::size_t(chunks));
    std::thread other([&] {
        for (std::uint32_t v = 1; v < std::uint32_t(2 * chunks * kChunk); v += 2) {
            while (line.load(std::memory_order_acquire) != v) {}
            line.store(v + 1, std::memory_order_release);
        }
    });
    std::uint32_t v = 0;
    for (int c = 0; c < chunks; ++c) {
        const std::uint64_t t0 = now_ns();
        for (int i = 0; i < kChunk; ++i, v += 2) {
            line.store(v + 1, std::memory_order_release);
            while (line.load(std::memory_order_acquire) != v + 2) {}
        }
        samples.push_back(std::uint32_t((now_ns() - t0) / (2 * kChunk)));
    }
    other.join();
    samples = percentile_sort(std::move(samples));
    std::printf(
        "{\"kind\":\"handoff\",\"round_trips\":%d,\"samples\":%zu,"
        "\"p10_ns\":%u,\"p50_ns\":%u,\"p90_ns\":%u}\n",
        chunks * kChunk, samples.size(), samples[samples.size() / 10], samples[samples.size() / 2],
        samples[samples.size() * 9 / 10]);
}

}  // namespace

int main(int argc, char **argv) {
    Options o = parse(argc, argv);
    if (sf_version_number() != SF_VERSION_NUMBER) die("header/library version mismatch");
    if (o.handoff > 0) {
        run_handoff(o.handoff);
    } else if (o.wake_callbacks > 0) {
        run_wake_callbacks(o.wake_callbacks, o.rounds);
    } else if (o.cancel > 0) {
        run_cancel_latency(o.cancel, o.rounds);
    } else if (o.contender == "capi") {
        if (o.wake > 0) run_wake<CapiContender>(o);
        else run_cell<CapiContender>(o);
    } else if (o.contender == "naive") {
        if (o.wake > 0) run_wake<NaiveContender>(o);
        else run_cell<NaiveContender>(o);
    } else if (o.contender == "apifloor") {
        if (o.wake > 0) die("--wake does not apply to apifloor");
        run_cell<ApiFloorContender>(o);
    } else if (o.contender == "floor") {
        if (o.wake > 0) run_wake<FloorContender>(o);
        else run_cell<FloorContender>(o);
    } else {
        die("unknown --contender (capi, naive, floor, apifloor)");
    }
    std::fflush(stdout);
    return 0;
}
