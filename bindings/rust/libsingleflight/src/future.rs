//! `Group::call_async`: the flight as a runtime-agnostic `Future`.
//!
//! The C library decides who leads: every flight starts with
//! `sf_group_begin`.  What this module adds is that the async callers of one
//! flight in this process share **one** C party between them.  The first
//! `call_async` caller of a key crosses into C and publishes a [`Flight`] in
//! the group's registry; every later `call_async` caller that finds it there
//! joins it in Rust, with no C call: it counts itself among the flight's
//! callers and leaves its waker in the flight's list.  The flight completes
//! once, and that one completion publishes the outcome and wakes the whole
//! list in one pass.  Two kinds of flight:
//!
//! * *Led*: `sf_group_begin` made this caller the leader.  The C party is the
//!   leader's handle, kept with the work future in the [`Duty`]; the caller
//!   that drives the work publishes the outcome to the Rust callers itself
//!   when it finishes the C flight (so the value never enters C unless a C
//!   follower, a blocking `call` or another language, joined there).
//! * *Followed*: someone else leads (a blocking `call`, another language).
//!   The C party is one follower handle, owned by the flight, whose one done
//!   callback publishes the outcome to every Rust caller.
//!
//! The rule for giving up (a caller's future dropped before it is ready):
//!
//! * The caller leaves the flight's count; the others are unaffected, and C
//!   sees nothing while other Rust callers remain (the group's stats count
//!   such Rust-side joins and departures as followers and cancels).
//! * The work is owned by whoever drives it (its *duty*: the work future and
//!   the leader's C handle, which alone may finish the flight).  When the
//!   driver goes while other callers remain, the duty is parked on the flight
//!   and one waiting caller is woken to take it over and go on polling the
//!   very same work future: the work is neither restarted nor cancelled.
//! * When the last Rust caller goes, the flight's C party gives up
//!   (`sf_call_cancel`).  If that abandons the C flight (no caller is left in
//!   any language), the work future is dropped on that caller's thread, at
//!   once: that is how Rust tells a future to stop.  The leader's handle then
//!   finishes the abandoned flight, which reaches nobody.
//! * If the driver goes and the only callers left are in C (blocking
//!   [`Group::call`] followers, other languages), nobody can poll the work
//!   from there: they get [`Error::LeaderExited`], as when a leader thread
//!   exits.
//!
//! The registry is sharded by key.  Its entry for a key exists while its
//! flight is the one the C table publishes for that key: entries are added,
//! and the last caller's `sf_call_cancel` is made, under the key's shard
//! lock together with `sf_group_begin`, so a caller either joins the Rust
//! flight or meets the C table after the flight has gone from it.  A driver
//! takes its entry out before it finishes the C flight; a followed flight's
//! entry is taken out by the first caller that finds it over.
//!
//! Locks: a shard lock, then a flight lock, never the other way.  No user
//! code (work, `Drop`, wakers other than `clone`) runs under either, and no
//! C call that can run a done callback is made under either, so the done
//! callback may take the flight lock.

use crate::{panic_call, panic_message, settle, Error, Group};
use libsingleflight_sys as sys;
use std::any::Any;
use std::cell::{RefCell, UnsafeCell};
use std::collections::hash_map::{Entry, RandomState};
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::future::Future;
use std::os::raw::{c_int, c_void};
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// The work of one flight, type-erased so that whichever caller drives it can
/// name it.  `Send + 'static` because another task may take it over.
type Work<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a caller gets: the shared value and Go's `shared` flag.
type Outcome<T> = Result<(Arc<T>, bool), Error>;

/// What a flight publishes to its Rust callers, once.
type Published<T> = Result<Arc<T>, Error>;

fn lock<M>(m: &Mutex<M>) -> MutexGuard<'_, M> {
    // The guarded state stays consistent at every unlock, and no user code
    // runs under these locks, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Two random words from the standard library's per-process random keys.
fn random_seed() -> [u64; 2] {
    let s = RandomState::new();
    let draw = |i: u64| {
        let mut h = s.build_hasher();
        h.write_u64(i);
        h.finish()
    };
    [draw(1), draw(2) | 1]
}

/// The registry's hash of a key: a folded 64x64->128-bit multiply over
/// 8-byte words, keyed by the group's random seed (the construction of
/// hashbrown's default hasher, foldhash), so that which keys collide cannot
/// be worked out from outside.  Colliding keys are still correct (they
/// share a slot as a list); this is only about speed: SipHash cost more
/// than the rest of the registry's work on an uncontended call.
fn key_hash(seed: [u64; 2], key: &[u8]) -> u64 {
    fn fold(a: u64, b: u64) -> u64 {
        let r = u128::from(a) * u128::from(b);
        (r as u64) ^ ((r >> 64) as u64)
    }
    fn word(b: &[u8]) -> u64 {
        let mut w = [0u8; 8];
        w[..b.len()].copy_from_slice(b);
        u64::from_le_bytes(w)
    }
    const P: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut h = seed[0] ^ (key.len() as u64).wrapping_mul(P);
    let mut chunks = key.chunks_exact(8);
    for c in &mut chunks {
        h = fold(h ^ word(c), seed[1]);
    }
    let rest = chunks.remainder();
    if !rest.is_empty() || key.is_empty() {
        h = fold(h ^ word(rest), seed[1]);
    }
    fold(h, P)
}

