/*
 * singleflight.h - duplicate call suppression for C and every language that
 * can load a shared library.
 *
 * When many threads ask for the same key at once, exactly one of them (the
 * leader) runs the work; the others (followers) wait and receive the very same
 * result.  Semantics follow Go's golang.org/x/sync/singleflight; see
 * docs/semantics.md for the full table and docs/ownership.md for the rules
 * summarised here.
 *
 * General rules, true of every function unless its comment says otherwise:
 *  - Every function is thread-safe, except sf_group_free, which must not run
 *    concurrently with any other use of the same group.
 *  - Functions returning int return SF_OK (0) or a positive role code on
 *    success and a negative SF_E* code on failure.  They never abort, never
 *    throw and never let a C++ exception or a forced unwind of their own cross
 *    into the caller.
 *  - Keys are arbitrary bytes: embedded NULs and length 0 are allowed.  A NULL
 *    key with a non-zero length, and a length above PTRDIFF_MAX (no object is
 *    that large), are SF_EINVAL.  The library copies the key; the caller's
 *    buffer is not used after the call returns.
 *  - Out-pointers are written only on success unless stated otherwise.
 *  - Thread cancellation: no function is a cancellation point, and none acts
 *    on a pending cancellation request, however it reaches the system calls
 *    it makes (an eventfd written or closed).  The callbacks the library runs
 *    for you (done, destroy, an executor) run with cancellation disabled, so
 *    a request pending on that thread stays pending until the thread's own
 *    next cancellation point after the library returns.  fn is the one
 *    exception: it runs with its thread's own cancellation state, and a
 *    cancellation acted upon inside fn is the analogue of Go's Goexit.
 *
 * This header is C89 and C++ clean.
 */
#ifndef SINGLEFLIGHT_H
#define SINGLEFLIGHT_H

#include <stddef.h>

#if defined(_MSC_VER) && _MSC_VER < 1600
typedef __int64 sf_i64;
typedef unsigned __int64 sf_u64;
#else
#include <stdint.h>
typedef int64_t sf_i64;
typedef uint64_t sf_u64;
#endif

/* SF_API marks the exported functions.  The library is built with hidden
 * visibility, so anything not marked stays private. */
#if defined(_WIN32) || defined(__CYGWIN__)
#  if defined(SF_BUILDING_LIBRARY)
#    define SF_API __declspec(dllexport)
#  elif defined(SF_STATIC)
#    define SF_API
#  else
#    define SF_API __declspec(dllimport)
#  endif
#elif defined(__GNUC__) && __GNUC__ >= 4
#  define SF_API __attribute__((visibility("default")))
#else
#  define SF_API
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Versions                                                                  */
/* ------------------------------------------------------------------------ */

/* The version this header describes.  The major number is the ABI major and
 * the SONAME (libsingleflight.so.SF_VERSION_MAJOR); see docs/abi.md. */
#define SF_VERSION_MAJOR 1
#define SF_VERSION_MINOR 2
#define SF_VERSION_PATCH 0
#define SF_VERSION_NUMBER \
    (SF_VERSION_MAJOR * 10000 + SF_VERSION_MINOR * 100 + SF_VERSION_PATCH)
#define SF_VERSION_STRING "1.2.0"

/* The version of the library actually loaded, as SF_VERSION_NUMBER computes
 * it.  Compare with SF_VERSION_NUMBER to detect a header/library mismatch.
 * Thread-safe; no ownership involved. */
SF_API int sf_version_number(void);

/* The loaded library's version as "MAJOR.MINOR.PATCH".  The string is static:
 * never free it.  Thread-safe. */
SF_API const char *sf_version_string(void);

/* ------------------------------------------------------------------------ */
/* Status codes                                                              */
/* ------------------------------------------------------------------------ */

/* One table gives the enum, sf_strerror and sf_err_name.  Values are part of
 * the ABI: they are never renumbered and a retired value is never reused.
 * X(name, value, description) */
