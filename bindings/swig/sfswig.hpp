// sfswig.hpp - the language-neutral layer every SWIG binding is generated from.
//
// It turns the C API's handles into two small RAII classes, Group and Flight,
// built on the two-phase form (sf_group_begin / sf_call_*): the host language
// runs fn itself, so the library never calls back into Python, Lua or Java
// and no interpreter lock is held while a follower waits.
//
// What stays per language (in python/, lua/, java/) is how a host value is
// stored in the flight and read back: a PyObject*, a byte string, a JNI
// global reference.  Those helpers count the values they hand to the library
// in live_values(), so each language's leak test can see that every value
// stored was destroyed exactly once.
//
// Errors from the C API become sfswig::Error (a C++ exception); the shared
// interface catches it, and every other exception, in each SWIG wrapper, so
// no exception reaches the host language's C frames.
#ifndef SFSWIG_HPP
#define SFSWIG_HPP

#include <singleflight.h>

#include <atomic>
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

namespace sfswig {

#ifndef SWIG  // internals the generated wrappers use but do not expose

// A failing C API status, carried to the wrapper that maps it to the host
// language's exception.  code() is the SF_E* value.
class Error : public std::runtime_error {
public:
    Error(int code, const std::string &where)
        : std::runtime_error(where + ": " + sf_strerror(code) + " (" + sf_err_name(code) + ")"),
          code_(code) {}
    int code() const { return code_; }

private:
    int code_;
};

// How many host values the bindings in this module have given the library
// and not yet seen destroyed.  Incremented when a value is stored, decremented
// by the value's destroy function.  Thread-safe.
inline std::atomic<long> &live_counter() {
    static std::atomic<long> n{0};
    return n;
}

// Snapshot of live_counter(), for leak tests.  Thread-safe.
inline long live_values() { return live_counter().load(); }

#endif  // SWIG

// The group's counters (see sf_group_stats), as signed 64-bit fields so that
// every host language gets a plain integer.  A value type: copy freely.
struct Stats {
    long long calls = 0;
    long long leaders = 0;
    long long followers = 0;
    long long panics = 0;
    long long goexits = 0;
    long long timeouts = 0;
    long long forgets = 0;
    long long in_flight = 0;
    long long abandons = 0;  // flights every caller gave up on (stats v2)
    long long cancels = 0;   // callers who gave up (stats v2)
};

#ifndef SWIG
namespace detail {

inline void free_group(sf_group *g) {
    // Every Flight holds a reference to the group, so when the last reference
    // goes no call of it is unreleased and sf_group_free cannot be SF_EBUSY.
    if (g) sf_group_free(g);
}

inline std::shared_ptr<sf_group> new_group() {
    sf_group *g = nullptr;
    int rc = sf_group_new(&g, nullptr);
    if (rc != SF_OK) throw Error(rc, "sf_group_new");
    return std::shared_ptr<sf_group>(g, free_group);
}

// The flights the calling OS thread leads through Group::begin_on_thread and
// has not finished: (group, key) pairs.  Only that thread touches its list.
struct Led {
    const sf_group *group;
    std::string key;
};
inline std::vector<Led> &led_by_this_thread() {
    static thread_local std::vector<Led> led;
    return led;
}

// Completion flag for Flight::poll, owned jointly by the Flight and the
// sf_call_on_done callback (which runs exactly once, even after the call is
// released): whichever lets go last frees it.
struct DoneFlag {
    std::atomic<bool> done{false};
    std::atomic<int> owners{2};

    void drop() noexcept {
        if (owners.fetch_sub(1, std::memory_order_acq_rel) == 1) delete this;
    }
};

inline void set_done(int, sf_result *, int, void *payload) {
    DoneFlag *flag = static_cast<DoneFlag *>(payload);
    flag->done.store(true, std::memory_order_release);
    flag->drop();
}

}  // namespace detail

#endif  // SWIG

class Flight;

// A namespace of keys: concurrent begin() calls with equal keys share one
// flight.  Copies refer to the same underlying group, which is freed when the
// last copy and the last Flight begun from it are gone.  Every method is
// thread-safe.
class Group {
public:
    // A new, private group.  Throws Error (SF_ENOMEM) when it cannot be made.
    Group() : g_(detail::new_group()) {}

    // The process-wide group registered under name, created on first use and
    // kept while anyone holds it.  This is how interpreters that share no
    // objects (Lua states on different threads) meet on one group.
    static Group *named(const char *name, std::size_t name_len) {
        static std::mutex mu;
        static std::map<std::string, std::weak_ptr<sf_group>> registry;
        std::string key(name ? name : "", name ? name_len : 0);
        std::lock_guard<std::mutex> lock(mu);
        std::shared_ptr<sf_group> g = registry[key].lock();
        if (!g) {
            g = detail::new_group();
            registry[key] = g;
        }
        return new Group(std::move(g));
    }

