//! Shared groups: one flight per key across the processes of a host.
//!
//! A [`SharedGroup`] lives in shared memory (POSIX shm by name, or a file):
//! every process that opens the same name shares its table of flights, so a
//! key runs once across them all.  Values cross processes as bytes, so the
//! closure returns anything that is `AsRef<[u8]>` and every caller, in every
//! process, receives a copy of the same bytes as a `Vec<u8>`.

use crate::{failure, group_do, panic_call, raw_stats, Error, Stats};
use libsingleflight_sys as sys;
use std::any::Any;
use std::ffi::CString;
use std::fmt;
use std::os::raw::{c_int, c_void};
use std::os::unix::ffi::OsStrExt;
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::ptr::{self, NonNull};

/// How to open a [`SharedGroup`].  Zero sizes take the library's defaults,
/// or, for a process opening a group that exists, the segment's.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SharedOptions {
    /// A file to map instead of POSIX shared memory (a volume containers
    /// share); the name passed to [`SharedGroup::open`] must then be empty.
    pub path: Option<PathBuf>,
    /// Flights in flight at once, in all processes; 0: 4096.
    pub table_slots: u32,
    /// Processes attached at once; 0: 64, the most.
    pub max_processes: u32,
    /// Room for long keys, values and panic messages; 0: 16 MiB.
    pub arena_bytes: u64,
    /// The largest value; 0: 1 MiB; at most a quarter of `arena_bytes`.
    pub max_value_bytes: u64,
    /// The segment's permission bits; 0: 0600.
    pub mode: u32,
    /// A full table or arena runs the closure coalesced within the process
    /// instead of failing the call with out of memory.
    pub run_unshared: bool,
}

/// This process's attachment to a group in shared memory.
///
/// Dropping it detaches; the last process to detach removes the segment.
/// `&SharedGroup` may be used from any number of threads at once: the C
/// group is thread-safe, and values are plain bytes.
///
/// ```
/// use libsingleflight::{SharedGroup, SharedOptions};
///
/// let name = format!("doc-{}", std::process::id());
/// let group = SharedGroup::open(&name, &SharedOptions::default()).unwrap();
/// let (row, shared) = group.call("user:42", || b"Ada".to_vec()).unwrap();
/// assert_eq!((row.as_slice(), shared), (&b"Ada"[..], false));
/// ```
pub struct SharedGroup {
    raw: NonNull<sys::sf_group>,
}

// SAFETY: every function of a shared C group is thread-safe except
// sf_group_free, which only Drop calls, with exclusive access; nothing but
// bytes (copied) crosses threads.
unsafe impl Send for SharedGroup {}
// SAFETY: as above.
unsafe impl Sync for SharedGroup {}

impl fmt::Debug for SharedGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedGroup")
            .field("raw", &self.raw)
            .finish()
    }
}

impl Drop for SharedGroup {
    fn drop(&mut self) {
        // No call can be running: every call borrows the group.
        // SAFETY: raw came from sf_group_open_shared and is freed only here.
        let _ = unsafe { sys::sf_group_free(self.raw.as_ptr()) };
    }
}

/// What the trampoline shares with [`SharedGroup::call`]'s frame.
struct SharedLeader<F> {
    f: Option<F>,
    // The closure's panic, resumed in the leader once the library returned.
    panic: Option<Box<dyn Any + Send>>,
    // sf_call_set_bytes's refusal (too large, no room), for the leader.
    store_rc: c_int,
}

/// The sf_fn of a shared flight: runs the closure under catch_unwind (no
/// panic reaches C) and stores its bytes, or its failure as the panic.
unsafe extern "C" fn run_shared_leader<F, V>(call: *mut sys::sf_call, payload: *mut c_void) -> c_int
where
    F: FnOnce() -> V,
    V: AsRef<[u8]>,
{
    // SAFETY: payload is the &mut SharedLeader that call() passed, alive for
    // the whole sf_group_do; the library runs this at most once.
    let leader = &mut *(payload as *mut SharedLeader<F>);
    let f = leader.f.take();
    let ran = panic::catch_unwind(AssertUnwindSafe(move || {
        f.map(|f| {
            let value = f();
            let bytes = value.as_ref();
            // SAFETY: the leader's live handle; the bytes are copied.
            sys::sf_call_set_bytes(call, bytes.as_ptr() as *const c_void, bytes.len())
        })
    }));
    match ran {
        Ok(Some(sys::SF_OK)) => {}
        Ok(Some(rc)) => {
            leader.store_rc = rc;
            let msg: &[u8] = if rc == sys::SF_EINVAL {
                b"the value is larger than the group's max_value_bytes\0"
            } else {
                b"no room for the value in the shared group\0"
            };
            sys::sf_call_panic(call, msg.as_ptr() as *const _);
        }
        Ok(None) => {
            // Unreachable: the library runs fn once.
            sys::sf_call_panic(call, b"closure already taken\0".as_ptr() as *const _);
        }
        Err(payload) => {
            panic_call(call, &*payload);
            leader.panic = Some(payload);
        }
    }
    0
}