#define SF_STATUS_MAP(X)                                                       \
    X(SF_OK,        0,  "success")                                            \
    X(SF_LEADER,    1,  "this caller leads the flight and must finish it")    \
    X(SF_FOLLOWER,  2,  "this caller joined a flight led by another caller")  \
    X(SF_EINVAL,   -1,  "invalid argument")                                   \
    X(SF_ENOMEM,   -2,  "out of memory")                                      \
    X(SF_EPANIC,   -3,  "the flight's function panicked (threw)")             \
    X(SF_EGOEXIT,  -4,  "the flight's leader exited without finishing")       \
    X(SF_EDEADLK,  -5,  "the calling thread leads this key's flight")         \
    X(SF_ETIMEDOUT,-6,  "timed out waiting for the flight")                   \
    X(SF_EBUSY,    -7,  "resource busy")                                      \
    X(SF_ESTATE,   -8,  "operation not valid in the call's current state")  \
    X(SF_ECANCELED,-9,  "the caller gave up (sf_call_cancel)")                \
    X(SF_EPERM,   -10,  "the shared group's segment belongs to another user " \
                        "or is open to more than asked")                      \
    X(SF_EINCOMPAT,-11, "the shared group's segment has another layout, "     \
                        "version or size, or is corrupted")

#define SF_STATUS_ENUM_ITEM_(name, value, text) name = value,
typedef enum sf_status {
    SF_STATUS_MAP(SF_STATUS_ENUM_ITEM_)
    SF_STATUS_LAST_ = -11 /* keeps the list comma-clean in C89 */
} sf_status;
#undef SF_STATUS_ENUM_ITEM_

/* A human-readable description of code.  Never NULL, also for unknown codes
 * ("unknown status").  The string is static.  Thread-safe. */
SF_API const char *sf_strerror(int code);

/* The symbolic name of code ("SF_EPANIC"), or "SF_UNKNOWN" for a value not in
 * the table.  Never NULL; the string is static.  Thread-safe. */
SF_API const char *sf_err_name(int code);

/* ------------------------------------------------------------------------ */
/* Handles and callbacks                                                     */
/* ------------------------------------------------------------------------ */

/* A namespace of keys.  Owned by whoever called sf_group_new. */
typedef struct sf_group sf_group;
/* One caller's handle on one flight.  Owned by the caller that got it from
 * sf_group_begin, until sf_call_release. */
typedef struct sf_call sf_call;
/* The shared outcome of one flight, reference counted.  Each caller owns the
 * references it was given and drops them with sf_result_release. */
typedef struct sf_result sf_result;

/* Frees a value handed to sf_call_set_value.  Runs exactly once, on whichever
 * thread drops the last reference to the result.  Must not throw. */
typedef void (*sf_destroy_fn)(void *value);

/* The work.  Runs on the leader's thread (sf_group_do) or on the executor
 * (sf_group_do_async).  Stores its value with sf_call_set_value and returns 0
 * or a user error code, which every caller reads with sf_result_error.  A C++
 * exception thrown out of it, or sf_call_panic called inside it, makes the
 * flight panic (SF_EPANIC for every caller).  `call` is valid only until fn
 * returns. */
typedef int (*sf_fn)(sf_call *call, void *payload);

/* Completion callback.  status is SF_OK, SF_EPANIC or SF_EGOEXIT, with
 * result borrowed: valid during the callback only, sf_result_retain it to
 * keep it; or (since 1.1) SF_ECANCELED with result NULL, when the call's own
 * caller gave up first (sf_call_cancel).  shared is as for sf_group_do. */
typedef void (*sf_done_fn)(int status, sf_result *result, int shared,
                           void *payload);

/* A unit of work handed to an executor. */
typedef void (*sf_task_fn)(void *arg);

/* Runs task(arg) some time later, on any thread, exactly once.  Returns 0 when
 * the task was accepted, anything else when it was refused. */
typedef int (*sf_executor_fn)(sf_task_fn task, void *arg, void *payload);

/* ------------------------------------------------------------------------ */
/* Groups                                                                    */
/* ------------------------------------------------------------------------ */

/* The options struct grows only at its end, and every field says from which
 * version on it exists: a program built against an older header passes its
 * older (shorter) struct with its older version, and the library reads only
 * the fields that version has.  Version 2 (library 1.1) added max_threads. */
#define SF_GROUP_OPTIONS_VERSION 2

/* The built-in pool's default and largest thread cap. */
#define SF_POOL_DEFAULT_THREADS 64
#define SF_POOL_MAX_THREADS 4096

