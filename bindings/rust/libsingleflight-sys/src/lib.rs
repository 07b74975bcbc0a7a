//! Raw declarations of `singleflight.h`, the C API of libsingleflight.
//!
//! Every item mirrors the header one to one and keeps its C name; the
//! header's comments are the documentation of record, and the ownership and
//! thread rules stated there apply unchanged.  A test compiles the real header
//! against these declarations, so the two cannot drift apart unnoticed.
//!
//! The installed library is found with pkg-config at build time (set
//! `PKG_CONFIG_PATH` if it is installed outside the default search path);
//! with the feature `bundled`, the crate compiles the library's own sources
//! (C++17, with the `cc` crate) into the program instead.  For a safe API,
//! use the `libsingleflight` crate.

#![allow(non_camel_case_types)]

use std::marker::{PhantomData, PhantomPinned};
use std::ptr;

// std::os::raw rather than core::ffi: the C type aliases reached core::ffi
// only in Rust 1.64, and Debian 12 ships 1.63.
pub use std::os::raw::{c_char, c_int, c_uint, c_void};

/// `sf_i64`: a 64-bit signed integer.
pub type sf_i64 = i64;
/// `sf_u64`: a 64-bit unsigned integer.
pub type sf_u64 = u64;

// Versions -----------------------------------------------------------------

pub const SF_VERSION_MAJOR: c_int = 1;
pub const SF_VERSION_MINOR: c_int = 2;
pub const SF_VERSION_PATCH: c_int = 0;
pub const SF_VERSION_NUMBER: c_int =
    SF_VERSION_MAJOR * 10000 + SF_VERSION_MINOR * 100 + SF_VERSION_PATCH;
/// The header's version string, NUL-terminated for passing to C.
pub const SF_VERSION_STRING: &[u8] = b"1.2.0\0";

// Status codes ---------------------------------------------------------------

/// `enum sf_status`.  Functions return plain `c_int`; compare with these.
pub type sf_status = c_int;
pub const SF_OK: sf_status = 0;
pub const SF_LEADER: sf_status = 1;
pub const SF_FOLLOWER: sf_status = 2;
pub const SF_EINVAL: sf_status = -1;
pub const SF_ENOMEM: sf_status = -2;
pub const SF_EPANIC: sf_status = -3;
pub const SF_EGOEXIT: sf_status = -4;
pub const SF_EDEADLK: sf_status = -5;
pub const SF_ETIMEDOUT: sf_status = -6;
pub const SF_EBUSY: sf_status = -7;
pub const SF_ESTATE: sf_status = -8;
/// Since 1.1: the caller gave up (`sf_call_cancel`).
pub const SF_ECANCELED: sf_status = -9;
/// Since 1.2: a shared group's segment of another user, or wider permissions.
pub const SF_EPERM: sf_status = -10;
/// Since 1.2: a shared group's segment of another layout, version or size.
pub const SF_EINCOMPAT: sf_status = -11;

// Handles --------------------------------------------------------------------
//
// Opaque: only ever behind a pointer.  The marker keeps them !Send, !Sync and
// !Unpin, so nothing about the C object is assumed on the Rust side.

/// `sf_group`: a namespace of keys, owned by whoever called `sf_group_new`.
#[repr(C)]
pub struct sf_group {
    _private: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}

/// `sf_call`: one caller's handle on one flight, owned until `sf_call_release`.
#[repr(C)]
pub struct sf_call {
    _private: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}

/// `sf_result`: the shared outcome of a flight, reference counted.
#[repr(C)]
pub struct sf_result {
    _private: [u8; 0],
    _marker: PhantomData<(*mut u8, PhantomPinned)>,
}

// Callbacks --------------------------------------------------------------------

pub type sf_destroy_fn = Option<unsafe extern "C" fn(value: *mut c_void)>;
pub type sf_fn = Option<unsafe extern "C" fn(call: *mut sf_call, payload: *mut c_void) -> c_int>;
pub type sf_done_fn = Option<
    unsafe extern "C" fn(
        status: c_int,
        result: *mut sf_result,
        shared: c_int,
        payload: *mut c_void,
    ),
