// sfpy.hpp - the hand-written half of the Python module: Group's calls into
// the C library, written against the CPython API instead of generated.
//
// Why by hand: a SWIG wrapper costs 100-250 ns per call (an argument tuple,
// a proxy object per returned Flight, the GIL dropped and retaken around
// every call), and Group.do made eight of them.  Here an uncontended
// Group.do is one call from Python into this file, which makes two calls
// into the library: sf_group_begin, then fn, then sf_call_finish_unshared;
// fn's value stays a Python object and never reaches the library unless a
// follower joined.  bench/python/uncontended.py measures it against the
// pure-Python idiom; bench/python/swig_alternatives.py measures the SWIG alternatives.
//
// The same file holds the primitives Group.do_async is built from (_begin,
// and _Call's finish, fail, cancel, on_abandon); libsingleflight/_aio.py is
// the asyncio half.
//
// Included once, by singleflight_core.i, into the generated wrapper, and
// registered into the module by init_module() from its %init block.
//
// The GIL: everything here runs with it held, except the two places where a
// follower blocks (sf_call_wait, poll).  The library calls made with it held
// never wait for anything that needs it: they take no lock that another
// thread holds while it runs Python, and the callbacks they may run (done,
// abandon, the value's destroy) run outside the library's locks and take the
// GIL themselves (PyGILState_Ensure nests on a thread that holds it).
#ifndef SFPY_HPP
#define SFPY_HPP

#include <Python.h>
#include <structmember.h>

#include <poll.h>
#include <time.h>

#include <atomic>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstring>
#include <new>
#include <string_view>
#include <unordered_map>
#include <initializer_list>
#include <vector>

#include <singleflight.h>

#include "sfswig.hpp"

#if PY_VERSION_HEX >= 0x030D0000
#define SFPY_FINALIZING() Py_IsFinalizing()
#else
#define SFPY_FINALIZING() _Py_IsFinalizing()
#endif

// What 3.9 and 3.10 added that this file uses, for 3.8 and 3.9 (the package
// supports 3.8 and later).  Before 3.10 do_async starts the work as a task
// (_aio.py), so PyIter_Send only serves to prime _lead there.
#if PY_VERSION_HEX < 0x03090000
static inline PyObject *PyObject_CallNoArgs(PyObject *f) {
    return _PyObject_Vectorcall(f, nullptr, 0, nullptr);
}
static inline PyObject *PyObject_CallOneArg(PyObject *f, PyObject *a) {
    return _PyObject_Vectorcall(f, &a, 1, nullptr);
}
#define PyObject_Vectorcall _PyObject_Vectorcall
static inline PyObject *PyObject_VectorcallMethod(PyObject *name, PyObject *const *args,
                                                  size_t nargsf, PyObject *kwnames) {
    PyObject *m = PyObject_GetAttr(args[0], name);
    if (!m) return nullptr;
    PyObject *r = _PyObject_Vectorcall(m, args + 1, PyVectorcall_NARGS(nargsf) - 1, kwnames);
    Py_DECREF(m);
    return r;
}
#endif
#if PY_VERSION_HEX < 0x030A0000
typedef enum { PYGEN_RETURN = 0, PYGEN_ERROR = -1, PYGEN_NEXT = 1 } PySendResult;
static PySendResult PyIter_Send(PyObject *iter, PyObject *arg, PyObject **presult) {
    *presult = PyObject_CallMethod(iter, "send", "O", arg);
    if (*presult) return PYGEN_NEXT;
    if (!PyErr_ExceptionMatches(PyExc_StopIteration)) return PYGEN_ERROR;
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    *presult = exc ? PyObject_GetAttrString(exc, "value") : (Py_INCREF(Py_None), Py_None);
    Py_XDECREF(type);
    Py_XDECREF(exc);
    Py_XDECREF(tb);
    return *presult ? PYGEN_RETURN : PYGEN_ERROR;
}
#endif

