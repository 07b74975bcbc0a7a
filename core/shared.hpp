// A shared group: one table of flights in a segment of shared memory that
// every process of the group maps, so that one key runs once across
// processes.  Its records hold offsets and indexes, never a pointer of one
// process; what is a process's own (callbacks, eventfds, the handles and
// results its callers hold) lives in process-local side records.
//
// How it stays correct when a process dies at any instruction:
//  - every multi-step change is made under a robust, process-shared mutex
//    (one per stripe of the table, one for the arena, one for the process
//    registry), and is ordered so that one store commits it; the next
//    process to take a lock its holder died with repairs what the commit
//    points say (repair_stripe, repair_arena);
//  - every process has a slot in the registry (pid and start time, which
//    pid reuse cannot fake) and a bit in each record it holds or waits on;
//    every other process watches it with a pidfd, and the first to hear it
//    died reaps it: its flights end as SF_EGOEXIT for everyone, its bits go,
//    and what only it held is freed (reap);
//  - every index, offset and length read from the segment is bounds-checked
//    before use, and every walk is bounded: a corrupted segment gives
//    kIncompatible, never a wild pointer or a hang.
//
// Waking: a thread waiting in another process sleeps on the record's
// futex word (process-shared) and is woken by the completion directly.
// Event loops (sf_call_fd, sf_call_on_done) are served by one helper
// thread per process, which the completing process wakes by ringing the
// process's doorbell (a FIFO beside the segment) once per completion.
#pragma once

#include <pthread.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>

#include "core/platform_shm.hpp"
#include "core/types.hpp"

