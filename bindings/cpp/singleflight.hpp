// singleflight.hpp - header-only C++17 wrapper over libsingleflight's C API.
//
//   singleflight::group g;
//   auto r = g.run("user:42", [] { return load_user(42); });
//   use(r.value(), r.shared());
//
// One execution per key among concurrent callers; every caller receives the
// same value, and an exception thrown by fn is rethrown, with its original
// type, in every caller.  Link with the C library (pkg-config singleflight).
//
// Thread rules, true of every member unless its comment says otherwise: a
// group may be used from any number of threads at once; result<T> copies are
// independent handles that may live on different threads; a single flight<T>
// (two-phase handle) or a single result<T> object must not be used
// concurrently with its own destruction or assignment.
#ifndef SINGLEFLIGHT_HPP
#define SINGLEFLIGHT_HPP

#include <singleflight.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <functional>
#include <future>
#include <memory>
#include <new>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <typeinfo>
#include <utility>

#if defined(__GLIBCXX__)
#include <cxxabi.h>
// A forced unwind carries no C++ object, so -fsanitize=null flags the
// (unused) reference of `catch (abi::__forced_unwind &)` as bound to null.
#define SINGLEFLIGHT_FORCED_UNWIND_SAFE_ __attribute__((no_sanitize("null")))
#else
#define SINGLEFLIGHT_FORCED_UNWIND_SAFE_
#endif

namespace singleflight {

// A status code from the C library, carried as an exception.  code() is one
// of the SF_E* values (SF_EGOEXIT, SF_EDEADLK, SF_ETIMEDOUT, ...); what()
// starts with its symbolic name.
class error : public std::runtime_error {
public:
    // code is an SF_E* value; detail, when not empty, is appended to what().
    // Both are copied.
    explicit error(int code) : error(code, std::string()) {}
    error(int code, const std::string &detail)
        : std::runtime_error(compose(code, detail)), code_(code) {}

    // The SF_E* status code.  Never SF_OK.
    int code() const noexcept { return code_; }

private:
    static std::string compose(int code, const std::string &detail) {
        std::string s = sf_err_name(code);
        s += ": ";
        s += sf_strerror(code);
        if (!detail.empty()) {
            s += ": ";
            s += detail;
        }
        return s;
    }

    int code_;
};

// Thrown in every caller of a flight that panicked without a C++ exception to
// rethrow: a leader that called sf_call_panic through the C API on the same
// native group, or a leader that could not even allocate the slot for its
// exception.  message() is the leader's panic message.
class panic_error : public error {
public:
    explicit panic_error(const char *message)
        : error(SF_EPANIC, message ? message : "panic"),
          message_(message ? message : "panic") {}

    // The panic message, as the leader gave it ("panic" when it gave none).
    const std::string &message() const noexcept { return message_; }

private:
    std::string message_;
};

namespace detail {

// A key given as a C string, read up to its NUL.  A null pointer (getenv's
// "not set", say) is the caller's error to catch, not a crash in strlen.
inline std::string_view c_string_key(const char *key) {
    if (key == nullptr)
        throw error(SF_EINVAL, "the key is a null const char *");
    return std::string_view(key);
}

// What the wrapper stores as a flight's value: the typed value or the
// exception that escaped fn.  `type` lets a caller that expects another T
// fail loudly instead of reinterpreting memory.
struct box_base {
    explicit box_base(const std::type_info &t) noexcept : type(&t) {}
    virtual ~box_base() = default;
    box_base(const box_base &) = delete;
    box_base &operator=(const box_base &) = delete;