namespace sfpy {

// ---------------------------------------------------------------------------
// values
// ---------------------------------------------------------------------------

// The destroy function the library runs, exactly once, on whichever thread
// drops the last reference to a result: that thread may or may not hold the
// GIL, so take it.  At interpreter shutdown the reference is left alone,
// since nothing can run Python code any more.
static void destroy_value(void *value) {
    sfswig::live_counter().fetch_sub(1);
    if (!Py_IsInitialized() || SFPY_FINALIZING()) return;
    PyGILState_STATE st = PyGILState_Ensure();
    Py_DECREF(static_cast<PyObject *>(value));
    PyGILState_Release(st);
}

// Hands obj to a leader's flight: the library owns one new reference, which
// destroy_value drops after the last caller is done with the result (or at
// once, if the call may not set a value).
static void store(sf_call *call, PyObject *obj) {
    Py_INCREF(obj);
    sfswig::live_counter().fetch_add(1);
    sf_call_set_value(call, obj, destroy_value);
}

// ---------------------------------------------------------------------------
// module state: set once from __init__.py (_init), never freed
// ---------------------------------------------------------------------------

struct Module {
    PyObject *panic_error = nullptr;    // PanicError: a panic without an exception object
    PyObject *leader_exited = nullptr;  // LeaderExitedError: SF_EGOEXIT
    PyObject *describe = nullptr;       // _describe(exc) -> str, the panic message
    PyObject *cancel_task = nullptr;    // _cancel_task(task), on a loop's thread
    // do_async's pieces, from libsingleflight/_aio.py (_aio_init):
    int start = 0;                         // how the leader's work starts (Start, below)
    PyObject *get_running_loop = nullptr;  // asyncio.get_running_loop
    PyObject *lead = nullptr;              // _lead(flight, coro_fn, coro, pending): the work's task
    PyObject *await_wrap = nullptr;        // _await(awaitable): a coroutine awaiting it
    PyTypeObject *work_task_type = nullptr;  // _WorkTask: current_task() during the first step
    PyObject *task_type = nullptr;           // asyncio.Task
    PyObject *task_init = nullptr;           // asyncio.Task.__init__
    PyObject *current_tasks = nullptr;       // asyncio's {loop: current task} (inline start only)
    PyObject *cancelled_error = nullptr;     // asyncio.CancelledError
    PyObject *led_var = nullptr;             // ContextVar: the flights the current task leads
    bool task_takes_context = false;  // Task(..., context=) and create_task(..., context=): 3.11+
    PyObject *wake = nullptr;         // _wake, the module function
    PyObject *future_type = nullptr;  // asyncio.Future
    PyObject *invalid_state_error = nullptr;  // asyncio.InvalidStateError
    PyObject *base_create_future = nullptr;   // asyncio.BaseEventLoop.create_future
    PyObject *plain_loop_type = nullptr;      // the last loop type that does not override it
    PyObject *own_loop_type = nullptr;        // the last one that does
    PyObject *future_kwargs = nullptr;  // {"loop": the last loop create_future made a future for}
    PyObject *future_kwargs_loop = nullptr;    // that loop (borrowed: the dict holds it)
    PyObject *future_set_result = nullptr;     // asyncio.Future.set_result
    PyObject *call_soon_threadsafe = nullptr;  // interned method names
    PyObject *done = nullptr;
    PyObject *set_result = nullptr;
    PyObject *create_future = nullptr;
    PyObject *create_task = nullptr;
    PyObject *get_task_factory = nullptr;
    PyObject *cancelling = nullptr;
    PyObject *cancel = nullptr;
    PyObject *kw_loop = nullptr;  // keyword-name tuples for vectorcalls
    PyObject *kw_context = nullptr;
    PyObject *kw_loop_context = nullptr;
    PyObject *kw_loop_context_eager = nullptr;
    PyObject *empty_tuple = nullptr;
    PyObject *running_loop_key = nullptr;  // asyncio's key in the thread's dict (3.10, 3.11)
    PyObject *loop_cache_key = nullptr;    // ours beside it
    // The thread Python runs signal handlers on: a follower there waits in
    // poll() so that Ctrl-C interrupts it.  Reset after fork (__init__.py).
    unsigned long main_thread = 0;
};
static Module M;

static PyObject *status_error(int rc, const char *where) {
    PyErr_Format(rc == SF_ENOMEM ? PyExc_MemoryError : PyExc_RuntimeError, "%s: %s (%s)", where,
                 sf_strerror(rc), sf_err_name(rc));
    return nullptr;
}

// ---------------------------------------------------------------------------
// arguments
// ---------------------------------------------------------------------------

// A group travels as a capsule (Group._h) that owns a GroupState: the
// sf_group, and what do_async keeps beside it for the callers of each event
// loop.  Every _Flight holds the capsule too, so the group is freed only
// after its last handle is released, and sf_group_free cannot be SF_EBUSY.
static const char kGroupCapsule[] = "libsingleflight.group";

// Touched only with the GIL held (that is what makes the counters and the
// table safe to share between threads).
struct GroupState {
    sf_group *g = nullptr;
    // {key: address of a _Flight}: the flights do_async callers can join
    // without a call into C, one per event loop, chained from the dict's
    // entry (_Flight.next) when several loops have the same key in flight.
    // Borrowed: the table must not keep a flight (and so its work's task)
    // alive when its loop went away; a flight leaves it when it ends, and at
    // the latest when it is deallocated.
    PyObject *flights = nullptr;
    // Counts the forgets that took a flight out: a flight published before
    // one (its epoch is older) is never joined again here, so a caller
    // arriving after a forget asks the library, which starts a new flight.
    uint64_t epoch = 0;
    // For stats(): callers that joined a flight of their own loop (the
    // library saw one call for all of them), and callers that gave up while
    // others of their loop still waited (the library saw nobody leave).
    uint64_t joins = 0;
    uint64_t left = 0;
    // A SharedGroup's (sfpy_shared.hpp): close() was called, and the calls
    // in progress on it (their handles unreleased), whose last one frees g.
    // A closed group refuses new calls (state_of raises).
    bool closed = false;
    Py_ssize_t busy = 0;
};

static void free_group_capsule(PyObject *capsule) {
    auto *st = static_cast<GroupState *>(PyCapsule_GetPointer(capsule, kGroupCapsule));
    if (!st) return;
    if (st->g) sf_group_free(st->g);  // a closed SharedGroup's went already
    Py_XDECREF(st->flights);          // empty: every flight in it holds this capsule
    delete st;
}

static GroupState *state_of(PyObject *o) {
    auto *st = static_cast<GroupState *>(PyCapsule_GetPointer(o, kGroupCapsule));
    if (st && st->closed) {
        PyErr_SetString(PyExc_ValueError, "singleflight: the SharedGroup is closed");
        return nullptr;
    }
    return st;
}

static sf_group *group_of(PyObject *o) {
    GroupState *st = state_of(o);
    return st ? st->g : nullptr;
}

struct Key {
    const char *data;
    Py_ssize_t size;
};

// str (as UTF-8, cached in the str object) or bytes, nothing else: an int
// key would silently collide with its decimal string.  The pointer is valid
// while the caller's argument holds the object.
static bool key_of(PyObject *o, Key *k) {
    if (PyBytes_Check(o)) {
        k->data = PyBytes_AS_STRING(o);
        k->size = PyBytes_GET_SIZE(o);
        return true;
    }
    if (PyUnicode_Check(o)) {
        k->data = PyUnicode_AsUTF8AndSize(o, &k->size);
        return k->data != nullptr;
    }
    PyErr_Format(PyExc_TypeError, "singleflight key must be str or bytes, not %.200s",
                 Py_TYPE(o)->tp_name);
    return false;
}

// None: forever (-1); else non-negative seconds, saturating at the largest
// deadline the library takes.
static bool timeout_of(PyObject *o, long long *ns) {
    if (o == Py_None) {
        *ns = -1;
        return true;
    }
    const double s = PyFloat_AsDouble(o);
    if (s == -1.0 && PyErr_Occurred()) return false;
    if (!(s >= 0)) {  // negative or NaN
        PyErr_SetString(PyExc_ValueError,
                        "timeout must be None or a non-negative number of seconds");
        return false;
    }
    const double v = s * 1e9;
    *ns = v >= 9.2e18 ? LLONG_MAX : static_cast<long long>(v);
    return true;
}

// ---------------------------------------------------------------------------
// flights led by this thread: Group.do inside fn asking for its own key
// would wait for itself, so it raises instead
// ---------------------------------------------------------------------------

struct Led {
    sf_group *group;
    Key key;
};
// Only this thread touches its list.  Entries point into key objects that
// the leading do() call's arguments keep alive until it removes them.
static thread_local std::vector<Led> t_led;

static bool led_here(sf_group *g, Key k) {
    for (const Led &l : t_led) {
        if (l.group == g && l.key.size == k.size &&
            (k.size == 0 || std::memcmp(l.key.data, k.data, size_t(k.size)) == 0))
            return true;
    }
    return false;
}

static bool led_push(sf_group *g, Key k) {
    try {
        t_led.push_back(Led{g, k});
        return true;
    } catch (const std::bad_alloc &) {
        return false;
    }
}

// Removes the entry push added: the last one with its key pointer, so a
// greenlet switching stacks inside fn cannot remove another call's entry.
static void led_pop(sf_group *g, Key k) {
    for (size_t i = t_led.size(); i-- > 0;) {
        if (t_led[i].group == g && t_led[i].key.data == k.data) {
            t_led.erase(t_led.begin() + static_cast<std::ptrdiff_t>(i));
            return;
        }
    }
}

static PyObject *deadlock_error() {
    return status_error(SF_EDEADLK, "singleflight: a call inside fn asked for its own key");
}

// The flights do_async callers lead whose work became a task (it
// suspended), by key.  That task belongs to the event loop on the thread
// that began them, so a blocking do on that thread for such a key would
// stop the very loop that must finish it.  (While the work's first step runs
// inline, t_led above covers it.)  Touched only with the GIL held; each key
// points into the key object its _Flight holds, and the _Flight removes its
// entry when its flight finishes.  Made in init_module and never freed: no
// destructor runs at exit.
struct LoopLed {
    sf_group *group;
    unsigned long thread;
    const void *owner;  // the _Flight
};
using LoopLedMap = std::unordered_multimap<std::string_view, LoopLed>;
static LoopLedMap *g_loop_led = nullptr;

static bool loop_leads_here(sf_group *g, Key k) {
    if (g_loop_led->empty()) return false;
    const unsigned long me = PyThread_get_thread_ident();
    auto range = g_loop_led->equal_range(std::string_view(k.data, size_t(k.size)));
    for (auto it = range.first; it != range.second; ++it) {
        if (it->second.group == g && it->second.thread == me) return true;
    }
    return false;
}

// ---------------------------------------------------------------------------
// outcomes
// ---------------------------------------------------------------------------

// (value, shared); steals value.
static PyObject *pair(PyObject *value, bool shared) {
    PyObject *t = PyTuple_New(2);
    if (!t) {
        Py_DECREF(value);
        return nullptr;
    }
    PyTuple_SET_ITEM(t, 0, value);
    PyObject *b = shared ? Py_True : Py_False;
    Py_INCREF(b);
    PyTuple_SET_ITEM(t, 1, b);
    return t;
}

// The value a result carries: a new reference, None when none was stored.
static PyObject *value_of(sf_result *r) {
    PyObject *v = r ? static_cast<PyObject *>(sf_result_value(r)) : nullptr;
    if (!v) v = Py_None;
    Py_INCREF(v);
    return v;
}

// Raises what a caller sees for a flight that did not complete with a value:
// the leader's exception object itself (the same object in every caller),
// PanicError for a panic without one, LeaderExitedError, TimeoutError.
static PyObject *raise_outcome(int status, PyObject *value, const char *message, PyObject *key) {
    switch (status) {
        case SF_EPANIC:
            if (value && PyExceptionInstance_Check(value)) {
                PyErr_SetObject(reinterpret_cast<PyObject *>(Py_TYPE(value)), value);
            } else {
                PyErr_SetString(M.panic_error, message ? message : "panic");
            }
            return nullptr;
        case SF_EGOEXIT:
            PyErr_Format(M.leader_exited,
                         "singleflight: the leader of key %R exited without a result", key);
            return nullptr;
        case SF_ETIMEDOUT:
            PyErr_Format(PyExc_TimeoutError, "singleflight: gave up waiting for key %R", key);
            return nullptr;
        default:
            return status_error(status, "sf_call_wait");
    }
}

// What Group.do returns for a completed wait: (value, shared), or raises.
static PyObject *result_of(int status, sf_result *r, int shared, PyObject *key) {
    if (status == SF_OK) return pair(value_of(r), shared != 0);
    if (status == SF_EPANIC) {
        PyObject *v = value_of(r);
        raise_outcome(status, v, sf_result_panic_message(r), key);
        Py_DECREF(v);
        return nullptr;
    }
    return raise_outcome(status, nullptr, nullptr, key);
}

// What a do_async caller's future receives.  A value comes as the very
// tuple do_async returns, (value, shared); anything else as a list,
// [status, value or None, panic message or None], that the caller raises
// from in its own task (_aio.py tells the two apart by type).
static PyObject *outcome_of(int status, sf_result *r, int shared) {
    if (status == SF_OK) return pair(value_of(r), shared != 0);
    const char *msg = r ? sf_result_panic_message(r) : nullptr;
    PyObject *message = msg ? PyUnicode_DecodeUTF8(msg, Py_ssize_t(std::strlen(msg)), "replace")
                            : (Py_INCREF(Py_None), Py_None);
    if (!message) return nullptr;
    PyObject *value = value_of(r);
    PyObject *out = Py_BuildValue("[iNN]", status, value, message);
    return out;
}

// ---------------------------------------------------------------------------
// the leader's side
// ---------------------------------------------------------------------------

// The panic message the library keeps (what another language would see);
// Python callers get the exception object itself.  Never fails: a failure
// here would end the flight as a leader exit instead of carrying exc.
static PyObject *describe(PyObject *exc) {
    PyObject *s = PyObject_CallFunctionObjArgs(M.describe, exc, nullptr);
    if (s && PyUnicode_AsUTF8(s)) return s;
    Py_XDECREF(s);
    PyErr_Clear();
    return nullptr;
}

// Completes a leader's flight as panicked with exc as its value, the
// exception every caller raises.  Leaves the handle held.
static void panic_with(sf_call *call, PyObject *exc) {
    PyObject *msg = describe(exc);
    store(call, exc);
    sf_call_panic(call, msg ? PyUnicode_AsUTF8(msg) : "panic");
    Py_XDECREF(msg);
}

// Whether the finished flight went to anyone but its leader.
static bool shared_after_finish(sf_call *call) {
    int shared = 0;
    sf_call_wait(call, 0, nullptr, &shared);
    return shared != 0;
}

// fn raised: every caller raises the same exception object, so it goes into
// the flight even when nobody joined (and the panic is counted); then it
// propagates from here with its own traceback.
static PyObject *lead_failed(sf_call *call) {
#if PY_VERSION_HEX >= 0x030C0000
    PyObject *exc = PyErr_GetRaisedException();
    panic_with(call, exc);
    sf_call_release(call);
    PyErr_SetRaisedException(exc);
#else
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (tb) PyException_SetTraceback(exc, tb);
    panic_with(call, exc);
    sf_call_release(call);
    PyErr_Restore(type, exc, tb);
#endif
    return nullptr;
}

static PyObject *call_no_args(PyObject *fn) {
#if PY_VERSION_HEX >= 0x03090000
    return PyObject_CallNoArgs(fn);
#else
    return PyObject_CallObject(fn, nullptr);
#endif
}

// Group.do's leader: runs fn here.  Uncontended, that is sf_group_begin
// (done), fn, sf_call_finish_unshared: two crossings, and fn's value stays
// in Python.  Only when someone joined (or a forget took the flight out)
// does the value go into the flight for the others.
static PyObject *lead(sf_group *g, Key k, sf_call *call, PyObject *fn) {
    if (!led_push(g, k)) {
        sf_call_release(call);  // followers get SF_EGOEXIT: nobody hangs
        return PyErr_NoMemory();
    }
    PyObject *value = call_no_args(fn);
    led_pop(g, k);
    if (!value) return lead_failed(call);
    const int rc = sf_call_finish_unshared(call, 0);
    if (rc == 0) return pair(value, false);  // finished and released
    if (rc != 1) {                           // cannot happen: a fresh two-phase leader
        sf_call_release(call);
        Py_DECREF(value);
        return status_error(rc, "sf_call_finish_unshared");
    }
    store(call, value);
    sf_call_finish(call, 0);
    const bool shared = shared_after_finish(call);
    sf_call_release(call);
    return pair(value, shared);
}

// ---------------------------------------------------------------------------
// the follower's side (Group.do)
// ---------------------------------------------------------------------------

static long long now_ns() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return static_cast<long long>(ts.tv_sec) * 1000000000LL + ts.tv_nsec;
}

const int kPythonError = INT_MIN;  // an exception is set

// The main thread waits in poll() on the call's eventfd: the GIL is released
// there too, but unlike sf_call_wait poll returns for every signal, so a
// handler that raises (Ctrl-C: KeyboardInterrupt) interrupts the wait.  The
// flight goes on for everyone else.
static int wait_interruptibly(sf_call *call, long long timeout_ns, sf_result **r, int *shared) {
    const int fd = sf_call_fd(call);
    if (fd < 0) {
        status_error(fd, "sf_call_fd");
        return kPythonError;
    }
    const long long deadline =
        timeout_ns < 0 ? -1
                       : (timeout_ns > LLONG_MAX - now_ns() ? LLONG_MAX : now_ns() + timeout_ns);
    for (;;) {
        int ms = -1;
        if (deadline >= 0) {
            const long long left = deadline - now_ns();
            // Time is up.  A last wait with a (1 ns) timeout rather than a
            // poll, so the library counts the timeout as for any follower.
            if (left <= 0) return sf_call_wait(call, 1, r, shared);
            const long long left_ms = (left + 999999) / 1000000;
            ms = left_ms > INT_MAX ? INT_MAX : int(left_ms);
        }
        pollfd p = {fd, POLLIN, 0};
        int n, err;
        Py_BEGIN_ALLOW_THREADS n = poll(&p, 1, ms);
        err = errno;
        Py_END_ALLOW_THREADS if (n > 0) return sf_call_wait(call, 0, r,
                                                            shared);  // complete: at once
        if (n < 0 && err != EINTR) {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            return kPythonError;
        }
        if (n < 0 && PyErr_CheckSignals() < 0) return kPythonError;
    }
}