/// Shards of the registry: a power of two, enough that two threads working
/// on different keys rarely meet on one lock.
const SHARDS: usize = 32;

/// Keys up to this length live inside the flight (no allocation of their
/// own).
const INLINE_KEY: usize = 40;

/// A flight's copy of its key.
enum KeyBuf {
    Inline(u8, [u8; INLINE_KEY]),
    Heap(Box<[u8]>),
}

impl KeyBuf {
    fn new(key: &[u8]) -> Self {
        if key.len() <= INLINE_KEY {
            let mut buf = [0u8; INLINE_KEY];
            buf[..key.len()].copy_from_slice(key);
            KeyBuf::Inline(key.len() as u8, buf)
        } else {
            KeyBuf::Heap(key.into())
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            KeyBuf::Inline(len, buf) => &buf[..*len as usize],
            KeyBuf::Heap(b) => b,
        }
    }
}

/// The maps are keyed by the key's hash, computed once per call with the
/// registry's randomly keyed hash (`key_hash`); this hasher passes it
/// through.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 hashes are written; fold anything else in all the same.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, h: u64) {
        self.0 = h;
    }
}

/// The flights of one hash in a shard's map: nearly always one.  Two keys
/// with the same 64-bit hash share a slot as a list.
enum Slot<T> {
    One(Arc<Flight<T>>),
    Many(Vec<Arc<Flight<T>>>),
}

/// The flights of one shard.  A handful live in a short list, scanned by
/// hash (no hashing of the map's own, no node to allocate: the common case
/// of a few keys in flight); beyond that, a map by hash.
struct FlightMap<T> {
    few: Vec<Arc<Flight<T>>>,
    many: HashMap<u64, Slot<T>, BuildHasherDefault<PassThrough>>,
}

/// How many flights a shard keeps in its list before it uses its map.
const FEW: usize = 8;

impl<T> FlightMap<T> {
    fn new() -> Self {
        FlightMap {
            few: Vec::new(),
            many: HashMap::default(),
        }
    }

    fn get(&self, hash: u64, key: &[u8]) -> Option<&Arc<Flight<T>>> {
        let same = |f: &&Arc<Flight<T>>| f.hash == hash && f.key.as_slice() == key;
        if let Some(f) = self.few.iter().find(same) {
            return Some(f);
        }
        if self.many.is_empty() {
            return None;
        }
        match self.many.get(&hash)? {
            Slot::One(f) => Some(f).filter(same),
            Slot::Many(v) => v.iter().find(same),
        }
    }

    /// Adds a flight whose key has no flight here (the caller removed it).
    fn insert(&mut self, hash: u64, flight: Arc<Flight<T>>) {
        if self.few.len() < FEW {
            if self.few.capacity() == 0 {
                self.few.reserve_exact(FEW);
            }
            self.few.push(flight);
            return;
        }
        match self.many.entry(hash) {
            Entry::Vacant(e) => {
                e.insert(Slot::One(flight));
            }
            Entry::Occupied(mut e) => {
                let slot = e.get_mut();
                match slot {
                    Slot::Many(v) => v.push(flight),
                    Slot::One(_) => {
                        let old = std::mem::replace(slot, Slot::Many(Vec::with_capacity(2)));
                        if let (Slot::One(old), Slot::Many(v)) = (old, slot) {
                            v.push(old);
                            v.push(flight);
                        }
                    }
                }
            }
        }
    }

    /// Removes the flight of `key` that `pick` accepts, if there is one.
    fn remove_where(&mut self, hash: u64, key: &[u8], pick: impl Fn(&Arc<Flight<T>>) -> bool) {
        let accept = |f: &Arc<Flight<T>>| f.hash == hash && f.key.as_slice() == key && pick(f);
        if let Some(i) = self.few.iter().position(&accept) {
            self.few.swap_remove(i);
            return;
        }
        let emptied = match self.many.get_mut(&hash) {
            None => return,
            Some(Slot::One(f)) => accept(f),
            Some(Slot::Many(v)) => {
                v.retain(|f| !accept(f));
                v.is_empty()
            }
        };
        if emptied {
            self.many.remove(&hash);
        }
    }

    fn remove(&mut self, hash: u64, key: &[u8]) {
        self.remove_where(hash, key, |_| true);
    }
}

/// One shard on a cache line of its own, so that two busy shards do not
/// slow each other down.
#[repr(align(64))]
struct Shard<T> {
    flights: Mutex<FlightMap<T>>,
}

