// inflight: what a call costs with many keys in flight at once.  Begins N
// distinct keys with the two-phase API (every one a leader, all left in
// flight), then finishes and releases them, and reports nanoseconds per
// begin + finish.  A cold start or a cache flush in a proxy looks like this:
// many distinct keys in flight, none shared.
//
//   inflight --keys N [--shards S] [--rounds R] [--keylen L] [--contender C]
//
// Contenders: capi (the library), and two references run in the same way
// to tell the library's cost from the machine's:
//   floor  the least any design can do per key: take a 128-byte block from
//          a free list, write the key into it, publish it in a pre-sized
//          open-addressing array with one CAS, then take it out with one
//          CAS and give the block back.  No singleflight semantics at all.
//   umap   what a hand-written singleflight keeps: a std::unordered_map from
//          key to a heap record, under a mutex.
//
// Round 0 warms the block caches and the table (its figure is reported
// apart); the median of the others is the result.  One JSON line, like the
// other bench programs (bench/scale.py puts it beside Go's x/sync).
#include <singleflight.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <string_view>
#include <unordered_map>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <time.h>

namespace {

std::uint64_t now_ns() {
    return std::uint64_t(std::chrono::duration_cast<std::chrono::nanoseconds>(
                             std::chrono::steady_clock::now().time_since_epoch())
                             .count());
}

// The calling thread's CPU time: on a shared machine, wall time also counts
// the time spent descheduled.
std::uint64_t cpu_ns() {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return std::uint64_t(ts.tv_sec) * 1000000000u + std::uint64_t(ts.tv_nsec);
}

[[noreturn]] void die(const char *what) {
    std::fprintf(stderr, "inflight: %s\n", what);
    std::exit(2);
}

// ---------------------------------------------------------------- floor
struct alignas(128) Block {
    Block *next;
    std::uint64_t hash;
    unsigned char key[48];
};

std::uint64_t hash_key(const char *p, std::size_t n) {
    std::uint64_t h = 0x9e3779b97f4a7c15ull ^ n;
    for (std::size_t i = 0; i < n; ++i) h = (h ^ (unsigned char)p[i]) * 0x100000001b3ull;
    return h ^ (h >> 29);
}

struct Floor {
    std::vector<std::atomic<Block *>> slots;
    std::uint64_t mask;
    Block *free = nullptr;
    explicit Floor(long keys) {
        std::size_t n = 1;
        while (n < std::size_t(keys) * 2) n <<= 1;
        slots = std::vector<std::atomic<Block *>>(n);
        mask = n - 1;
    }
    Block *begin(const char *k, std::size_t n) {
        Block *b = free;
        if (b) free = b->next;
        else b = new Block;
        b->hash = hash_key(k, n);
        std::memcpy(b->key, k, n);
        for (std::uint64_t i = b->hash;; ++i) {
            Block *expect = nullptr;
            if (slots[i & mask].compare_exchange_strong(expect, b)) return b;
        }
    }
    void finish(Block *b) {
        for (std::uint64_t i = b->hash;; ++i) {
            Block *expect = b;
            if (slots[i & mask].compare_exchange_strong(expect, nullptr)) break;
        }
        b->next = free;
        free = b;
    }
};

}  // namespace