// What a follower's completed wait gives: result_of for Group's object
// values, shared_result_of (sfpy_shared.hpp) for SharedGroup's bytes.
using ResultFn = PyObject *(*)(int status, sf_result *r, int shared, PyObject *key);

static PyObject *follow(sf_call *call, long long timeout_ns, PyObject *key,
                        ResultFn convert = result_of) {
    sf_result *r = nullptr;
    int shared = 0;
    int status;
    if (PyThread_get_thread_ident() == M.main_thread) {
        status = wait_interruptibly(call, timeout_ns, &r, &shared);
    } else {
        Py_BEGIN_ALLOW_THREADS status = sf_call_wait(call, timeout_ns, &r, &shared);
        Py_END_ALLOW_THREADS
    }
    PyObject *out = status == kPythonError ? nullptr : convert(status, r, shared, key);
    // Drops this caller's reference; the last caller's drop frees the value.
    sf_result_release(r);
    sf_call_release(call);
    return out;
}

// _do(group, key, fn, timeout): Group.do, the whole call.
static PyObject *py_do(PyObject *, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "_do(group, key, fn, timeout)");
        return nullptr;
    }
    sf_group *g = group_of(args[0]);
    Key k;
    long long timeout_ns;
    if (!g || !key_of(args[1], &k) || !timeout_of(args[3], &timeout_ns)) return nullptr;
    if (!t_led.empty() && led_here(g, k)) return deadlock_error();
    if (loop_leads_here(g, k))
        return status_error(SF_EDEADLK,
                            "singleflight: a blocking do for a key that a do_async of "
                            "this thread's event loop leads");
    sf_call *call = nullptr;
    const int rc = sf_group_begin(g, k.data, size_t(k.size), &call);
    if (rc == SF_LEADER) return lead(g, k, call, args[2]);
    if (rc == SF_FOLLOWER) return follow(call, timeout_ns, args[1]);
    return status_error(rc, "sf_group_begin");
}

// ---------------------------------------------------------------------------
// do_async: how it works
// ---------------------------------------------------------------------------
//
// A do_async caller is a task of some event loop.  Per flight and per loop
// there is one _Flight: this loop's one registration with the library (its
// handle), and the futures of the loop's callers waiting on it.
//
// - The leader's work runs inline, in the caller, until it first suspends
//   (Python 3.12's eager tasks, done by hand: _enter drives the first step
//   with PyIter_Send).  A work that completes without suspending never
//   touches the loop: no task, no future, two calls into the library.
//   During that step asyncio.current_task() is the work's own task-to-be
//   (_WorkTask, allocated but not initialised), so what the work captures
//   there (asyncio.timeout, TaskGroup, anyio's cancel scopes) is its task;
//   if the work suspends, that same object is initialised as the task that
//   runs the rest (libsingleflight/_aio.py: _lead), and the caller waits on
//   a future like any other caller of its loop, so it can leave alone.
// - A caller whose loop already has a _Flight for the key joins it without
//   crossing into C: a future in _Flight.waiters.  The first caller of a loop
//   that the library makes a follower registers one completion callback
//   (sf_call_on_done) for the whole loop; its completion wakes them all in
//   one loop callback (_wake), or at once when it completes on the loop's
//   own thread.
// - Giving up keeps its meaning: a caller that leaves drops its future; the
//   last caller of a loop to leave gives up the loop's registration
//   (sf_call_cancel), and when every registration of every loop and
//   language has, the library abandons the flight and the abandon callback
//   cancels the work's task on its loop.
// - The library stays the one source of truth for who leads: a flight is
//   joined locally only while this binding's registration on it is known to
//   be live, and Group.forget makes every flight published before it
//   unjoinable (GroupState.epoch).
//
// Where the work completes (its task, or the inline step), it finishes the
// library's flight and resolves the futures of its own loop directly.

// Where the abandon callback delivers: a loop, the thread it runs on, and
// a weak reference to the work's task.  Owned by the registration; the callback, which runs
// exactly once, frees it.
struct Post {
    PyObject *loop;
    PyObject *target;
    unsigned long thread;
};

static Post *post_new(PyObject *loop, PyObject *target) {
    Post *p = new (std::nothrow) Post{loop, target, PyThread_get_thread_ident()};
    if (!p) return nullptr;
    Py_INCREF(loop);
    Py_INCREF(target);
    return p;
}

static void post_free(Post *p) {  // with the GIL
    Py_DECREF(p->loop);
    Py_DECREF(p->target);
    delete p;
}

// Runs fn(target) on the loop's thread: now, when that is this thread; else
// through call_soon_threadsafe.  A closed loop has nobody left to resume:
// nothing to do.  Never raises.
static void post_run(Post *p, PyObject *fn) {
    PyObject *r;
    if (PyThread_get_thread_ident() == p->thread) {
        r = PyObject_CallOneArg(fn, p->target);
    } else {
        r = PyObject_CallMethodObjArgs(p->loop, M.call_soon_threadsafe, fn, p->target, nullptr);
    }
    if (r) {
        Py_DECREF(r);
    } else if (PyErr_ExceptionMatches(PyExc_RuntimeError)) {
        PyErr_Clear();  // "Event loop is closed"
    } else {
        PyErr_WriteUnraisable(fn);
    }
}

static bool python_gone() { return !Py_IsInitialized() || SFPY_FINALIZING(); }

// obj.name() or obj.name(arg), without making a bound method.
static PyObject *call_method(PyObject *obj, PyObject *name, PyObject *arg) {
    PyObject *args[2] = {obj, arg};
    return PyObject_VectorcallMethod(name, args, arg ? 2 : 1, nullptr);
}