/// The flights `call_async` callers share in one group, by key, and the
/// Rust-side counts the C library cannot see.
pub(crate) struct Registry<T> {
    shards: Box<[Shard<T>]>,
    /// The key of `key_hash`, drawn at random for each group.
    seed: [u64; 2],
    /// Callers that joined a flight in Rust (the C library counted none).
    followers: AtomicU64,
    /// Callers that gave up in Rust while others stayed (no C cancel).
    cancels: AtomicU64,
}

impl<T> Registry<T> {
    pub(crate) fn new() -> Self {
        Registry {
            shards: (0..SHARDS)
                .map(|_| Shard {
                    flights: Mutex::new(FlightMap::new()),
                })
                .collect(),
            seed: random_seed(),
            followers: AtomicU64::new(0),
            cancels: AtomicU64::new(0),
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        key_hash(self.seed, key)
    }

    /// The shard of a key's hash: its high bits (the map inside uses the
    /// low ones).
    fn shard(&self, hash: u64) -> MutexGuard<'_, FlightMap<T>> {
        lock(&self.shards[(hash >> 58) as usize % SHARDS].flights)
    }

    /// Runs `f` (a C call that may unpublish `key`'s flight, such as
    /// `sf_group_forget`) and drops the registry entry in the same step.
    pub(crate) fn unpublish<R>(&self, key: &[u8], f: impl FnOnce() -> R) -> R {
        let hash = self.hash(key);
        let mut flights = self.shard(hash);
        let r = f();
        flights.remove(hash, key);
        r
    }

    /// Callers that joined a flight in Rust, for `Group::stats`.
    pub(crate) fn rust_followers(&self) -> u64 {
        self.followers.load(Ordering::Relaxed)
    }

    /// Callers that gave up in Rust only, for `Group::stats`.
    pub(crate) fn rust_cancels(&self) -> u64 {
        self.cancels.load(Ordering::Relaxed)
    }

    fn remove_if(&self, flight: &Arc<Flight<T>>) {
        Self::remove_locked(&mut self.shard(flight.hash), flight);
    }

    fn remove_locked(flights: &mut FlightMap<T>, flight: &Arc<Flight<T>>) {
        flights.remove_where(flight.hash, flight.key.as_slice(), |f| Arc::ptr_eq(f, flight));
    }
}

/// The Rust side of one flight, shared by its `call_async` callers.
pub(crate) struct Flight<T> {
    /// The key and its hash in the registry.
    key: KeyBuf,
    hash: u64,
    /// A followed flight's C party: one follower handle, owned by the flight
    /// and released by its last caller.  NULL for a led flight (the
    /// leader's handle is in the duty).
    follower_call: *mut sys::sf_call,
    state: Mutex<FlightState<T>>,
    /// Whether `outcome` is written (set once, under the state lock, with
    /// Release; callers read it with Acquire and then read `outcome`
    /// without the lock).
    done: AtomicBool,
    /// The outcome every Rust caller receives: written once, before `done`.
    outcome: UnsafeCell<Option<Published<T>>>,
    /// Whether `state.parked` holds the duty, readable without the lock: a
    /// waiting caller's poll looks here first (set and cleared under it).
    has_parked: AtomicBool,
    /// How many callers joined in Rust (the leader's `shared`); written
    /// under the shard lock, read by the driver under it once the entry is
    /// gone, so the count is final.
    joined: AtomicUsize,
}

// SAFETY: the C handle may be used from any thread and is released once, by
// the last caller; `outcome` is written once under the state lock before
// `done` is set with Release and only read after `done` is seen with
// Acquire; values cross threads as Arc<T>, hence the bounds.
unsafe impl<T: Send + Sync> Send for Flight<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for Flight<T> {}

struct FlightState<T> {
    /// The Rust callers still waiting for the outcome (the driver among
    /// them).  When it reaches zero before the outcome, the flight's C party
    /// gives up.
    callers: usize,
    /// No caller may join any more: the last one left.
    closed: bool,
    /// The callers' wakers, one slot each (a slot is emptied when its caller
    /// goes or drives); taken whole when the outcome is published.
    waiters: Vec<Option<Waker>>,
    /// The duty while nobody drives it: parked by a driver that went away.
    parked: Option<Duty<T>>,
}

/// The right and obligation to produce the flight's value: the work future
/// and the leader's C handle, which alone can finish the flight.  Exactly one
/// place owns it at a time (a caller's future, or the flight while parked).
struct Duty<T> {
    call: *mut sys::sf_call,
    work: Work<T>,
    /// Whether the C library was told (`sf_call_disown`) that the work is
    /// no longer driven by the thread that began the flight.
    disowned: bool,
}

// SAFETY: the C handle may be used from any thread; only the owner of the
// Duty uses it, so its uses never overlap.  The work future is Send.
unsafe impl<T: Send> Send for Duty<T> {}

