//! `Group::call_async`: the flight as a runtime-agnostic `Future`.
//!
//! Every caller holds one C handle from `sf_group_begin`, which is one party
//! interested in the flight.  Followers wait through `sf_call_on_done`, whose
//! callback stores the outcome and wakes the task, on whatever thread
//! completed the flight.  The leader's caller drives the work future itself,
//! inside its own `poll`: no task is spawned and no runtime is named.
//!
//! The rule for giving up (a caller's future dropped before it is ready):
//!
//! * The caller cancels its handle (`sf_call_cancel`, then `sf_call_release`)
//!   and the others are unaffected.
//! * The work is owned by whoever drives it (its *duty*: the work future and
//!   the leader's C handle, which alone may finish the flight).  When the
//!   driver goes while other callers are still interested, the duty is
//!   parked on the flight and one waiting `call_async` follower is woken to
//!   take it over and go on polling the very same work future: the work is
//!   neither restarted nor cancelled.
//! * When the last interested caller goes (the C library reports the flight
//!   abandoned), the work future is dropped on that caller's thread, at once:
//!   that is how Rust tells a future to stop.  The leader's handle then
//!   finishes the abandoned flight, which reaches nobody.
//! * If the driver goes and the only callers left are blocking [`Group::call`]
//!   followers, nobody can poll the work from a blocked thread: they get
//!   [`Error::LeaderExited`], as when a leader thread exits.
//!
//! Followers find the duty through a per-group registry of the flights that
//! `call_async` leads, kept exact by doing `sf_group_begin` and the registry
//! update under one lock.