impl SharedGroup {
    /// Opens the group called `name` (1 to 200 bytes of `[A-Za-z0-9._-]`,
    /// not starting with `.`), creating it if no process has it open; or,
    /// with an empty name, the file `opts.path`.
    ///
    /// Errors are [`Error::Status`] with the library's code: `SF_EINVAL`
    /// (a bad name or option), `SF_EPERM` (another user's segment, or wider
    /// permissions than `opts.mode`), `SF_EINCOMPAT` (another layout, or
    /// other sizes than asked for), `SF_EBUSY` (`max_processes` attached),
    /// `SF_ENOMEM`.
    pub fn open(name: &str, opts: &SharedOptions) -> Result<SharedGroup, Error> {
        let invalid = || Error::Status(sys::SF_EINVAL);
        let name = if name.is_empty() {
            None
        } else {
            Some(CString::new(name).map_err(|_| invalid())?)
        };
        let path = match &opts.path {
            Some(p) => Some(CString::new(p.as_os_str().as_bytes()).map_err(|_| invalid())?),
            None => None,
        };
        let mut o = sys::SF_SHARED_OPTIONS_INIT;
        o.flags = if opts.run_unshared {
            sys::SF_SHARED_RUN_UNSHARED
        } else {
            0
        };
        o.path = path.as_ref().map_or(ptr::null(), |p| p.as_ptr());
        o.table_slots = opts.table_slots;
        o.max_processes = opts.max_processes;
        o.arena_bytes = opts.arena_bytes;
        o.max_value_bytes = opts.max_value_bytes;
        o.mode = opts.mode;
        let mut raw = ptr::null_mut();
        // SAFETY: the strings outlive the call; o is a version-1 struct.
        let rc = unsafe {
            sys::sf_group_open_shared(
                name.as_ref().map_or(ptr::null(), |n| n.as_ptr()),
                &o,
                &mut raw,
            )
        };
        match NonNull::new(raw) {
            Some(raw) if rc == sys::SF_OK => Ok(SharedGroup { raw }),
            _ => Err(Error::Status(rc)),
        }
    }

    /// Runs `f` once for all concurrent callers of `key` in every process
    /// attached, and returns its bytes together with `shared`: true for
    /// followers, and for the leader iff anyone joined its flight.
    ///
    /// The leader runs `f` on the calling thread; followers block until it
    /// is done.  If `f` panics, followers in every process get
    /// [`Error::Panicked`] with its message, and the panic resumes in the
    /// leader with its original payload.  A leader whose process dies
    /// inside `f` (even by SIGKILL) gives every follower
    /// [`Error::LeaderExited`], and the key is free for a fresh flight.
    /// Calling `call` for the same key from inside `f` returns
    /// [`Error::Deadlock`].  A value above `max_value_bytes` is
    /// `Error::Status(SF_EINVAL)` for the leader and a panic for its
    /// followers; a full table or arena is `Error::Status(SF_ENOMEM)`.
    pub fn call<K, F, V>(&self, key: K, f: F) -> Result<(Vec<u8>, bool), Error>
    where
        K: AsRef<[u8]>,
        F: FnOnce() -> V,
        V: AsRef<[u8]>,
    {
        let key = key.as_ref();
        let mut leader = SharedLeader {
            f: Some(f),
            panic: None,
            store_rc: sys::SF_OK,
        };
        // SAFETY: the payload outlives the call; run_shared_leader matches
        // F and V.
        let (rc, result, shared) = unsafe {
            group_do(
                self.raw.as_ptr(),
                key,
                run_shared_leader::<F, V>,
                &mut leader as *mut SharedLeader<F> as *mut c_void,
            )
        };
        if let Some(payload) = leader.panic.take() {
            // The result reference is released as the panic unwinds.
            panic::resume_unwind(payload);
        }
        if leader.store_rc != sys::SF_OK {
            return Err(Error::Status(leader.store_rc));
        }
        if rc != sys::SF_OK {
            return Err(failure(rc, result.0));
        }
        let mut len = 0usize;
        // SAFETY: borrowed while `result` holds its reference.
        let p = unsafe { sys::sf_result_bytes(result.0, &mut len) };
        if p.is_null() {
            // Only a leader outside this crate finishes without bytes.
            return Err(Error::Status(sys::SF_ESTATE));
        }
        // SAFETY: len bytes at p, never written after completion.
        let bytes = unsafe { std::slice::from_raw_parts(p as *const u8, len) };
        Ok((bytes.to_vec(), shared))
    }

    /// Makes the next call for `key`, in any process, start a new flight; a
    /// flight already running still delivers to its own callers.  Returns
    /// whether a flight was in progress.  Thread-safe.
    pub fn forget<K: AsRef<[u8]>>(&self, key: K) -> bool {
        let key = key.as_ref();
        // SAFETY: key borrowed for the call.
        unsafe {
            sys::sf_group_forget(self.raw.as_ptr(), key.as_ptr() as *const c_void, key.len()) == 1
        }
    }

    /// The group's counters, summed over every process attached.
    /// Thread-safe.
    pub fn stats(&self) -> Stats {
        Stats::from_raw(&raw_stats(self.raw.as_ptr()))
    }

    /// How many processes have the group open now.  Thread-safe.
    pub fn processes(&self) -> u64 {
        raw_stats(self.raw.as_ptr()).processes
    }

    /// The C handle, borrowed: valid while this value lives.
    pub fn as_raw(&self) -> *mut sys::sf_group {
        self.raw.as_ptr()
    }
}
