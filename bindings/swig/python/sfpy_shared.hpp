// sfpy_shared.hpp - SharedGroup's calls into the C library, beside Group's
// in sfpy.hpp (whose helpers they use: keys, timeouts, the interruptible
// follower wait, the abandon payload).  Included once, by
// singleflight_core.i, after sfpy.hpp; registered by init_shared().
//
// A SharedGroup (sf_group_open_shared) is a Group's capsule, GroupState
// included, so forget, forget_unshared and stats work unchanged; what
// differs is the value: bytes, copied into the segment with
// sf_call_set_bytes and out of it with sf_result_bytes, because the
// callers in other processes cannot follow a pointer to a Python object.
// So a follower gets equal bytes, not the same object, and an exception
// raised by fn reaches the followers as its text (PanicError), while the
// leader's own caller raises the exception itself.
//
// do runs entirely here.  do_async (libsingleflight/_shared_aio.py) is
// built on _SharedCall, one caller's handle: a follower's task sleeps on
// its loop, woken through a call's eventfd (sf_call_fd, loop.add_reader),
// which the library's helper thread of this process makes readable when
// the flight completes in any process, so no thread waits per caller and
// nothing polls.
//
// The GIL: held everywhere here but in the follower's blocking wait (sfpy's
// follow).  The library calls made with it never wait for a Python thread:
// the segment's locks are held only inside the library, never while
// Python runs, and a lock whose holder died is recovered by the next
// process (robust).
#ifndef SFPY_SHARED_HPP
#define SFPY_SHARED_HPP

#include "sfpy.hpp"

namespace sfpy {

// ---------------------------------------------------------------------------
// open and close
// ---------------------------------------------------------------------------

// The library's status for sf_group_open_shared as the Python exception a
// caller expects: a bad name or option is a ValueError, a segment of
// another user or with wider permissions a PermissionError.
static PyObject *open_error(int rc, PyObject *what) {
    PyObject *type = rc == SF_EINVAL   ? PyExc_ValueError
                     : rc == SF_EPERM  ? PyExc_PermissionError
                     : rc == SF_ENOMEM ? PyExc_MemoryError
                                       : PyExc_RuntimeError;
    PyErr_Format(type, "singleflight: cannot open the shared group %R: %s (%s)", what,
                 sf_strerror(rc), sf_err_name(rc));
    return nullptr;
}

// None, or bytes without a NUL: a C string borrowed from o.
static bool c_string_of(PyObject *o, const char **out) {
    *out = nullptr;
    if (o == Py_None) return true;
    if (!PyBytes_Check(o)) {
        PyErr_SetString(PyExc_TypeError, "_shared_open: name and path are bytes or None");
        return false;
    }
    if (std::strlen(PyBytes_AS_STRING(o)) != size_t(PyBytes_GET_SIZE(o))) {
        PyErr_SetString(PyExc_ValueError, "singleflight: a shared group name or path with a NUL");
        return false;
    }
    *out = PyBytes_AS_STRING(o);
    return true;
}

// An unsigned option that fits in max.
static bool option_of(PyObject *o, unsigned long long max, unsigned long long *out) {
    *out = PyLong_AsUnsignedLongLong(o);
    if (*out == static_cast<unsigned long long>(-1) && PyErr_Occurred()) return false;
    if (*out > max) {
        PyErr_Format(PyExc_OverflowError, "singleflight: shared group option %R is too large", o);
        return false;
    }
    return true;
}

// _shared_open(name, path, arena_bytes, table_slots, max_value_bytes,
//              max_processes, mode, run_unshared) -> a group capsule
// name and path: bytes or None (exactly one of them); the numbers 0 for
// the library's defaults (libsingleflight/__init__.py checks them first).
static PyObject *py_shared_open(PyObject *, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError, "_shared_open: eight arguments");
        return nullptr;
    }
    const char *name, *path;
    unsigned long long arena, slots, max_value, procs, mode;
    if (!c_string_of(args[0], &name) || !c_string_of(args[1], &path) ||
        !option_of(args[2], ULLONG_MAX, &arena) || !option_of(args[3], UINT_MAX, &slots) ||
        !option_of(args[4], ULLONG_MAX, &max_value) || !option_of(args[5], UINT_MAX, &procs) ||
        !option_of(args[6], UINT_MAX, &mode))
        return nullptr;
    const int run_unshared = PyObject_IsTrue(args[7]);
    if (run_unshared < 0) return nullptr;
    sf_shared_options o;
    sf_shared_options_init(&o, SF_SHARED_OPTIONS_VERSION);
    o.flags = run_unshared ? SF_SHARED_RUN_UNSHARED : 0;
    o.path = path;
    o.arena_bytes = arena;
    o.table_slots = unsigned(slots);
    o.max_value_bytes = max_value;
    o.max_processes = unsigned(procs);
    o.mode = unsigned(mode);

    auto *st = new (std::nothrow) GroupState;
    if (!st) return PyErr_NoMemory();
    st->flights = PyDict_New();  // forget's local table: always empty here
    if (!st->flights) {
        delete st;
        return nullptr;
    }
    int rc;
    // Creating a segment maps and may fault in pages, and attaching waits
    // for the segment's robust lock: neither needs the GIL.
    Py_BEGIN_ALLOW_THREADS rc = sf_group_open_shared(name, &o, &st->g);
    Py_END_ALLOW_THREADS if (rc != SF_OK) {
        Py_DECREF(st->flights);
        delete st;
        return open_error(rc, path ? args[1] : args[0]);
    }
    PyObject *capsule = PyCapsule_New(st, kGroupCapsule, free_group_capsule);
    if (!capsule) {
        sf_group_free(st->g);
        Py_DECREF(st->flights);
        delete st;
    }
    return capsule;
}

