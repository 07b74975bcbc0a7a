#include "core/shared.hpp"

#include <cxxabi.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#include <cstring>
#include <exception>
#include <new>

#include "core/alloc.hpp"
#include "core/cache.hpp"
#include "core/flight.hpp"
#include "core/hash.hpp"
#include "core/platform.hpp"
#include "core/spinlock.hpp"

#if defined(__SANITIZE_THREAD__)
#define SF_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SF_TSAN 1
#endif
#endif

namespace sf {

using namespace shm;

// ---------------------------------------------------------------------------
// Kill points: a testing-build process dies (SIGKILL) at the named point of
// an operation, so that the crash tests can kill a participant anywhere a
// multi-step change could be cut.
// ---------------------------------------------------------------------------

#if defined(SF_TESTING_HOOKS)
namespace {
std::atomic<const char *> g_kill_at{nullptr};
void kill_point(const char *name) noexcept {
    const char *k = g_kill_at.load(std::memory_order_acquire);
    if (k && std::strcmp(k, name) == 0) kill(getpid(), SIGKILL);
}
}  // namespace
namespace testing_shm {
void kill_at(const char *point) noexcept { g_kill_at.store(point, std::memory_order_release); }
const char *const kKillPoints[] = {
    "publish.allocated",   // a record off the free list, not set up
    "publish.linked",      // in its bucket, the caller not yet told
    "join.marked",         // a follower's bit set, its wait not begun
    "value.stored",        // a value in the arena, its record not yet pointing at it
    "complete.unlinked",   // out of the bucket, outcome not published
    "complete.published",  // outcome published, waiters not yet woken
    "release.cleared",     // a holder's bit cleared, the record not yet freed
    "free.unlinked",       // the record's blocks freed, the record not yet on the free list
    "leave.cleared",       // an interested caller's bit cleared, abandonment not yet decided
    "arena.splitting",     // a block split in two, its upper half not yet listed
    "arena.merging",       // a buddy off its list, the merge not yet committed
};
const int kKillPointCount = int(sizeof kKillPoints / sizeof kKillPoints[0]);
std::atomic<bool> g_fixed_seed{false};
void fix_seed(bool on) noexcept { g_fixed_seed.store(on, std::memory_order_relaxed); }
}  // namespace testing_shm
#define SF_KILL_POINT(name) kill_point(name)
#else
#define SF_KILL_POINT(name) ((void)0)
#endif

// ---------------------------------------------------------------------------
// Process-local records: a caller's handle on a shared flight, and a
// caller's reference to its result.  Both are blocks of the call cache
// (128 bytes), so the steady state allocates nothing.
// ---------------------------------------------------------------------------

enum SharedCallFlag : uint8_t {
    kScCancelled = 1,   // the caller gave up
    kScLeft = 2,        // its interest was given back
    kScDoneSet = 4,     // a done callback is registered
    kScLinked = 8,      // on the record's local registration list
    kScDelivered = 16,  // its done callback or eventfd was told
    kScAbandonRan = 32,
    kScReleased = 64,  // released with its done callback still to run: it holds until then
};

struct SharedCall {
    uint8_t role;  // kRoleSharedCall
    uint8_t leader;
    uint8_t mode;  // FlightMode
    std::atomic<uint8_t> flags;
    uint32_t rec, gen;
    SharedGroup *g;
    DoneCallback done;
    AbandonCallback abandon;
    SharedCall *next, *prev;  // the record's local registration list
    int efd;
    std::atomic<uint32_t> refs;  // the owner, and a pending delivery
};
static_assert(sizeof(SharedCall) <= 128, "a call-cache block");

// A shared result: a Flight block (see shared.hpp) whose line 1, the key's
// place in a local flight, says which record of which group it holds.
struct ResultView {
    SharedGroup *g;
    uint32_t rec, gen;
};
static_assert(sizeof(ResultView) <= kInlineKey, "in the inline key's room");

ResultView view_of(const Flight *f) noexcept {
    ResultView v;
    std::memcpy(&v, f->inline_key, sizeof v);
    return v;
}

// The destroy a shared result carries: never called (flight_free_slow
// hands the block to shared_result_free first); it sends the last release
// off the local fast path, which recycles a block with no destroy.
void shared_result_marker(void *) noexcept {}

// ---------------------------------------------------------------------------
// The process's attachment.
// ---------------------------------------------------------------------------

class SharedGroup {
public:
    // The mapping.
    detail::ShmPath path_;
    int fd_ = -1;
    char *base_ = nullptr;
    uint64_t size_ = 0;
    Header *h_ = nullptr;
    Proc *procs_ = nullptr;
    Stripe *stripes_ = nullptr;
    uint32_t *buckets_ = nullptr;
    Record *recs_ = nullptr;
    Arena *arena_ = nullptr;
    unsigned char *arena_data_ = nullptr;
    uint32_t slots_ = 0, nbuckets_ = 0, nstripes_ = 0, nprocs_ = 0, rec_shift_ = 0;
    uint64_t arena_bytes_ = 0, max_value_ = 0, seed_ = 0;
    bool run_unshared_ = false;

    // This process.
    // kMaxProcs until claim_slot gives this process its slot: an opener
    // reaps the dead before it has one, and must not take bit 0's mail.
    uint32_t me_ = kMaxProcs;
    uint64_t mybit_ = 0;  // me_'s bit in the holders/interest masks, set with it
    uint64_t my_gen_ = 0;
    uint32_t lock_id_ = 0;  // this process in a stripe's lock word
    // The fork generation this attachment belongs to; a forked child's
    // first call re-attaches, one thread doing it under fork_lock_ while
    // the others wait.
    std::atomic<uint32_t> fork_gen_{0};
    pthread_mutex_t fork_lock_ = PTHREAD_MUTEX_INITIALIZER;

    // Per record: how many of this process's calls and results hold it,
    // how many of its two-phase callers are interested, and its
    // registrations (calls with a done callback or an eventfd), which the
    // record's stripe's local lock guards.
    struct Local {
        std::atomic<uint32_t> refs;
        std::atomic<uint32_t> interest;
        // Written under the stripe's local lock; the helper reads them
        // without it to skip records with nothing to do.
        std::atomic<SharedCall *> regs;
        std::atomic<SharedCall *>
            leader;  // a two-phase leader handle here, for its abandon callback
    };
    Local *locals_ = nullptr;
    detail::SpinLock local_locks_[64];

    std::atomic<int64_t> objects_{0};  // calls and results alive in this process
    std::atomic<bool> closing_{false};

    // The helper thread: this process's doorbell and its watch on the
    // other processes.
    pthread_t helper_{};
    bool helper_running_ = false;
    int poller_ = -1, wake_fd_ = -1, bell_fd_ = -1;
    std::atomic<bool> stop_{false};
    bool detach_on_exit_ = false;  // the helper's own: it ends the attachment when it stops
    int watch_[kMaxProcs];
    uint64_t watch_gen_[kMaxProcs];
    // The doorbell socket (sf_call_doorbell) and its connections, waiting
    // for their flights: the helper thread's alone.
    int door_fd_ = -1;
    struct Door {
        int fd;
        uint32_t rec, gen;
        bool asked;  // its token arrived
    };
    Door *doors_ = nullptr;
    uint32_t ndoors_ = 0, cap_doors_ = 0;
    // Connections that sent their token and wait: a completion in this
    // process rings no bell (the caller delivers it), so deliver_local
    // wakes the helper to answer them when there are any.
    std::atomic<uint32_t> doors_waiting_{0};