namespace sf {

class Group;

namespace shm {

constexpr uint64_t kMagic = 0x31534853464c5342ull;  // "BSLFSHS1"
constexpr uint32_t kLayout = 3;                     // 2: the buddy arena; 3: stripe lock words
constexpr uint32_t kMaxProcs = 64;                  // a bit per process in a 64-bit mask
constexpr uint32_t kInline = 64;                    // key and value bytes kept in the record
constexpr uint32_t kMaxSlots = 1u << 20;
constexpr uint32_t kClasses = 40;  // arena size classes: 64 << c bytes

// The group's rare counters; the ones every call moves are per stripe.
struct Counters {
    std::atomic<uint64_t> timeouts, forgets, abandons, cancels;
};

struct alignas(64) Header {
    uint64_t magic;
    uint32_t layout, header_bytes;
    std::atomic<uint32_t> ready;  // 1 once the creator finished; 0: start clean
    uint32_t uid;
    uint32_t max_procs, slots, buckets, stripes;
    uint64_t arena_bytes, max_value_bytes, total_bytes, seed, segment_id;
    uint64_t off_procs, off_stripes, off_buckets, off_records, off_arena;
    pthread_mutex_t registry;          // robust: the process slots
    std::atomic<uint64_t> membership;  // bumped when a process comes or goes
    Counters c;
    std::atomic<uint64_t> in_use, in_use_high, arena_used, arena_high;
};

enum ProcState : uint32_t { kProcFree = 0, kProcLive = 1, kProcReaping = 2 };

struct alignas(64) Proc {
    std::atomic<uint32_t> state;
    uint32_t pid;
    uint64_t start;             // the process's start time: pid reuse cannot fake it
    std::atomic<uint64_t> gen;  // bumped at each claim of the slot
};

// A stripe's lock: 0 when free, else its holder's process (pid and 9 bits
// of its start time) and a waiters bit.  A lock word, not a robust mutex:
// this is the lock of every call, and a robust mutex's round trip cost
// 3.8x a compare-and-swap here (`sfshared locks`); a holder that died is
// recognised by its identity instead (see lock_stripe).
constexpr uint32_t kLockPidMask = (1u << 22) - 1, kLockWaiters = 1u << 31;

struct alignas(64) Stripe {
    std::atomic<uint32_t> lock;  // its buckets, its records, its free list
    uint32_t free_head;          // record index + 1, 0: none
    uint32_t first, count;       // its records: [first, first + count)
    uint32_t used;               // its records not free (exact: repair recounts it)
    // Counted under the lock, so a plain store each (no locked instruction
    // on a line every process writes); the stats add the stripes up.
    std::atomic<uint64_t> leaders, followers, completed, panics, goexits;
};
static_assert(sizeof(Stripe) == 64, "a stripe is one cache line");

enum RecState : uint32_t {
    kRecFree = 0,  // on its stripe's free list
    kRecNew = 1,   // being set up, not yet in its bucket (the bucket store commits)
    kRecLive = 2,  // in its bucket: callers join it
    kRecOut = 3,   // left its bucket (done, forgotten, abandoned); freed when nobody holds it
};

// seq, the futex word: kSeqDone once the outcome is published, kSeqWaiters
// while a thread sleeps on it; the rest counts wakes that are not the
// outcome (a caller giving up), so that a sleeper never misses one.
enum SeqBit : uint32_t { kSeqDone = 1, kSeqWaiters = 2, kSeqBump = 4 };

enum RecFlag : uint32_t {
    kRecShared = 1,      // a follower joined
    kRecFinishing = 2,   // the leader claimed the finish
    kRecAbandoned = 4,   // nobody interested while it ran
    kRecLeaderLeft = 8,  // the two-phase leader's caller gave up
    kRecBytes = 16,      // a value was set (as bytes)
    kRecForgotten = 32,  // left by forget
    kRecPanicSet = 64,   // sf_call_panic inside fn: panic when fn returns
    kRecStrict = 128,    // sf_call_lead_here: a forever wait on the leading thread is a deadlock
};

struct alignas(64) Record {
    std::atomic<uint32_t> seq;
    uint32_t state;             // RecState
    uint32_t next;              // bucket chain or free list: index + 1
    std::atomic<uint32_t> gen;  // incarnation, bumped at each allocation
    uint64_t hash;
    uint32_t key_len;
    std::atomic<uint32_t> flags;  // RecFlag; written under the stripe's lock, read anywhere
    uint64_t key_off;             // in the arena when key_len > kInline
    int32_t status, error;
    uint32_t value_len, msg_len;
    uint64_t value_off, msg_off;  // in the arena when longer than kInline
    uint64_t holders;             // processes holding the record (a call or a result)
    uint64_t interest;            // processes with callers still interested (two-phase)
    uint64_t bells;               // processes to ring when it completes or is abandoned
    std::atomic<uint32_t> leader_proc, leader_tid;
    uint64_t leader_gen;
    uint32_t mode, pad;
    unsigned char key[kInline];
    unsigned char value[kInline];
};

// A buddy allocator: the arena is tiled by power-of-two roots (its size's
// binary digits, largest first), each split in halves on demand and merged
// back when both halves are free, so freed space serves any size again.
struct alignas(64) Arena {
    pthread_mutex_t lock;          // robust
    uint64_t free_head[kClasses];  // offset + 1 of a free block of the class
};

// An arena block's header.  state is the commit point of alloc and free,
// cls the commit point of a split or a merge.
struct Block {
    uint32_t cls, state;   // kBlockFree / kBlockUsed
    uint32_t owner, proc;  // the record (index) it belongs to, the allocating process slot
    uint64_t owner_gen;    // the record's gen when allocated
    uint64_t next, prev;   // free list of its class: offset + 1, 0: none
    uint64_t pad;
};
static_assert(sizeof(Block) <= 64, "a header fits the smallest block");
constexpr uint32_t kBlockFree = 0x46524545, kBlockUsed = 0x55534544;

}  // namespace shm

struct SharedCall;
struct Flight;

// Options as the C layer read them (capi converts sf_shared_options).
struct SharedOptions {
    std::string name, path;  // exactly one is set
    uint64_t arena_bytes = 0, max_value_bytes = 0;
    unsigned table_slots = 0, max_processes = 0, mode = 0;
    bool run_unshared_when_full = false;
};

struct SharedStats {
    Counts counts;
    uint64_t in_flight_high, arena_used, arena_high, processes;
};

class SharedGroup;

// Opens (creating if needed) the shared group; *out owns this process's
// attachment.  See the header for the errors.
Status shared_open(const SharedOptions &opts, SharedGroup **out) noexcept;
// kBusy while this process has flights, calls or results of it; else
// detaches (the last process removes the segment).
Status shared_close(SharedGroup *g) noexcept;

// The ways in, as for a local group.  fn runs on this thread when this
// caller leads; a forced unwind out of fn (the thread exiting) ends the
// flight as kGoexit and goes on (so not noexcept).  kNoMemory when the
// table or arena is full (the C layer may then run fn unshared).
Status shared_run(SharedGroup *g, Key key, int (*fn)(void *ctx, SharedCall *call), void *ctx,
                  Flight **result, bool *shared);
Status shared_begin(SharedGroup *g, Key key, SharedCall **out) noexcept;
int shared_forget(SharedGroup *g, Key key, bool only_unshared) noexcept;
SharedStats shared_stats(SharedGroup *g) noexcept;

// Calls.
Status shared_call_role(const SharedCall *c) noexcept;
Status shared_set_bytes(SharedCall *c, const void *data, std::size_t len) noexcept;
// A pointer value cannot cross processes: refused (destroyed at once), and
// the flight panics saying so.
void shared_set_value(SharedCall *c, void *value, DestroyFn destroy) noexcept;
Status shared_finish(SharedCall *c, int error) noexcept;
Status shared_panic(SharedCall *c, const char *message) noexcept;
int shared_finish_unshared(SharedCall *c, int error) noexcept;
Status shared_wait(SharedCall *c, int64_t timeout_ns, Flight **result, bool *shared) noexcept;
Status shared_on_done(SharedCall *c, DoneCallback cb) noexcept;
int shared_fd(SharedCall *c) noexcept;
void shared_release(SharedCall *c) noexcept;
int shared_cancel(SharedCall *c) noexcept;
// The doorbell of this process for event loops that can only connect a
// stream socket (see sf_call_doorbell): address "unix:<path>" (NUL-
// terminated, into len bytes), and the 8-byte token to send there.
Status shared_doorbell(SharedCall *c, char *address, std::size_t len, uint64_t *token) noexcept;
Status shared_disown(SharedCall *c) noexcept;
Status shared_lead_here(SharedCall *c) noexcept;
int shared_abandoned(const SharedCall *c) noexcept;
Status shared_on_abandon(SharedCall *c, AbandonCallback cb) noexcept;

// Results.  A shared flight's result, as this process's callers hold it,
// is a block shaped like a local flight's (Flight, role kRoleSharedResult):
// its value (the bytes' address), error, status, state and reference
// count sit where a local result's do, so sf_result_value, _error,
// _retain and _release need no other path; the last release ends in
// flight_free_slow, which hands it to shared_result_free.
const void *shared_result_bytes(const Flight *r, std::size_t *len) noexcept;
const char *shared_result_panic_message(const Flight *r) noexcept;
void shared_result_free(Flight *r) noexcept;

// The role byte a SharedCall starts with, and a shared result's Flight
// role (the local ones are kRoleLeader/kRoleFollower/kRoleAsyncLeader).
constexpr uint8_t kRoleSharedCall = 0x53;
constexpr uint8_t kRoleSharedResult = 0x54;

#if defined(SF_TESTING_HOOKS)
namespace testing_shm {
// The process _exits (status 137, as a SIGKILL would leave it) when it
// reaches the named point of a shared-group operation ("publish.linked",
// ...); nullptr: never.  For the crash tests.
void kill_at(const char *point) noexcept;
// The named points, for the tests to iterate.
extern const char *const kKillPoints[];
extern const int kKillPointCount;
// The segment's bytes, for the corruption fuzz target.
void *segment_bytes(SharedGroup *g, std::size_t *len) noexcept;
// on: segments created from now on hash keys with one fixed seed, so that
// which keys share a stripe is the same in every run of a fuzz input.
void fix_seed(bool on) noexcept;
// How long a segment lock may be waited for before the call fails
// (default 2 s).
void set_lock_patience(int64_t ns) noexcept;
// Takes every stripe's lock and keeps it: a peer wedged inside the table.
void hold_stripes(SharedGroup *g) noexcept;
// Doorbell connections of this process that sent their token and wait.
uint32_t doors_waiting(SharedGroup *g) noexcept;
}  // namespace testing_shm
#endif

}  // namespace sf