// Detaches a closed group once its last call in progress is over.
static void detach_if_idle(GroupState *st) {
    if (st->closed && st->busy == 0 && st->g) {
        sf_group_free(st->g);
        st->g = nullptr;
    }
}

// _shared_close(group): later calls raise ValueError; the process detaches
// now, or when the calls in progress on it have returned.  Idempotent.
static PyObject *py_shared_close(PyObject *, PyObject *capsule) {
    auto *st = static_cast<GroupState *>(PyCapsule_GetPointer(capsule, kGroupCapsule));
    if (!st) return nullptr;
    st->closed = true;
    detach_if_idle(st);
    Py_RETURN_NONE;
}

// _shared_stats(group) -> (in_flight_high, arena_used, arena_high,
// processes): what version 3 of the stats adds for a shared group.
static PyObject *py_shared_stats(PyObject *, PyObject *group) {
    GroupState *st = state_of(group);
    if (!st) return nullptr;
    sf_group_stats s;
    s.version = SF_GROUP_STATS_VERSION;
    const int rc = sf_group_stats_get(st->g, &s);
    if (rc != SF_OK) return status_error(rc, "sf_group_stats_get");
    return Py_BuildValue("(KKKK)", (unsigned long long)s.in_flight_high,
                         (unsigned long long)s.arena_used, (unsigned long long)s.arena_high,
                         (unsigned long long)s.processes);
}

// _shared_epoch(group) -> the forgets this process made that took a flight
// out: do_async's followers of one key on one loop share a reader only
// while it is unchanged (a forget starts flights they must not wait on
// together).
static PyObject *py_shared_epoch(PyObject *, PyObject *group) {
    GroupState *st = state_of(group);
    return st ? PyLong_FromUnsignedLongLong(st->epoch) : nullptr;
}

// _front_pin(group) -> the address of its sf_group, for a RedisGroup that
// puts it in front (libsingleflight/_redis.py hands it to
// sf_redis_options.front, which borrows it).  Counted as a call in
// progress until _front_unpin, so that a SharedGroup closed meanwhile
// detaches only once the RedisGroup is done with it; a Group's sf_group
// lives as long as its capsule, which the RedisGroup keeps.  Raises
// ValueError for a closed SharedGroup.  With the GIL.
static PyObject *py_front_pin(PyObject *, PyObject *group) {
    GroupState *st = state_of(group);
    if (!st) return nullptr;
    st->busy++;
    return PyLong_FromVoidPtr(st->g);
}