>;
pub type sf_task_fn = Option<unsafe extern "C" fn(arg: *mut c_void)>;
/// Since 1.1: runs when a flight is abandoned.
pub type sf_abandon_fn = Option<unsafe extern "C" fn(call: *mut sf_call, payload: *mut c_void)>;
pub type sf_executor_fn =
    Option<unsafe extern "C" fn(task: sf_task_fn, arg: *mut c_void, payload: *mut c_void) -> c_int>;

// Options and stats --------------------------------------------------------------

pub const SF_GROUP_OPTIONS_VERSION: c_uint = 2;
/// The built-in pool's default and largest thread cap.
pub const SF_POOL_DEFAULT_THREADS: c_uint = 64;
pub const SF_POOL_MAX_THREADS: c_uint = 4096;

/// `sf_group_options`; start from `SF_GROUP_OPTIONS_INIT` or
/// `sf_group_options_init`.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct sf_group_options {
    pub version: c_uint,
    pub shards: c_uint,
    pub executor: sf_executor_fn,
    pub executor_payload: *mut c_void,
    /// Version 2: the built-in pool's thread cap (0: the default).
    pub max_threads: c_uint,
}

/// The header's `SF_GROUP_OPTIONS_INIT`.
pub const SF_GROUP_OPTIONS_INIT: sf_group_options = sf_group_options {
    version: SF_GROUP_OPTIONS_VERSION,
    shards: 0,
    executor: None,
    executor_payload: ptr::null_mut(),
    max_threads: 0,
};

pub const SF_GROUP_STATS_VERSION: c_uint = 3;

/// `sf_group_stats`; set `version` to `SF_GROUP_STATS_VERSION` before
/// `sf_group_stats_get`.
#[repr(C)]
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct sf_group_stats {
    pub version: c_uint,
    pub calls: sf_u64,
    pub leaders: sf_u64,
    pub followers: sf_u64,
    pub panics: sf_u64,
    pub goexits: sf_u64,
    pub timeouts: sf_u64,
    pub forgets: sf_u64,
    pub in_flight: sf_u64,
    /// Version 2: flights abandoned by every interested party.
    pub abandons: sf_u64,
    /// Version 2: `sf_call_cancel` calls that gave up a handle.
    pub cancels: sf_u64,
    /// Version 3 (shared groups): the most flights in flight at once.
    pub in_flight_high: sf_u64,
    /// Version 3: arena bytes in use now.
    pub arena_used: sf_u64,
    /// Version 3: the most arena bytes in use at once.
    pub arena_high: sf_u64,
    /// Version 3: processes attached now.
    pub processes: sf_u64,
}

// Shared groups (since 1.2) -------------------------------------------------------

pub const SF_SHARED_OPTIONS_VERSION: c_uint = 1;
/// A full table or arena runs fn coalesced within the process instead.
pub const SF_SHARED_RUN_UNSHARED: c_uint = 1;

/// `sf_shared_options`; start from `SF_SHARED_OPTIONS_INIT` or
/// `sf_shared_options_init`.
#[repr(C)]
#[derive(Copy, Clone, Debug)]
pub struct sf_shared_options {
    pub version: c_uint,
    pub flags: c_uint,
    pub path: *const c_char,
    pub table_slots: c_uint,
    pub max_processes: c_uint,
    pub arena_bytes: sf_u64,
    pub max_value_bytes: sf_u64,
    pub mode: c_uint,
}

/// The header's `SF_SHARED_OPTIONS_INIT`.
pub const SF_SHARED_OPTIONS_INIT: sf_shared_options = sf_shared_options {
    version: SF_SHARED_OPTIONS_VERSION,
    flags: 0,
    path: ptr::null(),
    table_slots: 0,
    max_processes: 0,
    arena_bytes: 0,
    max_value_bytes: 0,
    mode: 0,
};

// Functions ----------------------------------------------------------------------
//
// One declaration per line pattern: the header test reads them from this file.

