//! Duplicate call suppression: Go's `singleflight` for Rust, on libsingleflight.
//!
//! When many threads ask a [`Group`] for the same key at once, one of them
//! (the leader) runs its closure; the others (followers) block until it is
//! done and receive the very same value, as an [`Arc`].
//!
//! ```
//! use libsingleflight::Group;
//!
//! let group: Group<String> = Group::new();
//! let (value, shared) = group.call("user:42", || "Ada".to_string()).unwrap();
//! assert_eq!(*value, "Ada");
//! assert!(!shared); // nobody else asked at the same time
//! ```
//!
//! A panic in the closure never crosses into C: it is caught, the followers
//! get [`Error::Panicked`] with the panic's message, and the leader's panic
//! then resumes on the leader's thread with its original payload.
//!
//! In async code, [`Group::call_async`] does the same without blocking a
//! thread, on any executor, and lets a caller give up by dropping its
//! future: the work is dropped only once every caller has.
//!
//! ```
//! # use libsingleflight::Group;
//! let group: Group<String> = Group::new();
//! let fut = group.call_async("user:42", || async { "Ada".to_string() });
//! let (value, shared) = futures_executor::block_on(fut).unwrap();
//! assert_eq!((value.as_str(), shared), ("Ada", false));
//! ```
//!
//! Across the processes of a host, [`SharedGroup`] does the same with byte
//! values (`Vec<u8>`), in shared memory opened by name.
//!
//! `Group<T>` is `Send` and `Sync` when `T` is, since values are handed to
//! other threads:
//!
//! ```compile_fail
//! fn assert_sync<S: Sync>() {}
//! assert_sync::<libsingleflight::Group<std::rc::Rc<u8>>>();
//! ```

use libsingleflight_sys as sys;
use std::any::Any;
use std::ffi::{CStr, CString};
use std::fmt;
use std::marker::PhantomData;
use std::os::raw::{c_int, c_void};
use std::panic::{self, AssertUnwindSafe};
use std::ptr::{self, NonNull};
use std::sync::Arc;

mod future;
mod shared;
pub use future::CallAsync;
pub use shared::{SharedGroup, SharedOptions};

/// Why a call did not produce a value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Error {
    /// The leader's closure panicked; the message is the panic's, or a
    /// placeholder when the payload was neither `&str` nor `String`.
    Panicked(String),
    /// The leader went away without finishing the flight (in Rust this only
    /// happens when its thread was cancelled or exited inside the closure).
    LeaderExited,
    /// The closure called into the same key of the same group: waiting would
    /// never end.
    Deadlock,
    /// The library returned another status (such as out of memory).
    Status(i32),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Panicked(msg) => write!(f, "the flight's leader panicked: {}", msg),
            Error::LeaderExited => f.write_str("the flight's leader exited without finishing"),
            Error::Deadlock => f.write_str("the calling thread leads this key's flight"),
            Error::Status(code) => write!(
                f,
                "libsingleflight: {} ({})",
                strerror(*code),
                err_name(*code)
            ),
        }
    }
}

impl std::error::Error for Error {}

fn static_str(p: *const std::os::raw::c_char) -> String {
    // SAFETY: the library returns static, NUL-terminated strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

fn strerror(code: i32) -> String {
    // SAFETY: thread-safe, takes any integer.
    static_str(unsafe { sys::sf_strerror(code) })
}

fn err_name(code: i32) -> String {
    // SAFETY: thread-safe, takes any integer.
    static_str(unsafe { sys::sf_err_name(code) })
}

/// A snapshot of a group's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// `leaders + followers`.
    pub calls: u64,
    /// Calls that ran their closure.
    pub leaders: u64,
    /// Calls that joined a flight in progress.
    pub followers: u64,
    /// Flights whose closure panicked.
    pub panics: u64,
    /// Flights whose leader went away without finishing.
    pub leader_exits: u64,
    /// Flights detached from their key by [`Group::forget`].
    pub forgets: u64,
    /// Flights not yet complete.
    pub in_flight: u64,
    /// Flights abandoned: every caller gave up while the work ran (only
    /// [`Group::call_async`] callers can give up).
    pub abandons: u64,
    /// Callers that gave up before their flight completed.
    pub cancels: u64,
}

