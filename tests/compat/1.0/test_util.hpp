// Helpers shared by the GoogleTest suites: handshakes instead of sleeps.
#pragma once

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