impl<T> Duty<T> {
    /// Ends a flight that nobody will see: drops the work (this is the
    /// cancellation the work observes), then finishes with no value if the
    /// flight was abandoned, or releases the handle unfinished otherwise,
    /// which the remaining C followers receive as a leader exit.
    fn stop(self, abandoned: bool) {
        let Duty { call, work, .. } = self;
        drop_quietly(work);
        // SAFETY: we own the leader's handle; it is released exactly here.
        unsafe {
            if abandoned {
                sys::sf_call_finish(call, sys::SF_ECANCELED);
            }
            sys::sf_call_release(call);
        }
    }
}

/// Drops what user code owns (the work future, a panic payload).  It runs
/// inside `Drop` of a caller's future or on a path that must go on, so a
/// panic from the user's destructor is reported and swallowed rather than
/// unwinding out of a `Drop` (which could abort).
fn drop_quietly<W>(work: W) {
    if panic::catch_unwind(AssertUnwindSafe(move || drop(work))).is_err() {
        eprintln!("singleflight: dropping a flight's work future panicked; the panic was ignored");
    }
}

/// Wakes every waker of a completed flight, each on its own: a panicking
/// `Waker` must not cost the others their wake-up.
fn wake_all(wakers: Vec<Option<Waker>>) {
    for w in wakers.into_iter().flatten() {
        if panic::catch_unwind(AssertUnwindSafe(move || w.wake())).is_err() {
            eprintln!("singleflight: a waker panicked; the panic was ignored");
        }
    }
}

impl<T> Flight<T> {
    fn new(
        key: &[u8],
        hash: u64,
        follower_call: *mut sys::sf_call,
        waiters: Vec<Option<Waker>>,
    ) -> Self {
        Flight {
            key: KeyBuf::new(key),
            hash,
            follower_call,
            state: Mutex::new(FlightState {
                callers: 1,
                closed: false,
                waiters,
                parked: None,
            }),
            done: AtomicBool::new(false),
            outcome: UnsafeCell::new(None),
            has_parked: AtomicBool::new(false),
            joined: AtomicUsize::new(0),
        }
    }

    fn is_led(&self) -> bool {
        self.follower_call.is_null()
    }

    /// The published outcome, once there is one.
    fn outcome(&self) -> Option<&Published<T>> {
        if self.done.load(Ordering::Acquire) {
            // SAFETY: written once before `done` was set (Release), never
            // written again.
            unsafe { (*self.outcome.get()).as_ref() }
        } else {
            None
        }
    }

    /// Publishes the outcome to every Rust caller and wakes them all, in one
    /// pass.  Only the first publication counts.
    fn publish(&self, out: Published<T>) {
        let wakers = {
            let mut st = lock(&self.state);
            if self.done.load(Ordering::Relaxed) {
                return;
            }
            // SAFETY: not done, so no reader looks at it yet, and every
            // writer holds the state lock.
            unsafe { *self.outcome.get() = Some(out) };
            self.done.store(true, Ordering::Release);
            std::mem::take(&mut st.waiters)
        };
        wake_all(wakers);
    }

    /// Joins the flight in Rust.  The caller holds the key's shard lock (so
    /// the last caller cannot give the flight up meanwhile).  None when the
    /// flight is over or was given up: it is no longer the one the C table
    /// has for the key.
    fn join(&self, waker: &Waker) -> Option<usize> {
        let mut st = lock(&self.state);
        if st.closed || self.done.load(Ordering::Relaxed) {
            return None;
        }
        st.callers += 1;
        st.waiters.push(Some(waker.clone()));
        self.joined.fetch_add(1, Ordering::Relaxed);
        Some(st.waiters.len() - 1)
    }

    /// Leaves `waker` in `slot` for the completion.  False when there is no
    /// need to wait: the outcome is out, or a duty is parked to take over.
    fn wait(&self, slot: usize, waker: &Waker) -> bool {
        let mut st = lock(&self.state);
        if self.done.load(Ordering::Relaxed) || self.has_parked.load(Ordering::Relaxed) {
            return false;
        }
        match st.waiters.get_mut(slot) {
            Some(Some(w)) if w.will_wake(waker) => {}
            Some(w) => *w = Some(waker.clone()),
            None => return false,
        }
        true
    }

    fn take_parked(&self, st: &mut FlightState<T>) -> Option<Duty<T>> {
        self.has_parked.store(false, Ordering::Release);
        st.parked.take()
    }

    fn park(&self, st: &mut FlightState<T>, duty: Duty<T>) {
        st.parked = Some(duty);
        self.has_parked.store(true, Ordering::Release);
    }
}

