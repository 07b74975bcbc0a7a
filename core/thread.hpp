// What the library keeps per thread: the block caches' local stacks, the
// thread's stats stripe and its serial number.  One plain struct in
// initial-exec TLS, so reaching any of it is one instruction off the thread
// pointer, with no TLS wrapper call on the hot path.
#pragma once

#include <cstdint>

namespace sf {
namespace detail {

constexpr int kCaches = 3;  // flights, calls, exts (core/cache.hpp)

// A cached block, linked through its first word.
struct FreeBlock {
    FreeBlock *next;
};

struct LocalStack {
    FreeBlock *top;
    int count;
};

struct ThreadState {
    LocalStack stacks[kCaches];
    uint64_t serial;      // 0 until first asked for
    uint32_t stripe;      // 0 until assigned; then the stripe index, or kSharedStripe
    uint32_t stripe_off;  // an owned stripe's byte offset (never 0), else 0
    uint8_t life;         // ThreadLife
};

enum ThreadLife : uint8_t {
    kNew = 0,     // the thread-exit hook is not armed yet
    kActive = 1,  // armed: the local structures may be used
    kDead = 2,    // flushed at thread exit: use only the shared structures
};

// Plain aggregate, zero-initialised: no constructor, no TLS init wrapper.
extern __thread ThreadState t_state __attribute__((tls_model("initial-exec")));

// A number no other thread of the process ever gets, even after this one
// exits (thread-local addresses are reused; serials are not): the identity
// deadlock detection compares.
uint64_t assign_serial() noexcept;
inline uint64_t thread_serial() noexcept {
    uint64_t s = t_state.serial;
    return __builtin_expect(s != 0, 1) ? s : assign_serial();
}

// Arms the thread-exit hook (run the hooks below, give the stripe back) the
// first time a thread uses a per-thread structure.
void register_thread() noexcept;

// Adds a function every thread that registered runs at its exit (the block
// caches flush there).  Static initialisation only; at most a few.
void at_thread_exit(void (*hook)() noexcept) noexcept;

// Stats stripes (core/stats.hpp): each thread that counts owns one of
// kStripes - 1 stripes, which only it writes; threads beyond that share
// stripe 0 with atomic read-modify-writes.
constexpr uint32_t kStripes = 64;
constexpr uint32_t kSharedStripe = kStripes;  // t_state.stripe value: use stripe 0
uint32_t claim_stripe() noexcept;             // sets t_state.stripe, returns it
constexpr uint32_t kStripeBytes = 128;        // sizeof(Stats::Stripe)

// In a forked child: only the calling thread exists, so only its stripe
// stays owned.
void threads_after_fork_child() noexcept;

}  // namespace detail
}  // namespace sf
