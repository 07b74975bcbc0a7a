/* singleflight.i - the interface shared by every SWIG binding.
 *
 * Each language folder holds a small .i that sets the module name, defines
 * how a key and a host value cross the boundary for that language, and then
 * includes this file.  The generated module is internal (singleflight_core);
 * each language puts its idiomatic API on top of it (libsingleflight/__init__.py,
 * singleflight.lua, io/github/libsingleflight/Group.java).
 *
 * Before including this file a language file must provide:
 *  - an "in" typemap for (const char *key, size_t key_len) that rejects
 *    anything that is not a byte string in that language;
 *  - %extend sfswig::Flight with its value setter and getter.
 */

%{
#include "sfswig.hpp"
%}

/* No exception may leave a wrapper: the host language's C frames cannot unwind
 * C++ exceptions.  Out-of-memory becomes the language's memory error, every
 * other failure its runtime error carrying the library's message. */
%include <exception.i>
%exception {
    try {
        $action
    } catch (const std::bad_alloc &) {
        SWIG_exception(SWIG_MemoryError, "singleflight: out of memory");
    } catch (const sfswig::Error &e) {
        SWIG_exception(e.code() == SF_ENOMEM ? SWIG_MemoryError : SWIG_RuntimeError,
                       e.what());
    } catch (const std::exception &e) {
        SWIG_exception(SWIG_RuntimeError, e.what());
    } catch (...) {
        SWIG_exception(SWIG_UnknownError, "singleflight: unknown C++ exception");
    }
}

/* Status codes the language layers compare wait() results with. */
%constant int OK = SF_OK;
%constant int LEADER = SF_LEADER;
%constant int FOLLOWER = SF_FOLLOWER;
%constant int EPANIC = SF_EPANIC;
%constant int EGOEXIT = SF_EGOEXIT;
%constant int EDEADLK = SF_EDEADLK;
%constant int ETIMEDOUT = SF_ETIMEDOUT;
/* The header version this module was compiled against. */
%constant const char *BUILT_VERSION = SF_VERSION_STRING;

%inline %{
/* The loaded C library's version string ("1.0.0").  Static; thread-safe. */
const char *version_string(void) { return sf_version_string(); }
/* True when the loaded library is the version this module was built
 * against. */
bool version_matches(void) { return sf_version_number() == SF_VERSION_NUMBER; }
/* Host values stored by this module and not yet destroyed (leak tests). */
long live_values(void) { return sfswig::live_values(); }
%}

/* Keys are the same everywhere: whatever the language passes as a byte
 * string.  The group name of Group::named is a key too. */
%apply (const char *key, size_t key_len) { (const char *name, std::size_t name_len) };
%apply (const char *key, size_t key_len) { (const char *key, std::size_t key_len) };

%newobject sfswig::Group::begin;
%newobject sfswig::Group::begin_on_thread;
%newobject sfswig::Group::named;

/* The raw value accessors stay C++-only; languages expose typed ones. */
%ignore sfswig::Flight::set_value;
%ignore sfswig::Flight::value;
%ignore sfswig::Flight::Flight;

%include "sfswig.hpp"