thread_local! {
    /// The flights whose work this thread is polling right now, innermost
    /// last: a caller joining one of them from inside its own work would
    /// wait for itself.
    static DRIVING: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

fn flight_id<T>(f: &Arc<Flight<T>>) -> usize {
    Arc::as_ptr(f) as *const () as usize
}

fn driven_here(id: usize) -> bool {
    DRIVING.with(|d| d.borrow().contains(&id))
}

/// Marks `id` as driven on this thread for the lifetime of the guard, also
/// when the work's poll unwinds.
struct DrivingGuard;

impl DrivingGuard {
    fn enter(id: usize) -> Self {
        DRIVING.with(|d| d.borrow_mut().push(id));
        DrivingGuard
    }
}

impl Drop for DrivingGuard {
    fn drop(&mut self) {
        DRIVING.with(|d| {
            d.borrow_mut().pop();
        });
    }
}

/// The `sf_done_fn` of a followed flight's one C handle.  payload is an
/// `Arc<Flight<T>>` given to the library by `Arc::into_raw`; the library
/// runs this exactly once, so the reference is taken back here.  Nothing
/// unwinds into C.
unsafe extern "C" fn on_flight_done<T: Send + Sync + 'static>(
    status: c_int,
    result: *mut sys::sf_result,
    shared: c_int,
    payload: *mut c_void,
) {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: see above.
        let flight = Arc::from_raw(payload as *const Flight<T>);
        // The result is borrowed for the callback: settle clones the Arc out.
        let out = settle::<T>(status, result, shared != 0).map(|(v, _)| v);
        flight.publish(out);
    }));
    if outcome.is_err() {
        // publish catches the wakers' panics; only a poisoned-lock path or
        // an allocation failure is left.
        eprintln!("singleflight: a done callback panicked; the panic was ignored");
    }
}

/// The future returned by [`Group::call_async`].
///
/// Does nothing until first polled.  Dropping it before it is ready gives
/// up this caller's interest only; see [`Group::call_async`] for the rule.
/// `Send` when `T`, `K` and `F` are; `Unpin` always.
#[must_use = "futures do nothing unless polled"]
pub struct CallAsync<'g, T: Send + Sync + 'static, K: AsRef<[u8]>, F> {
    group: &'g Group<T>,
    key: K,
    stage: Stage<T, F>,
}

enum Stage<T, F> {
    /// Not polled yet: no handle, no interest.
    Start(F),
    /// Leading: this caller drives the work.
    Lead(Lead<T>),
    /// Following: waiting for the flight's outcome, maybe driving a duty
    /// taken over from a driver that went away.
    Follow(Follow<T>),
    /// The output was returned (or the start failed).
    Over,
}

struct Lead<T> {
    flight: Arc<Flight<T>>,
    duty: Duty<T>,
}

struct Follow<T> {
    flight: Arc<Flight<T>>,
    /// Our slot in the flight's waiters.
    slot: usize,
    duty: Option<Duty<T>>,
}

// Nothing is pinned structurally: the work future lives in a Box.
impl<'g, T: Send + Sync + 'static, K: AsRef<[u8]>, F> Unpin for CallAsync<'g, T, K, F> {}

impl<'g, T: Send + Sync + 'static, K: AsRef<[u8]>, F> fmt::Debug for CallAsync<'g, T, K, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let stage = match self.stage {
            Stage::Start(_) => "start",
            Stage::Lead(_) => "lead",
            Stage::Follow(_) => "follow",
            Stage::Over => "over",
        };
        f.debug_struct("CallAsync").field("stage", &stage).finish()
    }
}

impl<T: Send + Sync + 'static> Group<T> {
    /// Runs the future `f()` returns once for all concurrent callers of
    /// `key`, and resolves to what [`Group::call`] returns: the shared value
    /// and `shared`.
    ///
    /// Works on any executor (tokio, smol, `futures::executor`...): the
    /// leader's caller polls the work inside its own `poll`, and the others
    /// are woken, all in one pass, by whichever thread completes the flight.
    /// No thread waits for anybody.  Async and blocking callers of the same
    /// key share one flight; the async ones of this group share one handle
    /// on it in the C library, so a follower joins without crossing into C.
    ///
    /// Giving up: dropping the returned future before it is ready withdraws
    /// this caller only; the others still get the value.  If the dropped
    /// future was driving the work while other `call_async` callers wait,
    /// one of them takes over polling that same work future.  When every
    /// caller has dropped its future, the work future is dropped at once, on
    /// the thread of the last one: that is the work's cancellation, which it
    /// can observe with a guard's `Drop`.  The next caller of `key` starts a
    /// new flight.  Blocking [`Group::call`] followers cannot drive a future:
    /// if they are the only callers left when the driver goes, they get
    /// [`Error::LeaderExited`].
    ///
    /// Hence the bounds: the work future may be taken over by another task,
    /// so it must be `Send + 'static`, as for a spawned task.  `f` runs at
    /// most once, on the leader's first poll, and only for the leader.
    ///
    /// A panic in `f` or in the work reaches the followers as
    /// [`Error::Panicked`] and resumes in the leader's caller (in the caller
    /// that was driving it).  Awaiting `call_async` on the same key from
    /// inside the work resolves to [`Error::Deadlock`] at once.
    pub fn call_async<K, F, Fut>(&self, key: K, f: F) -> CallAsync<'_, T, K, F>
    where
        K: AsRef<[u8]>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        CallAsync {
            group: self,
            key,
            stage: Stage::Start(f),
        }
    }
}