/// A namespace of keys whose concurrent calls share one execution.
///
/// Owns one C group, freed on drop.  `&Group` may be used from any number of
/// threads at once (`Group<T>` is `Sync` when `T: Send + Sync`).
pub struct Group<T> {
    raw: NonNull<sys::sf_group>,
    // The flights call_async leads, so a follower can take the work over.
    registry: future::Registry<T>,
    // Values of type T are created on one thread and dropped on another.
    _values: PhantomData<Arc<T>>,
}

// SAFETY: the C group is thread-safe for every function but sf_group_free,
// which only Drop calls, with exclusive access.  Values cross threads as
// Arc<T>, hence the bounds.
unsafe impl<T: Send + Sync> Send for Group<T> {}
// SAFETY: as above.
unsafe impl<T: Send + Sync> Sync for Group<T> {}

impl<T> fmt::Debug for Group<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Group").field("raw", &self.raw).finish()
    }
}

impl<T: Send + Sync + 'static> Default for Group<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Drop for Group<T> {
    fn drop(&mut self) {
        // No call can be in flight: every call borrows the group.  Should the
        // library still refuse, leaking the group is the only safe choice.
        // SAFETY: raw came from sf_group_new and is freed only here.
        let _ = unsafe { sys::sf_group_free(self.raw.as_ptr()) };
    }
}

/// What the leader's trampoline shares with the leader's stack frame.
struct Leader<T, F> {
    f: Option<F>,
    panic: Option<Box<dyn Any + Send>>,
    _value: PhantomData<T>,
}

pub(crate) fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&'static str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "Box<dyn Any>".to_string()
    }
}

/// Completes the leader's flight as panicked, with the payload's message.
pub(crate) fn panic_call(call: *mut sys::sf_call, payload: &(dyn Any + Send)) {
    let msg = panic_message(payload).replace('\0', "\\0");
    let msg = CString::new(msg).expect("NULs were replaced");
    // SAFETY: the leader's handle, live for the call; the message is copied.
    unsafe { sys::sf_call_panic(call, msg.as_ptr()) };
}

/// The sf_fn the library calls on the leader's thread.  Nothing unwinds out
/// of it: the closure runs under catch_unwind and a panic is parked in the
/// Leader for the caller to resume once the library has returned.
unsafe extern "C" fn run_leader<T, F>(call: *mut sys::sf_call, payload: *mut c_void) -> c_int
where
    T: Send + Sync + 'static,
    F: FnOnce() -> T,
{
    // SAFETY: payload is the &mut Leader that Group::call passed, alive for
    // the whole sf_group_do call; the library runs this at most once.
    let leader = &mut *(payload as *mut Leader<T, F>);
    let f = leader.f.take();
    match panic::catch_unwind(AssertUnwindSafe(move || f.map(|f| Box::new(Arc::new(f()))))) {
        Ok(Some(value)) => {
            sys::sf_call_set_value(
                call,
                Box::into_raw(value) as *mut c_void,
                Some(destroy_value::<T>),
            );
        }
        Ok(None) => {
            // Unreachable: the library runs fn once.  Fail the flight rather
            // than hand out a missing value.
            sys::sf_call_panic(call, b"closure already taken\0".as_ptr() as *const _);
        }
        Err(payload) => {
            panic_call(call, &*payload);
            leader.panic = Some(payload);
        }
    }
    0
}