// The exception being raised, taken out (normalised, with its traceback
// attached), and put back.  Python 3.12 changed the API.
static PyObject *take_exception() {
#if PY_VERSION_HEX >= 0x030C0000
    return PyErr_GetRaisedException();
#else
    PyObject *type, *exc, *tb;
    PyErr_Fetch(&type, &exc, &tb);
    PyErr_NormalizeException(&type, &exc, &tb);
    if (tb && exc) PyException_SetTraceback(exc, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return exc;
#endif
}

static void restore_exception(PyObject *exc) {  // steals exc
#if PY_VERSION_HEX >= 0x030C0000
    PyErr_SetRaisedException(exc);
#else
    PyObject *type = reinterpret_cast<PyObject *>(Py_TYPE(exc));
    Py_INCREF(type);
    PyErr_Restore(type, exc, PyException_GetTraceback(exc));
#endif
}

// ---------------------------------------------------------------------------
// objects to drop outside the library's callbacks
// ---------------------------------------------------------------------------

// A _Flight's last reference must not go inside one of the library's
// callbacks for its own handle: its deallocation releases the handle, and
// releasing a handle inside its own done callback is not safe in every
// library version.  Such a reference is parked here and dropped at the next
// do_async or wake, outside any callback.  With the GIL held.
static std::vector<PyObject *> *g_parked = nullptr;

static void drop_later(PyObject *o) {
    if (Py_REFCNT(o) > 1) {
        Py_DECREF(o);
        return;
    }
    try {
        g_parked->push_back(o);
    } catch (const std::bad_alloc &) {
        // Leaks o rather than release a handle inside its callback.
    }
}

static void drop_parked() {
    while (!g_parked->empty()) {
        PyObject *o = g_parked->back();
        g_parked->pop_back();
        Py_DECREF(o);
    }
}

// ---------------------------------------------------------------------------
// _Flight: one loop's registration on one flight
// ---------------------------------------------------------------------------

struct FlightObject {
    PyObject_HEAD sf_call *call;  // this loop's handle; nullptr once released
    PyObject *group;              // the capsule: the group outlives the handle
    PyObject *key;                // the key object (the table's key; g_loop_led points into it)
    PyObject *loop;
    PyObject *waiters;     // {future: None}: this loop's callers waiting, the leader's caller apart
    PyObject *leader_fut;  // a leader's: its caller's future, while it waits
    PyObject *task;        // a leader's: the work's task, once the work suspended, until it ends
    PyObject *outcome;     // what the flight gave (a follower's: from completion to the wake)
    FlightObject *next;  // the next flight of the same key in the table (another loop's), borrowed
    Post *abandon;       // a leader's on_abandon payload, while we may still free it
    uint64_t epoch;      // GroupState.epoch when this caller began
    Py_ssize_t live;     // this loop's callers still waiting on it
    Py_ssize_t joined;   // callers that joined it without a C call (a leader's: shared)
    unsigned long thread;  // the loop's thread
    char leader;
    char published;     // in GroupState.flights
    char closed;        // nobody may join it any more (complete, or every caller left)
    char complete;      // its outcome is known here
    char loop_led;      // has a g_loop_led entry
    char keep_outcome;  // someone will read outcome after completing it here
};

static PyTypeObject *FlightType = nullptr;

static GroupState *flight_state(FlightObject *f) { return state_of(f->group); }

// The library's handle is live for joining: a follower's flight may have
// completed on another thread whose completion callback waits for the GIL
// (which this thread holds); a caller arriving now must not receive that
// result, computed before it came.  A poll answers without waiting.
static bool still_running(FlightObject *f) {
    if (!f->call) return false;
    if (f->leader) return true;  // completes on this thread only, which unpublishes it
    return sf_call_wait(f->call, 0, nullptr, nullptr) == SF_ETIMEDOUT;
}

// The first flight of key's chain, or nullptr (an error set only if the
// key's hash or comparison failed, which exact str and bytes never do).
static FlightObject *table_head(GroupState *st, PyObject *key) {
    PyObject *v = PyDict_GetItemWithError(st->flights, key);
    return v ? static_cast<FlightObject *>(PyLong_AsVoidPtr(v)) : nullptr;
}

static int table_set_head(GroupState *st, PyObject *key, FlightObject *f) {
    if (!f) return PyDict_DelItem(st->flights, key);
    PyObject *v = PyLong_FromVoidPtr(f);
    if (!v) return -1;
    const int rc = PyDict_SetItem(st->flights, key, v);
    Py_DECREF(v);
    return rc;
}

// This loop's flight for key, if a caller may join it.
static FlightObject *table_find(GroupState *st, PyObject *key, PyObject *loop) {
    for (FlightObject *f = table_head(st, key); f; f = f->next) {
        if (f->loop != loop) continue;
        // The newest flight of a loop comes first in the chain.
        if (f->epoch == st->epoch && !f->closed && still_running(f)) return f;
        return nullptr;
    }
    return nullptr;
}

// Puts f first in its key's chain.  A failure only means that its loop's
// callers will each ask the library: nothing is lost.
static void table_publish(FlightObject *f) {
    GroupState *st = flight_state(f);
    FlightObject *head = table_head(st, f->key);
    if (PyErr_Occurred() || table_set_head(st, f->key, f) < 0) {
        PyErr_Clear();
        return;
    }
    f->next = head;
    f->published = 1;
}

static void table_unpublish(FlightObject *f) {
    if (!f->published) return;
    f->published = 0;
    GroupState *st = flight_state(f);
    FlightObject *head = table_head(st, f->key);
    if (head == f) {
        // Cannot fail but for memory; then the entry stays, pointing at a
        // flight nobody may join (closed), until the next one replaces it.
        if (table_set_head(st, f->key, f->next) < 0) {
            PyErr_Clear();
            f->closed = 1;
            f->published = 1;  // still in the chain: the dealloc retries
            return;
        }
    } else {
        for (FlightObject *p = head; p; p = p->next) {
            if (p->next == f) {
                p->next = f->next;
                break;
            }
        }
    }
    PyErr_Clear();
    f->next = nullptr;
}

// Removes owner's g_loop_led entry for key (the object its entry points
// into), if *flag says it has one.
static void loop_led_remove(char *flag, PyObject *key, const void *owner) {
    if (!*flag) return;
    *flag = 0;
    Key k;
    if (!key_of(key, &k)) {  // cannot fail: the key was read before
        PyErr_Clear();
        return;
    }
    auto range = g_loop_led->equal_range(std::string_view(k.data, size_t(k.size)));
    for (auto it = range.first; it != range.second; ++it) {
        if (it->second.owner == owner) {
            g_loop_led->erase(it);
            return;
        }
    }
}

static void forget_loop_led(FlightObject *f) { loop_led_remove(&f->loop_led, f->key, f); }

// A leader's on_abandon payload is the callback's to free once abandonment
// may run it; before that, and when it never can, it is ours.  Called
// after the flight completed, with the handle still held: from then on
// sf_call_abandoned is final (completion and abandonment exclude each other
// on one state word).
static void settle_abandon(FlightObject *f) {
    if (f->abandon && !sf_call_abandoned(f->call)) post_free(f->abandon);
    f->abandon = nullptr;
}

static void release_handle(FlightObject *f) {
    if (!f->call) return;
    // An unfinished leader released here (an error path: the work always
    // finishes) with an abandon callback registered: complete the flight
    // while the handle is still ours, so sf_call_abandoned is final and
    // exactly one of us (settle_abandon or the callback) frees the payload.
    // Without a callback, the release alone completes it as SF_EGOEXIT.
    if (f->abandon) {
        if (f->leader && !f->complete)
            sf_call_panic(
                f->call, "singleflight: the leader's handle was released before its work finished");
        settle_abandon(f);
    }
    sf_call_release(f->call);
    f->call = nullptr;
}

// fut.set_result(out) unless fut is done (its caller gave up first: its
// task was cancelled, or its timer fired, and it has not left yet).  One
// call: the rare done future answers with InvalidStateError.  A closed loop
// has nobody left to resume.  Never raises.
static void resolve(PyObject *fut, PyObject *out) {
    PyObject *args[2] = {fut, out};
    PyObject *r =
        Py_TYPE(fut) == reinterpret_cast<PyTypeObject *>(M.future_type)
            ? PyObject_Vectorcall(M.future_set_result, args, 2, nullptr)  // no method lookup
            : call_method(fut, M.set_result, out);
    if (r) {
        Py_DECREF(r);
    } else if (PyErr_ExceptionMatches(M.invalid_state_error) ||
               PyErr_ExceptionMatches(PyExc_RuntimeError)) {
        PyErr_Clear();
    } else {
        PyErr_WriteUnraisable(fut);
    }
}

// Wakes every caller of this loop: the leader's caller gets leader_out,
// the others out.  On the loop's thread.
static void deliver(FlightObject *f, PyObject *leader_out, PyObject *out) {
    PyObject *lf = f->leader_fut;
    PyObject *w = f->waiters;
    f->leader_fut = nullptr;
    f->waiters = nullptr;
    f->live = 0;
    if (lf) {
        resolve(lf, leader_out);
        Py_DECREF(lf);
    }
    if (w) {
        Py_ssize_t pos = 0;
        PyObject *fut, *unused;
        while (PyDict_Next(w, &pos, &fut, &unused)) resolve(fut, out);
        Py_DECREF(w);
    }
}

static PyObject *outcome_list(int status, PyObject *value, PyObject *message) {
    return Py_BuildValue("[iOO]", status, value ? value : Py_None, message ? message : Py_None);
}

enum class End { kValue, kFailed, kAbandoned };

// Completes a leader's flight: the work returned value (kValue), raised
// value (kFailed), or was cancelled because every caller had gone
// (kAbandoned).  Finishes the library's flight, for the other loops' and
// languages' callers, and wakes this loop's.  Returns the leader's caller's
// outcome (a new reference; also kept in outcome if keep_outcome): (value,
// shared), or [SF_EPANIC, exc, None].  Nothing of the flight is left to
// join after it.
static PyObject *leader_complete(FlightObject *f, End end, PyObject *value) {
    f->closed = 1;
    f->complete = 1;
    table_unpublish(f);
    forget_loop_led(f);
    PyObject *leader_out = nullptr, *out = nullptr;
    if (!f->call) {  // cannot happen: a leader's handle is released only here
        leader_out = outcome_list(SF_EGOEXIT, nullptr, nullptr);
    } else if (end == End::kValue) {
        bool shared;
        const int rc = sf_call_finish_unshared(f->call, 0);
        if (rc == 0) {
            // Finished and released, and never abandoned: unpublishing it
            // here means no abandonment could (see sf_call_finish_unshared).
            // The value never left Python: this loop's callers get it below.
            f->call = nullptr;
            if (f->abandon) post_free(f->abandon);
            f->abandon = nullptr;
            shared = f->joined > 0;
        } else {
            // Someone asked the library (another loop, thread, language):
            // the value goes into the flight for them.
            store(f->call, value);
            sf_call_finish(f->call, 0);
            shared = true;
            settle_abandon(f);
            sf_call_release(f->call);
            f->call = nullptr;
        }
        Py_INCREF(value);
        leader_out = pair(value, shared);
        if (leader_out && f->waiters) {
            Py_INCREF(value);
            out = pair(value, true);
        }
    } else if (end == End::kFailed) {
        panic_with(f->call, value);
        settle_abandon(f);
        sf_call_release(f->call);
        f->call = nullptr;
        leader_out = outcome_list(SF_EPANIC, value, nullptr);
    } else {
        // Abandoned: nobody is left to receive anything.
        sf_call_finish(f->call, 0);
        settle_abandon(f);
        sf_call_release(f->call);
        f->call = nullptr;
        leader_out = Py_None;
        Py_INCREF(leader_out);
    }
    if (!leader_out) {  // no memory for the outcome: the waiters still must not hang
        PyErr_Clear();
        leader_out = Py_BuildValue("[iOO]", SF_EGOEXIT, Py_None, Py_None);
        if (!leader_out) return nullptr;
    }
    if (!out) {
        PyErr_Clear();
        out = leader_out;
        Py_INCREF(out);
    }
    deliver(f, leader_out, out);
    Py_DECREF(out);
    Py_CLEAR(f->task);  // the task and its coroutine hold f: break the cycle
    if (f->keep_outcome) {
        Py_INCREF(leader_out);
        Py_XSETREF(f->outcome, leader_out);
    }
    return leader_out;
}

// The leader's caller's outcome as do_async's result: (value, shared)
// returned, anything else raised.  Steals out.
static PyObject *return_outcome(PyObject *out, PyObject *key) {
    if (!out || PyTuple_CheckExact(out)) return out;
    PyObject *r = nullptr;
    if (PyList_CheckExact(out) && PyList_GET_SIZE(out) == 3) {
        const long status = PyLong_AsLong(PyList_GET_ITEM(out, 0));
        PyObject *msg = PyList_GET_ITEM(out, 2);
        raise_outcome(int(status), PyList_GET_ITEM(out, 1),
                      msg == Py_None ? nullptr : PyUnicode_AsUTF8(msg), key);
    } else {
        PyErr_SetString(PyExc_RuntimeError, "singleflight: the flight ended without an outcome");
    }
    Py_DECREF(out);
    return r;
}

// A follower registration's sf_call_on_done.  The flight completed: its
// outcome goes to every caller of the loop, at once when the flight
// completed on the loop's thread, else in one callback on the loop (_wake).
// SF_ECANCELED: this loop's callers all gave up (leave); nothing to do.
static void on_flight_done(int status, sf_result *r, int shared, void *payload) {
    auto *f = static_cast<FlightObject *>(payload);
    if (python_gone()) return;  // its references go with the interpreter
    PyGILState_STATE st = PyGILState_Ensure();
    if (status != SF_ECANCELED) {
        PyObject *out = outcome_of(status, r, shared);
        if (!out) {
            PyErr_WriteUnraisable(reinterpret_cast<PyObject *>(f));
            out = Py_BuildValue("[iOO]", SF_EGOEXIT, Py_None, Py_None);
        }
        Py_XSETREF(f->outcome, out);
        f->complete = 1;
        f->closed = 1;
        table_unpublish(f);
        if (!f->outcome) {
            PyErr_WriteUnraisable(reinterpret_cast<PyObject *>(f));
        } else if (PyThread_get_thread_ident() == f->thread) {
            deliver(f, f->outcome, f->outcome);
            if (!f->keep_outcome) Py_CLEAR(f->outcome);
        } else if (f->live > 0) {
            PyObject *res = PyObject_CallMethodObjArgs(f->loop, M.call_soon_threadsafe, M.wake,
                                                       reinterpret_cast<PyObject *>(f), nullptr);
            if (res) {
                Py_DECREF(res);
            } else if (PyErr_ExceptionMatches(PyExc_RuntimeError)) {
                PyErr_Clear();  // "Event loop is closed": nobody is left to wake
            } else {
                PyErr_WriteUnraisable(M.wake);
            }
        }
    }
    drop_later(reinterpret_cast<PyObject *>(f));  // the registration's reference
    PyGILState_Release(st);
}

// _wake(flight): on the loop, the completion of a follower's flight that
// completed on another thread reaches every caller of the loop.
static PyObject *py_wake(PyObject *, PyObject *arg) {
    if (!PyObject_TypeCheck(arg, FlightType)) {
        PyErr_SetString(PyExc_TypeError, "_wake(flight)");
        return nullptr;
    }
    auto *f = reinterpret_cast<FlightObject *>(arg);
    if (f->outcome) deliver(f, f->outcome, f->outcome);
    Py_CLEAR(f->outcome);
    if (f->call) {
        sf_call_release(f->call);
        f->call = nullptr;
    }
    drop_parked();
    Py_RETURN_NONE;
}

// sf_call_on_abandon: every caller gave up; cancel the work's task (if it
// still exists), on its loop.  Runs on the thread of the last caller to leave.
static void on_abandon(sf_call *, void *payload) {
    Post *p = static_cast<Post *>(payload);
    if (python_gone()) return;
    PyGILState_STATE st = PyGILState_Ensure();
    post_run(p, M.cancel_task);
    post_free(p);
    PyGILState_Release(st);
}

// The running loop, as asyncio.get_running_loop() gives it.  On 3.10 and
// 3.11 that function makes a getpid() system call every time (its check
// for a forked child), about 250 ns of an uncontended do_async's 1.5 us.
// There the loop is kept in the thread's state dict beside the object
// asyncio keeps the running loop in (a holder it replaces whenever the
// running loop changes), and reused while that object is the same; the
// holder is held, so its address cannot be reused by a new one.  After a
// fork the child drops it (_set_main_thread), since the child runs no loop
// of its parent's.  The thread's dict goes with the thread.
static PyObject *running_loop() {
#if PY_VERSION_HEX >= 0x030A0000 && PY_VERSION_HEX < 0x030C0000
    PyObject *d = PyThreadState_GetDict();  // borrowed
    if (d) {
        PyObject *h = PyDict_GetItemWithError(d, M.running_loop_key);  // borrowed
        PyObject *c = h ? PyDict_GetItemWithError(d, M.loop_cache_key) : nullptr;
        if (c && PyTuple_CheckExact(c) && PyTuple_GET_SIZE(c) == 2 && PyTuple_GET_ITEM(c, 0) == h) {
            PyObject *loop = PyTuple_GET_ITEM(c, 1);
            Py_INCREF(loop);
            return loop;
        }
        PyErr_Clear();
        PyObject *loop = PyObject_CallNoArgs(M.get_running_loop);
        if (loop && h) {
            PyObject *t = PyTuple_Pack(2, h, loop);
            if (!t || PyDict_SetItem(d, M.loop_cache_key, t) < 0) PyErr_Clear();
            Py_XDECREF(t);
        }
        return loop;
    }
#endif
    return PyObject_CallNoArgs(M.get_running_loop);
}

// loop.create_future().  asyncio's own loops make an asyncio.Future(loop=
// loop) in a Python method, and uvloop's in a Cython one: made here
// directly, a future costs about half.  Any other loop makes its own.
static PyObject *create_future(PyObject *loop) {
    PyObject *t = reinterpret_cast<PyObject *>(Py_TYPE(loop));
    if (t == M.own_loop_type) return call_method(loop, M.create_future, nullptr);
    if (t != M.plain_loop_type) {
        PyObject *m = M.base_create_future ? PyObject_GetAttr(t, M.create_future) : nullptr;
        // uvloop.Loop.create_future is asyncio.Future(loop=self) too (its
        // _new_future), through a Cython keyword call; a subclass of it has
        // another name and keeps its own.
        const bool plain = m && (m == M.base_create_future ||
                                 std::strcmp(Py_TYPE(loop)->tp_name, "uvloop.Loop") == 0);
        Py_XDECREF(m);
        PyErr_Clear();
        Py_INCREF(t);
        Py_XSETREF(plain ? M.plain_loop_type : M.own_loop_type, t);
        if (!plain) return call_method(loop, M.create_future, nullptr);
    }
    // Future(loop=loop) as the type's own slots run it, with a keyword dict
    // kept for the last loop: a call with keywords would build one each time.
    // (Held here: initialising runs Python code, during which another
    // thread may replace the kept dict.)
    PyObject *kw = M.future_kwargs;
    if (M.future_kwargs_loop == loop) {
        Py_INCREF(kw);
    } else {
        if (!(kw = Py_BuildValue("{sO}", "loop", loop))) return nullptr;
        Py_INCREF(kw);
        M.future_kwargs_loop = loop;  // borrowed: the dict holds it
        Py_XSETREF(M.future_kwargs, kw);
    }
    auto *type = reinterpret_cast<PyTypeObject *>(M.future_type);
    PyObject *fut = type->tp_new(type, M.empty_tuple, nullptr);
    if (fut && type->tp_init(fut, M.empty_tuple, kw) < 0) Py_CLEAR(fut);
    Py_DECREF(kw);
    return fut;
}

// A caller of f's loop starts waiting on it: [flight, future].
// by_library: the library counted this caller (it made the registration).
static PyObject *wait_on(FlightObject *f, bool by_library) {
    PyObject *fut = create_future(f->loop);
    if (!fut) return nullptr;
    // Making the future ran Python code, so another thread may have taken
    // the GIL and completed a follower's flight meanwhile: with no future of
    // ours to resolve, it posted no wake.  From here to the insertion no
    // Python code runs.
    if (f->complete) {
        Py_DECREF(fut);
        if (!f->outcome)
            return status_error(SF_ESTATE, "singleflight: a completed flight without its outcome");
        Py_INCREF(f->outcome);
        return return_outcome(f->outcome, f->key);
    }
    if (!f->waiters && !(f->waiters = PyDict_New())) {
        Py_DECREF(fut);
        return nullptr;
    }
    if (PyDict_SetItem(f->waiters, fut, Py_None) < 0) {
        Py_DECREF(fut);
        return nullptr;
    }
    PyObject *out = PyList_New(2);
    if (!out) {
        PyDict_DelItem(f->waiters, fut);
        Py_DECREF(fut);
        return nullptr;
    }
    Py_INCREF(f);
    PyList_SET_ITEM(out, 0, reinterpret_cast<PyObject *>(f));
    PyList_SET_ITEM(out, 1, fut);
    f->live++;
    if (!by_library) {
        f->joined++;
        flight_state(f)->joins++;
    }
    return out;
}

// leave(future): that caller gives up (cancelled, timed out); the others go
// on.  The last caller of the loop to leave gives up the loop's
// registration, which abandons the flight if it was the last one anywhere.
static PyObject *flight_leave(FlightObject *f, PyObject *fut) {
    if (fut == f->leader_fut) {
        Py_CLEAR(f->leader_fut);
    } else if (!f->waiters || PyDict_DelItem(f->waiters, fut) < 0) {
        PyErr_Clear();
        Py_RETURN_NONE;  // its outcome was delivered already: nothing to give up
    }
    f->live--;
    if (f->complete) Py_RETURN_NONE;
    if (f->live > 0) {
        flight_state(f)->left++;
        Py_RETURN_NONE;
    }
    f->closed = 1;
    table_unpublish(f);
    if (f->call) {
        // A leader's: its task may be cancelled now (abandonment) and still
        // finishes the flight.  A follower's: its done callback runs here
        // with SF_ECANCELED, or, if the flight just completed on another
        // thread, there with the outcome, which reaches nobody.
        sf_call_cancel(f->call);
        if (!f->leader) {
            sf_call_release(f->call);
            f->call = nullptr;
        }
    }
    Py_RETURN_NONE;
}

// The leader's coroutine (_lead) ended: with value (finish), by raising
// exc (fail), or cancelled (cancelled).  Each returns the leader's caller's
// outcome.
static PyObject *flight_finish(FlightObject *f, PyObject *value) {
    if (!f->leader || f->complete) return status_error(SF_ESTATE, "finish");
    return leader_complete(f, End::kValue, value);
}

static PyObject *flight_fail(FlightObject *f, PyObject *exc) {
    if (!f->leader || f->complete) return status_error(SF_ESTATE, "fail");
    return leader_complete(f, End::kFailed, exc);
}

static PyObject *leader_exited_error(PyObject *key, PyObject *cause) {
    PyObject *exc = PyObject_CallFunction(
        M.leader_exited, "s",
        "singleflight: the leader's coroutine was cancelled before it finished");
    if (!exc) return nullptr;
    PyObject *args =
        PyUnicode_FromFormat("singleflight: the leader's coroutine for key %R was cancelled", key);
    if (args) {
        PyObject *t = PyTuple_Pack(1, args);
        if (t) PyObject_SetAttrString(exc, "args", t);
        Py_XDECREF(t);
        Py_DECREF(args);
    }
    PyErr_Clear();
    if (cause) {
        Py_INCREF(cause);
        PyException_SetCause(exc, cause);
        Py_INCREF(cause);
        PyException_SetContext(exc, cause);
    }
    return exc;
}

// The work's coroutine was cancelled (or closed): if every caller had gone,
// that was the abandonment, and nobody receives anything; else someone
// else cancelled it (its loop shutting down), and the callers still waiting
// get what a leader that went away gives: LeaderExitedError.
static PyObject *flight_cancelled(FlightObject *f, PyObject *) {
    if (!f->leader || f->complete) return status_error(SF_ESTATE, "cancelled");
    if (f->call && sf_call_abandoned(f->call)) return leader_complete(f, End::kAbandoned, nullptr);
    PyObject *exc = leader_exited_error(f->key, nullptr);
    if (!exc) return nullptr;
    PyObject *out = leader_complete(f, End::kFailed, exc);
    Py_DECREF(exc);
    return out;
}

// The work's task exists (the work suspended): it is what abandonment
// cancels, what a blocking do on this thread must not wait for, and its
// loop's callers may join it.  The leader's caller waits like they do.
static PyObject *attach_task(FlightObject *f, PyObject *task) {
    Py_INCREF(task);
    f->task = task;
    // The abandon callback gets a weak reference: a strong one, held where
    // the collector cannot see it, would keep the task (and its coroutine,
    // and f) alive for ever if its loop went away with the work unfinished;
    // collected instead, the work's coroutine is closed and the flight ends
    // for its callers (_lead).  If registering fails (no memory), the work
    // still finishes; only an abandonment would not cancel it.
    PyObject *ref = PyWeakref_NewRef(task, nullptr);
    Post *p = ref ? post_new(f->loop, ref) : nullptr;
    Py_XDECREF(ref);
    if (p && sf_call_on_abandon(f->call, on_abandon, p) == SF_OK) {
        f->abandon = p;
    } else if (p) {
        post_free(p);
    }
    Key k;
    if (key_of(f->key, &k)) {
        try {
            g_loop_led->emplace(std::string_view(k.data, size_t(k.size)),
                                LoopLed{flight_state(f)->g, f->thread, f});
            f->loop_led = 1;
        } catch (const std::bad_alloc &) {
            // Only the deadlock check of a blocking do is lost.
        }
    }
    PyErr_Clear();
    if (PyUnicode_CheckExact(f->key) || PyBytes_CheckExact(f->key)) table_publish(f);
    PyObject *fut = create_future(f->loop);
    if (!fut) return nullptr;  // the work goes on for the others; this caller raises
    PyObject *out = PyList_New(2);
    if (!out) {
        Py_DECREF(fut);
        return nullptr;
    }
    f->leader_fut = fut;
    Py_INCREF(fut);
    f->live++;
    Py_INCREF(f);
    PyList_SET_ITEM(out, 0, reinterpret_cast<PyObject *>(f));
    PyList_SET_ITEM(out, 1, fut);
    return out;
}

// ---------------------------------------------------------------------------
// the leader's first step
// ---------------------------------------------------------------------------

// How the work starts (chosen by _aio.py for the running Python):
// kInline  drive its first step here (3.10-3.13: asyncio's current-task
//          table is a dict we can point at the _WorkTask)
// kEager   a task with eager_start=True (3.12+): Python does the same
// kTask    a task from the start (older Pythons, or a loop with a task
//          factory, which decides what a task is)
enum class Start { kTask = 0, kInline = 1, kEager = 2 };

// A copy of the current context, as a new task gets, in which _led also
// names this flight: the work, and the tasks it starts, awaiting this key
// would wait for themselves.
static PyObject *work_context(FlightObject *f) {
    PyObject *ctx = PyContext_CopyCurrent();
    if (!ctx) return nullptr;
    if (PyContext_Enter(ctx) < 0) {
        Py_DECREF(ctx);
        return nullptr;
    }
    PyObject *led = nullptr;
    PyObject *token = nullptr;
    if (PyContextVar_Get(M.led_var, nullptr, &led) == 0 && led && PyTuple_Check(led)) {
        const Py_ssize_t n = PyTuple_GET_SIZE(led);
        PyObject *entry = PyTuple_Pack(3, f->group, f->key, reinterpret_cast<PyObject *>(f));
        PyObject *more = entry ? PyTuple_New(n + 1) : nullptr;
        if (more) {
            for (Py_ssize_t i = 0; i < n; i++) {
                PyObject *e = PyTuple_GET_ITEM(led, i);
                Py_INCREF(e);
                PyTuple_SET_ITEM(more, i, e);
            }
            Py_INCREF(entry);
            PyTuple_SET_ITEM(more, n, entry);
            token = PyContextVar_Set(M.led_var, more);
            Py_DECREF(more);
        }
        Py_XDECREF(entry);
    }
    Py_XDECREF(led);
    Py_XDECREF(token);
    const bool ok = token != nullptr;
    PyObject *exc = ok ? nullptr : take_exception();
    PyContext_Exit(ctx);
    if (!ok) {
        Py_DECREF(ctx);
        if (exc) restore_exception(exc);
        return nullptr;
    }
    return ctx;
}

// Whether the current task (or one it descends from) leads key's flight of
// this group, still running: awaiting it would wait for itself.
static int led_in_context(PyObject *group, Key k) {
    PyObject *led = nullptr;
    if (PyContextVar_Get(M.led_var, nullptr, &led) < 0) return -1;
    int found = 0;
    if (led && PyTuple_Check(led)) {
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(led) && !found; i++) {
            PyObject *e = PyTuple_GET_ITEM(led, i);
            auto *f = reinterpret_cast<FlightObject *>(PyTuple_GET_ITEM(e, 2));
            if (PyTuple_GET_ITEM(e, 0) != group || f->complete) continue;
            Key lk;
            if (!key_of(PyTuple_GET_ITEM(e, 1), &lk)) {
                PyErr_Clear();
                continue;
            }
            found = lk.size == k.size &&
                    (k.size == 0 || std::memcmp(lk.data, k.data, size_t(k.size)) == 0);
        }
    }
    Py_XDECREF(led);
    return found;
}