// _front_unpin(group): the RedisGroup that pinned it is freed.
static PyObject *py_front_unpin(PyObject *, PyObject *group) {
    auto *st = static_cast<GroupState *>(PyCapsule_GetPointer(group, kGroupCapsule));
    if (!st) return nullptr;
    st->busy--;
    detach_if_idle(st);
    Py_RETURN_NONE;
}

// ---------------------------------------------------------------------------
// outcomes
// ---------------------------------------------------------------------------

static const char kExitedPrefix[] = "LeaderExitedError: ";

// What a follower's completed wait gives on a shared group: (bytes,
// shared), or raises.  A panic's message is the text the leader's process
// wrote (sfpy's describe: "Type: message"); a leader whose coroutine was
// cancelled wrote a LeaderExitedError's, and its followers raise that
// type, as a group of one process gives them (a process that died gives
// SF_EGOEXIT, the same type).
static PyObject *shared_result_of(int status, sf_result *r, int shared, PyObject *key) {
    if (status == SF_OK) {
        size_t n = 0;
        const void *p = sf_result_bytes(r, &n);
        PyObject *b = PyBytes_FromStringAndSize(static_cast<const char *>(p), Py_ssize_t(n));
        return b ? pair(b, shared != 0) : nullptr;
    }
    const char *msg = status == SF_EPANIC ? sf_result_panic_message(r) : nullptr;
    if (msg && std::strncmp(msg, kExitedPrefix, sizeof kExitedPrefix - 1) == 0) {
        PyErr_SetString(M.leader_exited, msg + sizeof kExitedPrefix - 1);
        return nullptr;
    }
    return raise_outcome(status, nullptr, msg, key);
}

// The handle is done with: the group may detach if it was closed.
static void shared_release(GroupState *st, sf_call *call) {
    sf_call_release(call);
    st->busy--;
    detach_if_idle(st);
}

// Ends a leader's flight as panicked with the exception being raised:
// its text goes to every follower; the exception stays raised here.
static void shared_panic_raised(sf_call *call) {
    PyObject *exc = take_exception();
    PyObject *msg = exc ? describe(exc) : nullptr;
    sf_call_panic(call, msg ? PyUnicode_AsUTF8(msg) : "panic");
    Py_XDECREF(msg);
    if (exc) restore_exception(exc);
}

// The leader's value into the flight, which it finishes: (bytes, shared),
// the bytes being value itself when it is exactly bytes.  What is not
// bytes-like raises TypeError, and a value above the group's
// max_value_bytes ValueError, in the leader; the flight panics with that
// text for the followers.  The handle stays held.
static PyObject *shared_finish_value(sf_call *call, PyObject *value) {
    Py_buffer view;
    if (PyObject_GetBuffer(value, &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "SharedGroup: fn must return bytes, bytearray or another bytes-like object "
                     "(the value crosses processes as bytes), not %.200s; "
                     "do_pickled() takes any picklable object",
                     Py_TYPE(value)->tp_name);
        shared_panic_raised(call);
        return nullptr;
    }
    PyObject *bytes = nullptr;
    if (PyBytes_CheckExact(value)) {
        Py_INCREF(value);
        bytes = value;
    } else {
        bytes = PyBytes_FromStringAndSize(static_cast<const char *>(view.buf), view.len);
    }
    const Py_ssize_t len = view.len;
    const int rc = bytes ? sf_call_set_bytes(call, view.buf, size_t(len)) : SF_ENOMEM;
    PyBuffer_Release(&view);
    if (rc != SF_OK) {
        Py_XDECREF(bytes);
        if (rc == SF_EINVAL) {
            PyErr_Format(PyExc_ValueError,
                         "SharedGroup: fn's value of %zd bytes is larger than the group's "
                         "max_value_bytes",
                         len);
        } else if (!PyErr_Occurred()) {
            status_error(rc, "sf_call_set_bytes");
        }
        shared_panic_raised(call);
        return nullptr;
    }
    sf_call_finish(call, 0);
    return pair(bytes, shared_after_finish(call));
}

