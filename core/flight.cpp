#include "core/flight.hpp"

#include <unistd.h>

#include <cstring>

#include "core/alloc.hpp"
#include "core/cache.hpp"
#include "core/platform.hpp"
#include "core/shared.hpp"
#include "core/thread.hpp"

namespace sf {

const char kPanicMessageLost[] = "panic (message lost: out of memory)";
const char kPanicDefault[] = "panic";

namespace {
// Waiters poll this many times before parking: a trivial fn finishes in
// well under a microsecond, and a futex round trip costs several.
constexpr int kSpins = 200;
constexpr int kYields = 2;

void free_ext(Flight *f) noexcept {
    Ext *e = f->ext.load(std::memory_order_relaxed);
    if (!e) return;
    if (f->lflags & kMessageOwned) detail::dealloc(const_cast<char *>(e->message));
    detail::ext_cache().put(e);
    f->ext.store(nullptr, std::memory_order_relaxed);  // what flight_new relies on
}
}  // namespace

bool flight_copy_heap_key(Flight *f, Key key) noexcept {
    auto *copy = static_cast<unsigned char *>(detail::alloc(key.size));
    if (!copy) return false;
    std::memcpy(copy, key.data, key.size);
    f->heap_key = copy;
    return true;
}

void flight_discard(Flight *f) noexcept {
    if (f->key_len() > kInlineKey) detail::dealloc(f->heap_key);
    detail::flight_cache().put(f);
}

bool flight_key_equals(const Flight *f, Key key) noexcept {
    const std::size_t len = f->key_len();
    return len == key.size && (len == 0 || std::memcmp(f->key(), key.data, len) == 0);
}

void flight_free_rare(Flight *f) noexcept {
    free_ext(f);
    if (f->key_len() > kInlineKey) detail::dealloc(f->heap_key);
}

void flight_free_slow(Flight *f) noexcept {
    // A shared group's result takes this way (its destroy is a marker).
    if (f->role == kRoleSharedResult) return shared_result_free(f);
    const DestroyFn destroy = f->destroy;
    void *const value = f->value;
    flight_free_rare(f);
    detail::flight_cache().put(f);
    run_destroy(destroy, value);
}

Ext *flight_ext(Flight *f) noexcept {
    Ext *e = f->ext.load(std::memory_order_relaxed);
    if (e) return e;
    e = static_cast<Ext *>(detail::ext_cache().get());
    if (!e) return nullptr;
    e->message = nullptr;
    e->leader_reg = nullptr;
    e->abandon = AbandonCallback{nullptr, nullptr, nullptr};
    f->ext.store(e, std::memory_order_release);
    return e;
}

uint32_t flight_wait_unpublished(Flight *f, uint32_t bits) noexcept {
    for (unsigned spins = 0;; ++spins) {
        const uint32_t s = f->state.load(std::memory_order_acquire);
        if (s & bits) return s;
        if (spins < 64) {
            detail::cpu_relax();
        } else {
            detail::yield_cpu();
        }
    }
}

bool flight_take_leader_bit(Flight *f, uint32_t bit) noexcept {
    uint32_t s = f->state.load(std::memory_order_relaxed);
    for (;;) {
        if (s & kFinished) return false;
        if (s & kWriting) {  // a value is being stored: let it land first
            detail::cpu_relax();
            s = f->state.load(std::memory_order_relaxed);
            continue;
        }
        if (f->state.compare_exchange_weak(s, s | bit, std::memory_order_acq_rel,
                                           std::memory_order_relaxed))
            return true;
    }
}

void flight_lock(Flight *f) noexcept {
    for (unsigned spins = 0;; ++spins) {
        uint32_t s = f->state.load(std::memory_order_relaxed);
        if (!(s & kLocked) &&
            f->state.compare_exchange_weak(s, s | kLocked, std::memory_order_acquire,
                                           std::memory_order_relaxed))
            return;
        if (spins < 100) {
            detail::cpu_relax();
        } else {
            detail::yield_cpu();  // the holder may be preempted
        }
    }
}

void flight_unlock(Flight *f) noexcept {
    f->state.fetch_and(~uint32_t(kLocked), std::memory_order_release);
}

char *copy_message(const char *msg) noexcept {
    std::size_t n = std::strlen(msg) + 1;
    char *p = static_cast<char *>(detail::alloc(n));
    if (p) std::memcpy(p, msg, n);
    return p;
}

void flight_fold(Flight *f, uint32_t joiners, bool unpublished) noexcept {
    // Their references were added before they left the slot (Table).
    if (joiners) f->interest.fetch_add(int32_t(joiners), std::memory_order_seq_cst);
    uint32_t bits =
        (joiners ? uint32_t(kShared) : 0u) | (unpublished ? uint32_t(kUnpublished) : 0u);
    // Release: a leader that sees kUnpublished sees the fold.
    if (bits) f->state.fetch_or(bits, std::memory_order_release);
}

const char *flight_panic_message(const Flight *f) noexcept {
    const Ext *e = f->ext.load(std::memory_order_acquire);
    return e && e->message ? e->message : kPanicMessageLost;
}

namespace {
// The header in front of a bytes value: its length, 8 bytes so that the
// bytes are as aligned as the block's start allows (8).
constexpr std::size_t kBytesHeader = 8;
constexpr std::size_t kSmallBytes = 64 - kBytesHeader;    // an Ext-sized block
constexpr std::size_t kMediumBytes = 128 - kBytesHeader;  // a Follower-sized block

unsigned char *bytes_block(void *value) noexcept {
    return static_cast<unsigned char *>(value) - kBytesHeader;
}
// Blocks of the call and ext caches: never read speculatively (unlike
// flights, which must stay flights), so they may hold anything.
void free_small_bytes(void *value) noexcept { detail::ext_cache().put(bytes_block(value)); }
void free_medium_bytes(void *value) noexcept { detail::call_cache().put(bytes_block(value)); }
void free_heap_bytes(void *value) noexcept { detail::dealloc(bytes_block(value)); }
static_assert(sizeof(Ext) == 64 && sizeof(Follower) == 128, "the bytes size classes");
}  // namespace

void *bytes_copy(const void *data, std::size_t len, DestroyFn *destroy) noexcept {
    void *block;
    if (len <= kSmallBytes) {
        block = detail::ext_cache().get();
        *destroy = free_small_bytes;
    } else if (len <= kMediumBytes) {
        block = detail::call_cache().get();
        *destroy = free_medium_bytes;
    } else {
        block = len > SIZE_MAX - kBytesHeader ? nullptr : detail::alloc(kBytesHeader + len);
        *destroy = free_heap_bytes;
    }
    if (!block) return nullptr;
    auto *b = static_cast<unsigned char *>(block);
    const uint64_t n = len;
    std::memcpy(b, &n, sizeof n);
    if (len) std::memcpy(b + kBytesHeader, data, len);
    return b + kBytesHeader;
}

const void *bytes_of(void *value, DestroyFn destroy, std::size_t *len) noexcept {
    if (destroy != free_small_bytes && destroy != free_medium_bytes && destroy != free_heap_bytes) {
        *len = 0;
        return nullptr;
    }
    uint64_t n;
    std::memcpy(&n, bytes_block(value), sizeof n);
    *len = std::size_t(n);
    return value;
}

void run_destroy(DestroyFn destroy, void *value) noexcept {
    if (!destroy) return;
    detail::NoCancel no_cancel;
    try {
        destroy(value);
    } catch (...) {
        // destroy must not throw or exit the thread (header); swallowing an
        // exception keeps the boundary shut.
    }
}

namespace {
bool gave_up(const std::atomic<uint8_t> *cancel_flags) noexcept {
    // seq_cst, against the cancel's store and its kCancelGenOne add: a
    // waiter that does not see kCancelled here read the state word before
    // the add, so its futex wait fails or is woken (flight_wake_waiters).
    return cancel_flags && (cancel_flags->load(std::memory_order_seq_cst) & kCancelled);
}
}  // namespace

WaitEnd flight_wait(Flight *f, int64_t timeout_ns,
                    const std::atomic<uint8_t> *cancel_flags) noexcept {
    if (f->done()) return kWaitDone;
    if (gave_up(cancel_flags)) return kWaitCancelled;
    if (timeout_ns == 0) return kWaitTimedOut;
    for (int i = 0; i < kSpins; ++i) {
        detail::cpu_relax();
        if (f->done()) return kWaitDone;
    }
    for (int i = 0; i < kYields; ++i) {
        detail::yield_cpu();
        if (f->done()) return kWaitDone;
        if (gave_up(cancel_flags)) return kWaitCancelled;
    }
    const int64_t deadline =
        timeout_ns > 0 ? detail::deadline_after(detail::now_ns(), timeout_ns) : 0;
    for (;;) {
        uint32_t s = f->state.load(std::memory_order_seq_cst);
        if (s & kDone) return kWaitDone;
        if (gave_up(cancel_flags)) return kWaitCancelled;
        if (!(s & kWaiters) &&
            !f->state.compare_exchange_weak(s, s | kWaiters, std::memory_order_seq_cst)) {
            continue;
        }
        int64_t left = -1;
        if (timeout_ns > 0) {
            left = deadline - detail::now_ns();
            if (left <= 0) break;
        }
        if (!detail::futex_wait(&f->state, s | kWaiters, left)) break;
    }
    // Timed out; what happened meanwhile still counts.
    if (f->done()) return kWaitDone;
    return gave_up(cancel_flags) ? kWaitCancelled : kWaitTimedOut;
}

void flight_wake_waiters(Flight *f) noexcept {
    const uint32_t old = f->state.fetch_add(kCancelGenOne, std::memory_order_seq_cst);
    if (old & kWaiters) detail::futex_wake_all(&f->state);
}

}  // namespace sf
