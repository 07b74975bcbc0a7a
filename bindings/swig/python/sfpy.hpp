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
// pure-Python idiom; the report of issue 11 has the SWIG alternatives.
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
#include <vector>

#include <singleflight.h>

#include "sfswig.hpp"

#if PY_VERSION_HEX >= 0x030D0000
#define SFPY_FINALIZING() Py_IsFinalizing()
#else
#define SFPY_FINALIZING() _Py_IsFinalizing()
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
    PyObject *set_outcome = nullptr;    // _set_outcome(fut, outcome), on a loop's thread
    PyObject *cancel_task = nullptr;    // _cancel_task(task), on a loop's thread
    PyObject *call_soon_threadsafe = nullptr;  // interned method names
    PyObject *done = nullptr;
    PyObject *set_result = nullptr;
    PyObject *create_future = nullptr;
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

// A group travels as a capsule (Group._h) that owns the sf_group.  Every
// _Call holds the capsule too, so the group is freed only after its last
// call is released, and sf_group_free cannot be SF_EBUSY.
static const char kGroupCapsule[] = "libsingleflight.group";

static void free_group_capsule(PyObject *capsule) {
    if (auto *g = static_cast<sf_group *>(PyCapsule_GetPointer(capsule, kGroupCapsule)))
        sf_group_free(g);
}

