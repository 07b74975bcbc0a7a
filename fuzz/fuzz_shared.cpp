// libFuzzer target for shared groups: the input bytes are a program of
// operations on one shared group opened twice in this process (two
// attachments, two "processes" of the group), interleaved with writes of
// arbitrary bytes at arbitrary offsets of the live segment: the stray
// writes of a buggy peer.
//
// Until the first such write every result is checked: a value read back is
// the one its key's leader stored (values are a pattern of their key and
// length), the counters add up, and at the end nothing is left in flight and
// the arena is empty.  After it, only one thing is asked of the library, the
// header's promise for a corrupted segment: an error, never a crash, a wild
// access (ASan), undefined behaviour (UBSan) or a hang.  Segment locks wait
// 1 ms then, not 2 s, so that a lock word made to look held costs little.
//
// Nothing here blocks: waits poll (timeout 0), and sf_group_do runs only
// while the model knows no unfinished leader of its key, before any write.
// Under TSan the writes are skipped: the library's helper thread reads the
// segment while this thread would write it, a race by construction.

#include <singleflight.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/group.hpp"
#include "core/shared.hpp"
#include "fuzz/harness.hpp"

#if defined(__SANITIZE_THREAD__)
#define SF_FUZZ_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SF_FUZZ_TSAN 1
#endif
#endif

