#include "core/thread.hpp"

#include <pthread.h>

#include <atomic>

namespace sf {
namespace detail {

__thread ThreadState t_state __attribute__((tls_model("initial-exec")));

namespace {
std::atomic<uint64_t> g_next_serial{1};

// Bit i set: stripe i is owned by a live thread.  Stripe 0 is the shared
// one and is never owned.
std::atomic<uint64_t> g_stripes_owned{1};

// The exit hook is a pthread key: its destructor costs nothing per thread
// (a C++ thread_local destructor would make glibc allocate a list entry for
// every new thread).  The library is linked with -z nodelete, so a dlclose
// (a Lua state or a JVM unloading a binding) never unmaps the code a later
// thread exit calls into.
//
// Both the key and the hooks are written by static initialisation, which a
// dlopen on one thread runs while other threads may already be exiting
// through an earlier load's key (the loader's lock orders them, but
// ThreadSanitizer cannot see it): so they are published with release
// stores and read with acquire loads, which cost nothing that matters at
// a thread's start and exit.
// -1 until created; stays -1 if the process has no key left
// (PTHREAD_KEYS_MAX), and then threads exit without the hooks: their cached
// blocks stay where they are instead of going back to the shared pool.
std::atomic<long> g_exit_key{-1};

// What the rooms above this one (the block caches) want done at a thread's
// exit, registered during static initialisation: this room calls them
// without depending on them.
constexpr int kMaxExitHooks = 4;
void (*g_exit_hooks[kMaxExitHooks])() noexcept;
std::atomic<int> g_exit_hook_count{0};

void release_stripe(ThreadState &t) noexcept {
    uint32_t s = t.stripe;
    if (s >= 1 && s < kSharedStripe) {
        // Release: the counts this thread stored are visible to the next
        // owner, which continues from them.
        g_stripes_owned.fetch_and(~(uint64_t(1) << s), std::memory_order_release);
    }
    t.stripe = kSharedStripe;
    t.stripe_off = 0;
}

void on_thread_exit(void *) noexcept {
    ThreadState &t = t_state;
    t.life = kDead;  // from here on (later TLS destructors) use shared paths
    const int hooks = g_exit_hook_count.load(std::memory_order_acquire);
    for (int i = 0; i < hooks; ++i) g_exit_hooks[i]();
    release_stripe(t);
}

struct KeyInit {
    KeyInit() noexcept {
        pthread_key_t key;
        if (pthread_key_create(&key, on_thread_exit) == 0)
            g_exit_key.store(long(key), std::memory_order_release);
    }
} g_key_init;
}  // namespace

void at_thread_exit(void (*hook)() noexcept) noexcept {
    // Static initialisation of this library: one thread, in order.
    const int n = g_exit_hook_count.load(std::memory_order_relaxed);
    if (n < kMaxExitHooks) {
        g_exit_hooks[n] = hook;
        g_exit_hook_count.store(n + 1, std::memory_order_release);
    }
}

uint64_t assign_serial() noexcept {
    uint64_t s = g_next_serial.fetch_add(1, std::memory_order_relaxed);
    t_state.serial = s;
    return s;
}

void register_thread() noexcept {
    ThreadState &t = t_state;
    if (t.life != kNew) return;
    t.life = kActive;
    if (!t.serial) assign_serial();  // flight_new reads it without a check
    const long key = g_exit_key.load(std::memory_order_acquire);
    if (key >= 0)
        pthread_setspecific(pthread_key_t(key), &t);  // non-NULL: on_thread_exit runs at exit
}

uint32_t claim_stripe() noexcept {
    ThreadState &t = t_state;
    if (t.stripe) return t.stripe;
    if (t.life == kDead) return t.stripe = kSharedStripe;
    register_thread();
    uint64_t owned = g_stripes_owned.load(std::memory_order_relaxed);
    for (;;) {
        uint64_t free_bits = ~owned;
        if (!free_bits) return t.stripe = kSharedStripe;
        uint32_t s = uint32_t(__builtin_ctzll(free_bits));
        // Acquire: continue from the counts the previous owner stored.
        if (g_stripes_owned.compare_exchange_weak(owned, owned | (uint64_t(1) << s),
                                                  std::memory_order_acquire,
                                                  std::memory_order_relaxed)) {
            t.stripe_off = s * kStripeBytes;
            return t.stripe = s;
        }
    }
}

void threads_after_fork_child() noexcept {
    uint32_t s = t_state.stripe;
    uint64_t mine = s >= 1 && s < kSharedStripe ? uint64_t(1) << s : 0;
    g_stripes_owned.store(1 | mine, std::memory_order_relaxed);
}

}  // namespace detail
}  // namespace sf