/// The sf_destroy_fn of every value: drops the Box<Arc<T>> the leader gave
/// the library, on whichever thread released the last reference.
pub(crate) unsafe extern "C" fn destroy_value<T>(value: *mut c_void) {
    // A panicking Drop of T has no caller to reach from here, and unwinding
    // into C is undefined; stop the process instead.
    let dropped = panic::catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: value came from Box::into_raw in run_leader::<T, _>, and
        // the library calls destroy exactly once.
        drop(Box::from_raw(value as *mut Arc<T>));
    }));
    if dropped.is_err() {
        eprintln!("singleflight: a value's Drop panicked inside the C library; aborting");
        std::process::abort();
    }
}

/// sf_group_do on g (live) with trampoline and payload; the key is borrowed
/// for the call and copied by the library.  Returns the status, this
/// caller's result reference (owned) and `shared`.
///
/// # Safety
/// payload must be what trampoline expects, alive for the whole call.
pub(crate) unsafe fn group_do(
    g: *mut sys::sf_group,
    key: &[u8],
    trampoline: unsafe extern "C" fn(*mut sys::sf_call, *mut c_void) -> c_int,
    payload: *mut c_void,
) -> (c_int, ResultRef, bool) {
    let mut result = ptr::null_mut();
    let mut shared: c_int = 0;
    let rc = sys::sf_group_do(
        g,
        key.as_ptr() as *const c_void,
        key.len(),
        Some(trampoline),
        payload,
        &mut result,
        &mut shared,
    );
    (rc, ResultRef(result), shared != 0)
}

/// Drops a result reference when it goes out of scope, also during a resumed
/// panic.
pub(crate) struct ResultRef(pub(crate) *mut sys::sf_result);

impl Drop for ResultRef {
    fn drop(&mut self) {
        // SAFETY: a reference the library gave us (or NULL, a no-op).
        unsafe { sys::sf_result_release(self.0) }
    }
}

impl<T: Send + Sync + 'static> Group<T> {
    /// Creates an empty group.
    ///
    /// # Panics
    /// When the library cannot allocate the group; see [`Group::try_new`].
    pub fn new() -> Self {
        Self::try_new().unwrap_or_else(|e| panic!("sf_group_new: {}", e))
    }

    /// Creates an empty group, or returns the library's status on failure.
    pub fn try_new() -> Result<Self, Error> {
        let mut raw = ptr::null_mut();
        // SAFETY: out-pointer to a local; NULL options mean the defaults.
        let rc = unsafe { sys::sf_group_new(&mut raw, ptr::null()) };
        match NonNull::new(raw) {
            Some(raw) if rc == sys::SF_OK => Ok(Group {
                raw,
                registry: future::Registry::new(),
                _values: PhantomData,
            }),
            _ => Err(Error::Status(rc)),
        }
    }

    /// Runs `f` once for all concurrent callers of `key` and returns the
    /// shared value together with `shared`: true for followers, and for the
    /// leader iff anyone joined its flight.
    ///
    /// The leader runs `f` on the calling thread; followers block the calling
    /// thread until the leader is done.  If `f` panics, followers get
    /// [`Error::Panicked`] and the panic resumes in the leader with its
    /// original payload.  Calling `call` for the same key from inside `f`
    /// returns [`Error::Deadlock`] at once.  Keys are arbitrary bytes.
    ///
    /// The value is dropped on whichever thread lets go of the last `Arc`
    /// (or, for the library's own reference, inside the library): a `Drop`
    /// of `T` that panics there aborts the process, since no caller could
    /// receive that panic.
    pub fn call<K, F>(&self, key: K, f: F) -> Result<(Arc<T>, bool), Error>
    where
        K: AsRef<[u8]>,
        F: FnOnce() -> T,
    {
        let key = key.as_ref();
        let mut leader: Leader<T, F> = Leader {
            f: Some(f),
            panic: None,
            _value: PhantomData,
        };
        // SAFETY: the payload outlives the call; run_leader matches T and F.
        let (rc, result, shared) = unsafe {
            group_do(
                self.raw.as_ptr(),
                key,
                run_leader::<T, F>,
                &mut leader as *mut Leader<T, F> as *mut c_void,
            )
        };
        if let Some(payload) = leader.panic.take() {
            // The result reference is released as the panic unwinds.
            panic::resume_unwind(payload);
        }
        settle(rc, result.0, shared)
    }

    /// Makes the next call for `key` start a new flight; a flight already
    /// running still delivers to its own callers.  Returns whether a flight
    /// was in progress.  Thread-safe.
    pub fn forget<K: AsRef<[u8]>>(&self, key: K) -> bool {
        let key = key.as_ref();
        // The registry entry of a call_async flight goes in the same step, so
        // that new callers neither join nor take over the forgotten flight.
        self.registry.unpublish(key, || {
            // SAFETY: key borrowed for the call.
            unsafe {
                sys::sf_group_forget(self.raw.as_ptr(), key.as_ptr() as *const c_void, key.len())
                    == 1
            }
        })
    }

    /// Reads the group's counters.  Thread-safe.  Each counter is exact when
    /// no call runs at the same time, and otherwise a value it had during
    /// the read (the library sums per-thread stripes; see the C header).
    pub fn stats(&self) -> Stats {
        let mut s = Stats::from_raw(&raw_stats(self.raw.as_ptr()));
        // call_async callers that joined or gave up in Rust, sharing one
        // C handle with the others, are counted here, not by the library.
        let (joined, left) = (self.registry.rust_followers(), self.registry.rust_cancels());
        s.calls += joined;
        s.followers += joined;
        s.cancels += left;
        s
    }
}

