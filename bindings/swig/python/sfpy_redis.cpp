// sfpy_redis.cpp - libsingleflight._singleflight_redis, RedisGroup's calls
// into libsingleflight-redis (redis/include/singleflight_redis.h).
//
// A module of its own, not part of the SWIG module: the core binding must
// build and import without hiredis, and this one is built only with the
// Redis tier (SF_BUILD_REDIS).  Its Python half is
// libsingleflight/_redis.py, which parses the URL, checks the options and
// maps the statuses this module returns to exceptions.
//
// The GIL: released around every library call that may talk to Redis or
// wait (sf_redis_do, sf_redis_forget, sf_redis_new, sf_redis_free); fn runs
// on the caller's own thread (the library runs it there), which takes the
// GIL back for it.  No library lock is held while fn runs, so a Python
// thread waiting for the GIL never holds one fn needs.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <climits>
#include <cstring>
#include <new>
#include <string>

#include <unistd.h>

#include <singleflight.h>
#include <singleflight_redis.h>

namespace {

const char kCapsule[] = "libsingleflight.redis";

// One RedisGroup's handle.  Touched with the GIL held.
struct Handle {
    sf_redis *r = nullptr;
    Py_ssize_t busy = 0;  // sf_redis_do / forget calls in progress
    bool closed = false;  // close() was called: no new calls
    pid_t owner = 0;      // the process that made r: a forked child has none
                          // of its threads, so it must neither use nor free it
    // Called (with no arguments) once r is freed: releases what the handle
    // borrowed, the front group (RedisGroup's pin).  Owned; may be null.
    PyObject *on_free = nullptr;
};

// Frees the library handle once it is closed and idle: sf_redis_free must
// not run concurrently with a call on it.
void free_if_idle(Handle *h) {
    if (h->r && getpid() != h->owner) {
        // A forked child's copy: freeing it would join threads that exist
        // only in the parent.  Left as it is (the parent frees its own).
        h->r = nullptr;
    }
    if (h->closed && h->busy == 0 && h->r) {
        sf_redis *r = h->r;
        h->r = nullptr;
        // Joins the handle's threads, which never need the GIL.
        Py_BEGIN_ALLOW_THREADS sf_redis_free(r);
        Py_END_ALLOW_THREADS
    }
    if (h->closed && h->busy == 0 && h->on_free) {
        PyObject *f = h->on_free;
        h->on_free = nullptr;
        PyObject *ok = PyObject_CallObject(f, nullptr);
        if (!ok) PyErr_WriteUnraisable(f);
        Py_XDECREF(ok);
        Py_DECREF(f);
    }
}

void capsule_free(PyObject *capsule) {
    auto *h = static_cast<Handle *>(PyCapsule_GetPointer(capsule, kCapsule));
    if (!h) return;
    // The capsule goes when nothing references it, so no call is in
    // progress (each holds its argument).
    h->closed = true;
    free_if_idle(h);
    delete h;
}

Handle *handle_of(PyObject *o) {
    auto *h = static_cast<Handle *>(PyCapsule_GetPointer(o, kCapsule));
    if (h && h->r && getpid() != h->owner) {
        PyErr_SetString(PyExc_RuntimeError,
                        "singleflight: this RedisGroup was made in the parent process; a forked "
                        "child makes its own (its connections and threads stay in the parent)");
        return nullptr;
    }
    if (h && (h->closed || !h->r)) {
        PyErr_SetString(PyExc_ValueError, "singleflight: the RedisGroup is closed");
        return nullptr;
    }
    return h;
}

// ---- options ------------------------------------------------------------

// opts[name] as an unsigned int within max, when present and not None.
bool uint_opt(PyObject *opts, const char *name, unsigned long long max, unsigned long long *out,
              bool *given) {
    *given = false;
    PyObject *v = PyDict_GetItemString(opts, name);  // borrowed
    if (!v || v == Py_None) return true;
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (x == static_cast<unsigned long long>(-1) && PyErr_Occurred()) return false;
    if (x > max) {
        PyErr_Format(PyExc_ValueError, "RedisGroup: %s=%R is too large", name, v);
        return false;
    }
    *out = x;
    *given = true;
    return true;
}

// opts[name] as a C string borrowed from the dict (a str without NUL), or
// NULL when absent or None.
bool str_opt(PyObject *opts, const char *name, const char **out) {
    *out = nullptr;
    PyObject *v = PyDict_GetItemString(opts, name);
    if (!v || v == Py_None) return true;
    Py_ssize_t n = 0;
    const char *s = PyUnicode_AsUTF8AndSize(v, &n);
    if (!s) return false;
    if (std::strlen(s) != size_t(n)) {
        PyErr_Format(PyExc_ValueError, "RedisGroup: %s has a NUL character", name);
        return false;
    }
    *out = s;
    return true;
}

#define SFPY_UINT(field, max)                                         \
    do {                                                              \
        unsigned long long x_ = 0;                                    \
        bool g_ = false;                                              \
        if (!uint_opt(opts, #field, (max), &x_, &g_)) return nullptr; \
        if (g_) o.field = static_cast<decltype(o.field)>(x_);         \
    } while (0)

// _open(options: dict, on_free) -> (status, capsule or None).  The dict's keys are sf_redis_options'
// field names (strings and ints, None for the library's default) plus
// "front", the address of a pinned sf_group (or None).  The strings are
// copied by sf_redis_new.  Raises on a bad option; returns (status, None)
// when the library refuses the handle, so that the Python half raises the
// exception that status means.  on_free: None, or a callable run once the
// handle is freed (not when _open fails).
PyObject *py_open(PyObject *, PyObject *args) {
    PyObject *opts, *on_free;
    if (!PyArg_ParseTuple(args, "O!O:_open", &PyDict_Type, &opts, &on_free)) return nullptr;
    sf_redis_options o;
    sf_redis_options_init(&o, SF_REDIS_OPTIONS_VERSION);
    if (!str_opt(opts, "host", &o.host) || !str_opt(opts, "unix_path", &o.unix_path) ||
        !str_opt(opts, "username", &o.username) || !str_opt(opts, "password", &o.password) ||
        !str_opt(opts, "key_prefix", &o.key_prefix))
        return nullptr;
    if (!o.host) o.host = "127.0.0.1";
    SFPY_UINT(port, 65535);
    SFPY_UINT(db, INT_MAX);
    SFPY_UINT(lease_ms, UINT_MAX);
    SFPY_UINT(renew_ms, UINT_MAX);
    SFPY_UINT(wait_ms, UINT_MAX);
    SFPY_UINT(soft_ttl_ms, UINT_MAX);
    SFPY_UINT(hard_ttl_ms, UINT_MAX);
    SFPY_UINT(error_ttl_ms, UINT_MAX);
    SFPY_UINT(cache, 1);
    SFPY_UINT(max_value_bytes, SIZE_MAX);
    SFPY_UINT(connect_timeout_ms, UINT_MAX);
    SFPY_UINT(command_timeout_ms, UINT_MAX);
    SFPY_UINT(on_down, 1);
    PyObject *front = PyDict_GetItemString(opts, "front");
    if (front && front != Py_None) {
        o.front = static_cast<sf_group *>(PyLong_AsVoidPtr(front));
        if (!o.front && PyErr_Occurred()) return nullptr;
    }
    auto *h = new (std::nothrow) Handle;
    if (!h) return PyErr_NoMemory();
    h->owner = getpid();
    int rc;
    // It tries one connection, bounded by connect_timeout_ms.
    Py_BEGIN_ALLOW_THREADS rc = sf_redis_new(&h->r, &o);
    Py_END_ALLOW_THREADS if (rc != SF_OK) {
        delete h;
        return Py_BuildValue("(iO)", rc, Py_None);
    }
    PyObject *capsule = PyCapsule_New(h, kCapsule, capsule_free);
    if (!capsule) {
        sf_redis_free(h->r);
        delete h;
        return nullptr;
    }
    if (on_free != Py_None) {
        Py_INCREF(on_free);
        h->on_free = on_free;
    }
    return Py_BuildValue("(iN)", SF_OK, capsule);
}
#undef SFPY_UINT

// _close(capsule): no new calls; the library handle goes now, or when the
// calls in progress have returned.  Idempotent.
PyObject *py_close(PyObject *, PyObject *capsule) {
    auto *h = static_cast<Handle *>(PyCapsule_GetPointer(capsule, kCapsule));
    if (!h) return nullptr;
    h->closed = true;
    free_if_idle(h);
    Py_RETURN_NONE;
}

// ---- do -----------------------------------------------------------------

bool key_of(PyObject *o, const char **data, Py_ssize_t *n) {
    if (PyBytes_Check(o)) {
        *data = PyBytes_AS_STRING(o);
        *n = PyBytes_GET_SIZE(o);
        return true;
    }
    if (PyUnicode_Check(o)) {
        *data = PyUnicode_AsUTF8AndSize(o, n);
        return *data != nullptr;
    }
    PyErr_Format(PyExc_TypeError, "singleflight key must be str or bytes, not %.200s",
                 Py_TYPE(o)->tp_name);
    return false;
}

// What fn's run left for its caller: the exception it raised (a new
// reference), which this caller raises itself, as Group's leader does.
struct Run {
    PyObject *fn;
    PyObject *exc = nullptr;
};

// "Type: message", the text the other callers get in PanicError.  Never
// fails: a broken __str__ gives a placeholder.
std::string describe(PyObject *exc) {
    std::string out = Py_TYPE(exc)->tp_name;
    if (const char *dot = std::strrchr(out.c_str(), '.')) out = dot + 1;
    PyObject *s = PyObject_Str(exc);
    const char *text = s ? PyUnicode_AsUTF8(s) : nullptr;
    if (!text) {
        PyErr_Clear();
        text = "<unprintable>";
    }
    if (*text) out += std::string(": ") + text;
    Py_XDECREF(s);
    for (char &c : out)
        if (c == '\0') c = '?';
    return out;
}

// The exception now set, taken as one object (the fn's, for its caller).
PyObject *take_exception() {
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    if (value && tb) PyException_SetTraceback(value, tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return value;
}

// The library's fn: runs the Python fn on this (the caller's) thread with
// the GIL, stores its bytes, or panics with its exception's text.
int run_fn(sf_call *call, void *payload) {
    auto *run = static_cast<Run *>(payload);
    PyGILState_STATE gil = PyGILState_Ensure();
    int rc = 0;
    PyObject *v = PyObject_CallObject(run->fn, nullptr);
    Py_buffer view;
    if (v && PyObject_GetBuffer(v, &view, PyBUF_SIMPLE) == 0) {
        rc = sf_call_set_bytes(call, view.buf, size_t(view.len));
        PyBuffer_Release(&view);
        if (rc != SF_OK)
            PyErr_Format(PyExc_MemoryError, "singleflight: cannot store the value (%s)",
                         sf_redis_strerror(rc));
    } else if (v) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError,
                     "RedisGroup: fn must return bytes (a bytes-like object), not %.200s",
                     Py_TYPE(v)->tp_name);
    }
    Py_XDECREF(v);
    if (PyErr_Occurred()) {
        run->exc = take_exception();
        std::string msg = run->exc ? describe(run->exc) : std::string("exception");
        sf_call_panic(call, msg.c_str());
        rc = 0;
    }
    PyGILState_Release(gil);
    return rc;
}

// _do(capsule, key, fn) -> (0, bytes) | (SF_EPANIC, message) | (status, None);
// raises fn's own exception in the caller whose fn raised it.
PyObject *py_do(PyObject *, PyObject *args) {
    PyObject *capsule, *key, *fn;
    if (!PyArg_ParseTuple(args, "OOO:_do", &capsule, &key, &fn)) return nullptr;
    Handle *h = handle_of(capsule);
    if (!h) return nullptr;
    const char *k;
    Py_ssize_t kn;
    if (!key_of(key, &k, &kn)) return nullptr;
    Run run{fn};
    sf_result *res = nullptr;
    int rc;
    h->busy++;
    Py_BEGIN_ALLOW_THREADS rc = sf_redis_do(h->r, k, size_t(kn), run_fn, &run, &res);
    Py_END_ALLOW_THREADS h->busy--;
    free_if_idle(h);
    if (run.exc) {
        // This caller's own fn raised: it gets the exception itself.
        if (res) sf_result_release(res);
        PyErr_SetObject(reinterpret_cast<PyObject *>(Py_TYPE(run.exc)), run.exc);
        Py_DECREF(run.exc);
        return nullptr;
    }
    PyObject *out;
    if (rc == SF_OK && res && sf_result_error(res) == 0) {
        size_t n = 0;
        const void *p = sf_result_bytes(res, &n);
        out = Py_BuildValue("(iy#)", SF_OK, static_cast<const char *>(p ? p : ""), Py_ssize_t(n));
    } else if (rc == SF_OK) {
        // fn returned a user error: never from a Python fn, but a C peer of
        // the same key may have stored one.
        out = Py_BuildValue(
            "(is)", SF_EPANIC,
            ("fn failed with error " + std::to_string(res ? sf_result_error(res) : 0)).c_str());
    } else if (rc == SF_EPANIC) {
        out = Py_BuildValue("(is)", rc, res ? sf_result_panic_message(res) : "panic");
    } else {
        out = Py_BuildValue("(iO)", rc, Py_None);
    }
    if (res) sf_result_release(res);
    return out;
}

// _forget(capsule, key) -> status.
PyObject *py_forget(PyObject *, PyObject *args) {
    PyObject *capsule, *key;
    if (!PyArg_ParseTuple(args, "OO:_forget", &capsule, &key)) return nullptr;
    Handle *h = handle_of(capsule);
    const char *k;
    Py_ssize_t kn;
    if (!h || !key_of(key, &k, &kn)) return nullptr;
    int rc;
    h->busy++;
    Py_BEGIN_ALLOW_THREADS rc = sf_redis_forget(h->r, k, size_t(kn));
    Py_END_ALLOW_THREADS h->busy--;
    free_if_idle(h);
    return PyLong_FromLong(rc);
}

// _stats(capsule) -> the fourteen counters of sf_redis_stats, in order.
PyObject *py_stats(PyObject *, PyObject *capsule) {
    Handle *h = handle_of(capsule);
    if (!h) return nullptr;
    sf_redis_stats s;
    std::memset(&s, 0, sizeof s);
    s.version = SF_REDIS_STATS_VERSION;
    int rc = sf_redis_stats_get(h->r, &s);
    if (rc != SF_OK)
        return PyErr_Format(PyExc_RuntimeError, "sf_redis_stats_get: %s", sf_redis_strerror(rc));
    return Py_BuildValue("(KKKKKKKKKKKKKK)", s.calls, s.executions, s.hits, s.stale_hits,
                         s.lease_wins, s.waits, s.wakeups, s.takeovers, s.fallbacks, s.unavailable,
                         s.fenced, s.renewals, s.timeouts, s.reconnects);
}

// _status_text(code) -> (name, description).
PyObject *py_status_text(PyObject *, PyObject *code) {
    long c = PyLong_AsLong(code);
    if (c == -1 && PyErr_Occurred()) return nullptr;
    return Py_BuildValue("(ss)", sf_redis_err_name(int(c)), sf_redis_strerror(int(c)));
}

PyMethodDef methods[] = {
    {"_open", py_open, METH_VARARGS, "_open(options, on_free) -> (status, capsule or None)."},
    {"_close", py_close, METH_O, "_close(capsule)."},
    {"_do", py_do, METH_VARARGS, "_do(capsule, key, fn) -> (status, bytes or message)."},
    {"_forget", py_forget, METH_VARARGS, "_forget(capsule, key) -> status."},
    {"_stats", py_stats, METH_O, "_stats(capsule) -> tuple of the counters."},
    {"_status_text", py_status_text, METH_O, "_status_text(code) -> (name, description)."},
    {nullptr, nullptr, 0, nullptr},
};

PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "_singleflight_redis",
    "libsingleflight-redis calls for RedisGroup.",
    -1,
    methods,
    nullptr,
    nullptr,
    nullptr,
    nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__singleflight_redis(void) {
    PyObject *m = PyModule_Create(&module);
    if (!m) return nullptr;
    // The statuses the Python half maps to exceptions.
    const struct {
        const char *name;
        int value;
    } consts[] = {
        {"SF_OK", SF_OK},
        {"SF_EINVAL", SF_EINVAL},
        {"SF_ENOMEM", SF_ENOMEM},
        {"SF_EPANIC", SF_EPANIC},
        {"SF_EGOEXIT", SF_EGOEXIT},
        {"SF_ETIMEDOUT", SF_ETIMEDOUT},
        {"SF_REDIS_EUNAVAILABLE", SF_REDIS_EUNAVAILABLE},
        {"SF_REDIS_EAUTH", SF_REDIS_EAUTH},
        {"SF_REDIS_EPROTO", SF_REDIS_EPROTO},
        {"SF_REDIS_ETOOBIG", SF_REDIS_ETOOBIG},
    };
    for (const auto &c : consts) {
        if (PyModule_AddIntConstant(m, c.name, c.value) < 0) {
            Py_DECREF(m);
            return nullptr;
        }
    }
    if (PyModule_AddStringConstant(m, "VERSION", SF_REDIS_VERSION_STRING) < 0) {
        Py_DECREF(m);
        return nullptr;
    }
    return m;
}