typedef struct sf_group_options {
    unsigned int   version;          /* SF_GROUP_OPTIONS_VERSION */
    unsigned int   shards;           /* the size of the table of flights in
                                        flight, in home slots: 0 chosen by
                                        the library (1024); else rounded up
                                        to a power of two, at most 2^20.  Keys
                                        whose home is taken by another key in
                                        flight wait in a per-slot overflow
                                        chain, so any size is correct; a size
                                        near the number of keys in flight at
                                        once keeps calls on the fast path. */
    sf_executor_fn executor;         /* runs sf_group_do_async work; NULL: a
                                        built-in pool owned by the group */
    void          *executor_payload; /* passed to executor, not owned */
    /* Version 2: */
    unsigned int   max_threads;      /* the built-in pool's thread cap; 0:
                                        SF_POOL_DEFAULT_THREADS; at most
                                        SF_POOL_MAX_THREADS.  The pool starts
                                        a thread per queued task up to the cap;
                                        at the cap, tasks wait in FIFO order
                                        for a free thread, so fns that wait
                                        for each other need a cap at least as
                                        large as their number.  Ignored with
                                        a custom executor. */
} sf_group_options;

#define SF_GROUP_OPTIONS_INIT { SF_GROUP_OPTIONS_VERSION, 0, NULL, NULL, 0 }

/* Fills *opts with defaults for the given version (1 or 2): only the fields
 * that version has are written, so a version-1 caller's shorter struct is
 * safe.  SF_EINVAL when opts is NULL or version is not one this library
 * knows.  No allocation. */
SF_API int sf_group_options_init(sf_group_options *opts, unsigned int version);

/* Creates a group.  opts may be NULL for the defaults; it is read during the
 * call only, and only as far as opts->version says.  On success *out owns a
 * new group, to be freed with sf_group_free.  SF_EINVAL for a NULL out, an
 * unknown opts->version or max_threads above SF_POOL_MAX_THREADS, SF_ENOMEM
 * when allocation fails.  Thread-safe. */
SF_API int sf_group_new(sf_group **out, const sf_group_options *opts);

/* Frees a group and its built-in pool.  SF_EBUSY (and nothing freed) while
 * any flight of the group is in flight or any sf_call of it is unreleased,
 * and when called on a thread of the group's own built-in pool (from fn or
 * a done callback of sf_group_do_async): free it from another thread.
 * Results obtained from the group stay valid after it is freed.  NULL is
 * SF_EINVAL.  Not thread-safe: no other call may use g concurrently, and g
 * must not be used after SF_OK. */
SF_API int sf_group_free(sf_group *g);

/* ------------------------------------------------------------------------ */
/* Shared groups (since 1.2, SF_1.2)                                         */
/* ------------------------------------------------------------------------ */

/* A group in shared memory that every process opening the same name (or
 * path) uses: one execution per key across the processes of a host.  It is
 * an sf_group like any other: sf_group_do, sf_group_do_async, the
 * two-phase calls, giving up, forget and the stats work on it, with these
 * differences:
 *  - values cross processes as bytes: fn stores them with
 *    sf_call_set_bytes (up to max_value_bytes) and callers read them with
 *    sf_result_bytes.  A pointer value (sf_call_set_value) is refused: the
 *    value is destroyed at once, the flight panics (SF_EPANIC, its message
 *    says why) and the two-phase leader's sf_call_finish returns SF_EINVAL;
 *  - a leader's process that dies inside fn (SIGKILL included) releases
 *    its followers in every process with SF_EGOEXIT at once (the other
 *    processes watch it with a pidfd), and the next caller leads afresh;
 *  - sf_call_on_done callbacks and sf_call_fd eventfds of a process are
 *    served by one helper thread of the library in that process (started
 *    by sf_group_open_shared): a flight completed by another process runs
 *    the callback there; the abandon callback of a leader whose last
 *    interested caller was in another process runs there too;
 *  - a do_async follower occupies an executor thread while it waits;
 *  - a full table or arena is SF_ENOMEM for the call that needed the space
 *    (flights already running go on), unless SF_SHARED_RUN_UNSHARED is set:
 *    then fn runs coalesced within the calling process only; space given
 *    back merges with its free neighbours (a buddy arena) and serves any
 *    size again;
 *  - the segment's locks are held for a few steps, never while fn runs: a
 *    call that waits over 2 s for one (a peer stopped or wedged inside the
 *    library, a corrupted lock) returns SF_EINCOMPAT instead of hanging,
 *    and a lock whose holder died is repaired by the next taker.
 * Processes sharing a group are peers of one user: a segment made by
 * another user, or readable or writable by more than mode allows, is
 * refused with SF_EPERM; one of another layout or size with SF_EINCOMPAT;
 * so is a segment found corrupted (every offset read from it is checked). */

#define SF_SHARED_OPTIONS_VERSION 1