impl<'g, T, K, F, Fut> Future for CallAsync<'g, T, K, F>
where
    T: Send + Sync + 'static,
    K: AsRef<[u8]>,
    F: FnOnce() -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    type Output = Outcome<T>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome<T>> {
        let this = self.get_mut();
        if let Stage::Start(_) = this.stage {
            let f = match std::mem::replace(&mut this.stage, Stage::Over) {
                Stage::Start(f) => f,
                _ => unreachable!(),
            };
            match this.start(f, cx) {
                Ok(stage) => this.stage = stage,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let group = this.group;
        let out = match &mut this.stage {
            Stage::Lead(lead) => match drive(group, &lead.flight, &mut lead.duty, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Driven::Finished(value, shared)) => Ok((value, shared)),
                Poll::Ready(Driven::Panicked(payload)) => {
                    this.stage = Stage::Over;
                    panic::resume_unwind(payload);
                }
            },
            Stage::Follow(follow) => match follow.poll(group, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(out) => out,
            },
            Stage::Start(_) | Stage::Over => panic!("CallAsync polled after it was ready"),
        };
        // The call is over: Drop must not give anything up.
        match std::mem::replace(&mut this.stage, Stage::Over) {
            Stage::Follow(follow) => follow.finished(group),
            Stage::Lead(Lead { duty, .. }) => drop_quietly(duty.work),
            Stage::Start(_) | Stage::Over => {}
        }
        Poll::Ready(out)
    }
}

impl<'g, T, K, F> CallAsync<'g, T, K, F>
where
    T: Send + Sync + 'static,
    K: AsRef<[u8]>,
{
    /// The first poll: joins the flight in Rust when this process's async
    /// callers already have one for the key, else starts or joins it in C.
    fn start<Fut>(&mut self, f: F, cx: &Context<'_>) -> Result<Stage<T, F>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let key = self.key.as_ref();
        let group = self.group;
        let registry = &group.registry;
        let hash = registry.hash(key);
        let mut flights = registry.shard(hash);
        let mut stale = false;
        if let Some(found) = flights.get(hash, key) {
            if found.is_led() && driven_here(flight_id(found)) {
                return Err(Error::Deadlock);
            }
            match found.join(cx.waker()) {
                Some(slot) => {
                    let flight = found.clone();
                    registry.followers.fetch_add(1, Ordering::Relaxed);
                    return Ok(Stage::Follow(Follow {
                        flight,
                        slot,
                        duty: None,
                    }));
                }
                // Over, or given up by its last caller: the C table has moved
                // on, and so does the registry.
                None => stale = true,
            }
        }
        if stale {
            flights.remove(hash, key);
        }
        let mut call = ptr::null_mut();
        // SAFETY: the key is borrowed for the call and copied by the library.
        let rc = unsafe {
            sys::sf_group_begin(
                group.raw.as_ptr(),
                key.as_ptr() as *const c_void,
                key.len(),
                &mut call,
            )
        };
        match rc {
            sys::SF_LEADER => {
                let flight = Arc::new(Flight::new(key, hash, ptr::null_mut(), Vec::new()));
                flights.insert(hash, flight.clone());
                drop(flights);
                // f runs outside the lock: it may call into this group.
                match panic::catch_unwind(AssertUnwindSafe(f)) {
                    Ok(fut) => Ok(Stage::Lead(Lead {
                        flight,
                        duty: Duty {
                            call,
                            work: Box::pin(fut),
                            disowned: false,
                        },
                    })),
                    Err(payload) => {
                        end_panicked(group, &flight, call, &*payload);
                        panic::resume_unwind(payload)
                    }
                }
            }
            sys::SF_FOLLOWER => {
                let flight =
                    Arc::new(Flight::new(key, hash, call, vec![Some(cx.waker().clone())]));
                flights.insert(hash, flight.clone());
                drop(flights);
                // Outside the lock: the callback may run right here.
                let payload = Arc::into_raw(flight.clone()) as *mut c_void;
                // SAFETY: call is the flight's; on_flight_done takes the
                // payload's reference and runs exactly once.
                let rc =
                    unsafe { sys::sf_call_on_done(call, Some(on_flight_done::<T>), payload) };
                if rc != sys::SF_OK {
                    // SAFETY: the callback was not registered: take the
                    // reference back.  Whoever joined meanwhile gets the
                    // error too.
                    drop(unsafe { Arc::from_raw(payload as *const Flight<T>) });
                    flight.publish(Err(Error::Status(rc)));
                }
                Ok(Stage::Follow(Follow {
                    flight,
                    slot: 0,
                    duty: None,
                }))
            }
            other => Err(Error::Status(other)),
        }
    }
}

