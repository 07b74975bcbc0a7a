/* Python half of the shared interface: keys are str (UTF-8) or bytes, values
 * are any Python object, kept alive by one reference the library owns.
 *
 * Group (libsingleflight/__init__.py) does not go through the generated
 * wrappers: its calls are hand-written in sfpy.hpp (why: see there) and
 * registered into this module by the %init block below, beside what SWIG
 * generates from the shared interface (constants, version checks, the
 * live-value counter, and the Flight/Group classes every SWIG language has).
 *
 * Built with -threads: every generated wrapper releases the GIL around the
 * library call, except the two that touch Python objects, which keep it and
 * drop it only around library calls themselves. */
%module(package="libsingleflight") singleflight_core

%{
#include "sfpy.hpp"
#include "sfpy_shared.hpp"
%}

%init %{
    if (sfpy::init_module(m) < 0 || sfpy::init_shared(m) < 0) return NULL;
%}

/* str or bytes, nothing else (an int key would silently collide with its
 * decimal string).  The pointer stays valid during the call: the argument
 * tuple keeps the object alive and str caches its UTF-8 form. */
%typemap(in) (const char *key, size_t key_len) {
    if (PyBytes_Check($input)) {
        char *p = NULL;
        Py_ssize_t n = 0;
        if (PyBytes_AsStringAndSize($input, &p, &n) < 0) SWIG_fail;
        $1 = p;
        $2 = (size_t)n;
    } else if (PyUnicode_Check($input)) {
        Py_ssize_t n = 0;
        const char *p = PyUnicode_AsUTF8AndSize($input, &n);
        if (!p) SWIG_fail;
        $1 = const_cast<char *>(p);
        $2 = (size_t)n;
    } else {
        PyErr_Format(PyExc_TypeError, "singleflight key must be str or bytes, not %.200s",
                     Py_TYPE($input)->tp_name);
        SWIG_fail;
    }
}
%typemap(typecheck) (const char *key, size_t key_len) {
    $1 = PyBytes_Check($input) || PyUnicode_Check($input);
}

%nothreadallow sfswig::Flight::set_object;
%nothreadallow sfswig::Flight::get_object;

%extend sfswig::Flight {
    /* Leader only: stores obj as the flight's value.  The library takes a new
     * reference, dropped (with the GIL) after the last caller is done with
     * the result.  Call with the GIL held. */
    void set_object(PyObject *obj) {
        Py_INCREF(obj);
        sfswig::live_counter().fetch_add(1);
        /* The library may take its own locks, or refuse the value and run
         * sfpy_destroy at once; neither must happen while we hold the GIL
         * another thread might be waiting for under such a lock. */
        Py_BEGIN_ALLOW_THREADS
        $self->set_value(obj, sfpy::destroy_value);
        Py_END_ALLOW_THREADS
    }

    /* After a completed wait(): a new reference to the value the leader
     * stored, the very same object for every caller; None when none was
     * stored.  Call with the GIL held. */
    PyObject *get_object() {
        PyObject *obj = static_cast<PyObject *>($self->value());
        if (!obj) obj = Py_None;
        Py_INCREF(obj);
        return obj;
    }
}

%include "../singleflight.i"