/* Flags. */
#define SF_SHARED_RUN_UNSHARED 1u /* full table or arena: coalesce within
                                     the process instead of SF_ENOMEM */

typedef struct sf_shared_options {
    unsigned int version;        /* SF_SHARED_OPTIONS_VERSION */
    unsigned int flags;          /* SF_SHARED_* */
    const char  *path;           /* a file to map instead of POSIX shared
                                    memory (a volume containers share); the
                                    name argument must then be NULL.  Not
                                    kept after the call. */
    unsigned int table_slots;    /* flights in flight at once, in all
                                    processes; 0: 4096.  Rounded up to a
                                    power of two, 64 to 2^20.  Split into
                                    up to 64 stripes (at least 16 slots
                                    each) by key hash: a stripe can fill
                                    (SF_ENOMEM) before the table does, with
                                    random keys at 4096 slots from about
                                    two thirds full; size it to about twice
                                    the flights expected. */
    unsigned int max_processes;  /* processes attached at once; 0: 64, the
                                    most */
    sf_u64       arena_bytes;    /* room for keys longer than 64 bytes,
                                    values longer than 64 bytes and panic
                                    messages; 0: 16 MiB; 64 KiB to 1 TiB */
    sf_u64       max_value_bytes;/* the largest value; 0: 1 MiB; at most a
                                    quarter of arena_bytes */
    unsigned int mode;           /* permission bits of the segment; 0:
                                    0600 */
} sf_shared_options;

#define SF_SHARED_OPTIONS_INIT { SF_SHARED_OPTIONS_VERSION, 0, NULL, 0, 0, 0, 0, 0 }

/* Fills *opts with the defaults of the given version (1).  SF_EINVAL for
 * NULL or an unknown version.  Thread-safe. */
SF_API int sf_shared_options_init(sf_shared_options *opts, unsigned int version);

/* Opens the shared group called name, creating it if no process has it
 * open: a POSIX shared memory object, /dev/shm/libsingleflight.<name>, or
 * the file opts->path.  name: 1 to 200 bytes of [A-Za-z0-9._-], not
 * starting with '.'.  The sizes in opts are the creator's; a later opener
 * passing 0 takes the segment's, and one asking for others explicitly
 * gets SF_EINCOMPAT.  On success *out owns this process's attachment, to
 * free with sf_group_free; the last process to free it removes the
 * segment, and a segment left by processes that all died is started clean
 * by the next opener.  SF_EINVAL (a bad name or option), SF_EPERM,
 * SF_EINCOMPAT, SF_EBUSY (max_processes already attached), SF_ENOMEM (no
 * room for the segment, or memory).  Thread-safe; opening one name twice
 * in a process gives two attachments (each a process of the group). */
SF_API int sf_group_open_shared(const char *name, const sf_shared_options *opts,
                                sf_group **out);

/* ------------------------------------------------------------------------ */
/* Go's Do                                                                   */
/* ------------------------------------------------------------------------ */

/* Runs fn once for all concurrent callers of the same key.  The leader runs fn
 * on the calling thread; followers block until the flight completes.
 *
 * Returns SF_OK (fn returned; its error code is in sf_result_error),
 * SF_EPANIC (fn threw or called sf_call_panic), SF_EGOEXIT (the leader's
 * thread exited or was cancelled inside fn), SF_EDEADLK (the calling thread
 * leads this key's flight: returned at once, nothing joined), SF_EINVAL or
 * SF_ENOMEM.
 *
 * On SF_OK, SF_EPANIC and SF_EGOEXIT, *result (when result is not NULL)
 * receives a new reference the caller must sf_result_release; otherwise it is
 * set to NULL.  *shared (when not NULL) is 1 for followers and for a leader
 * that any follower joined, else 0.
 *
 * If the leader's thread exits inside fn (pthread_exit, cancellation), the
 * followers are released with SF_EGOEXIT and the unwind continues: this
 * function does not return on that thread. */
SF_API int sf_group_do(sf_group *g, const void *key, size_t key_len,
                       sf_fn fn, void *payload,
                       sf_result **result, int *shared);