/// The library's counters of group g (a live group).
pub(crate) fn raw_stats(g: *mut sys::sf_group) -> sys::sf_group_stats {
    let mut s = sys::sf_group_stats {
        version: sys::SF_GROUP_STATS_VERSION,
        ..Default::default()
    };
    // SAFETY: g is live (the caller borrows its owner); s is a valid,
    // versioned out-struct.
    let rc = unsafe { sys::sf_group_stats_get(g, &mut s) };
    assert_eq!(rc, sys::SF_OK, "sf_group_stats_get: {}", strerror(rc));
    s
}

impl Stats {
    pub(crate) fn from_raw(s: &sys::sf_group_stats) -> Stats {
        Stats {
            calls: s.calls,
            leaders: s.leaders,
            followers: s.followers,
            panics: s.panics,
            leader_exits: s.goexits,
            forgets: s.forgets,
            in_flight: s.in_flight,
            abandons: s.abandons,
            cancels: s.cancels,
        }
    }
}

/// Turns a completed flight's status and result (borrowed, not released
/// here) into a caller's outcome.  Every value of a `Group<T>` is a
/// `Box<Arc<T>>` stored by this crate, alive while the result is held.
pub(crate) fn settle<T>(
    rc: c_int,
    result: *mut sys::sf_result,
    shared: bool,
) -> Result<(Arc<T>, bool), Error> {
    if rc != sys::SF_OK {
        return Err(failure(rc, result));
    }
    // SAFETY: see above.
    let value = unsafe { sys::sf_result_value(result) } as *const Arc<T>;
    if value.is_null() {
        return Err(Error::Status(sys::SF_ESTATE));
    }
    Ok((unsafe { (*value).clone() }, shared))
}

/// The error of a flight that completed with status rc other than SF_OK;
/// result (borrowed) carries the panic message.
pub(crate) fn failure(rc: c_int, result: *mut sys::sf_result) -> Error {
    match rc {
        sys::SF_EPANIC => {
            // SAFETY: borrowed from the result the caller holds.
            let msg = unsafe { sys::sf_result_panic_message(result) };
            let msg = if msg.is_null() {
                "panic".to_string()
            } else {
                static_str(msg)
            };
            Error::Panicked(msg)
        }
        sys::SF_EGOEXIT => Error::LeaderExited,
        sys::SF_EDEADLK => Error::Deadlock,
        other => Error::Status(other),
    }
}