    const std::type_info *type;
    std::exception_ptr exception;
};

template <class T>
struct box final : box_base {
    box() noexcept : box_base(typeid(T)) {}
    std::optional<T> value;
};

// The C library runs this once, on whichever thread drops the last
// reference; T's destructor must not throw (as for any std container).
inline void destroy_box(void *p) noexcept { delete static_cast<box_base *>(p); }

// The panic message the other callers see when they cannot rethrow
// (a non-C++ reader of the same native result, stats, logs).
inline std::string describe(const std::exception_ptr &e) {
    try {
        std::rethrow_exception(e);
    } catch (const std::exception &ex) {
        return ex.what();
    } catch (...) {
        return "non-standard C++ exception";
    }
}

struct result_release {
    void operator()(sf_result *r) const noexcept { sf_result_release(r); }
};
using owned_result = std::unique_ptr<sf_result, result_release>;

// Turns a completed flight into this caller's outcome: the value, the
// leader's original exception, or a singleflight::error.  Takes ownership of
// raw in every case.
template <class T>
owned_result settle(int rc, sf_result *raw) {
    owned_result owned(raw);
    if (rc != SF_OK && rc != SF_EPANIC)
        throw error(rc);
    const auto *b = static_cast<const box_base *>(sf_result_value(raw));
    if (rc == SF_EPANIC) {
        if (b != nullptr && b->exception)
            std::rethrow_exception(b->exception);
        throw panic_error(sf_result_panic_message(raw));
    }
    if (b == nullptr)
        throw error(SF_ESTATE, "the flight completed without a C++ value");
    if (*b->type != typeid(T))
        throw error(SF_EINVAL, std::string("the flight holds a value of type ") +
                                   b->type->name() + ", this caller expects " +
                                   typeid(T).name());
    return owned;
}

template <class F, class T>
SINGLEFLIGHT_FORCED_UNWIND_SAFE_ int trampoline(sf_call *call, void *payload) {
    // Not noexcept on purpose: a thread exit inside fn (pthread_exit,
    // cancellation) is a forced unwind that must keep going so the C library
    // can release the followers with SF_EGOEXIT; a noexcept frame would turn
    // it into std::terminate.  Every ordinary exception stops here.
    box<T> *b;
    try {
        b = new box<T>();
    } catch (...) {
        sf_call_panic(call, "singleflight: out of memory for the result");
        return 0;
    }
    bool threw = false;
    try {
        // payload points at a pointer to fn: a plain function has no object
        // pointer that void * could carry directly.
        auto &fn = **static_cast<std::remove_reference_t<F> **>(payload);
        b->value.emplace(std::invoke(std::forward<F>(fn)));
#if defined(__GLIBCXX__)
    } catch (abi::__forced_unwind &) {
        delete b;
        throw;
#endif
    } catch (...) {
        b->exception = std::current_exception();
        threw = true;
    }
    std::string message;
    if (threw) {
        try {
            message = describe(b->exception);
        } catch (...) {
            // Out of memory while copying what(): the exception itself
            // still reaches every C++ caller, only the text is lost.
        }
    }
    sf_call_set_value(call, b, &destroy_box);
    if (threw)
        sf_call_panic(call, message.empty() ? nullptr : message.c_str());
    return 0;
}

} // namespace detail

// One caller's reference to a flight's shared value.  Copies share the value
// (each copy holds its own reference on the C result); the value is destroyed
// once, after the last copy (and the last share()) is gone, on that thread.
// The value is immutable: every caller sees the same object.
template <class T>
class result {
public:
    result(const result &o) noexcept
        : r_(sf_result_retain(o.r_)), shared_(o.shared_) {}
    result(result &&o) noexcept
        : r_(std::exchange(o.r_, nullptr)), shared_(o.shared_) {}
    result &operator=(result o) noexcept {
        std::swap(r_, o.r_);
        std::swap(shared_, o.shared_);
        return *this;
    }
    ~result() { sf_result_release(r_); }

    // The shared value, valid as long as this handle lives.  Not for a
    // moved-from handle.
    const T &value() const noexcept {
        return *static_cast<const detail::box<T> *>(sf_result_value(r_))->value;
    }
    const T &operator*() const noexcept { return value(); }
    const T *operator->() const noexcept { return std::addressof(value()); }

    // Go's `shared`: true for every follower, and for the leader when at
    // least one follower joined its flight.
    bool shared() const noexcept { return shared_; }