/* Go's DoChan.  Starts or joins the key's flight and returns at once; fn runs
 * on the group's executor when this caller leads.  done(status, result,
 * shared, done_payload) then runs exactly once for this caller: on the thread
 * that completes the flight, or at once on this thread when the flight
 * completes during this call.  SF_OK means done will run.
 *
 * SF_EINVAL for bad arguments (fn and done are required), SF_ENOMEM, and
 * SF_EBUSY when the executor refused the task (returned non-zero, or threw a
 * C++ exception): done will not run for this caller, and any caller that
 * joined meanwhile gets SF_EPANIC with a message saying so.  A refused call
 * is not counted in the stats, and neither is its flight (see
 * sf_group_stats).  The executor runs on this thread with cancellation
 * disabled and must not exit the thread.  payload and done_payload are not
 * owned. */
SF_API int sf_group_do_async(sf_group *g, const void *key, size_t key_len,
                             sf_fn fn, void *payload,
                             sf_done_fn done, void *done_payload);

/* ------------------------------------------------------------------------ */
/* The two-phase form                                                        */
/* ------------------------------------------------------------------------ */

/* Starts or joins the key's flight without running anything.  On success
 * *call owns a new handle (release it with sf_call_release) and the return
 * value says the role: SF_LEADER (the caller must produce the result with
 * sf_call_set_value and sf_call_finish or sf_call_panic) or SF_FOLLOWER
 * (wait with sf_call_wait, sf_call_on_done or sf_call_fd).  SF_EINVAL,
 * SF_ENOMEM on failure, with *call set to NULL.
 *
 * A handle may be used from any thread, but sf_call_release must not race
 * with any other use of the same handle. */
SF_API int sf_group_begin(sf_group *g, const void *key, size_t key_len,
                          sf_call **call);

/* SF_LEADER or SF_FOLLOWER for a valid call, SF_EINVAL for NULL. */
SF_API int sf_call_role(const sf_call *call);

/* Stores the flight's value; ownership of value passes to the library at
 * once.  Only the leader, before the flight completes, can set it (from
 * inside fn, or before sf_call_finish).  Setting again replaces the value and
 * destroys the previous one.  When the call may not set a value (a follower,
 * a finished flight, NULL call), the value is refused and destroy(value) runs
 * at once so nothing leaks.  destroy may be NULL when the value needs no
 * freeing. */
SF_API void sf_call_set_value(sf_call *call, void *value,
                              sf_destroy_fn destroy);

/* Since 1.2 (SF_1.2).  Stores a copy of len bytes at data as the flight's
 * value: every caller reads the same bytes with sf_result_bytes (and
 * sf_result_value returns their address).  The library owns the copy and
 * frees it after the last reference; data is not used after the call.
 * Small values are copied into blocks the library recycles (up to 120
 * bytes), so a steady state of them allocates nothing.  The same rules as
 * sf_call_set_value: only the leader, before the flight completes;
 * setting again replaces the value.  SF_OK; SF_ESTATE when the call may
 * not set a value (a follower, a finished flight: nothing is kept);
 * SF_ENOMEM; SF_EINVAL for a NULL call, NULL data with a non-zero len, or
 * len above PTRDIFF_MAX (on a shared group: above its max_value_bytes).
 * Thread rules as for sf_call_set_value.  The one way to give a value to
 * the callers of a shared group, whose other processes cannot follow a
 * pointer. */
SF_API int sf_call_set_bytes(sf_call *call, const void *data, size_t len);

/* Completes a two-phase flight with fn's error code (0 for success) and wakes
 * every waiter.  SF_OK; SF_ESTATE when the call is a follower, the flight is
 * already complete, or the call belongs to sf_group_do/do_async (there fn's
 * return value finishes the flight); SF_EINVAL for NULL. */
SF_API int sf_call_finish(sf_call *call, int error);

/* Completes a two-phase flight as panicked: every caller gets SF_EPANIC and
 * sf_result_panic_message returns a copy of message (NULL gives "panic").
 * Inside an sf_group_do/do_async fn it marks the flight to panic when fn
 * returns.  Same status codes as sf_call_finish. */
SF_API int sf_call_panic(sf_call *call, const char *message);

/* Since 1.1 (SF_1.1).  Finishes a two-phase leader's flight with error (no
 * value) and releases the call, in one step, if no follower has joined it:
 * returns 0, and the handle is gone.  If a follower has joined (or joined
 * and left), returns 1 and changes nothing: set the value, then
 * sf_call_finish and sf_call_release as usual.  Either way, once it returns
 * no new follower can join a flight it finished.  For bindings whose fn
 * keeps its value in the host language: the uncontended call crosses into C
 * twice (begin, this) and the value never leaves the host.  SF_ESTATE when
 * the call is not an unfinished two-phase leader; SF_EINVAL for NULL.
 * Since it may release the handle, it must not race with another use of
 * the same handle (the rule of sf_call_release); on 0 the handle must not
 * be used again. */