namespace {

using sf_fuzz::Input;

constexpr int kKeys = 6;
constexpr int kMaxCalls = 12;
constexpr int kMaxResults = 8;

std::string key_of(int k) {
    if (k == kKeys - 1) return std::string(100, 'L');  // stored in the arena
    return "k" + std::to_string(k);
}

// Byte i of key k's value: any mix-up of keys, lengths or arena blocks shows.
unsigned char pattern(int k, size_t i) { return (unsigned char)(k * 37 + i * 13 + 1); }

std::string value_of(int k, size_t len) {
    std::string v(len, '\0');
    for (size_t i = 0; i < len; ++i) v[i] = char(pattern(k, i));
    return v;
}

struct Call {
    sf_call *c;
    int key;
    bool leader, finished, cancelled;
};

struct Result {
    sf_result *r;
    int key;
};

struct State {
    Input in;
    sf_group *g[2];
    std::vector<Call> calls;
    std::vector<Result> results;
    bool strict = true;
};

void check_result(State &st, sf_result *r, int key) {
    size_t n = 0;
    const void *v = sf_result_bytes(r, &n);
    if (!st.strict) {
        volatile unsigned char sink = 0;  // touch every byte: ASan sees a wild one
        for (size_t i = 0; i < n; ++i) sink = sink + static_cast<const unsigned char *>(v)[i];
        (void)sink;
        return;
    }
    EXPECT(n == 0 || v != nullptr);
    for (size_t i = 0; i < n; ++i)
        EXPECT_EQ(static_cast<const unsigned char *>(v)[i], pattern(key, i));
}

void keep_or_release(State &st, sf_result *r, int key) {
    if (!r) return;
    check_result(st, r, key);
    if (st.results.size() < kMaxResults) {
        st.results.push_back(Result{r, key});
    } else {
        sf_result_release(r);
    }
}

bool unfinished_leader(const State &st, int key) {
    for (const Call &c : st.calls)
        if (c.key == key && c.leader && !c.finished) return true;
    return false;
}

struct DoCtx {
    int key;
    size_t len;
    bool panic;
};

int do_fn(sf_call *call, void *p) {
    auto *d = static_cast<DoCtx *>(p);
    if (d->panic) return sf_call_panic(call, "fuzz panic"), 0;
    const std::string v = value_of(d->key, d->len);
    sf_call_set_bytes(call, v.data(), v.size());
    return 0;
}

void check_stats(State &st, sf_group *g) {
    sf_group_stats s{};
    s.version = SF_GROUP_STATS_VERSION;
    const int rc = sf_group_stats_get(g, &s);
    if (!st.strict) return;
    EXPECT_EQ(rc, SF_OK);
    EXPECT_EQ(s.calls, s.leaders + s.followers);
    EXPECT(s.in_flight <= kMaxCalls);
    EXPECT_EQ(s.processes, 2);
}

void poke(State &st) {
    const uint32_t off = st.in.u32();
    const uint8_t len = st.in.byte() % 8 + 1;
#if defined(SF_FUZZ_TSAN)
    (void)off;
    for (int i = 0; i < len; ++i) st.in.byte();
#else
    size_t size = 0;
    auto *base = static_cast<unsigned char *>(
        sf::testing_shm::segment_bytes(reinterpret_cast<sf::Group *>(st.g[0])->shared(), &size));
    for (int i = 0; i < len; ++i) base[(size_t(off) + i) % size] = st.in.byte();
    if (st.strict) sf::testing_shm::set_lock_patience(1000 * 1000);
    st.strict = false;
#endif
}

void run_op(State &st) {
    const uint8_t op = st.in.byte();
    const int att = op >> 7;
    sf_group *g = st.g[att];
    const uint8_t pick = st.in.byte();  // read always: an input means the same whatever came before
    Call *call = st.calls.empty() ? nullptr : &st.calls[pick % st.calls.size()];
    switch ((op & 0x7f) % 13) {
        case 0: {  // begin
            if (st.calls.size() >= kMaxCalls) return;
            const int key = st.in.byte() % kKeys;
            const std::string k = key_of(key);
            sf_call *c = nullptr;
            const int rc = sf_group_begin(g, k.data(), k.size(), &c);
            sf_fuzz::trace("begin %d key %d: %d", att, key, rc);
            if (st.strict) {
                EXPECT(rc == SF_LEADER || rc == SF_FOLLOWER);
                if (!unfinished_leader(st, key)) EXPECT_EQ(rc, SF_LEADER);
            }
            if (rc == SF_LEADER || rc == SF_FOLLOWER)
                st.calls.push_back(Call{c, key, rc == SF_LEADER, false, false});
            return;
        }
        case 1: {  // a value
            if (!call) return;
            const size_t len = size_t(st.in.byte()) * 3;
            const std::string v = value_of(call->key, len);
            const int rc = sf_call_set_bytes(call->c, v.data(), v.size());
            sf_fuzz::trace("set_bytes %zu: %d", len, rc);
            if (st.strict && call->leader && !call->finished && !call->cancelled)
                EXPECT(rc == SF_OK || rc == SF_ENOMEM);
            return;
        }
        case 2:  // finish
            if (!call) return;
            sf_fuzz::trace("finish: %d", sf_call_finish(call->c, st.in.byte() % 3));
            if (call->leader) call->finished = true;
            return;
        case 3:  // panic
            if (!call) return;
            sf_fuzz::trace("panic: %d", sf_call_panic(call->c, "fuzz"));
            if (call->leader) call->finished = true;
            return;
        case 4: {  // poll
            if (!call) return;
            sf_result *r = nullptr;
            const int rc = sf_call_wait(call->c, 0, &r, nullptr);
            sf_fuzz::trace("wait: %d", rc);
            if (st.strict)
                EXPECT(rc == SF_OK || rc == SF_EPANIC || rc == SF_EGOEXIT || rc == SF_ETIMEDOUT ||
                       rc == SF_ECANCELED || rc == SF_EDEADLK);
            if (rc == SF_OK) keep_or_release(st, r, call->key);
            else if (r) sf_result_release(r);
            return;
        }
        case 5: {  // release
            if (!call) return;
            sf_call_release(call->c);
            sf_fuzz::trace("release");
            if (call->leader && !call->finished) {
                // Its flight ends as SF_EGOEXIT: no longer an unfinished leader.
            }
            *call = st.calls.back();
            st.calls.pop_back();
            return;
        }
        case 6:  // cancel
            if (!call) return;
            sf_fuzz::trace("cancel: %d", sf_call_cancel(call->c));
            call->cancelled = true;
            return;
        case 7: {  // do
            DoCtx d{st.in.byte() % kKeys, size_t(st.in.byte()) * 3, st.in.byte() % 8 == 0};
            if (!st.strict || unfinished_leader(st, d.key)) return;
            const std::string k = key_of(d.key);
            sf_result *r = nullptr;
            const int rc = sf_group_do(g, k.data(), k.size(), do_fn, &d, &r, nullptr);
            sf_fuzz::trace("do %d key %d: %d", att, d.key, rc);
            EXPECT(rc == SF_OK || rc == SF_EPANIC);
            EXPECT_EQ(rc == SF_EPANIC, d.panic);
            keep_or_release(st, r, d.key);
            return;
        }
        case 8: {  // forget
            const std::string k = key_of(st.in.byte() % kKeys);
            sf_fuzz::trace("forget: %d", sf_group_forget(g, k.data(), k.size()));
            return;
        }
        case 9:
            check_stats(st, g);
            return;
        case 10: {  // read a kept result again, then drop it
            if (st.results.empty()) return;
            const size_t i = st.in.byte() % st.results.size();
            check_result(st, st.results[i].r, st.results[i].key);
            (void)sf_result_error(st.results[i].r);
            (void)sf_result_panic_message(st.results[i].r);
            sf_result_release(st.results[i].r);
            st.results[i] = st.results.back();
            st.results.pop_back();
            return;
        }
        case 11:
            poke(st);
            return;
        case 12: {  // an eventfd, polled
            if (!call) return;
            const int fd = sf_call_fd(call->c);
            sf_fuzz::trace("fd: %d readable %d", fd, fd >= 0 ? sf_fuzz::readable_now(fd) : -1);
            return;
        }
    }
}

int g_runs = 0;

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    State st{Input{data, size}, {nullptr, nullptr}, {}, {}, true};
    sf::testing_shm::set_lock_patience(int64_t(2) * 1000 * 1000 * 1000);
    sf::testing_shm::fix_seed(true);
    const std::string name = "sffuzz-" + std::to_string(getpid()) + "-" + std::to_string(g_runs++);
    sf_shared_options o;
    sf_shared_options_init(&o, SF_SHARED_OPTIONS_VERSION);
    o.table_slots = 1024;  // 16 records a stripe: the model's few keys never fill one
    o.arena_bytes = 64 << 10;
    o.max_value_bytes = 16 << 10;
    for (sf_group *&g : st.g) EXPECT_EQ(sf_group_open_shared(name.c_str(), &o, &g), SF_OK);

    for (int steps = 0; steps < 300 && st.in.n > 0; ++steps) run_op(st);

    // Wind down: every result and handle dropped, leaders finished first.
    for (Result &r : st.results) sf_result_release(r.r);
    for (Call &c : st.calls)
        if (c.leader && !c.finished) sf_call_finish(c.c, 0);
    for (Call &c : st.calls) sf_call_release(c.c);
    if (st.strict) {
        for (sf_group *g : st.g) {
            sf_group_stats s{};
            s.version = SF_GROUP_STATS_VERSION;
            EXPECT_EQ(sf_group_stats_get(g, &s), SF_OK);
            EXPECT_EQ(s.in_flight, 0);
            EXPECT_EQ(s.arena_used, 0);
        }
    }
    for (sf_group *g : st.g) {
        const int rc = sf_group_free(g);
        if (st.strict) EXPECT_EQ(rc, SF_OK);
    }
    // A corrupted segment may not be removed by its last close: this run's
    // name is never used again, so remove it here.
    unlink(("/dev/shm/libsingleflight." + name).c_str());
    return 0;
}