    // The value as a shared_ptr that keeps the flight's result alive by
    // itself (an aliasing pointer over a new reference).
    std::shared_ptr<const T> share() const {
        std::shared_ptr<sf_result> keep(sf_result_retain(r_), detail::result_release());
        return std::shared_ptr<const T>(std::move(keep), std::addressof(value()));
    }

    // The C handle, borrowed: valid while this object holds it.
    sf_result *native_handle() const noexcept { return r_; }

private:
    friend class group;
    template <class>
    friend class flight;

    result(detail::owned_result r, bool shared) noexcept
        : r_(r.release()), shared_(shared) {}

    sf_result *r_;
    bool shared_;
};

// The two-phase form, for callers that produce the value themselves (event
// loops, work split across callbacks).  Obtained from group::begin<T>().  A
// leader must finish() or fail(); destroying an unfinished leader releases
// its followers with SF_EGOEXIT (Go's Goexit), so nobody waits forever.
// Move-only; the handle may move between threads but is not for concurrent
// use.
template <class T>
class flight {
public:
    flight(flight &&o) noexcept
        : c_(std::exchange(o.c_, nullptr)), leader_(o.leader_) {}
    flight &operator=(flight &&o) noexcept {
        if (this != &o) {
            sf_call_release(c_);
            c_ = std::exchange(o.c_, nullptr);
            leader_ = o.leader_;
        }
        return *this;
    }
    flight(const flight &) = delete;
    flight &operator=(const flight &) = delete;
    ~flight() { sf_call_release(c_); }

    // True when this caller started the flight and must complete it.
    bool leader() const noexcept { return leader_; }

    // Leader only: constructs the value from args, publishes it and wakes
    // every follower.  Throws singleflight::error(SF_ESTATE) when this
    // handle may not finish (a follower, or already completed); the value
    // is then discarded.
    template <class... Args>
    void finish(Args &&...args) {
        auto b = std::make_unique<detail::box<T>>();
        b->value.emplace(std::forward<Args>(args)...);
        sf_call_set_value(c_, b.release(), &detail::destroy_box);
        check(sf_call_finish(c_, 0));
    }

    // Leader only: completes the flight as panicked; every caller's wait()
    // rethrows e with its original type.  A null e is SF_EINVAL.  Same
    // errors as finish().
    void fail(std::exception_ptr e) {
        if (!e)
            throw error(SF_EINVAL, "fail() needs an exception");
        const std::string message = detail::describe(e);
        auto b = std::make_unique<detail::box<T>>();
        b->exception = std::move(e);
        sf_call_set_value(c_, b.release(), &detail::destroy_box);
        check(sf_call_panic(c_, message.c_str()));
    }

    // Blocks until the flight completes, then returns the value or rethrows
    // the leader's exception.  A leader may wait after finishing; waiting
    // before that is singleflight::error(SF_EDEADLK).  Callable repeatedly.
    result<T> wait() {
        auto r = wait_ns(-1);
        return std::move(*r);
    }

    // As wait(), giving up after timeout (zero just polls): std::nullopt
    // when the flight has not completed yet.  The flight is not affected.
    template <class Rep, class Period>
    std::optional<result<T>> wait_for(std::chrono::duration<Rep, Period> timeout) {
        auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(timeout).count();
        return wait_ns(ns < 0 ? 0 : static_cast<sf_i64>(ns));
    }

    // An eventfd that becomes readable once the flight completes, for
    // poll/epoll loops.  Owned by this handle: do not close it.
    int fd() const {
        int fd = sf_call_fd(c_);
        check(fd);
        return fd;
    }

    // The C handle, borrowed: valid while this object holds it.
    sf_call *native_handle() const noexcept { return c_; }

private:
    friend class group;
    flight(sf_call *c, bool leader) noexcept : c_(c), leader_(leader) {}

    static void check(int rc) {
        if (rc < 0)
            throw error(rc);
    }

    std::optional<result<T>> wait_ns(sf_i64 ns) {
        sf_result *raw = nullptr;
        int shared = 0;
        int rc = sf_call_wait(c_, ns, &raw, &shared);
        if (rc == SF_ETIMEDOUT)
            return std::nullopt;
        auto owned = detail::settle<T>(rc, raw);
        return result<T>(std::move(owned), shared != 0);
    }

