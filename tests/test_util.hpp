// Helpers shared by the GoogleTest suites: handshakes instead of sleeps.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>

#include "singleflight.h"

namespace sftest {

inline sf_group_stats stats_of(const sf_group *g) {
    sf_group_stats st{};
    st.version = SF_GROUP_STATS_VERSION;
    sf_group_stats_get(g, &st);
    return st;
}

// Blocks until the group's followers counter reaches n: the handshake that
// makes "the followers joined before the leader finished" certain.
inline void wait_followers(const sf_group *g, uint64_t n) {
    while (stats_of(g).followers < n) std::this_thread::yield();
}

// What a done callback (sf_done_fn) was told, for tests that register
// record_done with a Done as its payload.
struct Done {
    std::atomic<int> runs{0};
    std::atomic<int> status{99};
    std::atomic<bool> had_result{false};
};

inline void record_done(int status, sf_result *r, int, void *payload) {
    auto *d = static_cast<Done *>(payload);
    d->status = status;
    d->had_result = r != nullptr;
    d->runs++;
}

// A one-shot event.
class Event {
public:
    void set() {
        std::lock_guard<std::mutex> l(mu_);
        set_ = true;
        cv_.notify_all();
    }
    void wait() {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return set_; });
    }
    bool wait_for_ms(int ms) {
        std::unique_lock<std::mutex> l(mu_);
        return cv_.wait_for(l, std::chrono::milliseconds(ms), [&] { return set_; });
    }
    bool is_set() {
        std::lock_guard<std::mutex> l(mu_);
        return set_;
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    bool set_ = false;
};

// Counts down to zero, waking waiters.
class Latch {
public:
    explicit Latch(int n) : n_(n) {}
    void count_down() {
        std::lock_guard<std::mutex> l(mu_);
        if (--n_ <= 0) cv_.notify_all();
    }
    void wait() {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return n_ <= 0; });
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    int n_;
};

// A group made with version-2 options: a table of `slots` home slots (0:
// the default) and a built-in pool capped at max_threads (0: the default).
inline sf_group *group_with(unsigned slots, unsigned max_threads) {
    sf_group_options o;
    if (sf_group_options_init(&o, SF_GROUP_OPTIONS_VERSION) != SF_OK) return nullptr;
    o.shards = slots;
    o.max_threads = max_threads;
    sf_group *g = nullptr;
    return sf_group_new(&g, &o) == SF_OK ? g : nullptr;
}

// RAII group for tests.
struct GroupPtr {
    sf_group *g = nullptr;
    explicit GroupPtr(const sf_group_options *o = nullptr) { sf_group_new(&g, o); }
    ~GroupPtr() {
        if (g) sf_group_free(g);
    }
    operator sf_group *() const { return g; }
};

}  // namespace sftest
