// Synchronisation helpers for the wrapper's tests: every wait is on an
// observable condition (a gate opened by the test, or the group's own stats),
// never on elapsed time.  The deadline only turns a bug into a failure
// instead of a hung run.
#ifndef SINGLEFLIGHT_CPP_TEST_SUPPORT_HPP
#define SINGLEFLIGHT_CPP_TEST_SUPPORT_HPP

#include "singleflight.hpp"

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stdexcept>
#include <thread>

namespace sftest {

constexpr std::chrono::seconds kDeadline{20};

// Spins (yielding the CPU) until pred() holds; false if the deadline passes.
template <class Pred>
bool eventually(Pred pred) {
    const auto until = std::chrono::steady_clock::now() + kDeadline;
    while (!pred()) {
        if (std::chrono::steady_clock::now() > until) return false;
        std::this_thread::yield();
    }
    return true;
}

// Called from inside a leader's fn: returns once n followers have joined the
// group, so the test knows they share this flight rather than a later one.
inline void await_followers(const singleflight::group &g, unsigned long long n) {
    if (!eventually([&] { return g.stats().followers >= n; }))
        throw std::runtime_error("followers never joined");
}

// A one-shot gate: wait() returns once open() has been called.
class gate {
public:
    void open() {
        std::lock_guard<std::mutex> lock(m_);
        open_ = true;
        cv_.notify_all();
    }
    void wait() {
        std::unique_lock<std::mutex> lock(m_);
        if (!cv_.wait_for(lock, kDeadline, [&] { return open_; }))
            throw std::runtime_error("gate never opened");
    }

private:
    std::mutex m_;
    std::condition_variable cv_;
    bool open_ = false;
};

}  // namespace sftest

#endif