// coro_fn()'s awaitable as a coroutine we can send into: a native one as
// it is, anything else through _await (which raises TypeError for what is
// not awaitable, in the work, as awaiting it would).
static PyObject *work_coroutine(PyObject *coro_fn) {
    PyObject *aw = call_no_args(coro_fn);
    if (!aw || PyCoro_CheckExact(aw)) return aw;
    PyObject *coro = PyObject_CallOneArg(M.await_wrap, aw);
    Py_DECREF(aw);
    return coro;
}

// _lead(flight, coro_fn, coro, pending), started up to its first line that
// waits (see _aio.py): from here a task can take it, and a cancellation
// thrown in before its first step still reaches the work.
static PyObject *primed_lead(FlightObject *f, PyObject *coro_fn, PyObject *coro,
                             PyObject *pending) {
    PyObject *args[4] = {reinterpret_cast<PyObject *>(f), coro_fn, coro, pending};
    PyObject *lead = PyObject_Vectorcall(M.lead, args, 4, nullptr);
    if (!lead) return nullptr;
    PyObject *y = nullptr;
    if (PyIter_Send(lead, Py_None, &y) != PYGEN_NEXT) {
        Py_XDECREF(y);
        Py_DECREF(lead);
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_RuntimeError, "singleflight: _lead did not wait");
        return nullptr;
    }
    Py_DECREF(y);
    return lead;
}