    // Starts or joins the key's flight.  The caller owns the returned Flight
    // (delete it, or let the host language's garbage collector do so).
    // Throws Error for a NULL key with a length, or SF_ENOMEM.
    Flight *begin(const char *key, std::size_t key_len);

    // Like begin(), for hosts where one OS thread is one caller (Python,
    // Java): throws Error(SF_EDEADLK) when the calling thread already leads
    // this key's flight in this group and has not finished it, because
    // joining it would wait for itself forever.  A Flight begun this way
    // must be finished or released on the thread that began it.  (Lua does
    // not use it: there one thread runs many coroutines, and a second
    // coroutine calling a led key is a normal follower.)
    Flight *begin_on_thread(const char *key, std::size_t key_len);

    // Makes the next begin() for key start a new flight.  True when a flight
    // was in progress and is now forgotten.
    bool forget(const char *key, std::size_t key_len) {
        int rc = sf_group_forget(g_.get(), key, key_len);
        if (rc < 0) throw Error(rc, "sf_group_forget");
        return rc == 1;
    }

    // Like forget(), but only when no follower has joined the flight.
    bool forget_unshared(const char *key, std::size_t key_len) {
        int rc = sf_group_forget_unshared(g_.get(), key, key_len);
        if (rc < 0) throw Error(rc, "sf_group_forget_unshared");
        return rc == 1;
    }

#ifndef SWIG
    // The C group, shared: for language files that call the C API directly
    // (Java's callAsync keeps its handles' group alive with it).
    std::shared_ptr<sf_group> handle() const { return g_; }
#endif

    // A snapshot of the group's counters.
    Stats stats() const {
        sf_group_stats s;
        s.version = SF_GROUP_STATS_VERSION;
        int rc = sf_group_stats_get(g_.get(), &s);
        if (rc != SF_OK) throw Error(rc, "sf_group_stats_get");
        Stats out;
        out.calls = static_cast<long long>(s.calls);
        out.leaders = static_cast<long long>(s.leaders);
        out.followers = static_cast<long long>(s.followers);
        out.panics = static_cast<long long>(s.panics);
        out.goexits = static_cast<long long>(s.goexits);
        out.timeouts = static_cast<long long>(s.timeouts);
        out.forgets = static_cast<long long>(s.forgets);
        out.in_flight = static_cast<long long>(s.in_flight);
        out.abandons = static_cast<long long>(s.abandons);
        out.cancels = static_cast<long long>(s.cancels);
        return out;
    }

private:
    explicit Group(std::shared_ptr<sf_group> g) : g_(std::move(g)) {}

    std::shared_ptr<sf_group> g_;
};

// One caller's part in one flight.  A leader produces the outcome with
// set_value() and then finish() or panic(); a follower waits.  After a
// successful wait() the outcome (status, value, error, panic message, shared)
// can be read until release().
//
// A Flight is used by one thread at a time (it holds no lock of its own);
// different Flights of the same group are independent.  Releasing a leader
// that never finished completes the flight as SF_EGOEXIT for its followers,
// so an abandoned Flight never strands anyone.
class Flight {
public:
    Flight(std::shared_ptr<sf_group> g, sf_call *call, int role)
        : group_(std::move(g)), call_(call), role_(role) {}
    Flight(const Flight &) = delete;
    Flight &operator=(const Flight &) = delete;
    ~Flight() { release(); }

    // SF_LEADER or SF_FOLLOWER.
    int role() const { return role_; }
    bool is_leader() const { return role_ == SF_LEADER; }

    // Leader only: hands value to the library, which calls destroy(value)
    // exactly once, after the last reference to the result is dropped (or at
    // once when the value is refused).  Not exposed to host languages; their
    // own files wrap it with a typed value.
    void set_value(void *value, sf_destroy_fn destroy) { sf_call_set_value(call_, value, destroy); }

    // Leader only: completes the flight with error (0 for success) and wakes
    // every follower.
    void finish(int error) {
        unmark_led();
        int rc = sf_call_finish(call_, error);
        if (rc != SF_OK) throw Error(rc, "sf_call_finish");
    }

    // Leader only: completes the flight as panicked; every caller's wait()
    // returns SF_EPANIC and panic_message() gives a copy of message.
    void panic(const char *message) {
        unmark_led();
        int rc = sf_call_panic(call_, message);
        if (rc != SF_OK) throw Error(rc, "sf_call_panic");
    }

    // Waits up to timeout_ns nanoseconds (negative: forever, 0: poll) for the
    // flight to complete.  Returns SF_OK, SF_EPANIC or SF_EGOEXIT once it has
    // (the outcome is then kept in this Flight), or SF_ETIMEDOUT.  Throws
    // Error for any other status (SF_EDEADLK: the calling thread leads this
    // key's unfinished flight).  Touches no host-language object, so the
    // bindings run it with their interpreter lock released.
    int wait(long long timeout_ns) {
        if (result_) return status_;
        sf_result *r = nullptr;
        int shared = 0;
        int rc = sf_call_wait(call_, static_cast<sf_i64>(timeout_ns), &r, &shared);
        if (rc == SF_ETIMEDOUT) return rc;
        if (rc != SF_OK && rc != SF_EPANIC && rc != SF_EGOEXIT) throw Error(rc, "sf_call_wait");
        result_ = r;
        status_ = rc;
        shared_ = shared != 0;
        return rc;
    }