// ---------------------------------------------------------------------------
// do
// ---------------------------------------------------------------------------

static PyObject *shared_lead(GroupState *st, Key k, sf_call *call, PyObject *fn) {
    if (!led_push(st->g, k)) {
        shared_release(st, call);  // followers get SF_EGOEXIT: nobody hangs
        return PyErr_NoMemory();
    }
    PyObject *value = call_no_args(fn);
    led_pop(st->g, k);
    PyObject *out;
    if (value) {
        out = shared_finish_value(call, value);
        Py_DECREF(value);
    } else {
        shared_panic_raised(call);  // fn raised: it propagates from here
        out = nullptr;
    }
    shared_release(st, call);
    return out;
}

// sf_group_begin: SF_LEADER or SF_FOLLOWER with *call counted in busy,
// or -1 with an exception set.
static int shared_begin(GroupState *st, Key k, sf_call **call) {
    int rc;
    // Beginning may wait for a stripe lock of the segment that a process
    // holds while it publishes or completes: briefly, and never while it
    // runs Python, but without the GIL so this thread stalls no other.
    Py_BEGIN_ALLOW_THREADS rc = sf_group_begin(st->g, k.data, size_t(k.size), call);
    Py_END_ALLOW_THREADS if (rc == SF_LEADER || rc == SF_FOLLOWER) {
        st->busy++;
        return rc;
    }
    if (rc == SF_ENOMEM) {
        PyErr_Format(PyExc_MemoryError,
                     "singleflight: the shared group's table or arena is full (%s)",
                     sf_err_name(rc));
    } else {
        status_error(rc, "sf_group_begin");
    }
    return -1;
}

// _shared_do(group, key, fn, timeout): SharedGroup.do, the whole call.
static PyObject *py_shared_do(PyObject *, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "_shared_do(group, key, fn, timeout)");
        return nullptr;
    }
    GroupState *st = state_of(args[0]);
    Key k;
    long long timeout_ns;
    if (!st || !key_of(args[1], &k) || !timeout_of(args[3], &timeout_ns)) return nullptr;
    if (!t_led.empty() && led_here(st->g, k)) return deadlock_error();
    if (loop_leads_here(st->g, k))
        return status_error(SF_EDEADLK,
                            "singleflight: a blocking do for a key that a do_async of "
                            "this thread's event loop leads");
    sf_call *call = nullptr;
    const int rc = shared_begin(st, k, &call);
    if (rc < 0) return nullptr;
    if (rc == SF_LEADER) return shared_lead(st, k, call, args[2]);
    PyObject *out = follow(call, timeout_ns, args[1], shared_result_of);  // releases call
    st->busy--;
    detach_if_idle(st);
    return out;
}

// ---------------------------------------------------------------------------
// _SharedCall: one do_async caller's handle
// ---------------------------------------------------------------------------

struct SharedCallObject {
    PyObject_HEAD sf_call *call;  // nullptr once released
    PyObject *group;              // the capsule: the group outlives the handle
    PyObject *key;                // the key object (a leader's g_loop_led entry points into it)
    Post *abandon;                // a leader's on_abandon payload, while it may be ours to free
    char leader;
    char finished;  // a leader's flight is complete
    char loop_led;  // has a g_loop_led entry (sfpy.hpp): its work runs on this loop's thread
};

static PyTypeObject *SharedCallType = nullptr;

static GroupState *call_state(SharedCallObject *c) {
    return static_cast<GroupState *>(PyCapsule_GetPointer(c->group, kGroupCapsule));
}

// After the flight completed, with the handle still held, abandonment can
// no longer happen (sf_call_abandoned is final): the payload is the
// callback's if it ran, else ours.
static void call_settle_abandon(SharedCallObject *c) {
    if (c->abandon && !sf_call_abandoned(c->call)) post_free(c->abandon);
    c->abandon = nullptr;
}