static sf_group *group_of(PyObject *o) {
    return static_cast<sf_group *>(PyCapsule_GetPointer(o, kGroupCapsule));
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
        PyErr_SetString(PyExc_ValueError, "timeout must be None or a non-negative number of seconds");
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

// The flights do_async callers lead, by key.  Their work is a task of the
// event loop on the thread that began them, so a blocking do on that thread
// for such a key would stop the very loop that must finish it.  Touched
// only with the GIL held; each key points into the key object its _Call
// holds, and the _Call removes its entry when its flight finishes.  Made in
// init_module and never freed: no destructor runs at exit.
struct LoopLed {
    sf_group *group;
    unsigned long thread;
    const void *owner;  // the _Call
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
        PyErr_Format(M.leader_exited, "singleflight: the leader of key %R exited without a result", key);
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
    if (rc != 1) {  // cannot happen: a fresh two-phase leader
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
        timeout_ns < 0 ? -1 : (timeout_ns > LLONG_MAX - now_ns() ? LLONG_MAX : now_ns() + timeout_ns);
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
        Py_BEGIN_ALLOW_THREADS
        n = poll(&p, 1, ms);
        err = errno;
        Py_END_ALLOW_THREADS
        if (n > 0) return sf_call_wait(call, 0, r, shared);  // complete: at once
        if (n < 0 && err != EINTR) {
            errno = err;
            PyErr_SetFromErrno(PyExc_OSError);
            return kPythonError;
        }
        if (n < 0 && PyErr_CheckSignals() < 0) return kPythonError;
    }
}

static PyObject *follow(sf_call *call, long long timeout_ns, PyObject *key) {
    sf_result *r = nullptr;
    int shared = 0;
    int status;
    if (PyThread_get_thread_ident() == M.main_thread) {
        status = wait_interruptibly(call, timeout_ns, &r, &shared);
    } else {
        Py_BEGIN_ALLOW_THREADS
        status = sf_call_wait(call, timeout_ns, &r, &shared);
        Py_END_ALLOW_THREADS
    }
    PyObject *out = status == kPythonError ? nullptr : result_of(status, r, shared, key);
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
        return status_error(SF_EDEADLK, "singleflight: a blocking do for a key that a do_async of "
                                        "this thread's event loop leads");
    sf_call *call = nullptr;
    const int rc = sf_group_begin(g, k.data, size_t(k.size), &call);
    if (rc == SF_LEADER) return lead(g, k, call, args[2]);
    if (rc == SF_FOLLOWER) return follow(call, timeout_ns, args[1]);
    return status_error(rc, "sf_group_begin");
}

// ---------------------------------------------------------------------------
// callbacks into event loops (do_async)
// ---------------------------------------------------------------------------

// Where a library callback delivers: a loop, the thread it runs on, and
// the object (a future, a task) to hand to a function there.  Owned by the
// registration; the callback, which runs exactly once, frees it.
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

// Runs fn(target, arg) on the loop's thread: now, when that is this thread
// (the completing leader runs in the same loop); else through
// call_soon_threadsafe.  A closed loop has nobody left to resume: nothing
// to do.  Never raises.
static void post_run(Post *p, PyObject *fn, PyObject *arg) {
    PyObject *r;
    if (PyThread_get_thread_ident() == p->thread) {
        r = PyObject_CallFunctionObjArgs(fn, p->target, arg, nullptr);
    } else {
        r = PyObject_CallMethodObjArgs(p->loop, M.call_soon_threadsafe, fn, p->target, arg, nullptr);
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

// obj.name() or obj.name(arg), without making a bound method where the
// Python version allows.
static PyObject *call_method(PyObject *obj, PyObject *name, PyObject *arg) {
#if PY_VERSION_HEX >= 0x03090000
    PyObject *args[2] = {obj, arg};
    return PyObject_VectorcallMethod(name, args, arg ? 2 : 1, nullptr);
#else
    return PyObject_CallMethodObjArgs(obj, name, arg, nullptr);
#endif
}

// _set_outcome(fut, out) without a Python frame, on fut's loop's thread:
// the commonest delivery (the leader completes in the followers' loop).
static void set_outcome_now(PyObject *fut, PyObject *out) {
    PyObject *done = call_method(fut, M.done, nullptr);
    PyObject *r = done == Py_False ? call_method(fut, M.set_result, out) : done;
    if (done == Py_False) Py_DECREF(done);
    if (r) {
        Py_DECREF(r);
    } else if (PyErr_ExceptionMatches(PyExc_RuntimeError)) {
        PyErr_Clear();  // the loop is closed: nobody is left to resume
    } else {
        PyErr_WriteUnraisable(fut);
    }
}

// sf_call_on_done: the flight completed (or this caller gave up: then
// there is nothing to deliver; its own task raised already).
static void on_done(int status, sf_result *r, int shared, void *payload) {
    Post *p = static_cast<Post *>(payload);
    if (python_gone()) return;  // its references go with the interpreter
    PyGILState_STATE st = PyGILState_Ensure();
    if (status != SF_ECANCELED) {
        if (PyObject *out = outcome_of(status, r, shared)) {
            if (PyThread_get_thread_ident() == p->thread) {
                set_outcome_now(p->target, out);
            } else {
                post_run(p, M.set_outcome, out);
            }
            Py_DECREF(out);
        } else {
            PyErr_WriteUnraisable(M.set_outcome);
        }
    }
    post_free(p);
    PyGILState_Release(st);
}

// sf_call_on_abandon: every caller gave up; cancel the leader's task, on
// its loop.  Runs on the thread of the last caller to leave.
static void on_abandon(sf_call *, void *payload) {
    Post *p = static_cast<Post *>(payload);
    if (python_gone()) return;
    PyGILState_STATE st = PyGILState_Ensure();
    post_run(p, M.cancel_task, nullptr);
    post_free(p);
    PyGILState_Release(st);
}

// ---------------------------------------------------------------------------
// _Call: one caller's handle, for do_async
// ---------------------------------------------------------------------------

struct CallObject {
    PyObject_HEAD
    sf_call *call;     // nullptr once released
    PyObject *group;   // the capsule: the group outlives the handle
    Post *abandon;     // a leader's on_abandon payload, while we may still free it
    PyObject *key;     // a leader's key, while it has an entry in g_loop_led
    char leader;       // read from Python as the member `leader`
};

// The leader's flight is finished (or its handle released): its key leaves
// g_loop_led.
static void forget_loop_led(CallObject *self) {
    if (!self->key) return;
    Key k;
    if (key_of(self->key, &k)) {  // cannot fail: the key was read before
        auto range = g_loop_led->equal_range(std::string_view(k.data, size_t(k.size)));
        for (auto it = range.first; it != range.second; ++it) {
            if (it->second.owner == self) {
                g_loop_led->erase(it);
                break;
            }
        }
    }
    Py_CLEAR(self->key);
}

static PyObject *call_state_error(const char *what) {
    PyErr_Format(PyExc_RuntimeError, "singleflight: %s: the call is not in a state for it", what);
    return nullptr;
}

// A leader's on_abandon payload is the callback's to free once abandonment
// may run it; before that, and when it never can, it is ours.  Called
// after the flight completed, with the handle still held: from then on
// sf_call_abandoned is final (completion and abandonment exclude each other
// on one state word).
static void settle_abandon(CallObject *self) {
    if (self->abandon && !sf_call_abandoned(self->call)) post_free(self->abandon);
    self->abandon = nullptr;
}

// The end of a completed leader's handle: returns whether anyone shared.
static PyObject *leader_done(CallObject *self) {
    const bool shared = shared_after_finish(self->call);
    settle_abandon(self);
    sf_call_release(self->call);
    self->call = nullptr;
    forget_loop_led(self);
    return PyBool_FromLong(shared);
}

// finish(value) -> shared: the leader's coroutine returned value.
static PyObject *call_finish(CallObject *self, PyObject *value) {
    if (!self->call || !self->leader) return call_state_error("finish");
    const int rc = sf_call_finish_unshared(self->call, 0);
    if (rc == 0) {
        // Finished and released, and never abandoned: unpublishing it here
        // means no abandonment could (see sf_call_finish_unshared).
        self->call = nullptr;
        forget_loop_led(self);
        if (self->abandon) post_free(self->abandon);
        self->abandon = nullptr;
        Py_RETURN_FALSE;
    }
    if (rc != 1) return status_error(rc, "sf_call_finish_unshared");
    store(self->call, value);
    sf_call_finish(self->call, 0);
    return leader_done(self);
}

// fail(exc) -> shared: the leader's coroutine raised exc, which every
// caller raises.
static PyObject *call_fail(CallObject *self, PyObject *exc) {
    if (!self->call || !self->leader) return call_state_error("fail");
    panic_with(self->call, exc);
    return leader_done(self);
}

// cancel() -> int: this caller gives up (sf_call_cancel's return: 1 when
// that abandoned the flight, 0, or a negative status when it was too late).
static PyObject *call_cancel(CallObject *self, PyObject *) {
    return PyLong_FromLong(self->call ? sf_call_cancel(self->call) : SF_ESTATE);
}

static void call_release_handle(CallObject *self) {
    if (!self->call) return;
    // An unfinished leader released here (an error path: the leader's task
    // always finishes) with an abandon callback registered: complete the
    // flight while the handle is still ours, so sf_call_abandoned is final
    // and exactly one of us (settle_abandon or the callback) frees the
    // payload.  Without a callback, the release alone completes it as
    // SF_EGOEXIT.
    if (self->abandon) {
        if (self->leader)
            sf_call_panic(self->call, "singleflight: the leader's handle was released before its work finished");
        settle_abandon(self);
    }
    sf_call_release(self->call);
    self->call = nullptr;
    forget_loop_led(self);
}

static PyObject *call_release(CallObject *self, PyObject *) {
    call_release_handle(self);
    Py_RETURN_NONE;
}

// on_abandon(loop, task): when every caller has given up, _cancel_task(task)
// runs on loop's thread (this one).
static PyObject *call_on_abandon(CallObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "on_abandon(loop, task)");
        return nullptr;
    }
    if (!self->call || !self->leader || self->abandon) return call_state_error("on_abandon");
    Post *p = post_new(args[0], args[1]);
    if (!p) return PyErr_NoMemory();
    self->abandon = p;
    const int rc = sf_call_on_abandon(self->call, on_abandon, p);
    if (rc != SF_OK) {
        self->abandon = nullptr;
        post_free(p);
        return status_error(rc, "sf_call_on_abandon");
    }
    Py_RETURN_NONE;
}

static PyObject *call_abandoned(CallObject *self, PyObject *) {
    return PyBool_FromLong(self->call && sf_call_abandoned(self->call));
}

// Whether the handle is held: for a leader, that its flight is unfinished.
static PyObject *call_get_pending(CallObject *self, void *) { return PyBool_FromLong(self->call != nullptr); }

static void call_dealloc(CallObject *self) {
    PyTypeObject *type = Py_TYPE(self);
    call_release_handle(self);
    Py_XDECREF(self->group);
    type->tp_free(reinterpret_cast<PyObject *>(self));
    Py_DECREF(type);  // a heap type
}

static PyMethodDef call_methods[] = {
    {"finish", reinterpret_cast<PyCFunction>(call_finish), METH_O,
     "finish(value) -> shared: completes the leader's flight with value; releases the handle."},
    {"fail", reinterpret_cast<PyCFunction>(call_fail), METH_O,
     "fail(exc) -> shared: completes the leader's flight with exc raised in every caller."},
    {"cancel", reinterpret_cast<PyCFunction>(call_cancel), METH_NOARGS,
     "cancel() -> int: this caller gives up (sf_call_cancel)."},
    {"release", reinterpret_cast<PyCFunction>(call_release), METH_NOARGS,
     "release(): drops the handle (idempotent)."},
    {"on_abandon", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(call_on_abandon)),
     METH_FASTCALL, "on_abandon(loop, task): cancels task on loop's thread once every caller gave up."},
    {"abandoned", reinterpret_cast<PyCFunction>(call_abandoned), METH_NOARGS,
     "abandoned() -> bool: every caller gave up while the flight ran."},
    {nullptr, nullptr, 0, nullptr},
};