// Closes a primed _lead that no task took: the work's coroutine sees
// GeneratorExit and the flight ends for its callers (LeaderExitedError).
// Keeps the exception being raised.
static void close_lead(PyObject *lead) {
    PyObject *exc = take_exception();
    PyObject *r = PyObject_CallMethod(lead, "close", nullptr);
    if (r) {
        Py_DECREF(r);
    } else {
        PyErr_WriteUnraisable(lead);
    }
    if (exc) restore_exception(exc);
}

// Initialises task as an asyncio task of loop running lead in ctx.
static int init_task(PyObject *task, PyObject *lead, PyObject *loop, PyObject *ctx) {
    PyObject *r;
    if (M.task_takes_context) {
        PyObject *args[4] = {task, lead, loop, ctx};
        r = PyObject_Vectorcall(M.task_init, args, 2, M.kw_loop_context);
    } else {  // before 3.11 a task copies the current context
        if (PyContext_Enter(ctx) < 0) return -1;
        PyObject *args[3] = {task, lead, loop};
        r = PyObject_Vectorcall(M.task_init, args, 2, M.kw_loop);
        PyObject *exc = r ? nullptr : take_exception();
        PyContext_Exit(ctx);
        if (exc) restore_exception(exc);
    }
    if (!r) return -1;
    Py_DECREF(r);
    return 0;
}

// The work suspended in its first step, waiting for pending: the rest of
// it runs in p, the _WorkTask that was current_task() during that step,
// initialised now as a task of the loop, in ctx.
static PyObject *lead_suspended(FlightObject *f, PyObject *p, PyObject *ctx, PyObject *coro,
                                PyObject *pending) {
    PyObject *lead = primed_lead(f, Py_None, coro, pending);
    if (!lead) {
        // Nothing will resume the work: close it; every caller gets the error.
        PyObject *exc = take_exception();
        PyObject *r = PyObject_CallMethod(coro, "close", nullptr);
        Py_XDECREF(r);
        PyErr_Clear();
        if (exc) Py_XDECREF(leader_complete(f, End::kFailed, exc));
        PyErr_Clear();
        if (exc) restore_exception(exc);
        return nullptr;
    }
    // Cancellations asked of the task during the step are asked again of
    // the task it now is (initialising resets them).
    long cancels = 0;
    if (PyObject *n = call_method(p, M.cancelling, nullptr)) {
        cancels = PyLong_AsLong(n);
        Py_DECREF(n);
    }
    PyErr_Clear();
    if (init_task(p, lead, f->loop, ctx) < 0) {
        close_lead(lead);
        Py_DECREF(lead);
        return nullptr;
    }
    Py_DECREF(lead);
    for (long i = 0; i < cancels; i++) {
        PyObject *r = call_method(p, M.cancel, nullptr);
        Py_XDECREF(r);
    }
    PyErr_Clear();
    return attach_task(f, p);
}

// The work raised exc (taken out) in its first step: every caller raises
// it, this one first.  A CancelledError there is the work giving up on
// its own: the callers get LeaderExitedError, as when its task is
// cancelled.
static PyObject *lead_raised(FlightObject *f, PyObject *exc) {
    if (!exc) {
        PyErr_SetString(PyExc_SystemError, "singleflight: the work failed without an exception");
        exc = take_exception();
        if (!exc) return nullptr;
    }
    if (PyErr_GivenExceptionMatches(exc, M.cancelled_error)) {
        PyObject *exited = leader_exited_error(f->key, exc);
        if (exited) {
            Py_DECREF(exc);
            exc = exited;
        }
        PyErr_Clear();
    }
    Py_XDECREF(leader_complete(f, End::kFailed, exc));
    PyErr_Clear();
    restore_exception(exc);
    return nullptr;
}

// The leader's work, started inline (Start::kInline).
static PyObject *lead_inline(FlightObject *f, PyObject *coro_fn, PyObject *ctx, Key k) {
    GroupState *st = flight_state(f);
    PyObject *p = M.work_task_type->tp_new(M.work_task_type, M.empty_tuple, nullptr);
    if (!p) return nullptr;  // f's release ends the flight (SF_EGOEXIT)
    if (PyContext_Enter(ctx) < 0) {
        Py_DECREF(p);
        return nullptr;
    }
    // current_task() is p while the step runs.
    PyObject *caller = PyDict_GetItemWithError(M.current_tasks, f->loop);
    Py_XINCREF(caller);
    const bool swapped = !PyErr_Occurred() && PyDict_SetItem(M.current_tasks, f->loop, p) == 0;
    const bool pushed = swapped && led_push(st->g, k);
    PyObject *coro = nullptr, *res = nullptr;
    PySendResult sr = PYGEN_ERROR;
    if (!swapped) {
        // an error is set
    } else if (!pushed) {
        PyErr_NoMemory();
    } else if ((coro = work_coroutine(coro_fn))) {
        sr = PyIter_Send(coro, Py_None, &res);
    }
    if (pushed) led_pop(st->g, k);
    PyObject *exc = sr == PYGEN_ERROR ? take_exception() : nullptr;
    if (swapped) {
        int rc = caller ? PyDict_SetItem(M.current_tasks, f->loop, caller)
                        : PyDict_DelItem(M.current_tasks, f->loop);
        if (rc < 0) PyErr_Clear();
    }
    Py_XDECREF(caller);
    PyContext_Exit(ctx);
    PyErr_Clear();
    PyObject *out;
    if (sr == PYGEN_RETURN) {
        out = return_outcome(leader_complete(f, End::kValue, res), f->key);
    } else if (sr == PYGEN_NEXT) {
        out = lead_suspended(f, p, ctx, coro, res);
    } else {
        out = coro || swapped ? lead_raised(f, exc)
                              : (exc ? (restore_exception(exc), nullptr) : nullptr);
    }
    Py_XDECREF(res);
    Py_XDECREF(coro);
    Py_DECREF(p);
    return out;
}