extern "C" {
    pub fn sf_version_number() -> c_int;
    pub fn sf_version_string() -> *const c_char;

    pub fn sf_strerror(code: c_int) -> *const c_char;
    pub fn sf_err_name(code: c_int) -> *const c_char;

    pub fn sf_group_options_init(opts: *mut sf_group_options, version: c_uint) -> c_int;
    /// Since 1.2: the defaults of a shared group's options.
    pub fn sf_shared_options_init(opts: *mut sf_shared_options, version: c_uint) -> c_int;
    /// Since 1.2: opens (creating if needed) a group shared by processes.
    pub fn sf_group_open_shared(name: *const c_char, opts: *const sf_shared_options, out: *mut *mut sf_group) -> c_int;
    pub fn sf_group_new(out: *mut *mut sf_group, opts: *const sf_group_options) -> c_int;
    pub fn sf_group_free(g: *mut sf_group) -> c_int;

    pub fn sf_group_do(
        g: *mut sf_group,
        key: *const c_void,
        key_len: usize,
        fn_: sf_fn,
        payload: *mut c_void,
        result: *mut *mut sf_result,
        shared: *mut c_int,
    ) -> c_int;
    pub fn sf_group_do_async(
        g: *mut sf_group,
        key: *const c_void,
        key_len: usize,
        fn_: sf_fn,
        payload: *mut c_void,
        done: sf_done_fn,
        done_payload: *mut c_void,
    ) -> c_int;

    pub fn sf_group_begin(
        g: *mut sf_group,
        key: *const c_void,
        key_len: usize,
        call: *mut *mut sf_call,
    ) -> c_int;
    pub fn sf_call_role(call: *const sf_call) -> c_int;
    pub fn sf_call_set_value(call: *mut sf_call, value: *mut c_void, destroy: sf_destroy_fn);
    pub fn sf_call_finish(call: *mut sf_call, error: c_int) -> c_int;
    /// Since 1.1: finishes and releases an unshared two-phase leader in one
    /// call (0), or changes nothing when a follower joined (1).
    pub fn sf_call_finish_unshared(call: *mut sf_call, error: c_int) -> c_int;
    pub fn sf_call_panic(call: *mut sf_call, message: *const c_char) -> c_int;
    pub fn sf_call_wait(
        call: *mut sf_call,
        timeout_ns: sf_i64,
        result: *mut *mut sf_result,
        shared: *mut c_int,
    ) -> c_int;
    pub fn sf_call_on_done(call: *mut sf_call, done: sf_done_fn, payload: *mut c_void) -> c_int;
    pub fn sf_call_fd(call: *mut sf_call) -> c_int;
    pub fn sf_call_release(call: *mut sf_call);
    /// Since 1.1: the caller gives up (1 when that abandoned the flight).
    pub fn sf_call_cancel(call: *mut sf_call) -> c_int;
    /// Since 1.1: 1 once the flight has been abandoned.
    pub fn sf_call_abandoned(call: *const sf_call) -> c_int;
    /// Since 1.1: the two-phase leader's flight is led by no thread any more.
    pub fn sf_call_disown(call: *mut sf_call) -> c_int;
    /// Since 1.2: the two-phase leader's work runs on the calling thread, so
    /// a follower waiting forever there is `SF_EDEADLK`.
    pub fn sf_call_lead_here(call: *mut sf_call) -> c_int;
    /// Since 1.2: a shared group's doorbell address and token for this call.
    pub fn sf_call_doorbell(call: *mut sf_call, address: *mut c_char, len: usize, token: *mut sf_u64) -> c_int;
    /// Since 1.2: stores a copy of `len` bytes as the flight's value.
    pub fn sf_call_set_bytes(call: *mut sf_call, data: *const c_void, len: usize) -> c_int;
    /// Since 1.2: the value stored as bytes, and its length.
    pub fn sf_result_bytes(r: *const sf_result, len: *mut usize) -> *const c_void;
    /// Since 1.1: runs `fn_` once when the flight is abandoned.
    pub fn sf_call_on_abandon(call: *mut sf_call, fn_: sf_abandon_fn, payload: *mut c_void) -> c_int;

    pub fn sf_group_forget(g: *mut sf_group, key: *const c_void, key_len: usize) -> c_int;
    pub fn sf_group_forget_unshared(g: *mut sf_group, key: *const c_void, key_len: usize) -> c_int;

    pub fn sf_result_value(r: *const sf_result) -> *mut c_void;
    pub fn sf_result_error(r: *const sf_result) -> c_int;
    pub fn sf_result_panic_message(r: *const sf_result) -> *const c_char;
    pub fn sf_result_retain(r: *mut sf_result) -> *mut sf_result;
    pub fn sf_result_release(r: *mut sf_result);

    pub fn sf_group_stats_get(g: *const sf_group, out: *mut sf_group_stats) -> c_int;
}