    // Follower: true once the flight has completed, so that wait(0) returns
    // its outcome.  Never blocks and, unlike a wait(0) that finds the flight
    // running, is not counted as a timeout: it is how a caller that cannot
    // block (a Lua coroutine) checks between yields.
    bool poll() {
        if (result_) return true;
        if (!done_) {
            detail::DoneFlag *flag = new detail::DoneFlag;
            int rc = sf_call_on_done(call_, detail::set_done, flag);
            if (rc != SF_OK) {
                delete flag;
                throw Error(rc, "sf_call_on_done");
            }
            done_ = flag;
        }
        return done_->done.load(std::memory_order_acquire);
    }

    // Follower: a descriptor (an eventfd) that becomes readable once the
    // flight has completed, for event loops and for waits that must stay
    // interruptible.  Owned by this Flight: do not close it; valid until
    // release().
    int fd() {
        int rc = sf_call_fd(call_);
        if (rc < 0) throw Error(rc, "sf_call_fd");
        return rc;
    }

    // After a completed wait(): whether the result was shared (always for a
    // follower; for the leader, whether anyone joined).
    bool shared() const { return shared_; }

    // After a completed wait(): what the leader passed to finish().
    int error() const { return sf_result_error(result_); }

    // After a completed wait(): the panic message, or NULL (None / nil /
    // null) unless the flight panicked.  Borrowed from the result.
    const char *panic_message() const { return sf_result_panic_message(result_); }

    // After a completed wait(): the stored value, borrowed, or NULL.  Host
    // files wrap it; the pointer stays valid until release().
    void *value() const { return sf_result_value(result_); }

    // Drops the result reference and the call handle.  Idempotent; the
    // destructor calls it too.
    void release() {
        unmark_led();
        if (result_) {
            sf_result_release(result_);
            result_ = nullptr;
        }
        if (call_) {
            sf_call_release(call_);
            call_ = nullptr;
        }
        if (done_) {
            done_->drop();
            done_ = nullptr;
        }
    }

#ifndef SWIG
    // The C call, borrowed (NULL after release()): for language files that
    // use the C API's newer calls directly (Lua's sf_call_cancel).
    sf_call *handle() const { return call_; }

    // Records that the calling thread leads this flight (see
    // Group::begin_on_thread) until it finishes, panics or releases it.
    void mark_led(const char *key, std::size_t key_len) {
        detail::led_by_this_thread().push_back(
            detail::Led{group_.get(), std::string(key ? key : "", key ? key_len : 0)});
        led_ = true;
        led_key_.assign(key ? key : "", key ? key_len : 0);
    }
#endif

private:
    void unmark_led() noexcept {
        if (!led_) return;
        led_ = false;
        std::vector<detail::Led> &led = detail::led_by_this_thread();
        for (std::size_t i = led.size(); i-- > 0;) {
            if (led[i].group == group_.get() && led[i].key == led_key_) {
                led.erase(led.begin() + static_cast<std::ptrdiff_t>(i));
                break;
            }
        }
    }

    std::shared_ptr<sf_group> group_;
    sf_call *call_;
    int role_;
    sf_result *result_ = nullptr;
    int status_ = SF_ETIMEDOUT;
    bool shared_ = false;
    bool led_ = false;
    std::string led_key_;
#ifndef SWIG
    detail::DoneFlag *done_ = nullptr;
#endif
};

inline Flight *Group::begin(const char *key, std::size_t key_len) {
    sf_call *call = nullptr;
    int rc = sf_group_begin(g_.get(), key, key_len, &call);
    if (rc != SF_LEADER && rc != SF_FOLLOWER) throw Error(rc, "sf_group_begin");
    try {
        return new Flight(g_, call, rc);
    } catch (...) {
        // Releasing an unfinished leader's call gives its followers
        // SF_EGOEXIT, so nobody waits on a flight we could not track.
        sf_call_release(call);
        throw;
    }
}

inline Flight *Group::begin_on_thread(const char *key, std::size_t key_len) {
    if (key || key_len == 0) {
        std::string k(key ? key : "", key ? key_len : 0);
        for (const detail::Led &l : detail::led_by_this_thread()) {
            if (l.group == g_.get() && l.key == k)
                throw Error(SF_EDEADLK, "singleflight: a call inside fn asked for its own key");
        }
    }
    Flight *f = begin(key, key_len);
    if (f->is_leader()) {
        try {
            f->mark_led(key, key_len);
        } catch (...) {
            delete f;
            throw;
        }
    }
    return f;
}

}  // namespace sfswig

#endif  // SFSWIG_HPP