// The leader's work as a task from the start: eagerly (Start::kEager,
// 3.12+, where the task runs its first step as it is made) or not.
static PyObject *lead_task(FlightObject *f, PyObject *coro_fn, PyObject *ctx, bool eager, Key k) {
    PyObject *lead = primed_lead(f, coro_fn, Py_None, Py_None);
    if (!lead) return nullptr;  // f's release ends the flight (SF_EGOEXIT)
    PyObject *task;
    f->keep_outcome = 1;  // an eager task may complete the flight before it returns
    if (eager) {
        GroupState *st = flight_state(f);
        const bool pushed = led_push(st->g, k);
        PyObject *args[4] = {lead, f->loop, ctx, Py_True};
        task = pushed ? PyObject_Vectorcall(M.task_type, args, 1, M.kw_loop_context_eager)
                      : PyErr_NoMemory();
        if (pushed) led_pop(st->g, k);
    } else if (M.task_takes_context) {
        PyObject *args[3] = {f->loop, lead, ctx};
        task = PyObject_VectorcallMethod(M.create_task, args, 2, M.kw_context);
    } else if (PyContext_Enter(ctx) == 0) {
        task = call_method(f->loop, M.create_task, lead);
        PyObject *exc = task ? nullptr : take_exception();
        PyContext_Exit(ctx);
        if (exc) restore_exception(exc);
    } else {
        task = nullptr;
    }
    f->keep_outcome = 0;
    if (!task) {
        if (!f->complete) close_lead(lead);  // no task took it
        Py_DECREF(lead);
        Py_CLEAR(f->outcome);
        return nullptr;
    }
    Py_DECREF(lead);
    if (f->complete) {  // an eager task that ran to its end
        Py_DECREF(task);
        PyObject *out = f->outcome;
        f->outcome = nullptr;
        if (!out)
            return status_error(SF_ESTATE,
                                "singleflight: the work's task ended without an outcome");
        return return_outcome(out, f->key);
    }
    PyObject *out = attach_task(f, task);
    Py_DECREF(task);
    return out;
}

static PyObject *lead_async(FlightObject *f, PyObject *coro_fn, Key k) {
    Start start = Start(M.start);
    if (start != Start::kTask) {
        // A loop with a task factory decides what the work's task is.
        PyObject *factory = call_method(f->loop, M.get_task_factory, nullptr);
        if (!factory) return nullptr;
        if (factory != Py_None) start = Start::kTask;
        Py_DECREF(factory);
    }
    PyObject *ctx = work_context(f);
    if (!ctx) return nullptr;
    PyObject *out = start == Start::kInline ? lead_inline(f, coro_fn, ctx, k)
                                            : lead_task(f, coro_fn, ctx, start == Start::kEager, k);
    Py_DECREF(ctx);
    return out;
}

// This loop is the first of the flight's followers here: one registration
// for all of them.
static PyObject *follow_async(FlightObject *f, bool tabled) {
    Py_INCREF(f);         // the registration's; on_flight_done drops it
    f->keep_outcome = 1;  // the flight may have completed: then on_flight_done runs here, now
    const int rc = sf_call_on_done(f->call, on_flight_done, f);
    f->keep_outcome = 0;
    if (rc != SF_OK) {
        Py_DECREF(f);
        return status_error(rc, "sf_call_on_done");
    }
    if (f->complete) {  // it had completed: on_flight_done ran here already
        PyObject *out = f->outcome;
        f->outcome = nullptr;
        if (!out)
            return status_error(SF_ESTATE, "singleflight: a completed flight without its outcome");
        return return_outcome(out, f->key);
    }
    if (tabled) table_publish(f);
    return wait_on(f, true);
}

static FlightObject *flight_new(PyObject *group, PyObject *key, PyObject *loop, uint64_t epoch) {
    FlightObject *f = PyObject_GC_New(FlightObject, FlightType);
    if (!f) return nullptr;
    f->call = nullptr;
    Py_INCREF(group);
    f->group = group;
    Py_INCREF(key);
    f->key = key;
    Py_INCREF(loop);
    f->loop = loop;
    f->waiters = f->leader_fut = f->task = f->outcome = nullptr;
    f->next = nullptr;
    f->abandon = nullptr;
    f->epoch = epoch;
    f->live = f->joined = 0;
    f->thread = PyThread_get_thread_ident();
    f->leader = f->published = f->closed = f->complete = f->loop_led = f->keep_outcome = 0;
    PyObject_GC_Track(f);
    return f;
}

// _enter(group, key, coro_fn): a do_async caller starts or joins key's
// flight, in the running loop.  Returns (value, shared) when the work
// completed inline (the leader's, without suspending) or the flight had
// completed, raises what it raised; else [flight, future]: await the
// future, and flight.leave(future) to give up.
static PyObject *py_enter(PyObject *, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_enter(group, key, coro_fn)");
        return nullptr;
    }
    if (!g_parked->empty()) drop_parked();
    GroupState *st = state_of(args[0]);
    Key k;
    if (!st || !key_of(args[1], &k)) return nullptr;
    // A coroutine of a loop that runs inside a Group.do fn on this thread,
    // asking for that fn's key, would wait for the thread it blocks; so
    // would the work's own first step (t_led has both).
    if (!t_led.empty() && led_here(st->g, k)) return deadlock_error();
    const int led = led_in_context(args[0], k);
    if (led < 0) return nullptr;
    if (led)
        return PyErr_Format(PyExc_RuntimeError,
                            "singleflight: do_async inside coro_fn asked for its own key %R: "
                            "it would wait for itself (SF_EDEADLK)",
                            args[1]);
    PyObject *loop = running_loop();
    if (!loop) return nullptr;
    // Only exact str and bytes keys go in the table: their hash and equality
    // run no Python code.
    const bool tabled = PyUnicode_CheckExact(args[1]) || PyBytes_CheckExact(args[1]);
    if (tabled) {
        if (FlightObject *f = table_find(st, args[1], loop)) {
            Py_DECREF(loop);
            Py_INCREF(f);  // the table's pointer is borrowed
            PyObject *out = wait_on(f, false);
            Py_DECREF(f);
            return out;
        }
        if (PyErr_Occurred()) {
            Py_DECREF(loop);
            return nullptr;
        }
    }
    FlightObject *f = flight_new(args[0], args[1], loop, st->epoch);
    Py_DECREF(loop);
    if (!f) return nullptr;
    const int rc = sf_group_begin(st->g, k.data, size_t(k.size), &f->call);
    PyObject *out;
    if (rc == SF_FOLLOWER) {
        out = follow_async(f, tabled);
    } else if (rc == SF_LEADER) {
        f->leader = 1;
        out = lead_async(f, args[2], k);
    } else {
        out = status_error(rc, "sf_group_begin");
    }
    Py_DECREF(f);
    return out;
}

static int flight_traverse(FlightObject *f, visitproc visit, void *arg) {
    Py_VISIT(Py_TYPE(f));
    Py_VISIT(f->loop);
    Py_VISIT(f->waiters);
    Py_VISIT(f->leader_fut);
    Py_VISIT(f->task);
    Py_VISIT(f->outcome);
    return 0;
}

static int flight_clear(FlightObject *f) {
    Py_CLEAR(f->waiters);
    Py_CLEAR(f->leader_fut);
    Py_CLEAR(f->task);
    Py_CLEAR(f->outcome);
    return 0;
}

static void flight_dealloc(FlightObject *f) {
    PyTypeObject *type = Py_TYPE(f);
    PyObject_GC_UnTrack(f);
    table_unpublish(f);
    forget_loop_led(f);
    release_handle(f);
    flight_clear(f);
    Py_CLEAR(f->loop);
    Py_CLEAR(f->key);
    Py_CLEAR(f->group);
    type->tp_free(reinterpret_cast<PyObject *>(f));
    Py_DECREF(type);  // a heap type
}

// Whether the leader's flight is unfinished.
static PyObject *flight_get_pending(FlightObject *f, void *) {
    return PyBool_FromLong(f->leader && !f->complete);
}

static PyMethodDef flight_methods[] = {
    {"leave", reinterpret_cast<PyCFunction>(flight_leave), METH_O,
     "leave(future): that caller gives up; the last one of the loop gives up the loop's "
     "registration."},
    {"finish", reinterpret_cast<PyCFunction>(flight_finish), METH_O,
     "finish(value) -> outcome: the leader's work returned value."},
    {"fail", reinterpret_cast<PyCFunction>(flight_fail), METH_O,
     "fail(exc) -> outcome: the leader's work raised exc, which every caller raises."},
    {"cancelled", reinterpret_cast<PyCFunction>(flight_cancelled), METH_NOARGS,
     "cancelled() -> outcome: the leader's work was cancelled (abandoned, or its loop shutting "
     "down)."},
    {nullptr, nullptr, 0, nullptr},
};

static PyMemberDef flight_members[] = {
    {const_cast<char *>("leader"), T_BOOL, offsetof(FlightObject, leader), READONLY,
     const_cast<char *>("whether this loop's registration leads")},
    {const_cast<char *>("task"), T_OBJECT, offsetof(FlightObject, task), READONLY,
     const_cast<char *>("the work's task, once the work suspended, until it ends")},
    {nullptr, 0, 0, 0, nullptr},
};

static PyGetSetDef flight_getset[] = {
    {"pending", reinterpret_cast<getter>(flight_get_pending), nullptr,
     "whether a leader's flight is unfinished", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

static PyType_Slot flight_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void *>(flight_dealloc)},
    {Py_tp_traverse, reinterpret_cast<void *>(flight_traverse)},
    {Py_tp_clear, reinterpret_cast<void *>(flight_clear)},
    {Py_tp_methods, flight_methods},
    {Py_tp_getset, flight_getset},
    {Py_tp_members, flight_members},
    {Py_tp_doc,
     const_cast<char *>("One event loop's registration on one flight (internal to do_async).")},
    {0, nullptr},
};

static PyType_Spec flight_spec = {
    "libsingleflight._singleflight_core._Flight", sizeof(FlightObject), 0,
    Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,      flight_slots,
};

// _raise_outcome(status, value, message, key): raises what a do_async
// caller sees for an outcome that is not a value (see raise_outcome).
static PyObject *py_raise_outcome(PyObject *, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "_raise_outcome(status, value, message, key)");
        return nullptr;
    }
    const long status = PyLong_AsLong(args[0]);
    if (status == -1 && PyErr_Occurred()) return nullptr;
    const char *message = args[2] == Py_None ? nullptr : PyUnicode_AsUTF8(args[2]);
    if (args[2] != Py_None && !message) return nullptr;
    return raise_outcome(int(status), args[1], message, args[3]);
}

// ---------------------------------------------------------------------------
// the rest of Group, and module set-up
// ---------------------------------------------------------------------------

static PyObject *py_group_new(PyObject *, PyObject *) {
    auto *st = new (std::nothrow) GroupState;
    if (!st) return PyErr_NoMemory();
    st->flights = PyDict_New();
    if (!st->flights) {
        delete st;
        return nullptr;
    }
    const int rc = sf_group_new(&st->g, nullptr);
    if (rc != SF_OK) {
        Py_DECREF(st->flights);
        delete st;
        return status_error(rc, "sf_group_new");
    }
    PyObject *capsule = PyCapsule_New(st, kGroupCapsule, free_group_capsule);
    if (!capsule) {
        sf_group_free(st->g);
        Py_DECREF(st->flights);
        delete st;
    }
    return capsule;
}

// The same key in its other form (str <-> UTF-8 bytes), or nullptr.
static PyObject *other_form(PyObject *key) {
    PyObject *o = PyUnicode_CheckExact(key) ? PyUnicode_AsUTF8String(key)
                  : PyBytes_CheckExact(key)
                      ? PyUnicode_DecodeUTF8(PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key), nullptr)
                      : nullptr;
    if (!o) PyErr_Clear();
    return o;
}