int main(int argc, char **argv) {
    long keys = 1000, rounds = 5;
    unsigned shards = 0;
    int keylen = 16;
    std::string contender = "capi";
    for (int i = 1; i < argc; ++i) {
        auto val = [&]() -> const char * {
            if (i + 1 >= argc) die("missing value");
            return argv[++i];
        };
        if (!std::strcmp(argv[i], "--keys")) keys = std::atol(val());
        else if (!std::strcmp(argv[i], "--shards"))
            shards = unsigned(std::strtoul(val(), nullptr, 10));
        else if (!std::strcmp(argv[i], "--rounds")) rounds = std::atol(val());
        else if (!std::strcmp(argv[i], "--keylen")) keylen = std::atoi(val());
        else if (!std::strcmp(argv[i], "--contender")) contender = val();
        else die("usage: inflight --keys N [--shards S] [--rounds R] [--keylen L] [--contender C]");
    }
    if (keys < 1 || rounds < 1 || keylen < 8 || keylen > 48) die("bad argument");

    // Keys of one length, made before timing: "k" and the index, padded.
    std::vector<char> keybuf(std::size_t(keys) * keylen, 'x');
    for (long k = 0; k < keys; ++k) {
        char tmp[32];
        int n = std::snprintf(tmp, sizeof tmp, "k%ld", k);
        std::memcpy(&keybuf[std::size_t(k) * keylen], tmp, std::size_t(n));
    }

    sf_group_options o;
    sf_group_options_init(&o, SF_GROUP_OPTIONS_VERSION);
    o.shards = shards;
    sf_group *g = nullptr;
    if (sf_group_new(&g, &o) != SF_OK) die("sf_group_new");

    std::vector<sf_call *> calls(std::size_t(keys), nullptr);
    Floor floor(contender == "floor" ? keys : 1);
    std::vector<Block *> blocks(contender == "floor" ? std::size_t(keys) : 0);
    struct Rec {
        int state;
    };
    std::mutex mu;
    std::unordered_map<std::string_view, std::unique_ptr<Rec>> umap;
    std::vector<double> per_round, cpu_round;
    double warm = 0, warm_cpu = 0;
    auto key = [&](long k) { return &keybuf[std::size_t(k) * keylen]; };
    for (long r = 0; r <= rounds; ++r) {
        const std::uint64_t t0 = now_ns(), c0 = cpu_ns();
        if (contender == "capi") {
            for (long k = 0; k < keys; ++k) {
                if (sf_group_begin(g, key(k), std::size_t(keylen), &calls[std::size_t(k)]) !=
                    SF_LEADER)
                    die("a distinct key did not lead");
            }
            for (long k = 0; k < keys; ++k) {
                if (sf_call_finish(calls[std::size_t(k)], 0) != SF_OK) die("sf_call_finish");
                sf_call_release(calls[std::size_t(k)]);
            }
        } else if (contender == "floor") {
            for (long k = 0; k < keys; ++k)
                blocks[std::size_t(k)] = floor.begin(key(k), std::size_t(keylen));
            for (long k = 0; k < keys; ++k) floor.finish(blocks[std::size_t(k)]);
        } else if (contender == "umap") {
            for (long k = 0; k < keys; ++k) {
                std::lock_guard<std::mutex> l(mu);
                auto &rec = umap[std::string_view(key(k), std::size_t(keylen))];
                if (rec) die("a distinct key was found");
                rec.reset(new Rec{1});
            }
            for (long k = 0; k < keys; ++k) {
                std::lock_guard<std::mutex> l(mu);
                umap.erase(std::string_view(key(k), std::size_t(keylen)));
            }
        } else {
            die("unknown --contender (capi, floor, umap)");
        }
        const double ns = double(now_ns() - t0) / double(keys);
        const double cpu = double(cpu_ns() - c0) / double(keys);
        if (r == 0) {
            warm = ns;
            warm_cpu = cpu;
        } else {
            per_round.push_back(ns);
            cpu_round.push_back(cpu);
        }
    }
    std::sort(per_round.begin(), per_round.end());
    std::sort(cpu_round.begin(), cpu_round.end());
    const double median = per_round[per_round.size() / 2];
    const double cpu_median = cpu_round[cpu_round.size() / 2];
    std::printf(
        "{\"kind\":\"inflight\",\"contender\":\"%s\",\"keys\":%ld,\"shards\":%u,"
        "\"rounds\":%ld,\"ns_per_key\":%.1f,\"min\":%.1f,\"max\":%.1f,\"first_round\":%.1f,"
        "\"cpu_ns_per_key\":%.1f,\"first_round_cpu\":%.1f}\n",
        contender.c_str(), keys, shards, rounds, median, per_round.front(), per_round.back(), warm,
        cpu_median, warm_cpu);
    if (sf_group_free(g) != SF_OK) die("sf_group_free");
    return 0;
}