SF_API int sf_call_finish_unshared(sf_call *call, int error);

/* Waits for the flight to complete, for at most timeout_ns nanoseconds
 * (negative: forever; 0: just poll; any positive value is valid, the largest
 * included: deadlines saturate instead of overflowing).  Returns SF_OK,
 * SF_EPANIC or SF_EGOEXIT with a new reference in *result (when result is
 * not NULL) and *shared set; SF_ETIMEDOUT with *result set to NULL and the
 * flight untouched (wait again, or release); SF_ECANCELED (since 1.1) once
 * the call gave up with sf_call_cancel, also when the cancel comes from
 * another thread during the wait, which it then ends at once; SF_EDEADLK
 * when the wait could only end by the calling thread's own doing: a leader
 * waiting on its own unfinished flight, or (since 1.1) a follower waiting
 * forever (timeout_ns < 0) on an unfinished flight whose fn runs on the
 * calling thread (a wait inside fn on fn's own key), or on a two-phase
 * flight the calling thread leads by sf_call_lead_here; SF_EINVAL for NULL.
 * A two-phase flight merely begun on this thread is no deadlock: its
 * leader's handle may be finished by another thread (as in 1.0).  A leader
 * may wait after finishing to read its result.  Not a cancellation point: a
 * thread that must stay cancellable waits with a timeout, or polls
 * sf_call_fd. */
SF_API int sf_call_wait(sf_call *call, sf_i64 timeout_ns,
                        sf_result **result, int *shared);

/* Registers done to run once when the flight completes: at once on this
 * thread if it already has, otherwise on the completing thread after the
 * result is published.  It runs even if the call is released first.  A call
 * that gave up (sf_call_cancel) gets SF_ECANCELED and a NULL result instead,
 * once: at the cancel when registered before it, at once on this thread when
 * registered after (since 1.2; 1.1 delivered the result later).  One
 * callback per call: a second registration is SF_ESTATE, as is a call owned
 * by sf_group_do/do_async.  SF_EINVAL for NULL call or done.  done may
 * release the call's handle (the last thing it does with it). */
SF_API int sf_call_on_done(sf_call *call, sf_done_fn done, void *payload);

/* A file descriptor (an eventfd) that becomes readable once the flight has
 * completed or the call gave up (sf_call_cancel, before or after the fd was
 * made), for poll/epoll loops.  Owned by the call: do not close it; it
 * stays valid until sf_call_release.  The same fd is returned on every call.
 * Negative status on failure: SF_EINVAL for NULL, SF_ESTATE for a call owned
 * by sf_group_do/do_async, SF_EBUSY when the process is out of descriptors,
 * SF_ENOMEM. */
SF_API int sf_call_fd(sf_call *call);

/* Since 1.2 (SF_1.2).  For an event loop in a process of a shared group
 * that can connect a stream socket but cannot poll a descriptor
 * (OpenResty's cosockets): writes into address (len bytes, NUL-terminated)
 * this process's doorbell, "unix:<path>", and into *token the 8 bytes to
 * send on a connection to it, least significant byte first.  The library
 * answers with one byte, then closes, once the flight has completed (at
 * once if it has): read it, then sf_call_wait with timeout 0.  Closing the
 * connection first costs nothing.  Served by the process's helper thread;
 * no thread blocks per waiter.  SF_OK; SF_ESTATE for a call of a group of
 * one process (use sf_call_fd) or of sf_group_do; SF_EINVAL for NULL
 * arguments or an address longer than len; SF_ENOMEM when the process has
 * no doorbell (its path was too long for a socket address). */
SF_API int sf_call_doorbell(sf_call *call, char *address, size_t len,
                            sf_u64 *token);

/* Drops the handle.  A leader that releases before finishing completes the
 * flight as SF_EGOEXIT for every follower (Go's Goexit), so nobody hangs.
 * The call's eventfd, if sf_call_fd made one, is closed at once, even while
 * the flight goes on; a registered done callback still runs.  NULL is a
 * no-op.  The handle must not be used afterwards. */
SF_API void sf_call_release(sf_call *call);

/* ------------------------------------------------------------------------ */
/* Giving up (since 1.1, SF_1.1)                                             */
/* ------------------------------------------------------------------------ */