static PyMemberDef call_members[] = {
    {const_cast<char *>("leader"), T_BOOL, offsetof(CallObject, leader), READONLY,
     const_cast<char *>("whether this caller leads")},
    {nullptr, 0, 0, 0, nullptr},
};

static PyGetSetDef call_getset[] = {
    {"pending", reinterpret_cast<getter>(call_get_pending), nullptr,
     "whether the handle is still held (a leader: its flight is unfinished)", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

static PyType_Slot call_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void *>(call_dealloc)},
    {Py_tp_methods, call_methods},
    {Py_tp_getset, call_getset},
    {Py_tp_members, call_members},
    {Py_tp_doc, const_cast<char *>("One caller's handle on one flight (internal to do_async).")},
    {0, nullptr},
};

static PyType_Spec call_spec = {
    "libsingleflight._singleflight_core._Call", sizeof(CallObject), 0, Py_TPFLAGS_DEFAULT, call_slots,
};

static PyTypeObject *CallType = nullptr;

// _begin(group, key, loop) -> (_Call, future): starts or joins the key's
// flight, for a do_async caller running in loop (on this thread).  The
// future, made by loop, is the caller's outcome: a follower's is resolved
// by the library's completion callback (on_done, above), a leader's by its
// task.
static PyObject *py_begin(PyObject *, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "_begin(group, key, loop)");
        return nullptr;
    }
    sf_group *g = group_of(args[0]);
    Key k;
    if (!g || !key_of(args[1], &k)) return nullptr;
    // A coroutine of a loop that runs inside a Group.do fn on this thread,
    // asking for that fn's key, would wait for the thread it blocks.
    if (!t_led.empty() && led_here(g, k)) return deadlock_error();
    PyObject *fut = PyObject_CallMethodObjArgs(args[2], M.create_future, nullptr);
    if (!fut) return nullptr;
    CallObject *self = PyObject_New(CallObject, CallType);
    if (!self) {
        Py_DECREF(fut);
        return nullptr;
    }
    self->call = nullptr;
    self->abandon = nullptr;
    self->key = nullptr;
    self->leader = 0;
    Py_INCREF(args[0]);
    self->group = args[0];
    PyObject *out = PyTuple_Pack(2, reinterpret_cast<PyObject *>(self), fut);
    Py_DECREF(self);  // out holds it, or it goes
    Py_DECREF(fut);
    if (!out) return nullptr;
    const int rc = sf_group_begin(g, k.data, size_t(k.size), &self->call);
    if (rc != SF_LEADER && rc != SF_FOLLOWER) {
        Py_DECREF(out);
        return status_error(rc, "sf_group_begin");
    }
    self->leader = rc == SF_LEADER ? 1 : 0;
    if (self->leader) {
        try {
            g_loop_led->emplace(std::string_view(k.data, size_t(k.size)),
                                LoopLed{g, PyThread_get_thread_ident(), self});
        } catch (const std::bad_alloc &) {
            Py_DECREF(out);  // releases the handle: followers get SF_EGOEXIT
            return PyErr_NoMemory();
        }
        Py_INCREF(args[1]);
        self->key = args[1];
        return out;
    }
    Post *p = post_new(args[2], fut);
    const int done_rc = p ? sf_call_on_done(self->call, on_done, p) : SF_ENOMEM;
    if (done_rc != SF_OK) {
        if (p) post_free(p);
        Py_DECREF(out);  // releases the handle
        return status_error(done_rc, "sf_call_on_done");
    }
    return out;
}

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
    sf_group *g = nullptr;
    const int rc = sf_group_new(&g, nullptr);
    if (rc != SF_OK) return status_error(rc, "sf_group_new");
    PyObject *capsule = PyCapsule_New(g, kGroupCapsule, free_group_capsule);
    if (!capsule) sf_group_free(g);
    return capsule;
}