    sf_call *c_;
    bool leader_;
};

// A namespace of keys: concurrent run()/begin() calls with the same key share
// one flight.  Owns its C group; move-only.  Every member is thread-safe
// except destruction and assignment, which need every flight of the group to
// be over (see ~group).
//
// Keys are any bytes, as a std::string_view (or anything that converts to
// one), borrowed for the call only.  A const char * key is read up to its
// NUL; a null one throws singleflight::error(SF_EINVAL) before anything
// runs, and a literal nullptr does not compile.
class group {
public:
    // Creates a group; shards == 0 lets the library choose.  Throws
    // singleflight::error on failure.
    explicit group(unsigned shards = 0) {
        sf_group_options opts;
        check(sf_group_options_init(&opts, SF_GROUP_OPTIONS_VERSION));
        opts.shards = shards;
        check(sf_group_new(&g_, &opts));
    }
    group(group &&o) noexcept : g_(std::exchange(o.g_, nullptr)) {}
    group &operator=(group &&o) noexcept {
        if (this != &o) {
            close();
            g_ = std::exchange(o.g_, nullptr);
        }
        return *this;
    }
    group(const group &) = delete;
    group &operator=(const group &) = delete;

    // Frees the group.  Results already obtained stay valid.  Destroying a
    // group while a flight or a flight<T> handle of it is alive is a bug;
    // the C group is then leaked rather than freed under its users.
    ~group() { close(); }

    // Go's Do.  Runs fn() once for all concurrent callers of key, on the
    // first caller's thread; the others block until it returns.  Returns the
    // value (T is fn's decayed return type, stored once and shared) and the
    // shared flag.  If fn throws, every caller rethrows that same exception
    // object with its original type; catch it by const reference, as several
    // threads may hold it at once.  Throws singleflight::error for the
    // flight's other outcomes: SF_EGOEXIT when the leader's thread exited
    // inside fn, SF_EDEADLK when fn itself runs key on this group, SF_EINVAL
    // when a concurrent caller of key expects another type.  fn is borrowed
    // for the call only and runs at most once.
    template <class F>
    auto run(std::string_view key, F &&fn)
        -> result<std::decay_t<std::invoke_result_t<F>>> {
        using T = std::decay_t<std::invoke_result_t<F>>;
        static_assert(!std::is_void_v<T>, "fn must return the value to share");
        sf_result *raw = nullptr;
        int shared = 0;
        std::remove_reference_t<F> *target = std::addressof(fn);
        int rc = sf_group_do(g_, key.data(), key.size(), &detail::trampoline<F, T>,
                             &target, &raw, &shared);
        auto owned = detail::settle<T>(rc, raw);
        return result<T>(std::move(owned), shared != 0);
    }
    template <class F>
    auto run(const char *key, F &&fn) -> result<std::decay_t<std::invoke_result_t<F>>> {
        return run(detail::c_string_key(key), std::forward<F>(fn));
    }
    template <class F>
    void run(std::nullptr_t, F &&) = delete;

    // Go's DoChan.  Starts or joins key's flight and returns at once; when
    // this caller leads, fn runs on the group's executor (the library's
    // built-in pool).  The future yields what run() would have returned, or
    // rethrows what run() would have thrown.  fn is decay-copied (or moved)
    // into the call and destroyed, on whichever thread completes the flight,
    // once this caller's outcome is known; it must be callable from another
    // thread.  Throws singleflight::error when the flight cannot be started
    // (SF_EBUSY: the executor refused the work).
    template <class F>
    auto run_async(std::string_view key, F &&fn)
        -> std::future<result<std::decay_t<std::invoke_result_t<std::decay_t<F> &&>>>> {
        using Fn = std::decay_t<F>;
        using T = std::decay_t<std::invoke_result_t<Fn &&>>;
        static_assert(!std::is_void_v<T>, "fn must return the value to share");
        auto state = std::make_unique<async_state<Fn, T>>(std::forward<F>(fn));
        auto future = state->promise.get_future();
        int rc = sf_group_do_async(g_, key.data(), key.size(), &detail::trampoline<Fn, T>,
                                   &state->target, &async_done<Fn, T>, state.get());
        check(rc);
        state.release(); // owned by async_done from here on
        return future;
    }
    template <class F>
    auto run_async(const char *key, F &&fn)
        -> std::future<result<std::decay_t<std::invoke_result_t<std::decay_t<F> &&>>>> {
        return run_async(detail::c_string_key(key), std::forward<F>(fn));
    }
    template <class F>
    void run_async(std::nullptr_t, F &&) = delete;