// Whether a caller of some loop joined key's flight that a loop of this
// group leads, without the library knowing (forget_unshared must not take
// it out).
static bool joined_locally(GroupState *st, PyObject *key) {
    PyObject *forms[2] = {key, other_form(key)};
    bool joined = false;
    for (PyObject *form : forms) {
        if (!form || joined) continue;
        for (FlightObject *f = table_head(st, form); f && !joined; f = f->next)
            joined = f->leader && !f->complete && f->epoch == st->epoch && f->joined > 0;
        PyErr_Clear();
    }
    Py_XDECREF(forms[1]);
    return joined;
}

template <int (*Forget)(sf_group *, const void *, size_t)>
static PyObject *py_forget(PyObject *, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_forget(group, key)");
        return nullptr;
    }
    GroupState *st = state_of(args[0]);
    Key k;
    if (!st || !key_of(args[1], &k)) return nullptr;
    if (Forget == sf_group_forget_unshared && joined_locally(st, args[1])) Py_RETURN_FALSE;
    const int rc = Forget(st->g, k.data, size_t(k.size));
    if (rc < 0) return status_error(rc, "sf_group_forget");
    // Every flight published before is now unjoinable here (not only this
    // key's: forgets are rare, and a flight of another key only costs its
    // loop's next caller one registration with the library).
    if (rc == 1) st->epoch++;
    return PyBool_FromLong(rc == 1);
}

// _stats(group) -> the ten counters of sf_group_stats version 2, in order,
// with do_async's callers counted as if each had asked the library: those
// that joined their loop's flight are calls and followers, those that gave
// up while others of their loop stayed are cancels.
static PyObject *py_stats(PyObject *, PyObject *group) {
    GroupState *st = state_of(group);
    if (!st) return nullptr;
    sf_group_stats s;
    s.version = SF_GROUP_STATS_VERSION;
    const int rc = sf_group_stats_get(st->g, &s);
    if (rc != SF_OK) return status_error(rc, "sf_group_stats_get");
    return Py_BuildValue(
        "(KKKKKKKKKK)", (unsigned long long)(s.calls + st->joins), (unsigned long long)s.leaders,
        (unsigned long long)(s.followers + st->joins), (unsigned long long)s.panics,
        (unsigned long long)s.goexits, (unsigned long long)s.timeouts,
        (unsigned long long)s.forgets, (unsigned long long)s.in_flight,
        (unsigned long long)s.abandons, (unsigned long long)(s.cancels + st->left));
}

// _local_stats(group) -> (joins, left): the do_async callers the library
// did not see, as stats() adds them (for tests).
static PyObject *py_local_stats(PyObject *, PyObject *group) {
    GroupState *st = state_of(group);
    if (!st) return nullptr;
    return Py_BuildValue("(KK)", (unsigned long long)st->joins, (unsigned long long)st->left);
}

static void set_ref(PyObject **slot, PyObject *v) {
    Py_INCREF(v);
    Py_XSETREF(*slot, v);
}

// _init(PanicError, LeaderExitedError, _describe, _cancel_task)
static PyObject *py_init(PyObject *, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "_init: four arguments");
        return nullptr;
    }
    set_ref(&M.panic_error, args[0]);
    set_ref(&M.leader_exited, args[1]);
    set_ref(&M.describe, args[2]);
    set_ref(&M.cancel_task, args[3]);
    Py_RETURN_NONE;
}

// _aio_init(start, get_running_loop, _lead, _await, _WorkTask, Task,
//           current_tasks, CancelledError, led_var, task_takes_context,
//           Future, BaseEventLoop.create_future, InvalidStateError):
// the asyncio half's pieces (libsingleflight/_aio.py).
static PyObject *py_aio_init(PyObject *, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 13) {
        PyErr_SetString(PyExc_TypeError, "_aio_init: thirteen arguments");
        return nullptr;
    }
    const long start = PyLong_AsLong(args[0]);
    if (start == -1 && PyErr_Occurred()) return nullptr;
    if (start == long(Start::kInline) && (!PyDict_Check(args[6]) || !PyType_Check(args[4]))) {
        PyErr_SetString(PyExc_ValueError,
                        "_aio_init: inline start needs the current-task dict and _WorkTask");
        return nullptr;
    }
    if (!PyType_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "_aio_init: Task must be a type");
        return nullptr;
    }
    PyObject *task_init = PyObject_GetAttrString(args[5], "__init__");
    if (!task_init) return nullptr;
    Py_XSETREF(M.task_init, task_init);
    M.start = int(start);
    set_ref(&M.get_running_loop, args[1]);
    set_ref(&M.lead, args[2]);
    set_ref(&M.await_wrap, args[3]);
    if (PyType_Check(args[4])) {
        Py_INCREF(args[4]);
        Py_XSETREF(M.work_task_type, reinterpret_cast<PyTypeObject *>(args[4]));
    }
    set_ref(&M.task_type, args[5]);
    set_ref(&M.current_tasks, args[6]);
    set_ref(&M.cancelled_error, args[7]);
    set_ref(&M.led_var, args[8]);
    M.task_takes_context = PyObject_IsTrue(args[9]) == 1;
    set_ref(&M.future_type, args[10]);
    if (!PyType_Check(args[10])) {
        PyErr_SetString(PyExc_TypeError, "_aio_init: Future must be a type");
        return nullptr;
    }
    PyObject *sr = PyObject_GetAttr(args[10], M.set_result);
    if (!sr) return nullptr;
    Py_XSETREF(M.future_set_result, sr);
    Py_CLEAR(M.future_kwargs);
    M.future_kwargs_loop = nullptr;
    set_ref(&M.base_create_future, args[11]);
    set_ref(&M.invalid_state_error, args[12]);
    Py_CLEAR(M.plain_loop_type);
    Py_CLEAR(M.own_loop_type);
    Py_RETURN_NONE;
}

// _set_main_thread(ident): the thread signal handlers run on; called at
// import and in a child after fork, which also forgets the running loop
// running_loop() kept for this thread (a loop of the parent's).
static PyObject *py_set_main_thread(PyObject *, PyObject *ident) {
    const unsigned long t = PyLong_AsUnsignedLong(ident);
    if (t == static_cast<unsigned long>(-1) && PyErr_Occurred()) return nullptr;
    M.main_thread = t;
    if (PyObject *d = PyThreadState_GetDict()) {
        if (PyDict_DelItem(d, M.loop_cache_key) < 0) PyErr_Clear();
    }
    Py_RETURN_NONE;
}

#define SFPY_FASTCALL(f) reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(f))

static PyMethodDef module_methods[] = {
    {"_do", SFPY_FASTCALL(py_do), METH_FASTCALL, "_do(group, key, fn, timeout): Group.do."},
    {"_enter", SFPY_FASTCALL(py_enter), METH_FASTCALL,
     "_enter(group, key, coro_fn) -> (value, shared) or [flight, future]: do_async's start."},
    {"_wake", py_wake, METH_O, "_wake(flight): a completed flight reaches its loop's callers."},
    {"_raise_outcome", SFPY_FASTCALL(py_raise_outcome), METH_FASTCALL,
     "_raise_outcome(status, value, message, key): raises a do_async outcome."},
    {"_group_new", py_group_new, METH_NOARGS, "_group_new() -> a capsule owning a new sf_group."},
    {"_forget", SFPY_FASTCALL(py_forget<sf_group_forget>), METH_FASTCALL,
     "_forget(group, key) -> bool."},
    {"_forget_unshared", SFPY_FASTCALL(py_forget<sf_group_forget_unshared>), METH_FASTCALL,
     "_forget_unshared(group, key) -> bool."},
    {"_stats", py_stats, METH_O, "_stats(group) -> tuple of the ten counters."},
    {"_local_stats", py_local_stats, METH_O,
     "_local_stats(group) -> (joins, left): callers the library did not see."},
    {"_init", SFPY_FASTCALL(py_init), METH_FASTCALL, "_init(...): the Python half's helpers."},
    {"_aio_init", SFPY_FASTCALL(py_aio_init), METH_FASTCALL,
     "_aio_init(...): the asyncio half's helpers."},
    {"_set_main_thread", py_set_main_thread, METH_O, "_set_main_thread(ident)."},
    {nullptr, nullptr, 0, nullptr},
};

#undef SFPY_FASTCALL

static PyObject *names(std::initializer_list<const char *> list) {
    PyObject *t = PyTuple_New(Py_ssize_t(list.size()));
    if (!t) return nullptr;
    Py_ssize_t i = 0;
    for (const char *n : list) {
        PyObject *s = PyUnicode_InternFromString(n);
        if (!s) {
            Py_DECREF(t);
            return nullptr;
        }
        PyTuple_SET_ITEM(t, i++, s);
    }
    return t;
}

// Adds the functions and _Flight to the module; -1 with an exception set on
// failure.
static int init_module(PyObject *m) {
    g_loop_led = new (std::nothrow) LoopLedMap;
    g_parked = new (std::nothrow) std::vector<PyObject *>;
    if (!g_loop_led || !g_parked) {
        PyErr_NoMemory();
        return -1;
    }
    M.call_soon_threadsafe = PyUnicode_InternFromString("call_soon_threadsafe");
    M.done = PyUnicode_InternFromString("done");
    M.set_result = PyUnicode_InternFromString("set_result");
    M.create_future = PyUnicode_InternFromString("create_future");
    M.create_task = PyUnicode_InternFromString("create_task");
    M.get_task_factory = PyUnicode_InternFromString("get_task_factory");
    M.cancelling = PyUnicode_InternFromString("cancelling");
    M.cancel = PyUnicode_InternFromString("cancel");
    M.kw_loop = names({"loop"});
    M.kw_context = names({"context"});
    M.kw_loop_context = names({"loop", "context"});
    M.kw_loop_context_eager = names({"loop", "context", "eager_start"});
    M.empty_tuple = PyTuple_New(0);
    M.running_loop_key = PyUnicode_InternFromString("__asyncio_running_event_loop__");
    M.loop_cache_key = PyUnicode_InternFromString("__libsingleflight_running_loop__");
    if (!M.call_soon_threadsafe || !M.done || !M.set_result || !M.create_future || !M.create_task ||
        !M.get_task_factory || !M.cancelling || !M.cancel || !M.kw_loop || !M.kw_context ||
        !M.kw_loop_context || !M.kw_loop_context_eager || !M.empty_tuple || !M.running_loop_key ||
        !M.loop_cache_key || PyModule_AddFunctions(m, module_methods) < 0)
        return -1;
    FlightType = reinterpret_cast<PyTypeObject *>(PyType_FromSpec(&flight_spec));
    if (!FlightType) return -1;
    Py_INCREF(FlightType);
    if (PyModule_AddObject(m, "_Flight", reinterpret_cast<PyObject *>(FlightType)) < 0) {
        Py_DECREF(FlightType);
        return -1;
    }
    // _wake as an object: the library's callbacks hand it to call_soon_threadsafe.
    M.wake = PyObject_GetAttrString(m, "_wake");
    if (!M.wake) return -1;
    M.main_thread = PyThread_get_thread_ident();
    return 0;
}

}  // namespace sfpy

#endif  // SFPY_HPP