/* Every handle on a flight, the leader's and each follower's, is one party
 * interested in its result, until its caller releases it before the flight
 * completes or gives up with sf_call_cancel.  A flight is abandoned when no
 * interested party is left while it still runs: it leaves the table at once
 * (like sf_group_forget: a caller arriving afterwards starts a fresh flight
 * and never receives this one's result), sf_call_abandoned reports it, and
 * its abandon callback runs, once, on the thread whose leaving caused it.
 * The leader still finishes as usual; its result reaches nobody.  Only
 * flights begun with sf_group_begin can be abandoned: the callers of
 * sf_group_do and sf_group_do_async cannot give up.  See docs/semantics.md
 * for the races (the last caller leaving as fn completes, a caller joining
 * as the last one leaves). */

/* Runs when the flight is abandoned: stop the work (cancel its I/O).  call
 * is the leader's handle, borrowed for the callback.  Must not throw or
 * exit the thread; runs with cancellation disabled. */
typedef void (*sf_abandon_fn)(sf_call *call, void *payload);

/* This caller gives up: its interest goes, the others are unaffected.
 * From now on its sf_call_wait returns SF_ECANCELED (a wait blocked on
 * another thread returns it at once), its eventfd is readable (one made
 * later too), and its done callback runs with SF_ECANCELED and a NULL
 * result: now, on this thread, if registered and not yet run, or at its
 * registration (so a done callback runs exactly once either way).  The
 * result never reaches this call.  A leader keeps the right, and the duty,
 * to finish its flight.
 *
 * Cancel and completion are ordered: a cancel that returns 0 or 1 came
 * first, and every way the call hears of its flight says SF_ECANCELED; a
 * cancel that returns SF_ESTATE came after, and the call gets the result.
 * The done callback run by this cancel runs last, after the abandon
 * callback if this call abandoned the flight, and may release the handle
 * (its last use of it).  Otherwise the handle must still be released.
 *
 * Returns 1 when this call abandoned the flight (its abandon callback has
 * run), 0 otherwise; SF_ESTATE when the flight already completed (or its
 * leader claimed the finish: wait for its result instead), the handle
 * already gave up, or it is the call passed to fn; SF_EINVAL for NULL.  A
 * released handle must not be used at all.  Thread rules as for
 * sf_call_wait. */
SF_API int sf_call_cancel(sf_call *call);

/* Since 1.1.  The two-phase leader's flight is no longer led by the thread
 * that called sf_group_begin (or sf_call_lead_here): the work runs
 * elsewhere (an executor, an event loop, another language's scheduler).
 * From now on sf_group_do on the key from that thread joins the flight
 * instead of failing with SF_EDEADLK, and a follower waiting forever there
 * is not refused either.  SF_OK; SF_ESTATE for a follower's handle or the
 * call passed to fn (fn runs on its thread); SF_EINVAL for NULL.
 * Thread-safe. */
SF_API int sf_call_disown(sf_call *call);

/* Since 1.2 (SF_1.2).  The two-phase leader's work runs on the calling
 * thread (an event loop, a coroutine scheduler), so a blocking wait for it
 * there could only wait for itself: from now on a follower waiting forever
 * (timeout_ns < 0) on this thread gets SF_EDEADLK at once, and so does
 * sf_group_do on the key from this thread.  Bounded waits and polls are
 * unaffected.  Without it (the default, as in 1.0) only sf_group_do is
 * refused on the thread that began the flight.  Undone by sf_call_disown;
 * a later sf_call_lead_here moves the lead to its own thread.  SF_OK;
 * SF_ESTATE for a follower's handle or the call passed to fn; SF_EINVAL
 * for NULL.  Thread-safe. */
SF_API int sf_call_lead_here(sf_call *call);

/* 1 once the flight has been abandoned, else 0 (also for NULL).  A cheap
 * poll for the code producing the result (fn, or a two-phase leader).
 * Thread-safe. */
SF_API int sf_call_abandoned(const sf_call *call);

/* Registers fn to run once when the flight is abandoned, or at once on this
 * thread if it already has been.  The leader's handle only (the one fn
 * receives, or a two-phase leader's); one callback per flight.  SF_OK;
 * SF_ESTATE for a follower's handle or a second registration; SF_ENOMEM;
 * SF_EINVAL for NULL call or fn.  payload is not owned. */
SF_API int sf_call_on_abandon(sf_call *call, sf_abandon_fn fn, void *payload);

/* ------------------------------------------------------------------------ */
/* Forget                                                                    */
/* ------------------------------------------------------------------------ */