static void call_release(SharedCallObject *c) {
    if (!c->call) return;
    loop_led_remove(&c->loop_led, c->key, c);
    if (c->leader && !c->finished) {
        // Released before its work finished (the work's coroutine never
        // ran to its end): complete it first, so that exactly one of us
        // and the abandon callback frees the payload.
        PyErr_SetString(M.leader_exited,
                        "singleflight: the leader's handle was released before its work finished");
        shared_panic_raised(c->call);
        PyErr_Clear();
        c->finished = 1;
    }
    call_settle_abandon(c);
    GroupState *st = call_state(c);
    sf_call *call = c->call;
    c->call = nullptr;
    if (st) {
        shared_release(st, call);
    } else {
        PyErr_Clear();
        sf_call_release(call);
    }
}

static PyObject *call_closed_error() {
    return status_error(SF_ESTATE, "singleflight: the call was released");
}

// _shared_begin(group, key) -> _SharedCall, its .leader telling the role.
static PyObject *py_shared_begin(PyObject *, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_shared_begin(group, key)");
        return nullptr;
    }
    GroupState *st = state_of(args[0]);
    Key k;
    if (!st || !key_of(args[1], &k)) return nullptr;
    auto *c = PyObject_New(SharedCallObject, SharedCallType);
    if (!c) return nullptr;
    c->call = nullptr;
    c->abandon = nullptr;
    c->leader = 0;
    c->finished = 0;
    c->loop_led = 0;
    Py_INCREF(args[0]);
    c->group = args[0];
    Py_INCREF(args[1]);
    c->key = args[1];
    const int rc = shared_begin(st, k, &c->call);
    if (rc < 0) {
        Py_DECREF(c);
        return nullptr;
    }
    c->leader = rc == SF_LEADER;
    if (c->leader) {
        // Its work runs on this thread's loop: a blocking do here for the
        // key would stop the loop that must finish it (py_shared_do).
        try {
            g_loop_led->emplace(std::string_view(k.data, size_t(k.size)),
                                LoopLed{st->g, PyThread_get_thread_ident(), c});
            c->loop_led = 1;
        } catch (const std::bad_alloc &) {
            // Only that deadlock check is lost.
        }
    }
    return reinterpret_cast<PyObject *>(c);
}

// fd() -> the eventfd that becomes readable when the flight completes (in
// any process) or the call gave up.  Owned by the call: valid until it is
// released, so a loop's reader must be removed first.
static PyObject *call_fd(SharedCallObject *c, PyObject *) {
    if (!c->call) return call_closed_error();
    const int fd = sf_call_fd(c->call);
    if (fd < 0) return status_error(fd, "sf_call_fd");
    return PyLong_FromLong(fd);
}

// done() -> whether the flight completed (or the call gave up): a poll,
// which takes no result and counts as no wait.
static PyObject *call_done(SharedCallObject *c, PyObject *) {
    if (!c->call) Py_RETURN_TRUE;
    return PyBool_FromLong(sf_call_wait(c->call, 0, nullptr, nullptr) != SF_ETIMEDOUT);
}

// collect(key) -> (bytes, True) once the flight completed: a follower's
// outcome, raised if it is not a value.  Releases the handle.
static PyObject *call_collect(SharedCallObject *c, PyObject *key) {
    if (!c->call) return call_closed_error();
    sf_result *r = nullptr;
    int shared = 0;
    const int status = sf_call_wait(c->call, 0, &r, &shared);
    PyObject *out = status == SF_ETIMEDOUT
                        ? status_error(SF_ESTATE, "singleflight: collect before completion")
                        : shared_result_of(status, r, shared, key);
    sf_result_release(r);
    call_release(c);
    return out;
}

// give_up(): this caller gives up (sf_call_cancel); the flight goes on for
// the others, and is abandoned when nobody is left, whose abandon callback
// cancels the leader's task.  A follower's handle is released; a leader's
// stays, for its work to finish.  Returns whether this abandoned it.
static PyObject *call_give_up(SharedCallObject *c, PyObject *) {
    if (!c->call) Py_RETURN_FALSE;
    const int rc = sf_call_cancel(c->call);
    if (!c->leader) call_release(c);
    return PyBool_FromLong(rc == 1);
}