enum Driven<T> {
    /// The work produced the value and the flight is finished.
    Finished(Arc<T>, bool),
    /// The work panicked; the flight is finished as panicked.
    Panicked(Box<dyn Any + Send>),
}

/// The driver ends a led flight: its registry entry goes, so no caller joins
/// it in Rust any more (one arriving now meets the C flight, finished or
/// about to be).  Returns whether any caller joined it in Rust.
fn close_led<T>(group: &Group<T>, flight: &Arc<Flight<T>>) -> bool {
    group.registry.remove_if(flight);
    flight.joined.load(Ordering::Relaxed) > 0
}

/// Ends a led flight whose work (or `f`) panicked: every caller, in C and
/// in Rust, gets the panic's message.
fn end_panicked<T: Send + Sync + 'static>(
    group: &Group<T>,
    flight: &Arc<Flight<T>>,
    call: *mut sys::sf_call,
    payload: &(dyn Any + Send),
) {
    let joined = close_led(group, flight);
    panic_call(call, payload);
    // SAFETY: the leader's handle, finished just above; released once.
    unsafe { sys::sf_call_release(call) };
    if joined {
        // The same text the C followers read (panic_call escapes NULs).
        flight.publish(Err(Error::Panicked(
            panic_message(payload).replace('\0', "\\0"),
        )));
    }
}

/// Polls the work once on behalf of the flight and finishes the flight when
/// it is ready: in C (where the value goes only if a C follower joined),
/// then for the Rust callers.  On `Ready` the duty's handle is finished and
/// released: the caller must drop the duty without stopping it.
fn drive<T: Send + Sync + 'static>(
    group: &Group<T>,
    flight: &Arc<Flight<T>>,
    duty: &mut Duty<T>,
    cx: &mut Context<'_>,
) -> Poll<Driven<T>> {
    let polled = {
        let _driving = DrivingGuard::enter(flight_id(flight));
        panic::catch_unwind(AssertUnwindSafe(|| duty.work.as_mut().poll(cx)))
    };
    let call = duty.call;
    match polled {
        Ok(Poll::Pending) => {
            if !duty.disowned {
                // From now on the work may be polled on any thread, by
                // whichever task owns it: a blocking call() of this key on
                // the thread that began the flight must wait for it, not be
                // refused as a self-wait.  (During this first poll it was
                // one: the work ran on this very thread.)  A work that is
                // ready at once never needs the extra C call.
                // SAFETY: the leader's handle, owned through the duty.
                unsafe { sys::sf_call_disown(call) };
                duty.disowned = true;
            }
            Poll::Pending
        }
        Ok(Poll::Ready(value)) => {
            let joined = close_led(group, flight);
            let value = Arc::new(value);
            // SAFETY: the leader's handle, owned through the duty.
            let c_shared = unsafe { sys::sf_call_finish_unshared(call, 0) } != 0;
            if c_shared {
                let boxed = Box::into_raw(Box::new(value.clone()));
                // SAFETY: as above; the box is the library's from here on and
                // freed by destroy_value::<T>, like every value of this group.
                unsafe {
                    sys::sf_call_set_value(
                        call,
                        boxed as *mut c_void,
                        Some(crate::destroy_value::<T>),
                    );
                    sys::sf_call_finish(call, 0);
                    sys::sf_call_release(call);
                }
            }
            // Otherwise the library released the handle, and the value never
            // left Rust.
            if joined {
                flight.publish(Ok(value.clone()));
            }
            Poll::Ready(Driven::Finished(value, c_shared || joined))
        }
        Err(payload) => {
            end_panicked(group, flight, call, &*payload);
            Poll::Ready(Driven::Panicked(payload))
        }
    }
}

impl<T: Send + Sync + 'static> Follow<T> {
    fn poll(&mut self, group: &Group<T>, cx: &mut Context<'_>) -> Poll<Outcome<T>> {
        loop {
            if let Some(out) = self.flight.outcome() {
                return Poll::Ready(out.clone().map(|v| (v, true)));
            }
            if self.duty.is_none() && self.flight.has_parked.load(Ordering::Acquire) {
                let mut st = lock(&self.flight.state);
                self.duty = self.flight.take_parked(&mut st);
                if self.duty.is_some() {
                    // The driver needs no wake-up from the completion it makes.
                    if let Some(w) = st.waiters.get_mut(self.slot) {
                        *w = None;
                    }
                }
            }
            if let Some(duty) = &mut self.duty {
                return match drive(group, &self.flight, duty, cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(driven) => {
                        // The duty's handle is gone (finished and released).
                        // A panic of the work stays with the flight: a
                        // caller that took the work over gets the error, as
                        // every other follower does.
                        let Duty { work, .. } = self.duty.take().expect("driving a duty");
                        drop_quietly(work);
                        Poll::Ready(match driven {
                            Driven::Finished(value, _) => Ok((value, true)),
                            Driven::Panicked(payload) => {
                                let msg = panic_message(&*payload).replace('\0', "\\0");
                                drop_quietly(payload);
                                Err(Error::Panicked(msg))
                            }
                        })
                    }
                };
            }
            if self.flight.wait(self.slot, cx.waker()) {
                return Poll::Pending;
            }
            // The outcome came, or a duty was parked, meanwhile: look again.
        }
    }

    /// After the outcome was read: the last caller of a followed flight
    /// releases its C handle.
    fn finished(self, group: &Group<T>) {
        debug_assert!(self.duty.is_none());
        if !self.flight.is_led() {
            exit_followed(group, &self.flight, self.slot);
        }
    }

    /// This caller gives up before its outcome: see the module comment.
    fn leave(self, group: &Group<T>) {
        let Follow { flight, slot, duty } = self;
        if flight.is_led() {
            leave_led(group, &flight, Some(slot), duty);
        } else {
            exit_followed(group, &flight, slot);
        }
    }
}