/* Makes the next call for key start a new flight instead of joining the
 * current one.  The current flight still completes and still delivers to its
 * own callers.  Returns 1 when a flight was forgotten, 0 when none was in
 * flight, SF_EINVAL for bad arguments. */
SF_API int sf_group_forget(sf_group *g, const void *key, size_t key_len);

/* Like sf_group_forget, but only when no follower has joined the flight.
 * Returns 1 when forgotten, 0 when not (no flight, or shared). */
SF_API int sf_group_forget_unshared(sf_group *g, const void *key,
                                    size_t key_len);

/* ------------------------------------------------------------------------ */
/* Results                                                                   */
/* ------------------------------------------------------------------------ */

/* The value fn stored, or NULL.  Borrowed: valid while the caller holds a
 * reference.  Every caller of a flight sees the same pointer.  NULL r gives
 * NULL.  Thread-safe; the library never writes the value after completion. */
SF_API void *sf_result_value(const sf_result *r);

/* Since 1.2 (SF_1.2).  The value stored with sf_call_set_bytes: its
 * address, with its length in *len (when len is not NULL).  Borrowed:
 * valid while the caller holds a reference; every caller of a flight sees
 * the same bytes, which the library never writes after completion.  NULL
 * with *len = 0 when the value was not set as bytes (sf_call_set_value,
 * or none), and for a NULL r.  Thread-safe. */
SF_API const void *sf_result_bytes(const sf_result *r, size_t *len);

/* What fn returned or what sf_call_finish got; 0 for NULL r. */
SF_API int sf_result_error(const sf_result *r);

/* The panic message, or NULL unless the flight panicked.  Borrowed, valid
 * while the reference is held. */
SF_API const char *sf_result_panic_message(const sf_result *r);

/* Takes another reference; returns r.  NULL gives NULL.  Thread-safe. */
SF_API sf_result *sf_result_retain(sf_result *r);

/* Drops a reference.  After the last one, destroy(value) runs exactly once,
 * on this thread.  NULL is a no-op.  Thread-safe. */
SF_API void sf_result_release(sf_result *r);

/* ------------------------------------------------------------------------ */
/* Stats                                                                     */
/* ------------------------------------------------------------------------ */

/* Version 2 (library 1.1) added abandons and cancels, version 3 (1.2) the
 * shared group's figures; an older caller's shorter struct is filled only
 * as far as its version goes. */
#define SF_GROUP_STATS_VERSION 3

typedef struct sf_group_stats {
    unsigned int version;     /* set to SF_GROUP_STATS_VERSION by the caller */
    sf_u64 calls;             /* leaders + followers; calls that returned an
                                 error (a refused do_async too) not counted */
    sf_u64 leaders;           /* calls that started a flight (= executions);
                                 a refused do_async is not counted, and
                                 neither is the flight it opened */
    sf_u64 followers;         /* calls that joined a flight (callers who
                                 joined a refused do_async's flight too) */
    sf_u64 panics;            /* flights counted in leaders that completed
                                 as SF_EPANIC */
    sf_u64 goexits;           /* flights counted in leaders that completed
                                 as SF_EGOEXIT; panics + goexits <= leaders
                                 - in_flight */
    sf_u64 timeouts;          /* sf_call_wait calls with a timeout > 0 that
                                 timed out (polls do not count) */
    sf_u64 forgets;           /* flights forgotten by forget/forget_unshared */
    sf_u64 in_flight;         /* flights not yet completed */
    /* Version 2: */
    sf_u64 abandons;          /* flights abandoned by every interested party */
    sf_u64 cancels;           /* sf_call_cancel calls that gave up a handle */
    /* Version 3 (shared groups; 0 for a group of one process): */
    sf_u64 in_flight_high;    /* the most flights in flight at once */
    sf_u64 arena_used;        /* arena bytes in use now */
    sf_u64 arena_high;        /* the most arena bytes in use at once */
    sf_u64 processes;         /* processes attached now */
} sf_group_stats;

/* Reads the counters into *out, whose version (1 to 3) the caller sets
 * first; only that version's fields are written.  Each counter is exact
 * when no call runs at the same time, and otherwise a value it had during
 * the read; in_flight is never counted below zero (completions are read
 * before starts).  SF_EINVAL for NULL arguments or an unknown version.
 * Thread-safe. */
SF_API int sf_group_stats_get(const sf_group *g, sf_group_stats *out);

#ifdef __cplusplus
}
#endif

#endif /* SINGLEFLIGHT_H */