// on_abandon(loop, task_ref): a leader's; abandonment cancels the task
// (sfpy's on_abandon: on the loop, from whichever thread abandons).
static PyObject *call_on_abandon(SharedCallObject *c, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "on_abandon(loop, task_ref)");
        return nullptr;
    }
    if (!c->call || !c->leader || c->abandon) return status_error(SF_ESTATE, "on_abandon");
    Post *p = post_new(args[0], args[1]);
    if (!p) return PyErr_NoMemory();
    const int rc = sf_call_on_abandon(c->call, on_abandon, p);
    if (rc != SF_OK) {
        post_free(p);
        return status_error(rc, "sf_call_on_abandon");
    }
    c->abandon = p;
    Py_RETURN_NONE;
}

// finish(value) -> (bytes, shared): the leader's work returned value.
// Raises (TypeError, ValueError) for a value that cannot be the flight's,
// whose followers then raise PanicError.  Releases the handle.
static PyObject *call_finish(SharedCallObject *c, PyObject *value) {
    if (!c->call || !c->leader || c->finished) return status_error(SF_ESTATE, "finish");
    PyObject *out = shared_finish_value(c->call, value);
    c->finished = 1;
    PyObject *exc = out ? nullptr : take_exception();
    call_release(c);
    if (exc) restore_exception(exc);
    return out;
}

// fail(exc): the leader's work raised exc; its text goes to the
// followers.  cancelled(): the work was cancelled, because every caller
// gave up (nobody is told), or by someone else (its loop shutting down):
// the followers raise LeaderExitedError.  Both release the handle.
static PyObject *call_fail(SharedCallObject *c, PyObject *exc) {
    if (!c->call || !c->leader || c->finished) return status_error(SF_ESTATE, "fail");
    Py_INCREF(exc);
    restore_exception(exc);
    shared_panic_raised(c->call);
    PyErr_Clear();
    c->finished = 1;
    call_release(c);
    Py_RETURN_NONE;
}

static PyObject *call_cancelled(SharedCallObject *c, PyObject *) {
    if (!c->call || !c->leader || c->finished) return status_error(SF_ESTATE, "cancelled");
    if (sf_call_abandoned(c->call)) {
        sf_call_finish(c->call, 0);
    } else {
        PyErr_SetString(M.leader_exited,
                        "singleflight: the leader's coroutine was cancelled before it finished");
        shared_panic_raised(c->call);
        PyErr_Clear();
    }
    c->finished = 1;
    call_release(c);
    Py_RETURN_NONE;
}

static PyObject *call_release_method(SharedCallObject *c, PyObject *) {
    call_release(c);
    Py_RETURN_NONE;
}

static PyObject *call_get_leader(SharedCallObject *c, void *) { return PyBool_FromLong(c->leader); }

static void call_dealloc(SharedCallObject *c) {
    PyTypeObject *type = Py_TYPE(c);
    // Releasing an unfinished leader raises and clears an exception of its
    // own (shared_panic_raised); one being raised here must survive it.
    PyObject *raised = PyErr_Occurred() ? take_exception() : nullptr;
    call_release(c);
    if (raised) restore_exception(raised);
    Py_CLEAR(c->group);
    Py_CLEAR(c->key);
    type->tp_free(reinterpret_cast<PyObject *>(c));
    Py_DECREF(type);  // a heap type
}

#define SFPY_METHOD(f) reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(f))

