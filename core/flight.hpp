// A flight is one execution of fn for one key, and it doubles as the shared,
// reference-counted result (sf_result) that every caller receives.  A call is
// one caller's handle on a flight (sf_call).
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>

#include "singleflight.h"

namespace sf {

struct Shard;
struct Call;

// Keys up to this many bytes live inside the flight: no allocation per call.
constexpr std::size_t kInlineKey = 48;

// Flight::state bits.  The word doubles as the futex waiters sleep on.
constexpr uint32_t kDone = 1;     // result published; never cleared
constexpr uint32_t kWaiters = 2;  // someone is (about to be) parked
constexpr uint32_t kNotify = 4;   // a call is linked for notification

struct Flight {
    // Identity, written by the leader before the flight enters the table and
    // read under the shard lock while it is there.
    uint64_t hash = 0;
    std::size_t key_len = 0;
    unsigned char *key = nullptr;  // inline_key or a heap copy
    unsigned char inline_key[kInlineKey];
    Flight *next = nullptr;        // bucket chain, guarded by the shard lock
    Shard *shard = nullptr;
    uint32_t generation = 0;       // detail::fork_generation() at creation
    // The thread running fn (nullptr while a do_async task waits in the
    // queue): the one thread for which joining would deadlock.  Atomic
    // because an async task sets it without the shard lock.
    std::atomic<const void *> leader_thread{nullptr};

    // Guarded by the shard lock until completion, read-only afterwards.
    uint64_t dups = 0;
    bool in_table = false;
    // A do_async whose executor refused the task: the flight still completes
    // (as a panic, for whoever joined) but is counted nowhere.
    bool uncounted = false;

    std::atomic<uint32_t> state{0};
    std::atomic<uint32_t> refs{0};

    // Written once by the completing thread before kDone is set (release),
    // read by others only after observing kDone (acquire).
    int status = SF_OK;
    int error = 0;
    bool shared = false;
    const char *panic_message = nullptr;
    bool panic_message_owned = false;

    // Written only by the leader before completion.
    void *value = nullptr;
    sf_destroy_fn destroy = nullptr;
    // A panic requested inside fn (sf_call_panic on a do/do_async call).
    bool panic_pending = false;
    char *pending_message = nullptr;
    bool pending_message_lost = false;  // the copy failed (out of memory)

    // Calls waiting for an on_done callback or an eventfd write.  Guarded by
    // notify_mu, which also orders registration against completion.
    std::mutex notify_mu;
    Call *notify_head = nullptr;

    bool done() const noexcept { return state.load(std::memory_order_acquire) & kDone; }
};

enum class CallKind : uint8_t {
    TwoPhase,     // sf_group_begin: the caller drives everything
    Do,           // the leader's call inside sf_group_do (lives on its stack)
    AsyncLeader,  // the leader's call of sf_group_do_async, owned by the task
    AsyncFollower // a follower of sf_group_do_async, owned by its notification
};

// A leader call's right to write the flight.  sf_call_set_value holds
// kWriting while it stores the value, and completion moves kOpen to
// kFinished, so a value is never written after (or while) the flight
// completes, whichever threads the two run on.
enum LeaderState : uint8_t { kOpen = 0, kWriting = 1, kFinished = 2 };

struct Call {
    Flight *flight = nullptr;
    Shard *shard = nullptr;             // for handle accounting and stats
    std::atomic<uint32_t> refs{1};      // the owner + a pending notification
    int role = SF_FOLLOWER;
    CallKind kind = CallKind::TwoPhase;
    std::atomic<uint8_t> lstate{kOpen}; // leader: see LeaderState
    bool handle_counted = false;        // counted in Shard::handles
    uint32_t generation = 0;            // detail::fork_generation() at creation

    // Notification (on_done and/or eventfd).  Guarded by flight->notify_mu.
    Call *notify_next = nullptr;
    bool notify_linked = false;
    bool done_registered = false;
    sf_done_fn done = nullptr;
    void *done_payload = nullptr;
    int efd = -1;
    // Copied from the fields above by the completing thread, under notify_mu.
    int fire_efd = -1;
    sf_done_fn fire_done = nullptr;
    void *fire_payload = nullptr;

    // do_async: the work and where it runs.
    sf_fn fn = nullptr;
    void *fn_payload = nullptr;
};

// Lifecycle.  All noexcept: the C boundary never sees an exception.
Flight *flight_new() noexcept;                 // refs = 1, state = running
bool flight_set_key(Flight *f, const void *key, std::size_t len) noexcept;
void flight_retain(Flight *f) noexcept;
void flight_release(Flight *f) noexcept;       // last one destroys the value

Call *call_new() noexcept;
void call_unref(Call *c) noexcept;

// Stores the leader's value (ownership passes at once; see the header).
void flight_set_value(Call *c, void *value, sf_destroy_fn destroy) noexcept;

// Takes the leader's right to complete the flight: true once, for the first
// caller, after any set_value in progress has stored its value.
bool call_claim_finish(Call *c) noexcept;
bool call_finished(const Call *c) noexcept;

// sf_call_release's part for the call's notification: the eventfd is closed
// at once, and a call linked only for its eventfd is unlinked, so a follower
// that gives up on a long flight holds nothing until it ends.
void call_drop_notification(Call *c) noexcept;

// Runs destroy(value) with cancellation disabled, containing exceptions.
void run_destroy(sf_destroy_fn destroy, void *value) noexcept;

// Publishes the outcome, removes the flight from its table (if still there),
// wakes waiters and runs notifications.  message is copied for SF_EPANIC.
// exclusive: the leader's call is not a two-phase handle, so nobody but a
// follower could be waiting or registered; with no follower, completion is
// a plain store (the uncontended fast path).
void flight_complete(Flight *f, int status, int error, const char *message,
                     bool exclusive = false) noexcept;

// Waits until done or timeout (< 0: forever).  false on timeout.
bool flight_wait(Flight *f, int64_t timeout_ns) noexcept;

// sf_call_on_done / sf_call_fd on a call whose kind allows them.
int call_on_done(Call *c, sf_done_fn done, void *payload) noexcept;
int call_fd(Call *c) noexcept;

// A copy of msg made with the library allocator, or nullptr when out of memory.
char *copy_message(const char *msg) noexcept;

// The panic message callers see when the real one could not be copied.
extern const char kPanicMessageLost[];

}  // namespace sf