/// A caller of a followed flight goes, with or without its outcome.  The
/// last one takes the entry out and releases the flight's C handle, giving
/// it up first if the flight has not completed.
fn exit_followed<T>(group: &Group<T>, flight: &Arc<Flight<T>>, slot: usize) {
    let (last, done) = {
        let mut st = lock(&flight.state);
        let done = flight.done.load(Ordering::Relaxed);
        if let Some(w) = st.waiters.get_mut(slot) {
            *w = None;
        }
        st.callers -= 1;
        let last = st.callers == 0;
        if last {
            st.closed = true;
        }
        (last, done)
    };
    if !last {
        if !done {
            group.registry.cancels.fetch_add(1, Ordering::Relaxed);
        }
        return;
    }
    group.registry.remove_if(flight);
    // SAFETY: the flight's handle, used by nobody else once closed (its done
    // callback does not touch it), released exactly here.  Cancelling runs
    // our done callback with SF_ECANCELED if it has not run: no lock is held.
    unsafe {
        if !done {
            sys::sf_call_cancel(flight.follower_call);
        }
        sys::sf_call_release(flight.follower_call);
    }
}

/// A caller of a led flight gives up: a follower (`slot`) or the driver
/// (`duty`), or a follower woken to take a parked duty over.  The last one
/// gives the leader's handle up in C and stops the work if that abandoned
/// the flight (or, if C callers remain, ends it for them as a leader exit);
/// otherwise an owned or parked duty goes to another waiting caller.
fn leave_led<T: Send + Sync + 'static>(
    group: &Group<T>,
    flight: &Arc<Flight<T>>,
    slot: Option<usize>,
    duty: Option<Duty<T>>,
) {
    if duty.is_none() && flight.done.load(Ordering::Acquire) {
        return; // the outcome is out: there is nothing to give up
    }
    // The shard lock first: no caller can join the flight, or begin in C and
    // join its C side, between the count reaching zero and the cancel.
    let mut flights = group.registry.shard(flight.hash);
    let mut st = lock(&flight.state);
    if let Some(i) = slot {
        if let Some(w) = st.waiters.get_mut(i) {
            *w = None;
        }
    }
    if flight.done.load(Ordering::Relaxed) {
        // Only the duty's owner publishes, so this holds no duty.
        drop(st);
        drop(flights);
        if let Some(d) = duty {
            d.stop(false);
        }
        return;
    }
    st.callers -= 1;
    if st.callers == 0 {
        st.closed = true;
        Registry::remove_locked(&mut flights, flight);
        let duty = duty.or_else(|| flight.take_parked(&mut st));
        drop(st);
        // SAFETY: the leader's handle, owned through the duty.  No done or
        // abandon callback is registered on it, so no user code runs here.
        let abandoned = duty
            .as_ref()
            .map_or(false, |d| unsafe { sys::sf_call_cancel(d.call) } == 1);
        drop(flights);
        // User code (the work's Drop, C followers' callbacks) runs unlocked.
        if let Some(d) = duty {
            d.stop(abandoned);
        }
        return;
    }
    group.registry.cancels.fetch_add(1, Ordering::Relaxed);
    let mut wake = None;
    if let Some(d) = duty.or_else(|| flight.take_parked(&mut st)) {
        // We drove the work, or were woken to take it over: another caller
        // takes it (one is left: every remaining caller has a slot).
        wake = st.waiters.iter().rev().flatten().next().cloned();
        flight.park(&mut st, d);
    }
    drop(st);
    drop(flights);
    if let Some(w) = wake {
        w.wake();
    }
}

impl<'g, T: Send + Sync + 'static, K: AsRef<[u8]>, F> Drop for CallAsync<'g, T, K, F> {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.stage, Stage::Over) {
            Stage::Lead(Lead { flight, duty }) => {
                leave_led(self.group, &flight, None, Some(duty));
            }
            Stage::Follow(follow) => follow.leave(self.group),
            Stage::Start(_) | Stage::Over => {}
        }
    }
}

#[cfg(test)]
#[path = "future_tests.rs"]
mod tests;