template <int (*Forget)(sf_group *, const void *, size_t)>
static PyObject *py_forget(PyObject *, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_forget(group, key)");
        return nullptr;
    }
    sf_group *g = group_of(args[0]);
    Key k;
    if (!g || !key_of(args[1], &k)) return nullptr;
    const int rc = Forget(g, k.data, size_t(k.size));
    if (rc < 0) return status_error(rc, "sf_group_forget");
    return PyBool_FromLong(rc == 1);
}

// _stats(group) -> the ten counters of sf_group_stats version 2, in order.
static PyObject *py_stats(PyObject *, PyObject *group) {
    sf_group *g = group_of(group);
    if (!g) return nullptr;
    sf_group_stats s;
    s.version = SF_GROUP_STATS_VERSION;
    const int rc = sf_group_stats_get(g, &s);
    if (rc != SF_OK) return status_error(rc, "sf_group_stats_get");
    return Py_BuildValue("(KKKKKKKKKK)", (unsigned long long)s.calls, (unsigned long long)s.leaders,
                         (unsigned long long)s.followers, (unsigned long long)s.panics,
                         (unsigned long long)s.goexits, (unsigned long long)s.timeouts,
                         (unsigned long long)s.forgets, (unsigned long long)s.in_flight,
                         (unsigned long long)s.abandons, (unsigned long long)s.cancels);
}

