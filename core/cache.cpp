#include "core/cache.hpp"

#include <pthread.h>

#include <mutex>

#include "core/alloc.hpp"
#include "core/flight.hpp"

namespace sf {
namespace detail {

namespace {
constexpr int kCaches = 2;
constexpr int kLocalMax = 64;        // blocks a thread keeps
constexpr int kBatch = kLocalMax / 2; // blocks traded with the global list
constexpr std::size_t kGlobalMax = 8192;

// One mutex for both global lists: they are touched once per kBatch calls.
// Held across fork() (prepare/parent/child) so the child never inherits a
// list in the middle of an update.
std::mutex g_mu;

struct LocalStack {
    BlockCache::Node *top = nullptr;
    int count = 0;
};

struct Local;
thread_local bool t_dead = false;

struct Local {
    LocalStack stacks[kCaches];
    ~Local();
};
thread_local Local t_local;

BlockCache g_flights(sizeof(Flight));
BlockCache g_calls(sizeof(Call));

BlockCache *cache_by_index(int i) noexcept { return i == 0 ? &g_flights : &g_calls; }

void push_global(BlockCache &c, BlockCache::Node *n) noexcept {
    // caller holds g_mu
    if (c.closed_ || c.global_count_ >= kGlobalMax) {
        dealloc(n);
        return;
    }
    n->next = c.global_;
    c.global_ = n;
    ++c.global_count_;
}

Local::~Local() {
    t_dead = true;
    std::lock_guard<std::mutex> lock(g_mu);
    for (int i = 0; i < kCaches; ++i) {
        BlockCache &c = *cache_by_index(i);
        while (BlockCache::Node *n = stacks[i].top) {
            stacks[i].top = n->next;
            push_global(c, n);
        }
        stacks[i].count = 0;
    }
}

struct AtExit {
    AtExit() noexcept {
        g_flights.index_ = 0;
        g_calls.index_ = 1;
        pthread_atfork([] { g_mu.lock(); }, [] { g_mu.unlock(); }, [] { g_mu.unlock(); });
    }
    ~AtExit() {
        g_flights.drain();
        g_calls.drain();
    }
} g_at_exit;
}  // namespace

void *BlockCache::get() noexcept {
    if (!t_dead) {
        LocalStack &s = t_local.stacks[index_];
        if (!s.top) {
            std::lock_guard<std::mutex> lock(g_mu);
            for (int i = 0; i < kBatch && global_; ++i) {
                Node *n = global_;
                global_ = n->next;
                --global_count_;
                n->next = s.top;
                s.top = n;
                ++s.count;
            }
        }
        if (Node *n = s.top) {
            s.top = n->next;
            --s.count;
            return n;
        }
    }
    return alloc(size_);
}

void BlockCache::put(void *block) noexcept {
    Node *n = static_cast<Node *>(block);
    if (t_dead) {
        std::lock_guard<std::mutex> lock(g_mu);
        push_global(*this, n);
        return;
    }
    LocalStack &s = t_local.stacks[index_];
    n->next = s.top;
    s.top = n;
    if (++s.count > kLocalMax) {
        std::lock_guard<std::mutex> lock(g_mu);
        for (int i = 0; i < kBatch; ++i) {
            Node *m = s.top;
            s.top = m->next;
            --s.count;
            push_global(*this, m);
        }
    }
}

void BlockCache::drain() noexcept {
    std::lock_guard<std::mutex> lock(g_mu);
    closed_ = true;
    while (Node *n = global_) {
        global_ = n->next;
        dealloc(n);
    }
    global_count_ = 0;
    if (!t_dead) {
        LocalStack &s = t_local.stacks[index_];
        while (Node *n = s.top) {
            s.top = n->next;
            dealloc(n);
        }
        s.count = 0;
    }
}

BlockCache &flight_cache() noexcept { return g_flights; }
BlockCache &call_cache() noexcept { return g_calls; }

}  // namespace detail
}  // namespace sf