static PyMethodDef shared_call_methods[] = {
    {"fd", SFPY_METHOD(call_fd), METH_NOARGS, "fd() -> the call's eventfd."},
    {"done", SFPY_METHOD(call_done), METH_NOARGS, "done() -> whether the flight completed."},
    {"collect", SFPY_METHOD(call_collect), METH_O,
     "collect(key) -> (bytes, True): a completed follower's outcome; releases the call."},
    {"give_up", SFPY_METHOD(call_give_up), METH_NOARGS,
     "give_up() -> bool: sf_call_cancel; whether the flight was abandoned."},
    {"on_abandon", SFPY_METHOD(call_on_abandon), METH_FASTCALL,
     "on_abandon(loop, task_ref): abandonment cancels the task."},
    {"finish", SFPY_METHOD(call_finish), METH_O,
     "finish(value) -> (bytes, shared): the leader's work returned value."},
    {"fail", SFPY_METHOD(call_fail), METH_O, "fail(exc): the leader's work raised exc."},
    {"cancelled", SFPY_METHOD(call_cancelled), METH_NOARGS,
     "cancelled(): the leader's work was cancelled."},
    {"release", SFPY_METHOD(call_release_method), METH_NOARGS, "release(): drops the handle."},
    {nullptr, nullptr, 0, nullptr},
};

static PyGetSetDef shared_call_getset[] = {
    {"leader", reinterpret_cast<getter>(call_get_leader), nullptr,
     "whether this caller leads the flight", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

static PyType_Slot shared_call_slots[] = {
    {Py_tp_dealloc, reinterpret_cast<void *>(call_dealloc)},
    {Py_tp_methods, shared_call_methods},
    {Py_tp_getset, shared_call_getset},
    {Py_tp_doc, const_cast<char *>("One do_async caller's handle on a SharedGroup's flight "
                                   "(internal to SharedGroup.do_async).")},
    {0, nullptr},
};

// No GC: it refers to nothing that could refer back to it (a capsule, and
// a payload of a loop and a weak reference).
static PyType_Spec shared_call_spec = {
    "libsingleflight._singleflight_core._SharedCall",
    sizeof(SharedCallObject),
    0,
    Py_TPFLAGS_DEFAULT,
    shared_call_slots,
};

static PyMethodDef shared_methods[] = {
    {"_shared_open", SFPY_METHOD(py_shared_open), METH_FASTCALL,
     "_shared_open(name, path, arena_bytes, table_slots, max_value_bytes, max_processes, mode, "
     "run_unshared) -> a group capsule."},
    {"_shared_close", SFPY_METHOD(py_shared_close), METH_O, "_shared_close(group)."},
    {"_shared_stats", SFPY_METHOD(py_shared_stats), METH_O,
     "_shared_stats(group) -> (in_flight_high, arena_used, arena_high, processes)."},
    {"_shared_epoch", SFPY_METHOD(py_shared_epoch), METH_O,
     "_shared_epoch(group) -> this process's forgets that took a flight out."},
    {"_shared_do", SFPY_METHOD(py_shared_do), METH_FASTCALL,
     "_shared_do(group, key, fn, timeout): SharedGroup.do."},
    {"_shared_begin", SFPY_METHOD(py_shared_begin), METH_FASTCALL,
     "_shared_begin(group, key) -> _SharedCall."},
    {"_front_pin", SFPY_METHOD(py_front_pin), METH_O,
     "_front_pin(group) -> address of its sf_group, held until _front_unpin."},
    {"_front_unpin", SFPY_METHOD(py_front_unpin), METH_O, "_front_unpin(group)."},
    {nullptr, nullptr, 0, nullptr},
};

#undef SFPY_METHOD

// Adds SharedGroup's functions and _SharedCall to the module; -1 with an
// exception set on failure.
static int init_shared(PyObject *m) {
    if (PyModule_AddFunctions(m, shared_methods) < 0) return -1;
    SharedCallType = reinterpret_cast<PyTypeObject *>(PyType_FromSpec(&shared_call_spec));
    if (!SharedCallType) return -1;
    Py_INCREF(SharedCallType);
    if (PyModule_AddObject(m, "_SharedCall", reinterpret_cast<PyObject *>(SharedCallType)) < 0) {
        Py_DECREF(SharedCallType);
        return -1;
    }
    return 0;
}

}  // namespace sfpy

#endif  // SFPY_SHARED_HPP