    // ---- addressing, every index and offset checked
    uint32_t stripe_of_bucket(uint32_t b) const noexcept { return b & (nstripes_ - 1); }
    uint32_t bucket_of(uint64_t hash) const noexcept { return uint32_t(hash) & (nbuckets_ - 1); }
    Record *rec(uint32_t i) noexcept { return i < slots_ ? &recs_[i] : nullptr; }
    // Records per stripe is a power of two: a shift, not a division (which
    // showed in every call's profile).
    uint32_t stripe_of_rec(uint32_t i) const noexcept { return i >> rec_shift_; }
    Block *block_at(uint64_t off) noexcept {
        return off >= arena_bytes_ || arena_bytes_ - off < 64 || (off & 63)
                   ? nullptr
                   : reinterpret_cast<Block *>(arena_data_ + off);
    }
    const unsigned char *bytes_at(uint64_t off, uint64_t len) noexcept {
        return off > arena_bytes_ || len > arena_bytes_ - off ? nullptr : arena_data_ + off;
    }
    uint64_t mybit() const noexcept { return mybit_; }
};

namespace {

// ---------------------------------------------------------------------------
// Robust locks: a lock whose holder died is repaired, then made consistent.
// ---------------------------------------------------------------------------

void init_robust(pthread_mutex_t *m) noexcept {
    pthread_mutexattr_t a;
    pthread_mutexattr_init(&a);
    pthread_mutexattr_setpshared(&a, PTHREAD_PROCESS_SHARED);
    pthread_mutexattr_setrobust(&a, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(m, &a);
    pthread_mutexattr_destroy(&a);
}

// A lock of the segment is held only for a few table or arena steps, never
// across user code: one held longer than this is a stopped or wedged peer
// or a corrupted word, and the caller gets an error instead of a hang.
std::atomic<int64_t> g_lock_patience_ns{int64_t(2) * 1000 * 1000 * 1000};

// glibc keeps a mutex's type in the mutex itself, where any peer can
// overwrite it; locking one whose type word was corrupted takes paths
// (lock elision, priority protocols) that may trap.  So the word is
// compared with what pthread_mutex_init writes before every lock.
bool kind_intact(const pthread_mutex_t *m) noexcept {
#if defined(__GLIBC__)
    static const int robust_kind = [] {
        pthread_mutex_t probe;
        init_robust(&probe);
        const int k = probe.__data.__kind;
        pthread_mutex_destroy(&probe);
        return k;
    }();
    return __atomic_load_n(&m->__data.__kind, __ATOMIC_RELAXED) == robust_kind;
#else
    (void)m;
    return true;
#endif
}

// A process in a stripe's lock word: its pid (pids are below 2^22) and 9
// bits of its start time, so that a pid reused by another process after the
// holder died is told apart (but for 1 chance in 512).
uint32_t lock_id_of(uint32_t pid, uint64_t start) noexcept {
    return (pid & kLockPidMask) | uint32_t((start * 0x9e3779b97f4a7c15ull) >> 55) << 22;
}

// Whether the holder a lock word names may still run.  Only a certain
// answer says no: a pid no process has, or one whose start time differs.
// When the start time cannot be read (descriptors exhausted, say), the
// holder is taken as alive: the waiter's patience ends the wait, where
// taking a live holder's lock would break the table.
bool lock_holder_alive(uint32_t word) noexcept {
    uint64_t start = 0;
    const int known = detail::process_identity(word & kLockPidMask, &start);
    if (known < 0) return true;
    // A holder that could not read its own start time named itself with
    // start 0: only its pid can be checked.
    if (known > 0 && (word & ~kLockWaiters & ~kLockPidMask) == 0) return true;
    return known > 0 && lock_id_of(word & kLockPidMask, start) == (word & ~kLockWaiters);
}

template <class Repair>
bool lock_robust(pthread_mutex_t *m, Repair repair) noexcept {
    if (!kind_intact(m)) return false;
    int rc = pthread_mutex_trylock(m);
    if (rc == EBUSY) {
        const int64_t patience = g_lock_patience_ns.load(std::memory_order_relaxed);
#if defined(SF_TSAN)
        // ThreadSanitizer does not intercept pthread_mutex_clocklock, and a
        // lock it does not see makes every access under it a false race:
        // under TSan the wait is timed on the wall clock instead.
        struct timespec now;
        clock_gettime(CLOCK_REALTIME, &now);
        const int64_t deadline = int64_t(now.tv_sec) * 1000000000 + now.tv_nsec + patience;
        struct timespec ts;
        ts.tv_sec = time_t(deadline / 1000000000);
        ts.tv_nsec = long(deadline % 1000000000);
        rc = pthread_mutex_timedlock(m, &ts);
#else
        const int64_t deadline = detail::now_ns() + patience;
        struct timespec ts;
        ts.tv_sec = time_t(deadline / 1000000000);
        ts.tv_nsec = long(deadline % 1000000000);
        rc = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts);
#endif
    }
    if (rc == EOWNERDEAD) {
        repair();
        pthread_mutex_consistent(m);
        return true;
    }
    return rc == 0;
}

uint32_t round_pow2(uint64_t n, uint32_t lo, uint32_t hi) noexcept {
    uint32_t p = lo;
    while (p < n && p < hi) p <<= 1;
    return p;
}

uint64_t align_up(uint64_t v, uint64_t a) noexcept { return (v + a - 1) & ~(a - 1); }

// The records are split among up to 64 stripes (a lock and a free list
// each), and a key can only use its own stripe's: at least 16 records a
// stripe, so that a small table is not full while most of it is free
// (64 slots in 64 stripes of 1 record refused the second key of a stripe).
uint32_t stripes_for(uint32_t slots) noexcept {
    const uint32_t s = slots / 16;
    return s < 1 ? 1 : (s > 64 ? 64 : s);
}

struct Layout {
    uint32_t procs, slots, buckets, stripes;
    uint64_t arena, max_value, off_procs, off_stripes, off_buckets, off_records, off_arena, total;
};

Status layout_for(const SharedOptions &o, Layout *l) noexcept {
    l->procs = o.max_processes ? o.max_processes : kMaxProcs;
    if (l->procs > kMaxProcs) return kInvalid;
    if (o.table_slots > kMaxSlots) return kInvalid;
    l->slots = round_pow2(o.table_slots ? o.table_slots : 4096, 64, kMaxSlots);
    l->buckets = l->slots;
    l->stripes = stripes_for(l->slots);
    l->arena = o.arena_bytes ? align_up(o.arena_bytes, 4096) : uint64_t(16) << 20;
    if (l->arena < (64 << 10) || l->arena > (uint64_t(1) << 40)) return kInvalid;
    l->max_value = o.max_value_bytes ? o.max_value_bytes : uint64_t(1) << 20;
    if (l->max_value > l->arena / 4) return kInvalid;
    uint64_t off = align_up(sizeof(Header), 4096);
    l->off_procs = off;
    off = align_up(off + sizeof(Proc) * l->procs, 64);
    l->off_stripes = off;
    off = align_up(off + sizeof(Stripe) * l->stripes, 64);
    l->off_buckets = off;
    off = align_up(off + sizeof(uint32_t) * l->buckets, 64);
    l->off_records = off;
    off = align_up(off + sizeof(Record) * l->slots, 64);
    l->off_arena = off;
    off = align_up(off + sizeof(Arena), 64);
    l->total = align_up(off + l->arena, 4096);
    return kOk;
}

// The sizes of a mapped segment, checked against each other and the file.
bool layout_sane(const Header *h, uint64_t file_size) noexcept {
    if (h->max_procs == 0 || h->max_procs > kMaxProcs) return false;
    if (h->slots < 64 || h->slots > kMaxSlots || (h->slots & (h->slots - 1))) return false;
    if (h->buckets != h->slots || h->stripes != stripes_for(h->slots)) return false;
    SharedOptions o;
    o.max_processes = h->max_procs;
    o.table_slots = h->slots;
    o.arena_bytes = h->arena_bytes;
    o.max_value_bytes = h->max_value_bytes;
    Layout l;
    if (layout_for(o, &l) != kOk) return false;
    return l.total == h->total_bytes && h->total_bytes == file_size &&
           l.off_procs == h->off_procs && l.off_stripes == h->off_stripes &&
           l.off_buckets == h->off_buckets && l.off_records == h->off_records &&
           l.off_arena == h->off_arena;
}

void bind(SharedGroup *g) noexcept {
    Header *h = g->h_;
    g->procs_ = reinterpret_cast<Proc *>(g->base_ + h->off_procs);
    g->stripes_ = reinterpret_cast<Stripe *>(g->base_ + h->off_stripes);
    g->buckets_ = reinterpret_cast<uint32_t *>(g->base_ + h->off_buckets);
    g->recs_ = reinterpret_cast<Record *>(g->base_ + h->off_records);
    g->arena_ = reinterpret_cast<Arena *>(g->base_ + h->off_arena);
    g->arena_data_ =
        reinterpret_cast<unsigned char *>(g->base_ + align_up(h->off_arena + sizeof(Arena), 64));
    g->slots_ = h->slots;
    g->nbuckets_ = h->buckets;
    g->nstripes_ = h->stripes;
    g->rec_shift_ = uint32_t(__builtin_ctz(h->slots / h->stripes));
    g->nprocs_ = h->max_procs;
    g->arena_bytes_ = h->arena_bytes;
    g->max_value_ = h->max_value_bytes;
    g->seed_ = h->seed;
}

void init_arena(SharedGroup *g) noexcept;

// A fresh segment: everything zero but what is not.  The creator holds the
// file lock; `ready` goes to 1 last, so a creator dying halfway leaves a
// segment the next opener starts clean.
void initialise(SharedGroup *g, const Layout &l, uint32_t uid) noexcept {
    std::memset(g->base_, 0, l.total);
    Header *h = g->h_;
    h->magic = kMagic;
    h->layout = kLayout;
    h->header_bytes = sizeof(Header);
    h->uid = uid;
    h->max_procs = l.procs;
    h->slots = l.slots;
    h->buckets = l.buckets;
    h->stripes = l.stripes;
    h->arena_bytes = l.arena;
    h->max_value_bytes = l.max_value;
    h->total_bytes = l.total;
    h->seed = detail::random64();
#if defined(SF_TESTING_HOOKS)
    if (testing_shm::g_fixed_seed.load(std::memory_order_relaxed)) h->seed = 0x5eed5eed5eed5eedull;
#endif
    h->segment_id = detail::random64();
    h->off_procs = l.off_procs;
    h->off_stripes = l.off_stripes;
    h->off_buckets = l.off_buckets;
    h->off_records = l.off_records;
    h->off_arena = l.off_arena;
    init_robust(&h->registry);
    bind(g);
    const uint32_t per = l.slots / l.stripes;
    for (uint32_t s = 0; s < l.stripes; ++s) {
        Stripe &st = g->stripes_[s];
        st.lock.store(0, std::memory_order_relaxed);
        st.first = s * per;
        st.count = per;
        // The free list in index order (index + 1 links).
        st.free_head = 0;
        for (uint32_t i = per; i-- > 0;) {
            g->recs_[st.first + i].next = st.free_head;
            st.free_head = st.first + i + 1;
        }
    }
    init_robust(&g->arena_->lock);
    init_arena(g);
    h->ready.store(1, std::memory_order_release);
}

// ---------------------------------------------------------------------------
// The arena: a buddy allocator of power-of-two blocks with a header each.
// A block's state is the commit point of its allocation and its freeing,
// its class the commit point of a split or a merge; the free lists are
// rebuilt from the headers (walking the tiling from offset 0) when a
// process died holding the arena's lock.
// ---------------------------------------------------------------------------

uint64_t class_size(uint32_t c) noexcept { return uint64_t(64) << c; }

// The root (a power-of-two tile of the arena) holding offset off: its start
// and class.  false past the end.
bool root_of(const SharedGroup *g, uint64_t off, uint64_t *start, uint32_t *cls) noexcept {
    uint64_t r = 0;
    for (uint32_t c = kClasses; c-- > 0;) {
        const uint64_t size = class_size(c);
        if (!(g->arena_bytes_ & size)) continue;
        if (off < r + size) {
            *start = r;
            *cls = c;
            return true;
        }
        r += size;
    }
    return false;
}

// A header that can be a block: a class that fits its root at an offset
// aligned to its size within the root, and a known state.
bool valid_block(const SharedGroup *g, uint64_t off, const Block *b) noexcept {
    uint64_t root = 0;
    uint32_t rc = 0;
    if (!b || !root_of(g, off, &root, &rc)) return false;
    return b->cls <= rc && ((off - root) & (class_size(b->cls) - 1)) == 0 &&
           (b->state == kBlockFree || b->state == kBlockUsed);
}

void list_push(SharedGroup *g, uint64_t off, Block *b) noexcept {
    Arena *a = g->arena_;
    b->prev = 0;
    b->next = a->free_head[b->cls];
    if (Block *n = b->next ? g->block_at(b->next - 1) : nullptr) n->prev = off + 1;
    a->free_head[b->cls] = off + 1;
}

void list_remove(SharedGroup *g, uint64_t off, Block *b) noexcept {
    Arena *a = g->arena_;
    Block *p = b->prev ? g->block_at(b->prev - 1) : nullptr;
    Block *n = b->next ? g->block_at(b->next - 1) : nullptr;
    if (p) {
        p->next = b->next;
    } else if (a->free_head[b->cls] == off + 1) {
        a->free_head[b->cls] = b->next;
    }
    if (n) n->prev = b->prev;
    b->next = b->prev = 0;
}

// A free block off of class b->cls, on no list: merged with its buddy for
// as long as the buddy is a free block of the same class, then listed.
// The caller holds the arena's lock.
void merge_push(SharedGroup *g, uint64_t off, Block *b) noexcept {
    uint64_t root = 0;
    uint32_t rc = 0;
    if (!root_of(g, off, &root, &rc)) return;
    while (b->cls < rc) {
        const uint64_t buddy = root + ((off - root) ^ class_size(b->cls));
        Block *o = g->block_at(buddy);
        if (!o || o->state != kBlockFree || o->cls != b->cls || !valid_block(g, buddy, o)) break;
        list_remove(g, buddy, o);
        SF_KILL_POINT("arena.merging");
        const uint64_t low = buddy < off ? buddy : off;
        Block *l = g->block_at(low);
        l->state = kBlockFree;
        l->cls = b->cls + 1;  // the merge's commit: the upper header is inside now
        off = low;
        b = l;
    }
    list_push(g, off, b);
}

// Every root as one free block.
void tile_free(SharedGroup *g, uint64_t from) noexcept {
    uint64_t r = 0;
    for (uint32_t c = kClasses; c-- > 0;) {
        const uint64_t size = class_size(c);
        if (!(g->arena_bytes_ & size)) continue;
        if (r >= from) {
            Block *b = g->block_at(r);
            b->cls = c;
            b->state = kBlockFree;
            list_push(g, r, b);
        }
        r += size;
    }
}

// Rebuilds the free lists and the bytes in use from the headers.  A header
// that cannot be a block (a torn write, a stray one) ends its root's walk:
// the rest of that root is given back as free blocks of the largest sizes
// its alignment allows, and what was used there is lost to its owners
// (their frees find no block of theirs and do nothing).
void repair_arena(SharedGroup *g) noexcept {
    Arena *a = g->arena_;
    for (uint32_t c = 0; c < kClasses; ++c) a->free_head[c] = 0;
    uint64_t used = 0, r = 0;
    for (uint32_t rc = kClasses; rc-- > 0;) {
        const uint64_t rsize = class_size(rc);
        if (!(g->arena_bytes_ & rsize)) continue;
        uint64_t off = r;
        while (off < r + rsize) {
            Block *b = g->block_at(off);
            if (!valid_block(g, off, b)) break;
            const uint64_t size = class_size(b->cls);
            if (b->state == kBlockFree) {
                b->next = b->prev = 0;
                merge_push(g, off, b);
            } else {
                used += size;
            }
            off += size;
        }
        // The untrusted rest, in aligned pieces.
        while (off < r + rsize) {
            uint32_t c = 0;
            while (c < rc && ((off - r) & class_size(c)) == 0 &&
                   off + class_size(c + 1) <= r + rsize)
                ++c;
            Block *b = g->block_at(off);
            b->cls = c;
            b->state = kBlockFree;
            list_push(g, off, b);
            off += class_size(c);
        }
        r += rsize;
    }
    g->h_->arena_used.store(used, std::memory_order_relaxed);
}

void init_arena(SharedGroup *g) noexcept {
    for (uint32_t c = 0; c < kClasses; ++c) g->arena_->free_head[c] = 0;
    tile_free(g, 0);
}

bool lock_arena(SharedGroup *g) noexcept {
    return lock_robust(&g->arena_->lock, [g] { repair_arena(g); });
}

// The first block of a list that really is a free block of class c; a
// corrupted list is dropped (the next repair rebuilds it).
uint64_t take_block(SharedGroup *g, uint32_t c) noexcept {
    Arena *a = g->arena_;
    if (!a->free_head[c]) return 0;
    const uint64_t off = a->free_head[c] - 1;
    Block *b = g->block_at(off);
    if (!b || b->state != kBlockFree || b->cls != c || !valid_block(g, off, b)) {
        a->free_head[c] = 0;
        return 0;
    }
    list_remove(g, off, b);
    return off + 1;
}

// A block for len bytes, owned by record (rec, gen): the offset of its
// bytes, or 0 when no free block is large enough.
uint64_t arena_alloc(SharedGroup *g, uint64_t len, uint32_t rec, uint32_t gen) noexcept {
    uint32_t c = 0;
    while (c < kClasses && class_size(c) < len + sizeof(Block)) ++c;
    if (c == kClasses) return 0;
    if (!lock_arena(g)) return 0;
    Arena *a = g->arena_;
    uint64_t taken = 0;
    uint32_t k = c;
    for (; k < kClasses && !taken; ++k) taken = take_block(g, k);
    if (!taken) {
        pthread_mutex_unlock(&a->lock);
        return 0;
    }
    --k;
    const uint64_t off = taken - 1;
    Block *b = g->block_at(off);
    // Split down to class c: the upper half's header first, then the
    // lower's class (the commit), then the upper half is listed.
    while (k > c) {
        --k;
        const uint64_t upper = off + class_size(k);
        Block *u = g->block_at(upper);
        u->cls = k;
        u->state = kBlockFree;
        b->cls = k;
        SF_KILL_POINT("arena.splitting");
        list_push(g, upper, u);
    }
    b->owner = rec;
    b->owner_gen = gen;
    b->proc = g->me_;
    b->next = b->prev = 0;
    b->state = kBlockUsed;  // the commit
    const uint64_t used =
        g->h_->arena_used.fetch_add(class_size(c), std::memory_order_relaxed) + class_size(c);
    uint64_t high = g->h_->arena_high.load(std::memory_order_relaxed);
    while (used > high && !g->h_->arena_high.compare_exchange_weak(high, used)) {}
    pthread_mutex_unlock(&a->lock);
    return off + sizeof(Block);
}

// Gives back a used block the caller checked; the arena's lock is held.
void free_block(SharedGroup *g, uint64_t off, Block *b) noexcept {
    g->h_->arena_used.fetch_sub(class_size(b->cls), std::memory_order_relaxed);
    b->state = kBlockFree;  // the commit
    b->next = b->prev = 0;
    merge_push(g, off, b);
}

// Frees the block of bytes at data_off if it is still record (rec, gen)'s:
// freeing twice, or a block since given to another record, does nothing.
void arena_free(SharedGroup *g, uint64_t data_off, uint32_t rec, uint32_t gen) noexcept {
    if (data_off < sizeof(Block)) return;
    if (!lock_arena(g)) return;
    const uint64_t off = data_off - sizeof(Block);
    Block *b = g->block_at(off);
    if (b && b->state == kBlockUsed && b->owner == rec && b->owner_gen == gen &&
        valid_block(g, off, b))
        free_block(g, off, b);
    pthread_mutex_unlock(&g->arena_->lock);
}

// ---------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------

const unsigned char *key_bytes(SharedGroup *g, Record *r) noexcept {
    return r->key_len <= kInline ? r->key : g->bytes_at(r->key_off, r->key_len);
}

__attribute__((always_inline)) inline bool key_equals(SharedGroup *g, Record *r, uint64_t hash,
                                                      Key key) noexcept {
    if (r->hash != hash || r->key_len != key.size) return false;
    const unsigned char *k = key_bytes(g, r);
    return k && (key.size == 0 || std::memcmp(k, key.data, key.size) == 0);
}

// One more, by the only writer (the stripe's lock holder).
void bump(std::atomic<uint64_t> &c) noexcept {
    c.store(c.load(std::memory_order_relaxed) + 1, std::memory_order_release);
}

// A flight whose leader's process died before it finished (or before it
// even linked it): counted as completed, as SF_EGOEXIT, once, by whoever
// disposes of it.
void count_goexit(SharedGroup *g, uint32_t s) noexcept {
    Stripe &st = g->stripes_[s];
    bump(st.completed);
    bump(st.goexits);
}

// Gives back a record's arena blocks (its key, value and message: freeing
// them again does nothing, so a repair may redo it) and marks it free, the
// commit; the caller then puts it on a free list.  Caller holds the
// stripe's lock.
__attribute__((always_inline)) inline void release_record(SharedGroup *g, uint32_t i) noexcept {
    Record *r = &g->recs_[i];
    if (r->key_len > kInline) arena_free(g, r->key_off, i, r->gen);
    if (r->value_len > kInline) arena_free(g, r->value_off, i, r->gen);
    if (r->msg_len > kInline) arena_free(g, r->msg_off, i, r->gen);
    SF_KILL_POINT("free.unlinked");
    r->key_len = r->value_len = r->msg_len = 0;
    r->holders = r->interest = r->bells = 0;
    r->state = kRecFree;
}

// release_record, then on the stripe's free list.
__attribute__((always_inline)) inline void free_record(SharedGroup *g, uint32_t s,
                                                       uint32_t i) noexcept {
    release_record(g, i);
    Stripe &st = g->stripes_[s];
    g->recs_[i].next = st.free_head;
    st.free_head = i + 1;
    --st.used;
    g->h_->in_use.fetch_sub(1, std::memory_order_relaxed);
}

// Repairs stripe s after a process died holding its lock: what is in a
// bucket is live, a record set up but never linked is freed, a record
// unlinked but not yet marked is out, an out record nobody holds any more
// is freed, and the free list is rebuilt from the states.  Chains are
// walked with bounds and a visit mark, so a corrupted chain is cut, never
// followed into a loop.
void repair_stripe(SharedGroup *g, uint32_t s) noexcept {
    Stripe &st = g->stripes_[s];
    if (st.first >= g->slots_ || st.count > g->slots_ - st.first) return;  // corrupted beyond us
    // Visit marks: the record's pad word, set to a value this repair owns.
    const uint32_t mark = uint32_t(detail::random64()) | 1;
    for (uint32_t b = s; b < g->nbuckets_; b += g->nstripes_) {
        uint32_t *link = &g->buckets_[b];
        for (uint32_t steps = 0; *link; ++steps) {
            const uint32_t i = *link - 1;
            if (i < st.first || i >= st.first + st.count || steps > st.count) {
                *link = 0;
                break;
            }
            Record *r = &g->recs_[i];
            if (r->pad == mark || (r->state != kRecLive && r->state != kRecNew)) {
                *link = 0;  // a loop, or a record that cannot be in a bucket
                break;
            }
            r->pad = mark;
            r->state = kRecLive;  // a new record whose link was stored is live
            link = &r->next;
        }
    }
    const uint32_t before = st.used;
    uint32_t used = 0;
    st.free_head = 0;
    for (uint32_t k = st.count; k-- > 0;) {
        const uint32_t i = st.first + k;
        Record *r = &g->recs_[i];
        const bool linked = r->pad == mark;
        r->pad = 0;
        if (!linked && r->state == kRecLive) r->state = kRecOut;
        if (!linked && r->state == kRecNew) {
            // Set up by the process that died holding the lock, never
            // linked: nobody else ever saw it.
            release_record(g, i);
            count_goexit(g, s);
        }
        if (r->state == kRecOut && r->holders == 0 &&
            (r->seq.load(std::memory_order_relaxed) & kSeqDone))
            release_record(g, i);
        if (r->state != kRecFree && r->state != kRecLive && r->state != kRecOut)
            release_record(g, i);  // a state no code writes: corrupted
        if (r->state == kRecFree) {
            r->next = st.free_head;
            st.free_head = i + 1;
        } else {
            ++used;
        }
    }
    st.used = used;
    g->h_->in_use.fetch_add(uint64_t(used) - uint64_t(before), std::memory_order_relaxed);
}

// A stripe's lock.  Uncontended, one compare-and-swap; contended, a short
// spin, then a process-shared futex wait.  A holder is a process, named in
// the word by its pid and start time: a waiter that finds the holder gone
// (it died inside the critical section, or the word was overwritten with
// garbage) takes the lock over and repairs the stripe, as a robust mutex's
// EOWNERDEAD would have it do.  The waits are bounded (the patience, then
// the call fails) and re-check the holder every 10 ms, since a dead holder
// wakes nobody.
__attribute__((noinline)) bool lock_stripe_slow(SharedGroup *g, uint32_t s) noexcept {
    std::atomic<uint32_t> *w = &g->stripes_[s].lock;
    const uint32_t me = g->lock_id_;
    uint32_t v = 0;
    for (int k = 0; k < 100; ++k) {
        detail::cpu_relax();
        v = w->load(std::memory_order_relaxed);
        if (v == 0 &&
            w->compare_exchange_weak(v, me, std::memory_order_acquire, std::memory_order_relaxed))
            return true;
    }
    const int64_t deadline = detail::now_ns() + g_lock_patience_ns.load(std::memory_order_relaxed);
    uint32_t mine = me;  // once asleep, take it marked contended: others may sleep too
    for (;;) {
        v = w->load(std::memory_order_relaxed);
        if (v == 0) {
            if (w->compare_exchange_weak(v, mine, std::memory_order_acquire,
                                         std::memory_order_relaxed))
                return true;
            continue;
        }
        if ((v & ~kLockWaiters) != me && !lock_holder_alive(v)) {
            if (w->compare_exchange_strong(v, me | (v & kLockWaiters), std::memory_order_acquire,
                                           std::memory_order_relaxed)) {
                repair_stripe(g, s);
                return true;
            }
            continue;
        }
        const int64_t left = deadline - detail::now_ns();
        if (left <= 0) return false;
        if (!(v & kLockWaiters) &&
            !w->compare_exchange_weak(v, v | kLockWaiters, std::memory_order_relaxed))
            continue;
        mine = me | kLockWaiters;
        detail::futex_wait(w, v | kLockWaiters, left < 10000000 ? left : 10000000, true);
    }
}
// The uncontended lock, one compare-and-swap, inline; the rest out of line.
inline bool lock_stripe(SharedGroup *g, uint32_t s) noexcept {
    uint32_t v = 0;
    if (__builtin_expect(g->stripes_[s].lock.compare_exchange_strong(
                             v, g->lock_id_, std::memory_order_acquire, std::memory_order_relaxed),
                         1))
        return true;
    return lock_stripe_slow(g, s);
}
inline void unlock_stripe(SharedGroup *g, uint32_t s) noexcept {
    std::atomic<uint32_t> *w = &g->stripes_[s].lock;
    if (__builtin_expect(w->exchange(0, std::memory_order_release) & kLockWaiters, 0))
        detail::futex_wake_all(w, true);
}

// The key's record in its bucket, or nullptr; *idx its index.  Bounded.
__attribute__((always_inline)) inline Record *find(SharedGroup *g, uint32_t b, uint64_t hash,
                                                   Key key, uint32_t *idx) noexcept {
    const Stripe &st = g->stripes_[g->stripe_of_bucket(b)];
    uint32_t link = g->buckets_[b];
    for (uint32_t steps = 0; link && steps <= st.count; ++steps) {
        const uint32_t i = link - 1;
        Record *r = g->rec(i);
        if (!r || i < st.first || i >= st.first + st.count) return nullptr;
        if (r->state == kRecLive && key_equals(g, r, hash, key)) {
            *idx = i;
            return r;
        }
        link = r->next;
    }
    return nullptr;
}

// Takes record i out of its bucket (Out).  Caller holds the stripe's lock.
__attribute__((always_inline)) inline void unlink_record(SharedGroup *g, uint32_t i) noexcept {
    Record *r = &g->recs_[i];
    if (r->state != kRecLive) return;
    uint32_t *link = &g->buckets_[g->bucket_of(r->hash)];
    const Stripe &st = g->stripes_[g->stripe_of_rec(i)];
    for (uint32_t steps = 0; *link && steps <= st.count; ++steps) {
        if (*link == i + 1) {
            *link = r->next;  // the commit
            break;
        }
        Record *p = g->rec(*link - 1);
        if (!p) break;
        link = &p->next;
    }
    r->state = kRecOut;
}

// ---------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------

bool proc_alive(SharedGroup *g, uint32_t p, uint64_t gen) noexcept {
    if (p >= g->nprocs_) return false;
    Proc &pr = g->procs_[p];
    if (pr.state.load(std::memory_order_acquire) != kProcLive ||
        pr.gen.load(std::memory_order_acquire) != gen)
        return false;
    if (p == g->me_) return true;
    return detail::process_alive(pr.pid, pr.start);
}

std::string bell_path(SharedGroup *g, uint32_t p) {
    return g->path_.path + ".bell." + std::to_string(p);
}

std::string door_path(SharedGroup *g, uint32_t p) {
    return g->path_.path + ".door." + std::to_string(p);
}

void ring(SharedGroup *g, uint64_t bells) noexcept {
    for (uint32_t p = 0; bells && p < g->nprocs_; ++p) {
        if (!(bells & (uint64_t(1) << p))) continue;
        bells &= ~(uint64_t(1) << p);
        if (p == g->me_) continue;  // delivered by the caller
        try {
            detail::bell_ring(bell_path(g, p));
        } catch (...) {}
    }
}

void deliver_local(SharedGroup *g, uint32_t i) noexcept;
void run_abandon_local(SharedGroup *g, uint32_t i) noexcept;

// Publishes record i's outcome: out of its bucket, the outcome, kSeqDone,
// then every sleeper is woken and every process with a registration rung.
// Caller holds the stripe's lock; this releases it.
void publish_locked(SharedGroup *g, uint32_t s, uint32_t i, Status status, int error) noexcept {
    Record *r = &g->recs_[i];
    unlink_record(g, i);
    SF_KILL_POINT("complete.unlinked");
    r->status = int32_t(status);
    r->error = error;
    Stripe &st = g->stripes_[s];
    bump(st.completed);
    if (status == kPanic) bump(st.panics);
    if (status == kGoexit) bump(st.goexits);
    const uint64_t bells = r->bells;
    const uint32_t old = r->seq.fetch_or(kSeqDone, std::memory_order_acq_rel);
    SF_KILL_POINT("complete.published");
    unlock_stripe(g, s);
    if (old & kSeqWaiters) detail::futex_wake_all(&r->seq, true);
    ring(g, bells);
    if (bells & g->mybit()) deliver_local(g, i);
}

// Process p (of generation gen) is gone: its bits go from every record, the
// flights it led end as SF_EGOEXIT, flights nobody holds any more are
// freed, and arena blocks it allocated but never linked come back.  Every
// step is idempotent and made under the lock of what it changes, so any
// number of processes may reap one process at once, and a reaper that
// dies halfway leaves the rest to the next (a slot still Reaping is reaped
// again).  The slot's gen, bumped before a new owner sets any bit, is
// checked under each lock: a late reaper never clears a new owner's bits.
void reap(SharedGroup *g, uint32_t p, uint64_t gen) noexcept {
    if (p >= g->nprocs_ || p == g->me_) return;
    Proc &pr = g->procs_[p];
    if (!lock_robust(&g->h_->registry, [] {})) return;
    const uint32_t state = pr.state.load(std::memory_order_relaxed);
    const bool mine = state != kProcFree && pr.gen.load(std::memory_order_relaxed) == gen;
    if (mine) pr.state.store(kProcReaping, std::memory_order_release);
    pthread_mutex_unlock(&g->h_->registry);
    if (!mine) return;
    const uint64_t bit = uint64_t(1) << p;
    for (uint32_t s = 0; s < g->nstripes_; ++s) {
        if (!lock_stripe(g, s)) continue;
        if (pr.gen.load(std::memory_order_acquire) != gen) {
            unlock_stripe(g, s);
            return;  // reaped and claimed again meanwhile
        }
        const Stripe &st = g->stripes_[s];
        uint64_t ring_after = 0;
        for (uint32_t i = st.first; i < st.first + st.count && i < g->slots_; ++i) {
            Record *r = &g->recs_[i];
            if (r->state != kRecLive && r->state != kRecOut && r->state != kRecNew) continue;
            r->holders &= ~bit;
            r->bells &= ~bit;
            const bool was_interested = r->interest & bit;
            r->interest &= ~bit;
            const bool done = r->seq.load(std::memory_order_relaxed) & kSeqDone;
            if (r->leader_proc == p && r->leader_gen == gen && !done) {
                if (r->state == kRecNew) {
                    free_record(g, s, i);
                    count_goexit(g, s);
                    continue;
                }
                // Its leader died: every caller hears SF_EGOEXIT.
                unlink_record(g, i);
                r->status = int32_t(kGoexit);
                r->error = 0;
                count_goexit(g, s);
                const uint32_t old = r->seq.fetch_or(kSeqDone, std::memory_order_acq_rel);
                if (old & kSeqWaiters) detail::futex_wake_all(&r->seq, true);
                ring_after |= r->bells;
            } else if (!done && was_interested && r->mode == kModeTwoPhase && r->interest == 0 &&
                       !(r->flags & (kRecFinishing | kRecAbandoned))) {
                // The last interested caller was in it: abandoned.
                r->flags.fetch_or(kRecAbandoned, std::memory_order_relaxed);
                unlink_record(g, i);
                g->h_->c.abandons.fetch_add(1, std::memory_order_relaxed);
                const uint32_t leader = r->leader_proc;
                if (leader < kMaxProcs) ring_after |= uint64_t(1) << leader;
            }
            if (r->state == kRecOut && r->holders == 0 &&
                (r->seq.load(std::memory_order_relaxed) & kSeqDone))
                free_record(g, s, i);
        }
        unlock_stripe(g, s);
        ring(g, ring_after);
        if (ring_after & g->mybit()) {
            for (uint32_t i = st.first; i < st.first + st.count && i < g->slots_; ++i) {
                deliver_local(g, i);
                run_abandon_local(g, i);
            }
        }
    }
    // Blocks it allocated and never linked to their record (it died between
    // the two): the block's owner record does not point at it.
    if (!lock_arena(g)) return;
    if (pr.gen.load(std::memory_order_acquire) != gen) {
        pthread_mutex_unlock(&g->arena_->lock);
        return;
    }
    Arena *a = g->arena_;
    for (uint64_t off = 0; off < g->arena_bytes_;) {
        Block *b = g->block_at(off);
        if (!valid_block(g, off, b)) break;  // corrupted: the next repair re-tiles
        const uint64_t size = class_size(b->cls);
        if (b->state == kBlockUsed && b->proc == p) {
            Record *r = g->rec(b->owner);
            const uint64_t data = off + sizeof(Block);
            const bool linked = r && r->gen == b->owner_gen && r->state != kRecFree &&
                                ((r->key_len > kInline && r->key_off == data) ||
                                 (r->value_len > kInline && r->value_off == data) ||
                                 (r->msg_len > kInline && r->msg_off == data));
            if (!linked) free_block(g, off, b);  // merged halves leave free headers only
        }
        off += size;
    }
    pthread_mutex_unlock(&a->lock);
    if (lock_robust(&g->h_->registry, [] {})) {
        if (pr.gen.load(std::memory_order_relaxed) == gen &&
            pr.state.load(std::memory_order_relaxed) == kProcReaping) {
            pr.state.store(kProcFree, std::memory_order_release);
            g->h_->membership.fetch_add(1, std::memory_order_acq_rel);
        }
        pthread_mutex_unlock(&g->h_->registry);
    }
    try {
        detail::bell_remove(bell_path(g, p));
        detail::bell_remove(door_path(g, p));
    } catch (...) {}
}

// Reaps every process of the registry that is gone, and finishes any reap
// a dead reaper left halfway.
void reap_dead(SharedGroup *g) noexcept {
    for (uint32_t p = 0; p < g->nprocs_; ++p) {
        if (p == g->me_) continue;
        Proc &pr = g->procs_[p];
        const uint32_t state = pr.state.load(std::memory_order_acquire);
        if (state == kProcFree) continue;
        const uint64_t gen = pr.gen.load(std::memory_order_acquire);
        if (state == kProcReaping || !detail::process_alive(pr.pid, pr.start)) reap(g, p, gen);
    }
}

// ---------------------------------------------------------------------------
// This process's holds on a record: counted here, one bit in the record.
// A count goes from 0 to 1 only under the stripe's lock, where the bit is
// set in the same critical section (a join, a publish); going to 0, the bit
// is cleared under the lock if the count is still 0 then.
// ---------------------------------------------------------------------------

void drop_hold(SharedGroup *g, uint32_t i) noexcept {
    if (g->locals_[i].refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    const uint32_t s = g->stripe_of_rec(i);
    if (!lock_stripe(g, s)) return;
    if (g->locals_[i].refs.load(std::memory_order_acquire) == 0) {
        Record *r = &g->recs_[i];
        r->holders &= ~g->mybit();
        SF_KILL_POINT("release.cleared");
        if (r->holders == 0 && r->state == kRecOut &&
            (r->seq.load(std::memory_order_relaxed) & kSeqDone))
            free_record(g, s, i);
    }
    unlock_stripe(g, s);
}

// A two-phase caller of this process stops being interested: 1 when that
// abandoned the flight (nobody interested while it runs).
int leave_interest(SharedGroup *g, uint32_t i) noexcept {
    if (g->locals_[i].interest.fetch_sub(1, std::memory_order_acq_rel) != 1) return 0;
    const uint32_t s = g->stripe_of_rec(i);
    if (!lock_stripe(g, s)) return 0;
    Record *r = &g->recs_[i];
    bool abandoned = false;
    uint32_t leader = 0;
    if (g->locals_[i].interest.load(std::memory_order_acquire) == 0) {
        r->interest &= ~g->mybit();
        SF_KILL_POINT("leave.cleared");
        if (r->interest == 0 && r->mode == kModeTwoPhase &&
            !(r->seq.load(std::memory_order_relaxed) & kSeqDone) &&
            !(r->flags & (kRecFinishing | kRecAbandoned))) {
            r->flags.fetch_or(kRecAbandoned, std::memory_order_relaxed);
            unlink_record(g, i);  // a caller arriving now starts afresh
            g->h_->c.abandons.fetch_add(1, std::memory_order_relaxed);
            abandoned = true;
            leader = r->leader_proc;
        }
    }
    unlock_stripe(g, s);
    if (!abandoned) return 0;
    if (leader == g->me_) {
        run_abandon_local(g, i);
    } else if (leader < g->nprocs_) {
        ring(g, uint64_t(1) << leader);  // its helper runs the abandon callback
    }
    return 1;
}

const void *value_bytes(SharedGroup *g, Record *r, std::size_t *len) noexcept;

// A result of record i (done) for one of this process's callers; its hold
// is counted by the caller.  nullptr when out of memory.
Flight *new_result(SharedGroup *g, uint32_t i) noexcept {
    auto *f = static_cast<Flight *>(detail::flight_cache().get());
    if (!f) return nullptr;
    Record *r = &g->recs_[i];
    f->role = kRoleSharedResult;
    f->mode = kModeDo;
    f->flags = 0;
    f->status_ = int8_t(r->status);
    f->lflags = 0;
    f->ident.store(0, std::memory_order_relaxed);  // no key: never in a table
    f->state.store(kDone | kFinished | kUnpublished, std::memory_order_relaxed);
    f->refs.store(1, std::memory_order_relaxed);
    f->group = nullptr;
    std::size_t n = 0;
    f->value = const_cast<void *>(value_bytes(g, r, &n));
    f->destroy = reinterpret_cast<DestroyFn>(shared_result_marker);
    f->error = r->error;
    f->notify_head = nullptr;
    f->ext.store(nullptr, std::memory_order_relaxed);
    const ResultView v{g, i, r->gen};
    std::memcpy(f->inline_key, &v, sizeof v);
    g->objects_.fetch_add(1, std::memory_order_relaxed);
    return f;
}

void maybe_detach(SharedGroup *g) noexcept;

void object_gone(SharedGroup *g) noexcept {
    if (g->objects_.fetch_sub(1, std::memory_order_acq_rel) == 1 &&
        g->closing_.load(std::memory_order_acquire))
        maybe_detach(g);
}

SharedCall *new_call(SharedGroup *g, uint32_t i, bool leader, uint8_t mode) noexcept {
    auto *c = static_cast<SharedCall *>(detail::call_cache().get());
    if (!c) return nullptr;
    c->role = kRoleSharedCall;
    c->leader = leader;
    c->mode = mode;
    c->flags.store(0, std::memory_order_relaxed);
    c->rec = i;
    c->gen = g->recs_[i].gen;
    c->g = g;
    c->done = DoneCallback{nullptr, nullptr, nullptr};
    c->abandon = AbandonCallback{nullptr, nullptr, nullptr};
    c->next = c->prev = nullptr;
    c->efd = -1;
    c->refs.store(1, std::memory_order_relaxed);
    g->objects_.fetch_add(1, std::memory_order_relaxed);
    return c;
}

void call_unref(SharedCall *c) noexcept {
    if (c->refs.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
    SharedGroup *g = c->g;
    if (c->efd >= 0) {
        detail::NoCancel no_cancel;
        detail::fd_close(c->efd);
    }
    detail::call_cache().put(c);
    object_gone(g);
}

detail::SpinLock &local_lock(SharedGroup *g, uint32_t i) noexcept {
    return g->local_locks_[g->stripe_of_rec(i) & 63];
}

void unlink_reg_locked(SharedGroup *g, SharedCall *c) noexcept {
    SharedGroup::Local &l = g->locals_[c->rec];
    if (c->prev) c->prev->next = c->next;
    else l.regs = c->next;
    if (c->next) c->next->prev = c->prev;
    c->next = c->prev = nullptr;
    c->flags.fetch_and(uint8_t(~kScLinked), std::memory_order_relaxed);
}

bool record_done(SharedGroup *g, uint32_t i, uint32_t gen) noexcept {
    Record *r = &g->recs_[i];
    return r->gen != gen || (r->seq.load(std::memory_order_acquire) & kSeqDone);
}

void invoke_done(SharedCall *c) noexcept {
    SharedGroup *g = c->g;
    Record *r = &g->recs_[c->rec];
    const Status st = r->gen == c->gen ? Status(r->status) : kGoexit;
    Flight *res = r->gen == c->gen ? new_result(g, c->rec) : nullptr;
    if (res) g->locals_[c->rec].refs.fetch_add(1, std::memory_order_relaxed);  // c holds it already
    detail::NoCancel no_cancel;
    c->done.invoke(c->done.fn, c->done.payload, st, res, !c->leader || (r->flags & kRecShared));
    if (res) flight_release(res);
}

// Tells this process's registrations of record i that it completed: their
// eventfds are written and their done callbacks run, on this thread.
void deliver_local(SharedGroup *g, uint32_t i) noexcept {
    if (i >= g->slots_ || !g->locals_) return;
    if (g->doors_waiting_.load(std::memory_order_acquire)) {
        detail::NoCancel no_cancel;
        detail::event_fd_signal(g->wake_fd_);
    }
    SharedGroup::Local &l = g->locals_[i];
    SharedCall *fire = nullptr;
    {
        std::lock_guard<detail::SpinLock> lock(local_lock(g, i));
        SharedCall *next;
        for (SharedCall *c = l.regs; c; c = next) {
            next = c->next;
            if (!record_done(g, i, c->gen)) continue;
            unlink_reg_locked(g, c);  // its notification reference is ours now
            c->flags.fetch_or(uint8_t(kScDelivered), std::memory_order_relaxed);
            {
                detail::NoCancel no_cancel;
                detail::event_fd_signal(c->efd);
            }
            c->next = fire;
            fire = c;
        }
    }
    while (fire) {
        SharedCall *c = fire;
        fire = c->next;
        c->next = nullptr;
        const uint8_t f = c->flags.load(std::memory_order_relaxed);
        if (f & kScDoneSet) invoke_done(c);
        if (f & kScReleased) drop_hold(g, i);
        call_unref(c);
    }
}

void run_abandon_local(SharedGroup *g, uint32_t i) noexcept {
    if (i >= g->slots_ || !g->locals_) return;
    SharedCall *leader = nullptr;
    AbandonCallback cb{nullptr, nullptr, nullptr};
    {
        std::lock_guard<detail::SpinLock> lock(local_lock(g, i));
        SharedCall *c = g->locals_[i].leader;
        Record *r = &g->recs_[i];
        if (c && c->gen == r->gen && (r->flags & kRecAbandoned) && c->abandon.invoke &&
            !(c->flags.fetch_or(uint8_t(kScAbandonRan), std::memory_order_relaxed) &
              kScAbandonRan)) {
            cb = c->abandon;
            leader = c;
            c->refs.fetch_add(1, std::memory_order_relaxed);  // alive through the callback
        }
    }
    if (!leader) return;
    {
        detail::NoCancel no_cancel;
        cb.invoke(cb.fn, cb.payload, reinterpret_cast<Flight *>(leader));
    }
    call_unref(leader);
}

// ---------------------------------------------------------------------------
// The helper thread: this process's doorbell, and a pidfd on every other
// process of the group (a death is heard at once, never polled for).
// ---------------------------------------------------------------------------

constexpr uint64_t kTagWake = 0, kTagBell = 1, kTagProc = 2, kTagDoor = 100, kTagConn = 1000;

void drop_door(SharedGroup *g, uint32_t k, bool answer) noexcept {
    SharedGroup::Door d = g->doors_[k];
    g->doors_[k] = g->doors_[--g->ndoors_];
    if (d.asked) g->doors_waiting_.fetch_sub(1, std::memory_order_relaxed);
    detail::poller_remove(g->poller_, d.fd);
    if (answer) {
        detail::door_answer(d.fd);
    } else {
        detail::fd_close_quiet(d.fd);
    }
}

// Answers every connection whose flight is done.
void answer_doors(SharedGroup *g) noexcept {
    for (uint32_t k = 0; k < g->ndoors_;) {
        const SharedGroup::Door &d = g->doors_[k];
        if (d.asked && record_done(g, d.rec, d.gen)) {
            drop_door(g, k, true);
        } else {
            ++k;
        }
    }
}

void accept_doors(SharedGroup *g) noexcept {
    for (;;) {
        const int fd = detail::door_accept(g->door_fd_);
        if (fd < 0) return;
        if (g->ndoors_ == g->cap_doors_) {
            const uint32_t cap = g->cap_doors_ ? g->cap_doors_ * 2 : 64;
            auto *more =
                static_cast<SharedGroup::Door *>(detail::alloc(sizeof(SharedGroup::Door) * cap));
            if (!more) {
                detail::fd_close_quiet(fd);  // its caller sees the close: ask again, or wait
                continue;
            }
            if (g->doors_) std::memcpy(more, g->doors_, sizeof(SharedGroup::Door) * g->ndoors_);
            detail::dealloc(g->doors_);
            g->doors_ = more;
            g->cap_doors_ = cap;
        }
        if (!detail::poller_add(g->poller_, fd, kTagConn + uint64_t(fd))) {
            detail::fd_close_quiet(fd);
            continue;
        }
        g->doors_[g->ndoors_++] = SharedGroup::Door{fd, 0, 0, false};
    }
}

// A connection spoke: its token (8 bytes, little-endian: the record and its
// generation) names the flight it waits for; anything after that (a close,
// more bytes) ends it.
void door_readable(SharedGroup *g, int fd) noexcept {
    uint32_t k = 0;
    while (k < g->ndoors_ && g->doors_[k].fd != fd) ++k;
    if (k == g->ndoors_) return;
    SharedGroup::Door &d = g->doors_[k];
    if (d.asked) return drop_door(g, k, false);  // it gave up (closed)
    unsigned char token[8];
    const int rc = detail::door_read(fd, token, sizeof token);
    if (rc == 0) return;
    uint64_t t = 0;
    for (int b = 0; b < 8; ++b) t |= uint64_t(token[b]) << (8 * b);
    const uint32_t rec = uint32_t(t), gen = uint32_t(t >> 32);
    if (rc < 0 || rec >= g->slots_) return drop_door(g, k, rc > 0);
    d.rec = rec;
    d.gen = gen;
    d.asked = true;
    g->doors_waiting_.fetch_add(1, std::memory_order_acq_rel);
    // Ask to be rung, then look: a completion before the mark rang nobody.
    const uint32_t s = g->stripe_of_rec(rec);
    if (lock_stripe(g, s)) {
        if (g->recs_[rec].gen == gen) g->recs_[rec].bells |= g->mybit();
        unlock_stripe(g, s);
    }
    if (record_done(g, rec, gen)) drop_door(g, k, true);
}

void refresh_watch(SharedGroup *g) noexcept {
    for (uint32_t p = 0; p < g->nprocs_; ++p) {
        if (p == g->me_) continue;
        Proc &pr = g->procs_[p];
        const bool live = pr.state.load(std::memory_order_acquire) == kProcLive;
        const uint64_t gen = pr.gen.load(std::memory_order_acquire);
        if (g->watch_[p] >= 0 && (!live || g->watch_gen_[p] != gen)) {
            detail::poller_remove(g->poller_, g->watch_[p]);
            detail::fd_close_quiet(g->watch_[p]);
            g->watch_[p] = -1;
        }
        if (live && g->watch_[p] < 0) {
            const int fd = detail::process_watch(pr.pid, pr.start);
            if (fd < 0) {
                reap(g, p, gen);  // gone already, or its pid is another process's now
                continue;
            }
            g->watch_[p] = fd;
            g->watch_gen_[p] = gen;
            detail::poller_add(g->poller_, fd, kTagProc + p);
        }
    }
}

void deliver_all_local(SharedGroup *g) noexcept {
    for (uint32_t i = 0; i < g->slots_; ++i) {
        SharedGroup::Local &l = g->locals_[i];
        if (l.regs) deliver_local(g, i);
        if (l.leader && (g->recs_[i].flags & kRecAbandoned)) run_abandon_local(g, i);
    }
}

void detach_resources(SharedGroup *g) noexcept;
void destroy_group(SharedGroup *g) noexcept;

void *helper_main(void *arg) {
    auto *g = static_cast<SharedGroup *>(arg);
    // The helper runs user callbacks (done, abandon): never cancellable by
    // the library's caller, and its signals are the process's to handle.
    detail::NoCancel no_cancel;
    uint64_t seen = ~uint64_t(0);
    for (;;) {
        const uint64_t m = g->h_->membership.load(std::memory_order_acquire);
        if (m != seen) {
            seen = m;
            refresh_watch(g);
        }
        uint64_t ready[32];
        const int n = detail::poller_wait(g->poller_, ready, 32, -1);
        if (g->stop_.load(std::memory_order_acquire)) break;
        bool bell = false;
        for (int k = 0; k < n; ++k) {
            if (ready[k] == kTagBell) {
                detail::bell_drain(g->bell_fd_);
                bell = true;
            } else if (ready[k] == kTagWake) {
                detail::event_fd_drain(g->wake_fd_);  // a completion here, doors waiting
                answer_doors(g);
            } else if (ready[k] >= kTagProc && ready[k] < kTagProc + kMaxProcs) {
                const uint32_t p = uint32_t(ready[k] - kTagProc);
                const uint64_t gen = g->watch_gen_[p];
                detail::poller_remove(g->poller_, g->watch_[p]);
                detail::fd_close_quiet(g->watch_[p]);
                g->watch_[p] = -1;
                reap(g, p, gen);
                reap_dead(g);  // and any reap a dead reaper left halfway
                bell = true;
            } else if (ready[k] == kTagDoor) {
                accept_doors(g);
            } else if (ready[k] >= kTagConn) {
                door_readable(g, int(ready[k] - kTagConn));
            }
        }
        if (bell) {
            deliver_all_local(g);
            answer_doors(g);
        }
        if (g->stop_.load(std::memory_order_acquire)) break;
    }
    if (g->detach_on_exit_) {
        pthread_detach(pthread_self());
        g->helper_running_ = false;
        detach_resources(g);
        destroy_group(g);
    }
    return nullptr;
}

bool start_helper(SharedGroup *g) noexcept {
    for (uint32_t p = 0; p < kMaxProcs; ++p) g->watch_[p] = -1;
    g->poller_ = detail::poller_create();
    g->wake_fd_ = detail::event_fd_open();
    if (g->poller_ < 0 || g->wake_fd_ < 0) return false;
    if (!detail::poller_add(g->poller_, g->wake_fd_, kTagWake) ||
        !detail::poller_add(g->poller_, g->bell_fd_, kTagBell))
        return false;
    // The doorbell for cosockets: none when its path is too long for a
    // socket address (sf_call_doorbell then says so).
    try {
        g->door_fd_ = detail::door_listen(door_path(g, g->me_));
    } catch (...) {
        g->door_fd_ = -1;
    }
    if (g->door_fd_ >= 0 && !detail::poller_add(g->poller_, g->door_fd_, kTagDoor)) {
        detail::fd_close_quiet(g->door_fd_);
        g->door_fd_ = -1;
    }
    g->stop_.store(false, std::memory_order_relaxed);
    // Every signal blocked in the helper: a signal meant for the process
    // goes to one of its own threads.
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    const int rc = pthread_create(&g->helper_, nullptr, helper_main, g);
    pthread_sigmask(SIG_SETMASK, &old, nullptr);
    g->helper_running_ = rc == 0;
    return rc == 0;
}

void stop_helper(SharedGroup *g) noexcept {
    if (g->helper_running_) {
        g->stop_.store(true, std::memory_order_release);
        detail::event_fd_signal(g->wake_fd_);
        pthread_join(g->helper_, nullptr);
        g->helper_running_ = false;
    }
    for (uint32_t p = 0; p < kMaxProcs; ++p) {
        detail::fd_close_quiet(g->watch_[p]);
        g->watch_[p] = -1;
    }
    while (g->ndoors_) drop_door(g, g->ndoors_ - 1, false);
    detail::dealloc(g->doors_);
    g->doors_ = nullptr;
    g->cap_doors_ = 0;
    if (g->door_fd_ >= 0) {
        detail::fd_close_quiet(g->door_fd_);
        g->door_fd_ = -1;
        try {
            detail::bell_remove(door_path(g, g->me_));
        } catch (...) {}
    }
    detail::fd_close_quiet(g->poller_);
    detail::fd_close_quiet(g->wake_fd_);
    g->poller_ = g->wake_fd_ = -1;
}

// ---------------------------------------------------------------------------
// Attaching and detaching
// ---------------------------------------------------------------------------

// Claims a process slot and makes this process's doorbell; rings the others
// so that they watch it.  Caller holds the file lock.
Status claim_slot(SharedGroup *g) noexcept {
    const uint32_t pid = detail::process_id();
    const uint64_t start = detail::process_start_time(pid);
    if (!lock_robust(&g->h_->registry, [] {})) return kIncompatible;
    uint32_t p = 0;
    for (; p < g->nprocs_; ++p)
        if (g->procs_[p].state.load(std::memory_order_relaxed) == kProcFree) break;
    if (p == g->nprocs_) {
        pthread_mutex_unlock(&g->h_->registry);
        return kBusy;
    }
    Proc &pr = g->procs_[p];
    pr.pid = pid;
    pr.start = start;
    g->my_gen_ = pr.gen.fetch_add(1, std::memory_order_relaxed) + 1;
    pr.state.store(kProcLive, std::memory_order_release);
    g->me_ = p;
    g->mybit_ = p < kMaxProcs ? uint64_t(1) << p : 0;
    pthread_mutex_unlock(&g->h_->registry);
    try {
        g->bell_fd_ = detail::bell_create(bell_path(g, p));
    } catch (...) {
        g->bell_fd_ = -1;
    }
    return kOk;
}

// Gives back everything this process holds in the segment, and its slot.
void release_slot(SharedGroup *g) noexcept {
    const uint64_t bit = g->mybit();
    for (uint32_t s = 0; s < g->nstripes_; ++s) {
        if (!lock_stripe(g, s)) continue;
        const Stripe &st = g->stripes_[s];
        for (uint32_t i = st.first; i < st.first + st.count && i < g->slots_; ++i) {
            Record *r = &g->recs_[i];
            if (r->state == kRecFree) continue;
            r->holders &= ~bit;
            r->interest &= ~bit;
            r->bells &= ~bit;
            if (r->state == kRecOut && r->holders == 0 &&
                (r->seq.load(std::memory_order_relaxed) & kSeqDone))
                free_record(g, s, i);
        }
        unlock_stripe(g, s);
    }
    if (g->me_ < g->nprocs_ && lock_robust(&g->h_->registry, [] {})) {
        g->procs_[g->me_].state.store(kProcFree, std::memory_order_release);
        g->h_->membership.fetch_add(1, std::memory_order_acq_rel);
        pthread_mutex_unlock(&g->h_->registry);
    }
    if (g->bell_fd_ >= 0) {
        detail::fd_close_quiet(g->bell_fd_);
        g->bell_fd_ = -1;
    }
    try {
        detail::bell_remove(bell_path(g, g->me_));
    } catch (...) {}
}

void ring_all_peers(SharedGroup *g) noexcept {
    uint64_t all = 0;
    for (uint32_t p = 0; p < g->nprocs_; ++p)
        if (p != g->me_ && g->procs_[p].state.load(std::memory_order_acquire) == kProcLive)
            all |= uint64_t(1) << p;
    ring(g, all);
}

bool any_live(SharedGroup *g) noexcept {
    for (uint32_t p = 0; p < g->nprocs_; ++p)
        if (g->procs_[p].state.load(std::memory_order_acquire) == kProcLive) return true;
    return false;
}

// The mappings of this process, one per segment file: two attachments of
// one group in a process (two processes of the group, as far as the group
// knows) share a mapping, so the segment has one address here and every
// tool that reasons about addresses (ThreadSanitizer's happens-before, a
// debugger) sees one object.
struct Mapping {
    detail::FileId id;
    char *base;
    uint64_t size;
    unsigned refs;
    Mapping *next;
};
std::mutex g_mappings_mu;
Mapping *g_mappings = nullptr;

// This process's mapping of the file (id, size), made if it has none.
Status map_shared(int fd, const detail::FileId &id, uint64_t size, char **base) noexcept {
    std::lock_guard<std::mutex> lock(g_mappings_mu);
    for (Mapping *m = g_mappings; m; m = m->next) {
        if (m->id == id && m->size == size) {
            ++m->refs;
            *base = m->base;
            return kOk;
        }
    }
    auto *m = detail::make<Mapping>();
    if (!m) return kNoMemory;
    void *p = nullptr;
    const Status st = detail::shm_map(fd, size, &p);
    if (st != kOk) {
        detail::unmake(m);
        return st;
    }
    *m = Mapping{id, static_cast<char *>(p), size, 1, g_mappings};
    g_mappings = m;
    *base = m->base;
    return kOk;
}

void unmap_shared(char *base) noexcept {
    if (!base) return;
    std::lock_guard<std::mutex> lock(g_mappings_mu);
    for (Mapping **pp = &g_mappings; *pp; pp = &(*pp)->next) {
        Mapping *m = *pp;
        if (m->base != base) continue;
        if (--m->refs == 0) {
            detail::shm_unmap(m->base, m->size);
            *pp = m->next;
            detail::unmake(m);
        }
        return;
    }
}

void unmap(SharedGroup *g) noexcept {
    unmap_shared(g->base_);
    g->base_ = nullptr;
    detail::dealloc(g->locals_);
    g->locals_ = nullptr;
}

void destroy_group(SharedGroup *g) noexcept {
    g->~SharedGroup();
    detail::dealloc(g);
}

void detach_resources(SharedGroup *g) noexcept {
    stop_helper(g);
    detail::shm_lock(g->fd_);
    release_slot(g);
    reap_dead(g);  // a process that died since is no reason to keep the segment
    ring_all_peers(g);
    if (!any_live(g)) {
        // The last process leaves nothing behind.
        detail::shm_unlink(g->path_);
    }
    detail::shm_unlock_close(g->fd_);
    g->fd_ = -1;
    unmap(g);
}

void maybe_detach(SharedGroup *g) noexcept {
    if (g->helper_running_ && pthread_equal(pthread_self(), g->helper_)) {
        // The helper dropped the group's last object (a done callback's
        // result, after its caller closed the group): it cannot join
        // itself, and the code it returns to still reads the group.  It
        // detaches when its loop ends, which this makes it do now.
        g->detach_on_exit_ = true;
        g->stop_.store(true, std::memory_order_release);
        return;
    }
    detach_resources(g);
    destroy_group(g);
}

Status map_and_check(SharedGroup *g, const Layout &want, const SharedOptions &o, uint64_t size,
                     const detail::FileId &id, bool *fresh) noexcept {
    *fresh = false;
    if (size != 0 && size >= sizeof(Header)) {
        char *p = nullptr;
        Status st = map_shared(g->fd_, id, size, &p);
        if (st != kOk) return st;
        g->base_ = p;
        g->size_ = size;
        g->h_ = reinterpret_cast<Header *>(p);
        Header *h = g->h_;
        if (h->magic != kMagic || h->layout != kLayout || h->header_bytes != sizeof(Header))
            return kIncompatible;
        if (h->ready.load(std::memory_order_acquire) == 1) {
            if (!layout_sane(h, size)) return kIncompatible;
            // Sizes asked for explicitly must be the segment's.
            if ((o.table_slots && want.slots != h->slots) ||
                (o.arena_bytes && want.arena != h->arena_bytes) ||
                (o.max_value_bytes && want.max_value != h->max_value_bytes) ||
                (o.max_processes && want.procs != h->max_procs))
                return kIncompatible;
            if (h->uid != detail::effective_uid()) return kPermission;
            bind(g);
            return kOk;
        }
        // Its creator died before finishing: start clean.
        unmap_shared(g->base_);
        g->base_ = nullptr;
    }
    Status st = detail::shm_resize(g->fd_, want.total);
    if (st != kOk) return st;
    char *p = nullptr;
    st = map_shared(g->fd_, id, want.total, &p);
    if (st != kOk) return st;
    g->base_ = p;
    g->size_ = want.total;
    g->h_ = reinterpret_cast<Header *>(p);
    initialise(g, want, detail::effective_uid());
    *fresh = true;
    return kOk;
}

// This process's name in the stripes' lock words.
void set_lock_id(SharedGroup *g) noexcept {
    const uint32_t pid = detail::process_id();
    g->lock_id_ = lock_id_of(pid, detail::process_start_time(pid));
}

Status attach(SharedGroup *g, const SharedOptions &o) noexcept {
    set_lock_id(g);
    Layout want;
    Status st = layout_for(o, &want);
    if (st != kOk) return st;
    const unsigned mode = o.mode ? o.mode : 0600;
    if (mode & ~0777u) return kInvalid;
    uint64_t size = 0;
    uint32_t uid = 0, file_mode = 0;
    detail::FileId id{0, 0};
    st = detail::shm_open_locked(g->path_, mode, &g->fd_, &size, &uid, &file_mode, &id);
    if (st != kOk) return st;
    // Peers of the same user, never wider than asked: a segment another
    // user made, or readable by more than the caller allows, is refused.
    if (uid != detail::effective_uid() || (file_mode & ~mode & 0777)) {
        detail::shm_unlock_close(g->fd_);
        g->fd_ = -1;
        return kPermission;
    }
    bool fresh = false;
    st = map_and_check(g, want, o, size, id, &fresh);
    if (st == kOk && !fresh) {
        reap_dead(g);
        if (!any_live(g)) {
            // Nobody is attached: whatever is in it is left by processes
            // that died.  Start clean, with this caller's sizes.
            unmap_shared(g->base_);
            g->base_ = nullptr;
            st = map_and_check(g, want, o, 0, id, &fresh);
        }
    }
    if (st == kOk) {
        g->locals_ = static_cast<SharedGroup::Local *>(
            detail::alloc(sizeof(SharedGroup::Local) * g->slots_));
        if (!g->locals_) st = kNoMemory;
        else
            std::memset(static_cast<void *>(g->locals_), 0, sizeof(SharedGroup::Local) * g->slots_);
    }
    if (st == kOk) st = claim_slot(g);
    if (st == kOk && g->bell_fd_ < 0) {
        release_slot(g);
        st = kNoMemory;
    }
    if (st != kOk) {
        detail::shm_unlock_close(g->fd_);
        g->fd_ = -1;
        if (g->base_) unmap(g);
        return st;
    }
    g->h_->membership.fetch_add(1, std::memory_order_acq_rel);
    ring_all_peers(g);
    detail::shm_unlock(g->fd_);
    g->fork_gen_.store(detail::fork_generation(), std::memory_order_release);
    if (!start_helper(g)) {
        detach_resources(g);
        return kNoMemory;
    }
    return kOk;
}

// ---------------------------------------------------------------------------
// Flights
// ---------------------------------------------------------------------------

const char kSetValueRefused[] =
    "sf_call_set_value on a shared group: a pointer cannot cross processes "
    "(store the value with sf_call_set_bytes)";
const char kPanicLost[] = "panic (message lost: the shared group's arena is full)";

// After a fork the child is another process: it takes a slot of its own
// (the parent's calls and results are the parent's) the first time it
// uses the group.
Status reattach_after_fork(SharedGroup *g) noexcept;

__attribute__((noinline)) Status check_fork_slow(SharedGroup *g) noexcept;
inline Status check_fork(SharedGroup *g) noexcept {
    if (__builtin_expect(g->fork_gen_.load(std::memory_order_acquire) == detail::fork_generation(),
                         1))
        return kOk;
    return check_fork_slow(g);
}

Status check_fork_slow(SharedGroup *g) noexcept {
    // Several threads of the child may make their first call at once: one
    // re-attaches, the others wait for it and go on with its outcome
    // (before, each re-attached, and they closed each other's descriptor
    // and claimed a slot each).
    pthread_mutex_lock(&g->fork_lock_);
    Status st = kOk;
    if (g->fork_gen_.load(std::memory_order_relaxed) != detail::fork_generation())
        st = reattach_after_fork(g);
    pthread_mutex_unlock(&g->fork_lock_);
    return st;
}

Status reattach_after_fork(SharedGroup *g) noexcept {
    detail::fd_close_quiet(g->fd_);  // the parent's description (and its flock)
    g->fd_ = -1;
    uint64_t size = 0;
    uint32_t uid = 0, mode = 0;
    Status st = detail::shm_open_locked(g->path_, 0600, &g->fd_, &size, &uid, &mode);
    if (st != kOk) return st;
    std::memset(static_cast<void *>(g->locals_), 0, sizeof(SharedGroup::Local) * g->slots_);
    g->objects_.store(0, std::memory_order_relaxed);
    g->helper_running_ = false;  // it is the parent's thread
    g->poller_ = g->wake_fd_ = g->bell_fd_ = -1;
    set_lock_id(g);
    st = claim_slot(g);
    if (st == kOk && g->bell_fd_ < 0) st = kNoMemory;
    if (st == kOk) {
        g->h_->membership.fetch_add(1, std::memory_order_acq_rel);
        ring_all_peers(g);
    }
    detail::shm_unlock(g->fd_);
    if (st == kOk && !start_helper(g)) st = kNoMemory;
    // Only a child that became a process of the group goes on with it; after
    // a failure its next call tries again, never using the parent's slot.
    if (st == kOk) g->fork_gen_.store(detail::fork_generation(), std::memory_order_release);
    return st;
}

// Where a key goes.
struct Place {
    uint64_t hash;
    uint32_t bucket, stripe;
};
__attribute__((always_inline)) inline Place place_of(SharedGroup *g, Key key) noexcept {
    Place p;
    p.hash = detail::hash_bytes(key.data, key.size, g->seed_);
    p.bucket = g->bucket_of(p.hash);
    p.stripe = g->stripe_of_bucket(p.bucket);
    return p;
}

enum Acquired { kJoined, kLed, kFull, kFailed, kSelf };

// Joins the key's flight or publishes a new one led by this caller.  Under
// the stripe's lock; a flight whose leader's process died is reaped first
// (so the key is never stuck behind it).  deadlock_check: a do, which must
// not wait for a flight its own thread leads.
Acquired acquire(SharedGroup *g, const Place &pl, Key key, FlightMode mode, bool deadlock_check,
                 uint32_t *out) noexcept {
    const uint32_t tid = detail::thread_id();
    for (int attempt = 0; attempt < 1000; ++attempt) {
        if (!lock_stripe(g, pl.stripe)) return kFailed;
        uint32_t i = 0;
        if (Record *r = find(g, pl.bucket, pl.hash, key, &i)) {
            if (deadlock_check && r->leader_proc == g->me_ && r->leader_tid == tid &&
                !(r->flags & kRecFinishing)) {
                unlock_stripe(g, pl.stripe);
                return kSelf;
            }
            if (r->leader_proc != g->me_ && !proc_alive(g, r->leader_proc, r->leader_gen)) {
                const uint32_t p = r->leader_proc;
                const uint64_t gen = r->leader_gen;
                unlock_stripe(g, pl.stripe);
                reap(g, p, gen);
                continue;
            }
            r->holders |= g->mybit();
            r->flags.fetch_or(kRecShared, std::memory_order_relaxed);
            if (mode == kModeTwoPhase) {
                r->interest |= g->mybit();
                g->locals_[i].interest.fetch_add(1, std::memory_order_relaxed);
            }
            g->locals_[i].refs.fetch_add(1, std::memory_order_relaxed);
            bump(g->stripes_[pl.stripe].followers);
            SF_KILL_POINT("join.marked");
            unlock_stripe(g, pl.stripe);
            *out = i;
            return kJoined;
        }
        Stripe &st = g->stripes_[pl.stripe];
        const uint32_t idx = st.free_head;
        if (idx == 0 || idx - 1 < st.first || idx - 1 >= st.first + st.count) {
            if (idx != 0) repair_stripe(g, pl.stripe);  // a corrupted free list
            unlock_stripe(g, pl.stripe);
            return kFull;
        }
        i = idx - 1;
        Record *r = &g->recs_[i];
        // Counted at once: a death from here on is counted as a Goexit by
        // whoever disposes of the record (repair_stripe, reap).
        bump(st.leaders);
        st.free_head = r->next;
        ++st.used;
        r->state = kRecNew;
        const uint64_t used = g->h_->in_use.fetch_add(1, std::memory_order_relaxed) + 1;
        uint64_t high = g->h_->in_use_high.load(std::memory_order_relaxed);
        while (used > high && !g->h_->in_use_high.compare_exchange_weak(high, used)) {}
        SF_KILL_POINT("publish.allocated");
        // Only the stripe's lock holder writes these: plain stores, where
        // `+=` and `=` on an atomic would each be a locked instruction (a
        // third of an uncontended call, measured).
        r->gen.store(r->gen.load(std::memory_order_relaxed) + 1, std::memory_order_release);
        r->hash = pl.hash;
        r->key_len = uint32_t(key.size);
        r->value_len = r->msg_len = 0;
        r->flags.store(0, std::memory_order_relaxed);
        r->status = 0;
        r->error = 0;
        r->mode = mode;
        r->leader_proc.store(g->me_, std::memory_order_relaxed);
        r->leader_gen = g->my_gen_;
        r->leader_tid.store(tid, std::memory_order_relaxed);
        r->holders = r->interest = g->mybit();
        r->bells = 0;
        r->seq.store(0, std::memory_order_relaxed);
        if (key.size <= kInline) {
            if (key.size) std::memcpy(r->key, key.data, key.size);
        } else {
            r->key_off = key.size > g->max_value_ ? 0 : arena_alloc(g, key.size, i, r->gen);
            unsigned char *k = r->key_off ? g->arena_data_ + r->key_off : nullptr;
            if (!k) {
                r->key_len = 0;
                free_record(g, pl.stripe, i);
                st.leaders.store(st.leaders.load(std::memory_order_relaxed) - 1,
                                 std::memory_order_release);  // refused: not counted
                unlock_stripe(g, pl.stripe);
                return kFull;
            }
            std::memcpy(k, key.data, key.size);
        }
        r->next = g->buckets_[pl.bucket];
        g->buckets_[pl.bucket] = i + 1;  // the commit
        r->state = kRecLive;
        SF_KILL_POINT("publish.linked");
        g->locals_[i].refs.store(1, std::memory_order_relaxed);
        if (mode == kModeTwoPhase) g->locals_[i].interest.store(1, std::memory_order_relaxed);
        unlock_stripe(g, pl.stripe);
        *out = i;
        return kLed;
    }
    return kFailed;
}

// Waits until record i (of incarnation gen) is done, the timeout passes or
// the call c gave up.
WaitEnd wait_done(SharedGroup *g, uint32_t i, uint32_t gen, int64_t timeout_ns,
                  const SharedCall *c) noexcept {
    Record *r = &g->recs_[i];
    auto gave_up = [c] { return c && (c->flags.load(std::memory_order_seq_cst) & kScCancelled); };
    if (record_done(g, i, gen)) return kWaitDone;
    if (gave_up()) return kWaitCancelled;
    if (timeout_ns == 0) return kWaitTimedOut;
    for (int k = 0; k < 200; ++k) {
        detail::cpu_relax();
        if (record_done(g, i, gen)) return kWaitDone;
    }
    const int64_t deadline =
        timeout_ns > 0 ? detail::deadline_after(detail::now_ns(), timeout_ns) : 0;
    for (;;) {
        uint32_t sq = r->seq.load(std::memory_order_seq_cst);
        if ((sq & kSeqDone) || r->gen != gen) return kWaitDone;
        if (gave_up()) return kWaitCancelled;
        if (!(sq & kSeqWaiters) &&
            !r->seq.compare_exchange_weak(sq, sq | kSeqWaiters, std::memory_order_seq_cst))
            continue;
        int64_t left = -1;
        if (timeout_ns > 0) {
            left = deadline - detail::now_ns();
            if (left <= 0) break;
        }
        if (!detail::futex_wait(&r->seq, sq | kSeqWaiters, left, true)) break;
    }
    if (record_done(g, i, gen)) return kWaitDone;
    return gave_up() ? kWaitCancelled : kWaitTimedOut;
}

// Stores a panic message for record i (leader-owned until published).
void store_message(SharedGroup *g, uint32_t i, const char *message) noexcept {
    Record *r = &g->recs_[i];
    const char *m = message ? message : "panic";
    std::size_t n = std::strlen(m);
    if (n > 4096) n = 4096;
    const uint32_t s = g->stripe_of_rec(i);
    const uint64_t off = arena_alloc(g, n + 1, i, r->gen);
    if (!lock_stripe(g, s)) return;
    if (r->msg_len > kInline) arena_free(g, r->msg_off, i, r->gen);
    r->msg_len = 0;
    if (off) {
        std::memcpy(g->arena_data_ + off, m, n);
        g->arena_data_[off + n] = 0;
        r->msg_off = off;
        r->msg_len = uint32_t(n + 1 > kInline ? n + 1 : kInline + 1);  // always in the arena
    }
    unlock_stripe(g, s);
}

// The leader publishes: claims the finish (false when claimed already),
// and publishes the outcome.
bool publish(SharedGroup *g, uint32_t i, Status status, int error, const char *message) noexcept {
    Record *r = &g->recs_[i];
    // A message given now replaces one sf_call_panic left pending in fn.
    if (status == kPanic && (message || !(r->flags & kRecPanicSet))) store_message(g, i, message);
    const uint32_t s = g->stripe_of_rec(i);
    if (!lock_stripe(g, s)) return false;
    if (r->flags & kRecFinishing) {
        unlock_stripe(g, s);
        return false;
    }
    r->flags.fetch_or(kRecFinishing, std::memory_order_relaxed);
    publish_locked(g, s, i, status, error);
    return true;
}

// The common uncontended case, a do flight nobody joined, ends in one
// critical section instead of two: the leader publishes, takes its value in
// a result of its own process (a copy, as on a local group) and frees the
// record at once, so its result holds nothing in the segment and its
// release takes no lock.  nullptr, with nothing done, when it is not alone
// (a joiner or a registration), when fn panicked, or without memory: then
// the caller publishes as usual.
Flight *publish_alone(SharedGroup *g, uint32_t i, int error) noexcept {
    Record *r = &g->recs_[i];
    if (r->flags & (kRecPanicSet | kRecShared | kRecForgotten)) return nullptr;
    // The value is this leader's own and no longer changes: copied before
    // the lock, so the critical section stays short.
    void *value = nullptr;
    DestroyFn destroy = nullptr;
    if (r->flags & kRecBytes) {
        std::size_t n = 0;
        const void *v = value_bytes(g, r, &n);
        if (!v && n) return nullptr;
        value = bytes_copy(v, n, &destroy);
        if (!value) return nullptr;
    }
    auto *f = static_cast<Flight *>(detail::flight_cache().get());
    const uint32_t s = g->stripe_of_rec(i);
    if (!f || !lock_stripe(g, s)) {
        if (f) detail::flight_cache().put(f);
        run_destroy(destroy, value);
        return nullptr;
    }
    if ((r->flags & (kRecFinishing | kRecShared | kRecForgotten)) || r->holders != g->mybit() ||
        r->bells || g->locals_[i].refs.load(std::memory_order_relaxed) != 1) {
        unlock_stripe(g, s);
        detail::flight_cache().put(f);
        run_destroy(destroy, value);
        return nullptr;
    }
    // Nobody else can see the record from here to its freeing, all in this
    // critical section: no finishing claim, no locked instruction.
    unlink_record(g, i);
    SF_KILL_POINT("complete.unlinked");
    r->status = int32_t(kOk);
    r->error = error;
    bump(g->stripes_[s].completed);
    r->seq.store(r->seq.load(std::memory_order_relaxed) | kSeqDone, std::memory_order_release);
    g->locals_[i].refs.store(0, std::memory_order_relaxed);
    free_record(g, s, i);
    unlock_stripe(g, s);
    f->role = kRoleLeader;  // a plain local result: nothing in the segment
    f->mode = kModeDo;
    f->flags = 0;
    f->status_ = int8_t(kOk);
    f->lflags = 0;
    f->ident.store(0, std::memory_order_relaxed);
    f->state.store(kDone | kFinished | kUnpublished, std::memory_order_relaxed);
    f->refs.store(1, std::memory_order_relaxed);
    f->group = nullptr;
    f->value = value;
    f->destroy = destroy;
    f->error = error;
    f->notify_head = nullptr;
    f->ext.store(nullptr, std::memory_order_relaxed);
    return f;
}

Status outcome_of(SharedGroup *g, uint32_t i, uint32_t gen) noexcept {
    Record *r = &g->recs_[i];
    return r->gen == gen ? Status(r->status) : kGoexit;
}

}  // namespace

// ---------------------------------------------------------------------------
// The ways in
// ---------------------------------------------------------------------------

Status shared_open(const SharedOptions &o, SharedGroup **out) noexcept {
    void *mem = detail::alloc(sizeof(SharedGroup));
    if (!mem) return kNoMemory;
    SharedGroup *g = new (mem) SharedGroup();
    Status st = kOk;
    if (!o.path.empty()) {
        try {
            g->path_.path = o.path;
        } catch (...) {
            st = kNoMemory;
        }
    } else {
        st = detail::shm_path_for_name(o.name.c_str(), &g->path_);
    }
    g->run_unshared_ = o.run_unshared_when_full;
    if (st == kOk) st = attach(g, o);
    if (st != kOk) {
        destroy_group(g);
        return st;
    }
    *out = g;
    return kOk;
}

Status shared_close(SharedGroup *g) noexcept {
    if (g->helper_running_ && pthread_equal(pthread_self(), g->helper_)) return kBusy;
    // Results stay valid after the close (the header's promise): the
    // detach waits for the last of them.
    g->closing_.store(true, std::memory_order_release);
    if (g->objects_.load(std::memory_order_acquire) == 0) maybe_detach(g);
    return kOk;
}

Status shared_run(SharedGroup *g, Key key, int (*fn)(void *ctx, SharedCall *call), void *ctx,
                  Flight **result, bool *shared) {
    if (Status st = check_fork(g)) return st;
    const Place pl = place_of(g, key);
    uint32_t i = 0;
    const Acquired a = acquire(g, pl, key, kModeDo, true, &i);
    if (a == kSelf) return kDeadlock;
    if (a == kFailed) return kIncompatible;
    if (a == kFull) return kNoMemory;  // the C layer may run fn unshared
    Record *r = &g->recs_[i];
    const uint32_t gen = r->gen;
    if (a == kJoined) {
        wait_done(g, i, gen, -1, nullptr);
    } else {
        // Leading: fn runs here with a call of its own (valid until it
        // returns).
        // Field by field: `SharedCall call{}` zeroed all 96 bytes with a
        // rep stos, a tenth of an uncontended call.  Only the fields the
        // leader's call functions read are set; fn sees it as an sf_call.
        SharedCall call;
        call.role = kRoleSharedCall;
        call.leader = 1;
        call.mode = kModeDo;
        call.flags.store(0, std::memory_order_relaxed);
        call.rec = i;
        call.gen = gen;
        call.g = g;
        call.done = DoneCallback{};
        call.abandon = AbandonCallback{};
        call.next = call.prev = nullptr;
        call.efd = -1;
        call.refs.store(0, std::memory_order_relaxed);
        try {
            const int err = fn(ctx, &call);
            if (Flight *alone = publish_alone(g, i, err)) {
                *shared = false;
                *result = alone;
                return kOk;
            }
            publish(g, i, (r->flags & kRecPanicSet) ? kPanic : kOk, err, nullptr);
        } catch (abi::__forced_unwind &) {
            publish(g, i, kGoexit, 0, nullptr);
            drop_hold(g, i);
            throw;
        } catch (const std::exception &e) {
            publish(g, i, kPanic, 0, e.what());
        } catch (...) {
            publish(g, i, kPanic, 0, "unknown C++ exception");
        }
    }
    Flight *res = new_result(g, i);  // the caller's hold becomes the result's
    if (!res) {
        drop_hold(g, i);
        return kNoMemory;
    }
    *shared = a == kJoined || (r->flags & kRecShared);
    *result = res;
    return outcome_of(g, i, gen);
}

Status shared_begin(SharedGroup *g, Key key, SharedCall **out) noexcept {
    if (Status st = check_fork(g)) return st;
    const Place pl = place_of(g, key);
    uint32_t i = 0;
    const Acquired a = acquire(g, pl, key, kModeTwoPhase, false, &i);
    if (a == kFailed) return kIncompatible;
    if (a != kLed && a != kJoined) return kNoMemory;
    SharedCall *c = new_call(g, i, a == kLed, kModeTwoPhase);
    if (!c) {
        leave_interest(g, i);
        if (a == kLed) publish(g, i, kGoexit, 0, nullptr);
        drop_hold(g, i);
        return kNoMemory;
    }
    if (a == kLed) {
        std::lock_guard<detail::SpinLock> lock(local_lock(g, i));
        g->locals_[i].leader = c;
    }
    *out = c;
    return a == kLed ? kLeader : kFollower;
}

int shared_forget(SharedGroup *g, Key key, bool only_unshared) noexcept {
    if (check_fork(g) != kOk) return 0;
    const Place pl = place_of(g, key);
    if (!lock_stripe(g, pl.stripe)) return 0;
    uint32_t i = 0;
    int rc = 0;
    if (Record *r = find(g, pl.bucket, pl.hash, key, &i)) {
        if (!only_unshared || !(r->flags & kRecShared)) {
            r->flags.fetch_or(kRecForgotten, std::memory_order_relaxed);
            unlink_record(g, i);
            g->h_->c.forgets.fetch_add(1, std::memory_order_relaxed);
            rc = 1;
        }
    }
    unlock_stripe(g, pl.stripe);
    return rc;
}

SharedStats shared_stats(SharedGroup *g) noexcept {
    SharedStats st{};
    const Counters &c = g->h_->c;
    // Completions before starts, so in_flight is never below zero (a
    // flight's start and completion are counted in one stripe, in order).
    for (uint32_t s = 0; s < g->nstripes_; ++s) {
        const Stripe &sp = g->stripes_[s];
        st.counts.completed += sp.completed.load(std::memory_order_acquire);
        st.counts.panics += sp.panics.load(std::memory_order_relaxed);
        st.counts.goexits += sp.goexits.load(std::memory_order_relaxed);
    }
    for (uint32_t s = 0; s < g->nstripes_; ++s) {
        const Stripe &sp = g->stripes_[s];
        st.counts.leaders += sp.leaders.load(std::memory_order_acquire);
        st.counts.followers += sp.followers.load(std::memory_order_relaxed);
    }
    st.counts.timeouts = c.timeouts.load(std::memory_order_relaxed);
    st.counts.forgets = c.forgets.load(std::memory_order_relaxed);
    st.counts.abandons = c.abandons.load(std::memory_order_relaxed);
    st.counts.cancels = c.cancels.load(std::memory_order_relaxed);
    st.in_flight_high = g->h_->in_use_high.load(std::memory_order_relaxed);
    st.arena_used = g->h_->arena_used.load(std::memory_order_relaxed);
    st.arena_high = g->h_->arena_high.load(std::memory_order_relaxed);
    uint64_t n = 0;
    for (uint32_t p = 0; p < g->nprocs_; ++p)
        if (g->procs_[p].state.load(std::memory_order_relaxed) == kProcLive) ++n;
    st.processes = n;
    return st;
}

// ---------------------------------------------------------------------------
// Calls
// ---------------------------------------------------------------------------

Status shared_call_role(const SharedCall *c) noexcept { return c->leader ? kLeader : kFollower; }

Status shared_set_bytes(SharedCall *c, const void *data, std::size_t len) noexcept {
    SharedGroup *g = c->g;
    if (!c->leader || c->rec >= g->slots_) return kBadState;
    if (len > g->max_value_) return kInvalid;
    const uint32_t i = c->rec, s = g->stripe_of_rec(i);
    Record *r = &g->recs_[i];
    uint64_t off = 0;
    if (len > kInline) {
        off = arena_alloc(g, len, i, c->gen);
        if (!off) return kNoMemory;
        std::memcpy(g->arena_data_ + off, data, len);
        SF_KILL_POINT("value.stored");
    }
    if (!lock_stripe(g, s)) return kIncompatible;
    if (r->gen != c->gen || (r->flags & kRecFinishing)) {
        unlock_stripe(g, s);
        if (off) arena_free(g, off, i, c->gen);
        return kBadState;
    }
    const uint64_t old_off = r->value_len > kInline ? r->value_off : 0;
    if (len <= kInline) {
        if (len) std::memcpy(r->value, data, len);
    } else {
        r->value_off = off;
    }
    r->value_len = uint32_t(len);
    r->flags.fetch_or(kRecBytes, std::memory_order_relaxed);
    unlock_stripe(g, s);
    if (old_off) arena_free(g, old_off, i, c->gen);
    return kOk;
}

namespace {
// A panic to publish when the flight finishes (the first request wins).
Status panic_pending(SharedGroup *g, uint32_t i, const char *message) noexcept {
    Record *r = &g->recs_[i];
    if (r->flags & kRecFinishing) return kBadState;
    if (r->flags & kRecPanicSet) return kOk;
    store_message(g, i, message ? message : "panic");
    const uint32_t s = g->stripe_of_rec(i);
    if (!lock_stripe(g, s)) return kIncompatible;
    r->flags.fetch_or(kRecPanicSet, std::memory_order_relaxed);
    unlock_stripe(g, s);
    return kOk;
}
}  // namespace

void shared_set_value(SharedCall *c, void *value, DestroyFn destroy) noexcept {
    run_destroy(destroy, value);
    if (c->leader && c->rec < c->g->slots_) panic_pending(c->g, c->rec, kSetValueRefused);
}

Status shared_panic(SharedCall *c, const char *message) noexcept {
    SharedGroup *g = c->g;
    if (!c->leader || c->rec >= g->slots_) return kBadState;
    if (c->mode == kModeTwoPhase)
        return publish(g, c->rec, kPanic, 0, message ? message : "panic") ? kOk : kBadState;
    return panic_pending(g, c->rec, message);  // inside fn: when fn returns
}

Status shared_finish(SharedCall *c, int error) noexcept {
    SharedGroup *g = c->g;
    if (!c->leader || c->mode != kModeTwoPhase) return kBadState;
    Record *r = &g->recs_[c->rec];
    if (r->flags & kRecPanicSet) {
        // A pointer value was refused: the flight panics saying so, and the
        // leader hears SF_EINVAL.
        return publish(g, c->rec, kPanic, error, kSetValueRefused) ? kInvalid : kBadState;
    }
    return publish(g, c->rec, kOk, error, nullptr) ? kOk : kBadState;
}

int shared_finish_unshared(SharedCall *c, int error) noexcept {
    SharedGroup *g = c->g;
    if (!c->leader || c->mode != kModeTwoPhase) return kBadState;
    Record *r = &g->recs_[c->rec];
    if (r->flags & kRecFinishing) return kBadState;
    if (r->flags & kRecShared) return 1;
    if (!publish(g, c->rec, kOk, error, nullptr)) return kBadState;
    shared_release(c);
    return 0;
}

Status shared_wait(SharedCall *c, int64_t timeout_ns, Flight **result, bool *shared) noexcept {
    SharedGroup *g = c->g;
    const uint32_t i = c->rec;
    Record *r = &g->recs_[i];
    if (c->flags.load(std::memory_order_seq_cst) & kScCancelled) return kCanceled;
    if (c->leader) {
        if ((r->flags & kRecLeaderLeft) && r->gen == c->gen) return kCanceled;
        if (!record_done(g, i, c->gen)) return kDeadlock;
    } else {
        if (timeout_ns < 0 && !record_done(g, i, c->gen) && r->leader_proc == g->me_ &&
            r->leader_tid == detail::thread_id() &&
            (r->mode != kModeTwoPhase || (r->flags & kRecStrict)))
            return kDeadlock;
        switch (wait_done(g, i, c->gen, timeout_ns, c)) {
            case kWaitDone:
                break;
            case kWaitCancelled:
                return kCanceled;
            case kWaitTimedOut:
                if (timeout_ns > 0) g->h_->c.timeouts.fetch_add(1, std::memory_order_relaxed);
                return kTimedOut;
        }
    }
    if (result) {
        Flight *res = new_result(g, i);
        if (!res) return kNoMemory;
        g->locals_[i].refs.fetch_add(1, std::memory_order_relaxed);  // c holds it already
        *result = res;
    }
    *shared = c->leader ? (r->flags & kRecShared) != 0 : true;
    return outcome_of(g, i, c->gen);
}

Status shared_on_done(SharedCall *c, DoneCallback cb) noexcept {
    SharedGroup *g = c->g;
    if (c->mode != kModeTwoPhase) return kBadState;
    const uint32_t i = c->rec;
    bool now = false, cancelled = false;
    {
        std::lock_guard<detail::SpinLock> lock(local_lock(g, i));
        const uint8_t f = c->flags.load(std::memory_order_relaxed);
        if (f & kScDoneSet) return kBadState;
        c->flags.fetch_or(uint8_t(kScDoneSet), std::memory_order_relaxed);
        c->done = cb;
        cancelled = f & kScCancelled;
        now = cancelled || record_done(g, i, c->gen);
        if (!now && !(f & kScLinked)) {
            SharedGroup::Local &l = g->locals_[i];
            c->flags.fetch_or(uint8_t(kScLinked), std::memory_order_relaxed);
            c->refs.fetch_add(1, std::memory_order_relaxed);  // the notification's
            c->prev = nullptr;
            c->next = l.regs.load(std::memory_order_relaxed);
            if (c->next) c->next->prev = c;
            l.regs.store(c, std::memory_order_relaxed);
        }
    }
    if (now) {
        if (cancelled) {
            detail::NoCancel no_cancel;
            cb.invoke(cb.fn, cb.payload, kCanceled, nullptr, !c->leader);
        } else {
            invoke_done(c);
        }
        return kOk;
    }
    // Ask to be rung; a completion between the check above and this mark
    // rang nobody here, so look again after it.
    const uint32_t s = g->stripe_of_rec(i);
    if (lock_stripe(g, s)) {
        g->recs_[i].bells |= g->mybit();
        unlock_stripe(g, s);
    }
    if (record_done(g, i, c->gen)) deliver_local(g, i);
    return kOk;
}

int shared_fd(SharedCall *c) noexcept {
    SharedGroup *g = c->g;
    if (c->mode != kModeTwoPhase) return kBadState;
    const uint32_t i = c->rec;
    {
        std::lock_guard<detail::SpinLock> lock(local_lock(g, i));
        if (c->efd >= 0) return c->efd;
    }
    const int efd = detail::event_fd_open();
    if (efd < 0) return efd;
    bool signal_now = false, need_bell = false;
    {
        std::lock_guard<detail::SpinLock> lock(local_lock(g, i));
        if (c->efd >= 0) {
            detail::fd_close_quiet(efd);
            return c->efd;
        }
        c->efd = efd;
        const uint8_t f = c->flags.load(std::memory_order_relaxed);
        if ((f & kScCancelled) || record_done(g, i, c->gen)) {
            signal_now = true;
        } else if (!(f & kScLinked)) {
            SharedGroup::Local &l = g->locals_[i];
            c->flags.fetch_or(uint8_t(kScLinked), std::memory_order_relaxed);
            c->refs.fetch_add(1, std::memory_order_relaxed);
            c->prev = nullptr;
            c->next = l.regs.load(std::memory_order_relaxed);
            if (c->next) c->next->prev = c;
            l.regs.store(c, std::memory_order_relaxed);
            need_bell = true;
        }
    }
    if (signal_now) {
        detail::NoCancel no_cancel;
        detail::event_fd_signal(efd);
    }
    if (need_bell) {
        const uint32_t s = g->stripe_of_rec(i);
        if (lock_stripe(g, s)) {
            g->recs_[i].bells |= g->mybit();
            unlock_stripe(g, s);
        }
        if (record_done(g, i, c->gen)) deliver_local(g, i);
    }
    return efd;
}

// Gives up: under the local lock, against completion's delivery there.
// For a leader, the finish claim is checked under the stripe lock too.
int shared_cancel(SharedCall *c) noexcept {
    SharedGroup *g = c->g;
    if (c->mode != kModeTwoPhase) return kBadState;
    const uint32_t i = c->rec, s = g->stripe_of_rec(i);
    Record *r = &g->recs_[i];
    bool fire = false;
    {
        std::lock_guard<detail::SpinLock> lock(local_lock(g, i));
        const uint8_t f = c->flags.load(std::memory_order_relaxed);
        if ((f & (kScCancelled | kScLeft)) || record_done(g, i, c->gen)) return kBadState;
        if (c->leader) {
            if (!lock_stripe(g, s)) return kBadState;
            const bool claimed = r->flags & kRecFinishing;
            if (!claimed) r->flags.fetch_or(kRecLeaderLeft, std::memory_order_relaxed);
            unlock_stripe(g, s);
            if (claimed) return kBadState;
        }
        c->flags.fetch_or(uint8_t(kScCancelled | kScLeft), std::memory_order_seq_cst);
        if ((f & kScDoneSet) && (f & kScLinked)) {
            unlink_reg_locked(g, c);
            fire = true;
        }
        detail::NoCancel no_cancel;
        detail::event_fd_signal(c->efd);
    }
    g->h_->c.cancels.fetch_add(1, std::memory_order_relaxed);
    // Its own caller may sleep in shared_wait: change the word, wake all.
    r->seq.fetch_add(kSeqBump, std::memory_order_seq_cst);
    detail::futex_wake_all(&r->seq, true);
    const int abandoned = leave_interest(g, i);
    if (fire) {
        {
            detail::NoCancel no_cancel;
            c->done.invoke(c->done.fn, c->done.payload, kCanceled, nullptr, !c->leader);
        }
        call_unref(c);
    }
    return abandoned;
}

void shared_release(SharedCall *c) noexcept {
    SharedGroup *g = c->g;
    const uint32_t i = c->rec;
    if (c->leader && c->mode == kModeTwoPhase) {
        // Go's Goexit for the two-phase form: nobody hangs on a leader that
        // walked away (a finished flight is left as it is).
        publish(g, i, kGoexit, 0, nullptr);
        std::lock_guard<detail::SpinLock> lock(local_lock(g, i));
        if (g->locals_[i].leader == c) g->locals_[i].leader = nullptr;
    }
    bool was_left = false, keep_hold = false;
    {
        std::lock_guard<detail::SpinLock> lock(local_lock(g, i));
        const uint8_t f = c->flags.fetch_or(uint8_t(kScLeft), std::memory_order_relaxed);
        was_left = f & kScLeft;
        if ((f & kScLinked) && !(f & kScDoneSet)) {
            // Linked only for its eventfd: nothing is left to deliver.
            unlink_reg_locked(g, c);
            c->refs.fetch_sub(1, std::memory_order_relaxed);
        } else if ((f & kScLinked) && (f & kScDoneSet)) {
            // Its done callback still runs (the header): the delivery
            // reads the outcome, so the hold goes after it.
            c->flags.fetch_or(uint8_t(kScReleased), std::memory_order_relaxed);
            keep_hold = true;
        }
        if (c->efd >= 0) {
            detail::NoCancel no_cancel;
            detail::fd_close(c->efd);
            c->efd = -1;
        }
    }
    // Leaving before the end is leaving too (a cancel left already).
    if (c->mode == kModeTwoPhase && !was_left) leave_interest(g, i);
    if (!keep_hold) drop_hold(g, i);
    call_unref(c);
}

Status shared_doorbell(SharedCall *c, char *address, std::size_t len, uint64_t *token) noexcept {
    SharedGroup *g = c->g;
    if (c->mode != kModeTwoPhase) return kBadState;
    if (g->door_fd_ < 0) return kNoMemory;
    std::string a;
    try {
        a = "unix:" + door_path(g, g->me_);
    } catch (...) {
        return kNoMemory;
    }
    if (a.size() + 1 > len) return kInvalid;
    std::memcpy(address, a.c_str(), a.size() + 1);
    *token = uint64_t(c->gen) << 32 | c->rec;
    return kOk;
}

Status shared_disown(SharedCall *c) noexcept {
    SharedGroup *g = c->g;
    if (!c->leader || c->mode != kModeTwoPhase) return kBadState;
    const uint32_t s = g->stripe_of_rec(c->rec);
    if (!lock_stripe(g, s)) return kIncompatible;
    Record *r = &g->recs_[c->rec];
    if (r->gen == c->gen) {
        r->leader_tid = 0;
        r->flags.fetch_and(~uint32_t(kRecStrict), std::memory_order_relaxed);
    }
    unlock_stripe(g, s);
    return kOk;
}

Status shared_lead_here(SharedCall *c) noexcept {
    SharedGroup *g = c->g;
    if (!c->leader || c->mode != kModeTwoPhase) return kBadState;
    const uint32_t s = g->stripe_of_rec(c->rec);
    if (!lock_stripe(g, s)) return kIncompatible;
    Record *r = &g->recs_[c->rec];
    if (r->gen == c->gen) {
        r->leader_tid = detail::thread_id();
        r->flags.fetch_or(kRecStrict, std::memory_order_relaxed);
    }
    unlock_stripe(g, s);
    return kOk;
}

int shared_abandoned(const SharedCall *c) noexcept {
    const SharedGroup *g = c->g;
    if (c->rec >= g->slots_) return 0;
    const Record &r = g->recs_[c->rec];
    return r.gen == c->gen && (r.flags & kRecAbandoned) ? 1 : 0;
}

Status shared_on_abandon(SharedCall *c, AbandonCallback cb) noexcept {
    SharedGroup *g = c->g;
    if (!c->leader || c->mode != kModeTwoPhase) return kBadState;
    {
        std::lock_guard<detail::SpinLock> lock(local_lock(g, c->rec));
        if (c->abandon.invoke) return kBadState;
        c->abandon = cb;
    }
    run_abandon_local(g, c->rec);  // at once if abandoned already
    return kOk;
}

// ---------------------------------------------------------------------------
// Results
// ---------------------------------------------------------------------------

namespace {
const void *value_bytes(SharedGroup *g, Record *r, std::size_t *len) noexcept {
    *len = 0;
    if (!(r->flags & kRecBytes)) return nullptr;
    const uint64_t n = r->value_len;
    if (n <= kInline) {
        *len = std::size_t(n);
        return r->value;
    }
    const unsigned char *p = g->bytes_at(r->value_off, n);
    if (p) *len = std::size_t(n);
    return p;
}
}  // namespace

const void *shared_result_bytes(const Flight *f, std::size_t *len) noexcept {
    const ResultView v = view_of(f);
    Record *r = v.g->rec(v.rec);
    if (!r || r->gen != v.gen) {
        *len = 0;
        return nullptr;
    }
    return value_bytes(v.g, r, len);
}

const char *shared_result_panic_message(const Flight *f) noexcept {
    const ResultView v = view_of(f);
    SharedGroup *g = v.g;
    Record *r = g->rec(v.rec);
    if (!r || r->gen != v.gen || Status(r->status) != kPanic) return nullptr;
    if (r->msg_len <= kInline) return kPanicLost;
    const unsigned char *p = g->bytes_at(r->msg_off, 1);
    if (!p) return kPanicLost;
    // NUL-terminated when stored; a corrupted one is cut at the arena's end.
    const std::size_t room = std::size_t(g->arena_bytes_ - r->msg_off);
    return std::memchr(p, 0, room) ? reinterpret_cast<const char *>(p) : kPanicLost;
}

void shared_result_free(Flight *f) noexcept {
    const ResultView v = view_of(f);
    detail::flight_cache().put(f);
    drop_hold(v.g, v.rec);
    object_gone(v.g);
}

#if defined(SF_TESTING_HOOKS)
void *testing_shm::segment_bytes(SharedGroup *g, std::size_t *len) noexcept {
    *len = std::size_t(g->size_);
    return g->base_;
}
void testing_shm::set_lock_patience(int64_t ns) noexcept {
    g_lock_patience_ns.store(ns, std::memory_order_relaxed);
}
void testing_shm::hold_stripes(SharedGroup *g) noexcept {
    for (uint32_t s = 0; s < g->nstripes_; ++s) lock_stripe(g, s);
}
uint32_t testing_shm::doors_waiting(SharedGroup *g) noexcept {
    return g->doors_waiting_.load(std::memory_order_acquire);
}
#endif

}  // namespace sf