    // Starts or joins key's flight without running anything (the two-phase
    // form).  The returned handle says whether this caller leads.  Throws
    // singleflight::error on failure.
    template <class T>
    flight<T> begin(std::string_view key) {
        sf_call *c = nullptr;
        int rc = sf_group_begin(g_, key.data(), key.size(), &c);
        check(rc);
        return flight<T>(c, rc == SF_LEADER);
    }
    template <class T>
    flight<T> begin(const char *key) {
        return begin<T>(detail::c_string_key(key));
    }
    template <class T>
    void begin(std::nullptr_t) = delete;

    // Makes the next caller of key start a new flight; the current one still
    // delivers to its own callers.  True when a flight was forgotten.
    bool forget(std::string_view key) {
        int rc = sf_group_forget(g_, key.data(), key.size());
        check(rc);
        return rc == 1;
    }
    bool forget(const char *key) { return forget(detail::c_string_key(key)); }
    void forget(std::nullptr_t) = delete;

    // As forget(), but only while nobody has joined the flight.
    bool forget_unshared(std::string_view key) {
        int rc = sf_group_forget_unshared(g_, key.data(), key.size());
        check(rc);
        return rc == 1;
    }
    bool forget_unshared(const char *key) { return forget_unshared(detail::c_string_key(key)); }
    void forget_unshared(std::nullptr_t) = delete;

    // A snapshot of the group's counters.
    sf_group_stats stats() const {
        sf_group_stats s{};
        s.version = SF_GROUP_STATS_VERSION;
        check(sf_group_stats_get(g_, &s));
        return s;
    }

    // The C handle, borrowed: valid while this object owns it.  Flights
    // started through it must not be joined by run()/begin() unless their
    // values were set by this wrapper.
    sf_group *native_handle() const noexcept { return g_; }

private:
    // Everything one run_async caller hands to the C library.  target is
    // what detail::trampoline expects as its payload.
    template <class Fn, class T>
    struct async_state {
        explicit async_state(Fn &&f) : fn(std::move(f)) {}
        explicit async_state(const Fn &f) : fn(f) {}
        Fn fn;
        Fn *target = &fn;
        std::promise<result<T>> promise;
    };

    // Runs once per run_async caller, after the flight completed; the
    // C library guarantees fn will not run any more, so the state goes.
    template <class Fn, class T>
    static void async_done(int status, sf_result *r, int shared, void *payload) noexcept {
        std::unique_ptr<async_state<Fn, T>> state(static_cast<async_state<Fn, T> *>(payload));
        try {
            auto owned = detail::settle<T>(status, sf_result_retain(r));
            state->promise.set_value(result<T>(std::move(owned), shared != 0));
        } catch (...) {
            try {
                state->promise.set_exception(std::current_exception());
            } catch (...) {
                // Only std::future_error (promise already satisfied) can land
                // here, and set_value above did not complete: unreachable.
            }
        }
    }

    static void check(int rc) {
        if (rc < 0)
            throw error(rc);
    }

    void close() noexcept {
        if (g_ != nullptr)
            (void)sf_group_free(g_); // SF_EBUSY: leaked on purpose, see ~group
        g_ = nullptr;
    }

    sf_group *g_ = nullptr;
};

} // namespace singleflight

#endif // SINGLEFLIGHT_HPP