static void set_ref(PyObject **slot, PyObject *v) {
    Py_INCREF(v);
    Py_XSETREF(*slot, v);
}

// _init(PanicError, LeaderExitedError, _describe, _set_outcome, _cancel_task)
static PyObject *py_init(PyObject *, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "_init: five arguments");
        return nullptr;
    }
    set_ref(&M.panic_error, args[0]);
    set_ref(&M.leader_exited, args[1]);
    set_ref(&M.describe, args[2]);
    set_ref(&M.set_outcome, args[3]);
    set_ref(&M.cancel_task, args[4]);
    Py_RETURN_NONE;
}

// _set_main_thread(ident): the thread signal handlers run on.
static PyObject *py_set_main_thread(PyObject *, PyObject *ident) {
    const unsigned long t = PyLong_AsUnsignedLong(ident);
    if (t == static_cast<unsigned long>(-1) && PyErr_Occurred()) return nullptr;
    M.main_thread = t;
    Py_RETURN_NONE;
}

#define SFPY_FASTCALL(f) reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(f))

static PyMethodDef module_methods[] = {
    {"_do", SFPY_FASTCALL(py_do), METH_FASTCALL, "_do(group, key, fn, timeout): Group.do."},
    {"_begin", SFPY_FASTCALL(py_begin), METH_FASTCALL, "_begin(group, key, loop) -> (_Call, future)."},
    {"_raise_outcome", SFPY_FASTCALL(py_raise_outcome), METH_FASTCALL,
     "_raise_outcome(status, value, message, key): raises a do_async outcome."},
    {"_group_new", py_group_new, METH_NOARGS, "_group_new() -> a capsule owning a new sf_group."},
    {"_forget", SFPY_FASTCALL(py_forget<sf_group_forget>), METH_FASTCALL, "_forget(group, key) -> bool."},
    {"_forget_unshared", SFPY_FASTCALL(py_forget<sf_group_forget_unshared>), METH_FASTCALL,
     "_forget_unshared(group, key) -> bool."},
    {"_stats", py_stats, METH_O, "_stats(group) -> tuple of the ten counters."},
    {"_init", SFPY_FASTCALL(py_init), METH_FASTCALL, "_init(...): the Python half's helpers."},
    {"_set_main_thread", py_set_main_thread, METH_O, "_set_main_thread(ident)."},
    {nullptr, nullptr, 0, nullptr},
};

#undef SFPY_FASTCALL

// Adds the functions and _Call to the module; -1 with an exception set on
// failure.
static int init_module(PyObject *m) {
    g_loop_led = new (std::nothrow) LoopLedMap;
    if (!g_loop_led) {
        PyErr_NoMemory();
        return -1;
    }
    M.call_soon_threadsafe = PyUnicode_InternFromString("call_soon_threadsafe");
    M.done = PyUnicode_InternFromString("done");
    M.set_result = PyUnicode_InternFromString("set_result");
    M.create_future = PyUnicode_InternFromString("create_future");
    if (!M.call_soon_threadsafe || !M.done || !M.set_result || !M.create_future ||
        PyModule_AddFunctions(m, module_methods) < 0)
        return -1;
    CallType = reinterpret_cast<PyTypeObject *>(PyType_FromSpec(&call_spec));
    if (!CallType) return -1;
    Py_INCREF(CallType);
    if (PyModule_AddObject(m, "_Call", reinterpret_cast<PyObject *>(CallType)) < 0) {
        Py_DECREF(CallType);
        return -1;
    }
    M.main_thread = PyThread_get_thread_ident();
    return 0;
}

}  // namespace sfpy

#endif  // SFPY_HPP