use crate::{panic_call, settle, Error, Group};
use libsingleflight_sys as sys;
use std::cell::RefCell;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::os::raw::{c_int, c_void};
use std::panic::{self, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

/// The work of one flight, type-erased so that whichever caller drives it can
/// name it.  `Send + 'static` because another task may take it over.
type Work<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a caller gets: the shared value and Go's `shared` flag.
type Outcome<T> = Result<(Arc<T>, bool), Error>;

fn lock<M>(m: &Mutex<M>) -> MutexGuard<'_, M> {
    // The guarded state stays consistent at every unlock, and no user code
    // runs under these locks, so a poisoned lock is still usable.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The flights `call_async` leads in one group, by key.  An entry exists
/// exactly while its flight is the one the C table publishes for that key
/// (see `Registry::begin`), so a follower that finds one has joined it.
pub(crate) struct Registry<T> {
    flights: Mutex<FlightMap<T>>,
}

type FlightMap<T> = HashMap<Box<[u8]>, Arc<Flight<T>>>;

impl<T> Registry<T> {
    pub(crate) fn new() -> Self {
        Registry {
            flights: Mutex::new(HashMap::new()),
        }
    }

    /// Runs `f` (a C call that may unpublish `key`'s flight, such as
    /// `sf_group_forget`) and drops the registry entry in the same step.
    pub(crate) fn unpublish<R>(&self, key: &[u8], f: impl FnOnce() -> R) -> R {
        let mut flights = lock(&self.flights);
        let r = f();
        flights.remove(key);
        r
    }
}

/// The Rust side of one flight led by `call_async`, shared by its callers.
pub(crate) struct Flight<T> {
    state: Mutex<FlightState<T>>,
    /// Whether `state.parked` holds the duty, readable without the lock: a
    /// waiting follower's poll looks here first (set and cleared under it).
    has_parked: AtomicBool,
}

struct FlightState<T> {
    /// The duty while nobody drives it: parked by a driver that went away.
    parked: Option<Duty<T>>,
    /// The `call_async` followers, each of which can take the duty over.
    /// A follower's slot is emptied when it goes.
    helpers: Vec<Option<Arc<Waiter>>>,
}

/// The right and obligation to produce the flight's value: the work future
/// and the leader's C handle, which alone can finish the flight.  Exactly one
/// place owns it at a time (a caller's future, or the flight while parked).
struct Duty<T> {
    call: *mut sys::sf_call,
    work: Work<T>,
}

// SAFETY: the C handle may be used from any thread; only the owner of the
// Duty uses it, so its uses never overlap.  The work future is Send.
unsafe impl<T: Send> Send for Duty<T> {}

impl<T> Duty<T> {
    /// Ends a flight that nobody will see: drops the work (this is the
    /// cancellation the work observes), then finishes with no value if the
    /// flight was abandoned, or releases the handle unfinished otherwise,
    /// which the remaining (blocking) followers receive as a leader exit.
    fn stop(self, abandoned: bool) {
        let Duty { call, work } = self;
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

/// Drops the work future.  It runs inside `Drop` of a caller's future or on
/// a path that must go on, so a panic from the user's destructor is reported
/// and swallowed rather than unwinding out of a `Drop` (which could abort).
fn drop_quietly<W>(work: W) {
    if panic::catch_unwind(AssertUnwindSafe(move || drop(work))).is_err() {
        eprintln!("singleflight: dropping a flight's work future panicked; the panic was ignored");
    }
}

thread_local! {
    /// The flights whose work this thread is polling right now, innermost
    /// last: a follower joining one of them from inside its own work would
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

/// A follower's mailbox: the done callback writes the outcome and wakes the
/// last waker a poll left here.
struct Waiter {
    inner: Mutex<WaiterState>,
}

struct WaiterState {
    done: Option<Done>,
    waker: Option<Waker>,
}

/// The arguments of the done callback, with a result reference of our own.
struct Done {
    status: c_int,
    result: *mut sys::sf_result,
    shared: bool,
}

// SAFETY: result references may be released on any thread.
unsafe impl Send for Done {}

impl Drop for Done {
    fn drop(&mut self) {
        // SAFETY: our own reference (or NULL, a no-op).
        unsafe { sys::sf_result_release(self.result) }
    }
}

impl Waiter {
    fn new() -> Arc<Self> {
        Arc::new(Waiter {
            inner: Mutex::new(WaiterState {
                done: None,
                waker: None,
            }),
        })
    }

    /// The outcome if the callback has run, else remembers `waker`.
    fn take_or_wait(&self, waker: &Waker) -> Option<Done> {
        let mut st = lock(&self.inner);
        let done = st.done.take();
        if done.is_none() {
            match &st.waker {
                Some(w) if w.will_wake(waker) => {}
                _ => st.waker = Some(waker.clone()),
            }
        }
        done
    }

    fn wake(&self) {
        let waker = lock(&self.inner).waker.take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The `sf_done_fn` of every follower.  payload is an `Arc<Waiter>` given to
/// the library by `Arc::into_raw`; the library runs this exactly once, so
/// the reference is taken back here.  Nothing unwinds into C.
unsafe extern "C" fn on_done(
    status: c_int,
    result: *mut sys::sf_result,
    shared: c_int,
    payload: *mut c_void,
) {
    let outcome = panic::catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: see above.
        let waiter = Arc::from_raw(payload as *const Waiter);
        let done = Done {
            status,
            // SAFETY: borrowed for the callback; we keep our own reference.
            result: sys::sf_result_retain(result),
            shared: shared != 0,
        };
        let waker = {
            let mut st = lock(&waiter.inner);
            st.done = Some(done);
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }));
    if outcome.is_err() {
        // Only a Waker implementation can panic here; the outcome is stored
        // already (or the lock was poisoned first), so nothing is lost but
        // that one wake-up.
        eprintln!("singleflight: a waker panicked in a done callback; the panic was ignored");
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
    /// Following: waiting for the done callback, maybe driving a duty taken
    /// over from a driver that went away.
    Follow(Follow<T>),
    /// The output was returned (or the start failed).
    Over,
}

struct Lead<T> {
    flight: Arc<Flight<T>>,
    duty: Duty<T>,
}

struct Follow<T> {
    call: *mut sys::sf_call,
    waiter: Arc<Waiter>,
    /// The flight and our slot among its helpers, when `call_async` leads it.
    flight: Option<(Arc<Flight<T>>, usize)>,
    duty: Option<Duty<T>>,
}

// SAFETY: the raw handles are used by the owning future only (or the flight,
// under its lock); values cross threads as Arc<T>, hence T: Send + Sync; the
// work is Send by construction.
unsafe impl<'g, T: Send + Sync + 'static, K: AsRef<[u8]> + Send, F: Send> Send
    for CallAsync<'g, T, K, F>
{
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
    /// leader's caller polls the work inside its own `poll`, and followers
    /// are woken by the library's done callback, from whichever thread
    /// completes the flight.  No thread waits for anybody.  Async and
    /// blocking callers of the same key share one flight.
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
            match this.start(f) {
                Ok(stage) => this.stage = stage,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
        let group = this.group;
        let key = this.key.as_ref();
        let out = match &mut this.stage {
            Stage::Lead(lead) => match drive(group, key, &lead.flight, &mut lead.duty, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Driven::Finished(value, shared)) => Ok((value, shared)),
                Poll::Ready(Driven::Panicked(payload)) => {
                    this.stage = Stage::Over;
                    panic::resume_unwind(payload);
                }
            },
            Stage::Follow(follow) => match follow.poll(group, key, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(out) => out,
            },
            Stage::Start(_) | Stage::Over => panic!("CallAsync polled after it was ready"),
        };
        // The call is over: Drop must not give anything up.
        match std::mem::replace(&mut this.stage, Stage::Over) {
            Stage::Follow(follow) => follow.release(),
            Stage::Lead(_) | Stage::Start(_) | Stage::Over => {}
        }
        Poll::Ready(out)
    }
}

impl<'g, T, K, F> CallAsync<'g, T, K, F>
where
    T: Send + Sync + 'static,
    K: AsRef<[u8]>,
{
    /// The first poll: starts or joins the flight.
    fn start<Fut>(&mut self, f: F) -> Result<Stage<T, F>, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T> + Send + 'static,
    {
        let key = self.key.as_ref();
        let registry = &self.group.registry;
        let mut flights = lock(&registry.flights);
        let mut call = ptr::null_mut();
        // SAFETY: the key is borrowed for the call and copied by the library.
        let rc = unsafe {
            sys::sf_group_begin(
                self.group.raw.as_ptr(),
                key.as_ptr() as *const c_void,
                key.len(),
                &mut call,
            )
        };
        match rc {
            sys::SF_LEADER => {
                // The work is polled by whichever task owns the future, maybe
                // on another thread: a blocking call() for this key on this
                // thread must wait for it, not be refused as a self-wait.
                // SAFETY: our leader handle, just begun.
                unsafe { sys::sf_call_disown(call) };
                let flight = Arc::new(Flight {
                    state: Mutex::new(FlightState {
                        parked: None,
                        helpers: Vec::new(),
                    }),
                    has_parked: AtomicBool::new(false),
                });
                // Replaces the entry of a flight that was abandoned but not
                // yet removed by the caller that abandoned it.
                flights.insert(key.into(), flight.clone());
                drop(flights);
                // f runs outside the lock: it may call into this group.
                match panic::catch_unwind(AssertUnwindSafe(f)) {
                    Ok(fut) => Ok(Stage::Lead(Lead {
                        flight,
                        duty: Duty {
                            call,
                            work: Box::pin(fut),
                        },
                    })),
                    Err(payload) => {
                        registry.remove_if(key, &flight);
                        panic_call(call, &*payload);
                        // SAFETY: our handle, finished just above.
                        unsafe { sys::sf_call_release(call) };
                        panic::resume_unwind(payload)
                    }
                }
            }
            sys::SF_FOLLOWER => {
                let waiter = Waiter::new();
                let mut flight = None;
                if let Some(found) = flights.get(key) {
                    if driven_here(flight_id(found)) {
                        drop(flights);
                        give_up(call);
                        return Err(Error::Deadlock);
                    }
                    let mut st = lock(&found.state);
                    st.helpers.push(Some(waiter.clone()));
                    flight = Some((found.clone(), st.helpers.len() - 1));
                }
                drop(flights);
                let payload = Arc::into_raw(waiter.clone()) as *mut c_void;
                // SAFETY: call is ours; on_done takes the payload's reference
                // and runs exactly once, maybe right here.
                let rc = unsafe { sys::sf_call_on_done(call, Some(on_done), payload) };
                if rc != sys::SF_OK {
                    // SAFETY: the callback was not registered: take the
                    // reference back.
                    drop(unsafe { Arc::from_raw(payload as *const Waiter) });
                    Follow {
                        call,
                        waiter,
                        flight,
                        duty: None,
                    }
                    .leave(self.group, key);
                    return Err(Error::Status(rc));
                }
                Ok(Stage::Follow(Follow {
                    call,
                    waiter,
                    flight,
                    duty: None,
                }))
            }
            other => Err(Error::Status(other)),
        }
    }
}

impl<T> Flight<T> {
    fn take_parked(&self, st: &mut FlightState<T>) -> Option<Duty<T>> {
        self.has_parked.store(false, Ordering::Release);
        st.parked.take()
    }

    fn park(&self, st: &mut FlightState<T>, duty: Duty<T>) {
        st.parked = Some(duty);
        self.has_parked.store(true, Ordering::Release);
    }
}

impl<T> Registry<T> {
    fn remove_if(&self, key: &[u8], flight: &Arc<Flight<T>>) {
        let mut flights = lock(&self.flights);
        Self::remove_locked(&mut flights, key, flight);
    }

    fn remove_locked(flights: &mut FlightMap<T>, key: &[u8], flight: &Arc<Flight<T>>) {
        if flights.get(key).map_or(false, |f| Arc::ptr_eq(f, flight)) {
            flights.remove(key);
        }
    }
}

/// Cancels and releases a handle that never waited (a follower refused).
fn give_up(call: *mut sys::sf_call) {
    // SAFETY: our own handle, released exactly here.
    unsafe {
        sys::sf_call_cancel(call);
        sys::sf_call_release(call);
    }
}

enum Driven<T> {
    /// The work produced the value and the flight is finished.
    Finished(Arc<T>, bool),
    /// The work panicked; the flight is finished as panicked.
    Panicked(Box<dyn std::any::Any + Send>),
}

/// Polls the work once on behalf of the flight and finishes the flight when
/// it is ready.  On `Ready` the duty's handle is finished and released: the
/// caller must drop the duty without stopping it (see `Follow::drive`).
fn drive<T: Send + Sync + 'static>(
    group: &Group<T>,
    key: &[u8],
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
        Ok(Poll::Pending) => Poll::Pending,
        Ok(Poll::Ready(value)) => {
            // No follower may find the entry of a flight about to finish
            // (one that joins now waits for the finish, which is near).
            group.registry.remove_if(key, flight);
            // SAFETY: the leader's handle, owned through the duty.
            let unshared = unsafe { sys::sf_call_finish_unshared(call, 0) } == 0;
            let value = Arc::new(value);
            if unshared {
                // The library released the handle; the value never left Rust.
                return Poll::Ready(Driven::Finished(value, false));
            }
            let boxed = Box::into_raw(Box::new(value.clone()));
            // SAFETY: as above; the box is the library's from here on and
            // freed by destroy_value::<T>, like every value of this group.
            unsafe {
                sys::sf_call_set_value(call, boxed as *mut c_void, Some(crate::destroy_value::<T>));
                sys::sf_call_finish(call, 0);
                sys::sf_call_release(call);
            }
            Poll::Ready(Driven::Finished(value, true))
        }
        Err(payload) => {
            group.registry.remove_if(key, flight);
            panic_call(call, &*payload);
            // SAFETY: finished just above; released exactly once.
            unsafe { sys::sf_call_release(call) };
            Poll::Ready(Driven::Panicked(payload))
        }
    }
}

impl<T: Send + Sync + 'static> Follow<T> {
    fn poll(&mut self, group: &Group<T>, key: &[u8], cx: &mut Context<'_>) -> Poll<Outcome<T>> {
        loop {
            if let Some(done) = self.waiter.take_or_wait(cx.waker()) {
                return Poll::Ready(settle(done.status, done.result, done.shared));
            }
            if self.duty.is_none() {
                let (flight, _) = match &self.flight {
                    Some(f) if f.0.has_parked.load(Ordering::Acquire) => f,
                    _ => return Poll::Pending,
                };
                self.duty = flight.take_parked(&mut lock(&flight.state));
            }
            let (flight, duty) = match (&self.flight, &mut self.duty) {
                (Some((flight, _)), Some(duty)) => (flight, duty),
                _ => return Poll::Pending,
            };
            match drive(group, key, flight, duty, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(_) => {
                    // The duty's handle is gone (finished and released), and
                    // our own done callback has run during the finish: loop
                    // to read our outcome from the waiter.  A panic of the
                    // work stays with the flight: followers get the error.
                    let Duty { work, .. } = self.duty.take().expect("driving a duty");
                    drop_quietly(work);
                }
            }
        }
    }

    /// Drops our handle after the outcome was read.
    fn release(self) {
        debug_assert!(self.duty.is_none());
        // SAFETY: our own handle, released exactly once.
        unsafe { sys::sf_call_release(self.call) };
    }

    /// This caller gives up before its outcome: see the module comment.
    fn leave(self, group: &Group<T>, key: &[u8]) {
        let Follow {
            call,
            waiter,
            flight,
            duty,
        } = self;
        let (flight, slot) = match flight {
            Some(f) => f,
            None => {
                // Not a call_async flight: nobody to hand anything to.
                give_up(call);
                return;
            }
        };
        leave_flight(group, key, &flight, call, Some(slot), duty);
        // SAFETY: our own handle, released exactly once.
        unsafe { sys::sf_call_release(call) };
        drop(waiter);
    }
}

/// The common part of giving up, for a leader (`slot` None, `own` is the
/// duty's handle) and a follower: cancels `own`, then stops the work if that
/// abandoned the flight, or passes the duty on to a follower that can drive
/// it, or, when no such follower is left, stops it for the blocking callers.
fn leave_flight<T: Send + Sync + 'static>(
    group: &Group<T>,
    key: &[u8],
    flight: &Arc<Flight<T>>,
    own: *mut sys::sf_call,
    slot: Option<usize>,
    duty: Option<Duty<T>>,
) {
    // The registry lock first: no follower is between its sf_group_begin and
    // its registration as a helper while we count the helpers.
    let mut flights = lock(&group.registry.flights);
    let mut st = lock(&flight.state);
    // SAFETY: own is a live handle of this caller (or the duty it owns).
    let rc = unsafe { sys::sf_call_cancel(own) };
    if let Some(i) = slot {
        st.helpers[i] = None;
    }
    let mut stop: Option<(Duty<T>, bool)> = None;
    let mut wake: Option<Arc<Waiter>> = None;
    if rc == 1 {
        // Abandoned: nobody is interested any more.  The C table already
        // dropped the flight; so does the registry.
        Registry::remove_locked(&mut flights, key, flight);
        if let Some(d) = duty.or_else(|| flight.take_parked(&mut st)) {
            stop = Some((d, true));
        }
    } else if rc == 0 {
        // Others are still interested.  If we owned the duty, or it is
        // parked and we were the follower woken to take it, wake another.
        let duty = duty.or_else(|| flight.take_parked(&mut st));
        if let Some(d) = duty {
            wake = st.helpers.iter().rev().flatten().next().cloned();
            if wake.is_some() {
                flight.park(&mut st, d);
            } else {
                Registry::remove_locked(&mut flights, key, flight);
                stop = Some((d, false));
            }
        }
    } else if let Some(d) = duty {
        // SF_ESTATE: the flight completed, so no duty can be left unfinished;
        // should one be, end it rather than leak the handle.
        stop = Some((d, false));
    }
    drop(st);
    drop(flights);
    // User code (the work's Drop, a waker) runs with no lock held.
    if let Some(w) = wake {
        w.wake();
    }
    if let Some((d, abandoned)) = stop {
        d.stop(abandoned);
    }
}

impl<'g, T: Send + Sync + 'static, K: AsRef<[u8]>, F> Drop for CallAsync<'g, T, K, F> {
    fn drop(&mut self) {
        let key = self.key.as_ref();
        match std::mem::replace(&mut self.stage, Stage::Over) {
            Stage::Lead(Lead { flight, duty }) => {
                let call = duty.call;
                leave_flight(self.group, key, &flight, call, None, Some(duty));
            }
            Stage::Follow(follow) => follow.leave(self.group, key),
            Stage::Start(_) | Stage::Over => {}
        }
    }
}
