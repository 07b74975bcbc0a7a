#include "core/cache.hpp"

#include <pthread.h>

#include <mutex>

#include "core/alloc.hpp"
#include "core/flight.hpp"
#include "core/testing.hpp"

namespace sf {
namespace detail {

namespace {
constexpr int kCaches = 2;
constexpr int kLocalMax = 16;        // blocks a thread keeps (few: a hoarding follower starves leaders)
constexpr int kBatch = kLocalMax / 2; // blocks traded with the global list
constexpr std::size_t kGlobalMax = 8192;

// One mutex for both global lists: they are touched once per kBatch calls.
// Held across fork() (prepare/parent/child) so the child never inherits a
// list in the middle of an update.
std::mutex g_mu;

// Plain aggregates (no member initialisers): thread_local storage starts
// zeroed, and a type with initialisers would route every access through the
// TLS init wrapper.
struct LocalStack {
    BlockCache::Node *top;
    int count;
};

// The thread's caches.  Plain data in initial-exec TLS: reaching it is one
// instruction, with no TLS wrapper call on the hot path.
struct ThreadCaches {
    LocalStack stacks[kCaches];
    bool registered;
    bool dead;  // flushed at thread exit: go straight to the global list
};
__attribute__((tls_model("initial-exec"))) thread_local ThreadCaches t_caches;

// Flushes the caches when the thread exits, through a pthread key: its
// destructor costs nothing per thread (a C++ thread_local destructor would
// make glibc allocate a list entry for every new thread).  The library is
// linked with -z nodelete, so a dlclose (a Lua state or a JVM unloading a
// binding) never unmaps the code a later thread exit calls into.
pthread_key_t g_exit_key;
void flush_thread(void *) noexcept;
struct KeyInit {
    KeyInit() noexcept { pthread_key_create(&g_exit_key, flush_thread); }
} g_key_init;

BlockCache g_flights(sizeof(Flight), 0);
BlockCache g_calls(sizeof(Call), 1);

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

void flush_thread(void *) noexcept {
    ThreadCaches &t = t_caches;
    t.dead = true;
    std::lock_guard<std::mutex> lock(g_mu);
    for (int i = 0; i < kCaches; ++i) {
        BlockCache &c = *cache_by_index(i);
        while (BlockCache::Node *n = t.stacks[i].top) {
            t.stacks[i].top = n->next;
            push_global(c, n);
        }
        t.stacks[i].count = 0;
    }
}

// The caller's stack, or nullptr once the thread has flushed at exit.
LocalStack *local_stack(int index) noexcept {
    ThreadCaches &t = t_caches;
    if (__builtin_expect(!t.registered, 0)) {
        t.registered = true;
        pthread_setspecific(g_exit_key, &t);  // non-NULL: flush_thread runs at exit
    }
    return t.dead ? nullptr : &t.stacks[index];
}

struct AtExit {
    AtExit() noexcept {
        pthread_atfork([] { g_mu.lock(); }, [] { g_mu.unlock(); }, [] { g_mu.unlock(); });
    }
    ~AtExit() {
        g_flights.drain();
        g_calls.drain();
    }
} g_at_exit;
}  // namespace

void *BlockCache::get() noexcept {
    if (LocalStack *s = local_stack(index_)) {
        if (!s->top) {
            std::lock_guard<std::mutex> lock(g_mu);
            for (int i = 0; i < kBatch && global_; ++i) {
                Node *n = global_;
                global_ = n->next;
                --global_count_;
                n->next = s->top;
                s->top = n;
                ++s->count;
            }
        }
        if (Node *n = s->top) {
            s->top = n->next;
            --s->count;
            return n;
        }
    }
    return alloc(size_);
}

void BlockCache::put(void *block) noexcept {
    Node *n = static_cast<Node *>(block);
    LocalStack *s = local_stack(index_);
    if (!s) {
        std::lock_guard<std::mutex> lock(g_mu);
        push_global(*this, n);
        return;
    }
    n->next = s->top;
    s->top = n;
    if (++s->count > kLocalMax) {
        std::lock_guard<std::mutex> lock(g_mu);
        for (int i = 0; i < kBatch; ++i) {
            Node *m = s->top;
            s->top = m->next;
            --s->count;
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
    // Free the calling thread's blocks too (at exit that is the main
    // thread, whose thread_local destructors may already have run), and
    // send whatever it frees later (other static destructors) to the
    // closed global list, which frees at once.
    t_caches.dead = true;
    LocalStack &s = t_caches.stacks[index_];
    while (Node *n = s.top) {
        s.top = n->next;
        dealloc(n);
    }
    s.count = 0;
}

void BlockCache::reset() noexcept {
    std::lock_guard<std::mutex> lock(g_mu);
    while (Node *n = global_) {
        global_ = n->next;
        dealloc(n);
    }
    global_count_ = 0;
    LocalStack &s = t_caches.stacks[index_];
    while (Node *n = s.top) {
        s.top = n->next;
        dealloc(n);
    }
    s.count = 0;
}

BlockCache &flight_cache() noexcept { return g_flights; }
BlockCache &call_cache() noexcept { return g_calls; }

}  // namespace detail

namespace testing {
void reset_caches() noexcept {
    detail::g_flights.reset();
    detail::g_calls.reset();
}
}  // namespace testing
}  // namespace sf
