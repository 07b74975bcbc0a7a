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
// shared_group (at the end of this file) does the same across the processes
// of a host, with byte values (std::string).
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
#include <iterator>
#include <future>
#include <memory>
#include <mutex>
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
        : error(SF_EPANIC, message ? message : "panic"), message_(message ? message : "panic") {}

    // The panic message, as the leader gave it ("panic" when it gave none).
    const std::string &message() const noexcept { return message_; }

private:
    std::string message_;
};

template <class T>
class result;

namespace detail {

template <class Fn, class T>
struct leader_work;

// A key given as a C string, read up to its NUL.  A null pointer (getenv's
// "not set", say) is the caller's error to catch, not a crash in strlen.
inline std::string_view c_string_key(const char *key) {
    if (key == nullptr) throw error(SF_EINVAL, "the key is a null const char *");
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
    if (rc != SF_OK && rc != SF_EPANIC) throw error(rc);
    const auto *b = static_cast<const box_base *>(sf_result_value(raw));
    if (rc == SF_EPANIC) {
        if (b != nullptr && b->exception) std::rethrow_exception(b->exception);
        throw panic_error(sf_result_panic_message(raw));
    }
    if (b == nullptr) throw error(SF_ESTATE, "the flight completed without a C++ value");
    if (*b->type != typeid(T))
        throw error(SF_EINVAL, std::string("the flight holds a value of type ") + b->type->name() +
                                   ", this caller expects " + typeid(T).name());
    return owned;
}

// Runs fn and keeps what it produced, its value or the exception it threw,
// in a new box; nullptr when not even the box could be allocated.  Not
// noexcept on purpose: a thread exit inside fn (pthread_exit, cancellation)
// is a forced unwind that must keep going so the C library can release the
// followers with SF_EGOEXIT; a noexcept frame would turn it into
// std::terminate.  Every ordinary exception stops here.
template <class T, class F>
SINGLEFLIGHT_FORCED_UNWIND_SAFE_ box<T> *produce(F &&fn) {
    box<T> *b;
    try {
        b = new box<T>();
    } catch (...) {
        return nullptr;
    }
    try {
        b->value.emplace(std::invoke(std::forward<F>(fn)));
#if defined(__GLIBCXX__)
    } catch (abi::__forced_unwind &) {
        delete b;
        throw;
#endif
    } catch (...) {
        b->exception = std::current_exception();
    }
    return b;
}

// Hands what produce() made to the leader's call: the value, or the
// exception as a panic (its text for readers that cannot rethrow it).
inline void publish(sf_call *call, box_base *b) noexcept {
    if (b == nullptr) {
        sf_call_panic(call, "singleflight: out of memory for the result");
        return;
    }
    const bool threw = static_cast<bool>(b->exception);
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
    if (threw) sf_call_panic(call, message.empty() ? nullptr : message.c_str());
}

// (The attribute, like produce's, because produce is inlined here.)
template <class F, class T>
SINGLEFLIGHT_FORCED_UNWIND_SAFE_ int trampoline(sf_call *call, void *payload) {
    // payload points at a pointer to fn: a plain function has no object
    // pointer that void * could carry directly.
    auto &fn = **static_cast<std::remove_reference_t<F> **>(payload);
    publish(call, produce<T>(std::forward<F>(fn)));
    return 0;
}

// One run_async caller's C handle, shared by its singleflight::future and,
// for the leader, by the work producing the value: the last owner releases
// it.  Every use of the handle except sf_call_abandoned takes m, so a
// caller's cancel() and the work's finish never overlap on one handle.
struct shared_call {
    explicit shared_call(sf_call *call) noexcept : c(call) {}
    shared_call(const shared_call &) = delete;
    shared_call &operator=(const shared_call &) = delete;
    ~shared_call() { sf_call_release(c); }

    sf_call *c;
    std::mutex m;
    // The leader's abandon callback (abandon_token::on_abandon), kept here
    // because the work, which holds this object, outlives any abandonment.
    std::function<void()> on_abandon;
};

inline void run_on_abandon(sf_call *, void *payload) noexcept {
    // noexcept: a throwing abandon callback ends the program rather than
    // unwind through the C library.
    static_cast<shared_call *>(payload)->on_abandon();
}

// The done callback of every run_async caller: fulfils its promise, which
// it owns from registration on (the C library runs it exactly once, also
// after sf_call_cancel, with SF_ECANCELED).
template <class T>
void async_done(int status, sf_result *r, int shared, void *payload) noexcept {
    std::unique_ptr<std::promise<result<T>>> promise(
        static_cast<std::promise<result<T>> *>(payload));
    try {
        auto owned = settle<T>(status, sf_result_retain(r));
        promise->set_value(result<T>(std::move(owned), shared != 0));
    } catch (...) {
        try {
            promise->set_exception(std::current_exception());
        } catch (...) {
            // Only std::future_error (promise already satisfied) can land
            // here, and set_value above did not complete: unreachable.
        }
    }
}

// run_async's default executor: the C library's built-in pool, reached
// through a group of its own (never freed: its pool serves the whole
// process) and a one-off flight per task, keyed by the task's address.
struct pool_task {
    std::function<void()> run;
};

inline int pool_run(sf_call *, void *payload) {
    static_cast<pool_task *>(payload)->run();
    return 0;
}

inline void pool_done(int, sf_result *, int, void *payload) noexcept {
    delete static_cast<pool_task *>(payload);
}

inline sf_group *pool_group() {
    static sf_group *const g = [] {
        sf_group *made = nullptr;
        int rc = sf_group_new(&made, nullptr);
        if (rc != SF_OK) throw error(rc, "cannot create the group behind run_async's pool");
        return made;
    }();
    return g;
}

}  // namespace detail

// One caller's reference to a flight's shared value.  Copies share the value
// (each copy holds its own reference on the C result); the value is destroyed
// once, after the last copy (and the last share()) is gone, on that thread.
// The value is immutable: every caller sees the same object.
template <class T>
class result {
public:
    result(const result &o) noexcept : r_(sf_result_retain(o.r_)), shared_(o.shared_) {}
    result(result &&o) noexcept : r_(std::exchange(o.r_, nullptr)), shared_(o.shared_) {}
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
    template <class U>
    friend void detail::async_done(int, sf_result *, int, void *) noexcept;

    result(detail::owned_result r, bool shared) noexcept : r_(r.release()), shared_(shared) {}

    sf_result *r_;
    bool shared_;
};

namespace detail {

// What flight<T> and shared_flight have in common: one caller's owning
// handle on a flight (move-only, released on destruction), its role and
// its eventfd.
class call_handle {
public:
    call_handle(const call_handle &) = delete;
    call_handle &operator=(const call_handle &) = delete;

    // True when this caller started the flight and must complete it.
    bool leader() const noexcept { return leader_; }

    // An eventfd that becomes readable once the flight completes (in
    // whichever process completes it, for a shared group), for poll/epoll
    // loops.  Owned by this handle: do not close it.
    int fd() const {
        int fd = sf_call_fd(c_);
        check(fd);
        return fd;
    }

    // The C handle, borrowed: valid while this object holds it.
    sf_call *native_handle() const noexcept { return c_; }

protected:
    call_handle(sf_call *c, bool leader) noexcept : c_(c), leader_(leader) {}
    call_handle(call_handle &&o) noexcept : c_(std::exchange(o.c_, nullptr)), leader_(o.leader_) {}
    call_handle &operator=(call_handle &&o) noexcept {
        if (this != &o) {
            sf_call_release(c_);
            c_ = std::exchange(o.c_, nullptr);
            leader_ = o.leader_;
        }
        return *this;
    }
    // An unfinished leader's release completes its flight as SF_EGOEXIT.
    ~call_handle() { sf_call_release(c_); }

    static void check(int rc) {
        if (rc < 0) throw error(rc);
    }

    sf_call *c_;
    bool leader_;
};

}  // namespace detail

// The two-phase form, for callers that produce the value themselves (event
// loops, work split across callbacks).  Obtained from group::begin<T>().  A
// leader must finish() or fail(); destroying an unfinished leader releases
// its followers with SF_EGOEXIT (Go's Goexit), so nobody waits forever.
// Move-only; the handle may move between threads but is not for concurrent
// use.
template <class T>
class flight : public detail::call_handle {
public:
    flight(flight &&) noexcept = default;
    flight &operator=(flight &&) noexcept = default;

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
        if (!e) throw error(SF_EINVAL, "fail() needs an exception");
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

private:
    friend class group;
    flight(sf_call *c, bool leader) noexcept : call_handle(c, leader) {}

    std::optional<result<T>> wait_ns(sf_i64 ns) {
        sf_result *raw = nullptr;
        int shared = 0;
        int rc = sf_call_wait(c_, ns, &raw, &shared);
        if (rc == SF_ETIMEDOUT) return std::nullopt;
        auto owned = detail::settle<T>(rc, raw);
        return result<T>(std::move(owned), shared != 0);
    }
};

// What run_async hands the work, when fn takes it: the leader's view of
// the callers' interest.  Valid while fn runs.
class abandon_token {
public:
    // True once every caller has given up (cancel() or destruction of each
    // caller's singleflight::future): nobody will see the value, so the work
    // may stop.  A cheap atomic read; thread-safe.
    bool abandoned() const noexcept { return sf_call_abandoned(call_->c) == 1; }

    // Registers f to run once when the flight is abandoned, on the thread of
    // the last caller to give up (inside its cancel() or destructor), or at
    // once on this thread if it already has been: cancel the work's I/O
    // there.  One callback per flight: a second registration throws
    // singleflight::error(SF_ESTATE).  f is copied and must not throw (that
    // ends the program) nor call on_abandon.
    template <class F>
    void on_abandon(F &&f) const {
        std::lock_guard<std::mutex> lock(call_->m);
        if (call_->on_abandon) throw error(SF_ESTATE, "the flight already has an abandon callback");
        call_->on_abandon = std::forward<F>(f);
        int rc = sf_call_on_abandon(call_->c, &detail::run_on_abandon, call_);
        if (rc != SF_OK) {
            call_->on_abandon = nullptr;
            throw error(rc);
        }
    }

    // The leader's C handle, borrowed: valid while fn runs.
    sf_call *native_handle() const noexcept { return call_->c; }

private:
    template <class, class>
    friend struct detail::leader_work;
    explicit abandon_token(detail::shared_call *call) noexcept : call_(call) {}

    detail::shared_call *call_;
};

namespace detail {

// The value type of a run_async fn, which may take an abandon_token.
template <class Fn>
using async_value_t =
    std::decay_t<typename std::conditional_t<std::is_invocable_v<Fn &&, const abandon_token &>,
                                             std::invoke_result<Fn &&, const abandon_token &>,
                                             std::invoke_result<Fn &&>>::type>;

// The leader's work, run once by the executor: produces the value, then
// finishes the flight under the handle's lock.  Destroyed before it
// finished (an executor that dropped it unrun, or a thread exit inside fn),
// it completes the flight as panicked, so nobody waits forever.
template <class Fn, class T>
struct leader_work {
    template <class F>
    leader_work(F &&f, std::shared_ptr<shared_call> c)
        : fn(std::forward<F>(f)), call(std::move(c)) {}
    leader_work(const leader_work &) = delete;
    leader_work &operator=(const leader_work &) = delete;
    ~leader_work() {
        if (!call) return;
        std::lock_guard<std::mutex> lock(call->m);
        sf_call_panic(call->c,
                      "singleflight: the work did not run to its end "
                      "(the executor dropped it, or its thread exited)");
    }

    SINGLEFLIGHT_FORCED_UNWIND_SAFE_ void operator()() {
        abandon_token token(call.get());
        box<T> *b = produce<T>([&]() -> decltype(auto) {
            if constexpr (std::is_invocable_v<Fn &&, const abandon_token &>)
                return std::invoke(std::move(fn), token);
            else return std::invoke(std::move(fn));
        });
        {
            std::lock_guard<std::mutex> lock(call->m);
            publish(call->c, b);
            (void)sf_call_finish(call->c, 0);  // SF_ESTATE after a panic
        }
        call.reset();
    }

    Fn fn;
    std::shared_ptr<shared_call> call;
};

}  // namespace detail

// One run_async caller's claim on a flight's value: std::future's get /
// wait / wait_for, plus cancel().  Move-only.  Giving up (cancel(), or
// destroying the future before the flight completed) withdraws this caller
// only: the others still get the value.  When every caller of the flight
// has given up while the work runs, the flight is abandoned: the key is
// free for a new flight at once, and the work can see it through its
// abandon_token.  A future must not be used concurrently with itself.
template <class T>
class future {
public:
    future() noexcept = default;
    future(future &&) noexcept = default;
    future &operator=(future &&o) noexcept {
        if (this != &o) {
            cancel();
            f_ = std::move(o.f_);
            call_ = std::move(o.call_);
            leader_ = o.leader_;
        }
        return *this;
    }
    future(const future &) = delete;
    future &operator=(const future &) = delete;
    // Gives up if the flight has not completed (see cancel()).
    ~future() { cancel(); }

    // Waits for the flight, then returns the value or rethrows what run()
    // would have thrown; singleflight::error(SF_ECANCELED) after cancel().
    // Once only, as for std::future.
    result<T> get() {
        auto r = f_.get();
        call_.reset();
        return r;
    }
    void wait() const { f_.wait(); }
    template <class Rep, class Period>
    std::future_status wait_for(const std::chrono::duration<Rep, Period> &d) const {
        return f_.wait_for(d);
    }
    // False for a default-constructed or moved-from future, or after get().
    bool valid() const noexcept { return f_.valid(); }
    // True when this caller started the flight (its fn is the one running).
    bool leader() const noexcept { return leader_; }

    // Gives up this caller's interest: get() then throws
    // singleflight::error(SF_ECANCELED) at once, and the others are not
    // affected; the last caller to give up runs the work's abandon callback
    // on this thread.  True when this call gave up; false when there was
    // nothing to give up (the flight had completed, or already given up).
    bool cancel() noexcept {
        if (!call_) return false;
        int rc;
        {
            std::lock_guard<std::mutex> lock(call_->m);
            rc = sf_call_cancel(call_->c);
        }
        call_.reset();
        return rc >= 0;
    }

private:
    friend class group;
    future(std::future<result<T>> f, std::shared_ptr<detail::shared_call> call,
           bool leader) noexcept
        : f_(std::move(f)), call_(std::move(call)), leader_(leader) {}

    std::future<result<T>> f_;
    std::shared_ptr<detail::shared_call> call_;
    bool leader_ = false;
};

namespace detail {

// What group and shared_group have in common: this process's one owning
// handle on a C group (move-only, freed on destruction), forget and stats.
class group_handle {
public:
    group_handle(const group_handle &) = delete;
    group_handle &operator=(const group_handle &) = delete;

    // Makes the next caller of key (in any process, for a shared group)
    // start a new flight; the current one still delivers to its own
    // callers.  True when a flight was forgotten.
    bool forget(std::string_view key) {
        int rc = sf_group_forget(g_, key.data(), key.size());
        check(rc);
        return rc == 1;
    }
    bool forget(const char *key) { return forget(c_string_key(key)); }
    void forget(std::nullptr_t) = delete;

    // A snapshot of the group's counters (for a shared group, summed over
    // every process attached, with stats version 3's processes, arena_used
    // and high-water marks).
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

protected:
    group_handle() noexcept = default;
    group_handle(group_handle &&o) noexcept : g_(std::exchange(o.g_, nullptr)) {}
    group_handle &operator=(group_handle &&o) noexcept {
        if (this != &o) {
            close();
            g_ = std::exchange(o.g_, nullptr);
        }
        return *this;
    }
    // See ~group and ~shared_group.
    ~group_handle() { close(); }

    static void check(int rc) {
        if (rc < 0) throw error(rc);
    }

    sf_group *g_ = nullptr;

private:
    void close() noexcept {
        if (g_ != nullptr) (void)sf_group_free(g_);  // SF_EBUSY: leaked on purpose
        g_ = nullptr;
    }
};

}  // namespace detail

// A namespace of keys: concurrent run()/begin() calls with the same key share
// one flight.  Owns its C group; move-only.  Every member is thread-safe
// except destruction and assignment, which need every flight of the group to
// be over (see ~group).
//
// Keys are any bytes, as a std::string_view (or anything that converts to
// one), borrowed for the call only.  A const char * key is read up to its
// NUL; a null one throws singleflight::error(SF_EINVAL) before anything
// runs, and a literal nullptr does not compile.
class group : public detail::group_handle {
public:
    // Creates a group; shards == 0 lets the library choose.  Throws
    // singleflight::error on failure.
    explicit group(unsigned shards = 0) {
        sf_group_options opts;
        check(sf_group_options_init(&opts, SF_GROUP_OPTIONS_VERSION));
        opts.shards = shards;
        check(sf_group_new(&g_, &opts));
    }
    group(group &&) noexcept = default;
    group &operator=(group &&) noexcept = default;

    // Frees the group.  Results already obtained stay valid.  Destroying a
    // group while a flight or a flight<T> handle of it is alive is a bug;
    // the C group is then leaked rather than freed under its users.
    ~group() = default;

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
    auto run(std::string_view key, F &&fn) -> result<std::decay_t<std::invoke_result_t<F>>> {
        using T = std::decay_t<std::invoke_result_t<F>>;
        static_assert(!std::is_void_v<T>, "fn must return the value to share");
        sf_result *raw = nullptr;
        int shared = 0;
        std::remove_reference_t<F> *target = std::addressof(fn);
        int rc = sf_group_do(g_, key.data(), key.size(), &detail::trampoline<F, T>, &target, &raw,
                             &shared);
        auto owned = detail::settle<T>(rc, raw);
        return result<T>(std::move(owned), shared != 0);
    }
    template <class F>
    auto run(const char *key, F &&fn) -> result<std::decay_t<std::invoke_result_t<F>>> {
        return run(detail::c_string_key(key), std::forward<F>(fn));
    }
    template <class F>
    void run(std::nullptr_t, F &&) = delete;

    // Go's DoChan, with giving up.  Starts or joins key's flight and
    // returns at once.  When this caller leads, fn runs on the C library's
    // built-in pool (or is handed to exec, below), called with an
    // abandon_token if it takes one (fn(const abandon_token &)), else with
    // no argument.  The future yields what run() would have returned, or
    // rethrows what run() would have thrown.  fn is decay-copied (or
    // moved) into the call, and only a leader keeps it, until it has run;
    // it must be callable from another thread.
    //
    // Each caller may give up (future::cancel(), or destroying the future
    // early) without affecting the others, the leader's caller included:
    // the work goes on for those who wait.  Once every caller has given up,
    // the flight is abandoned: the key is free, and the work learns it from
    // its abandon_token.  Throws singleflight::error when the flight cannot
    // be started (SF_EBUSY: the pool refused the work; the callers that
    // joined meanwhile get a panic saying so).
    template <class F>
    auto run_async(std::string_view key, F &&fn) -> future<detail::async_value_t<std::decay_t<F>>> {
        return run_async(key, std::forward<F>(fn), [](std::function<void()> task) {
            auto t = std::make_unique<detail::pool_task>(detail::pool_task{std::move(task)});
            const void *id = t.get();
            int rc = sf_group_do_async(detail::pool_group(), &id, sizeof id, &detail::pool_run,
                                       t.get(), &detail::pool_done, t.get());
            if (rc != SF_OK) throw error(rc, "the library's pool refused the work");
            t.release();  // pool_done frees it
        });
    }
    template <class F>
    auto run_async(const char *key, F &&fn) -> future<detail::async_value_t<std::decay_t<F>>> {
        return run_async(detail::c_string_key(key), std::forward<F>(fn));
    }
    template <class F>
    void run_async(std::nullptr_t, F &&) = delete;

    // As above, with the leader's work handed to exec, a callable taking a
    // std::function<void()> that must run it once, on any thread (a thread
    // pool's submit, say).  If exec throws, the flight is completed as
    // panicked for the callers that joined and the exception propagates; if
    // it destroys the task unrun, they get SF_EGOEXIT.
    template <class F, class Exec>
    auto run_async(std::string_view key, F &&fn, Exec &&exec)
        -> future<detail::async_value_t<std::decay_t<F>>> {
        using Fn = std::decay_t<F>;
        using T = detail::async_value_t<Fn>;
        static_assert(!std::is_void_v<T>, "fn must return the value to share");
        sf_call *c = nullptr;
        const int role = sf_group_begin(g_, key.data(), key.size(), &c);
        check(role);
        std::shared_ptr<detail::shared_call> call;
        try {
            call = std::make_shared<detail::shared_call>(c);
        } catch (...) {
            if (role == SF_LEADER) sf_call_panic(c, "singleflight: out of memory");
            sf_call_release(c);
            throw;
        }
        auto promise = std::make_unique<std::promise<result<T>>>();
        future<T> out(promise->get_future(), call, role == SF_LEADER);
        check(sf_call_on_done(c, &detail::async_done<T>, promise.get()));
        promise.release();  // async_done owns it now
        if (role == SF_LEADER) {
            // The work runs on exec's thread, not this one: a later run() on
            // this thread for the same key must wait for it, not be refused
            // as waiting on itself.
            sf_call_disown(c);
            auto work = std::make_shared<detail::leader_work<Fn, T>>(std::forward<F>(fn), call);
            try {
                std::forward<Exec>(exec)(std::function<void()>([work] { (*work)(); }));
            } catch (...) {
                {
                    std::lock_guard<std::mutex> lock(call->m);
                    sf_call_panic(c, "singleflight: the executor refused the work");
                }
                throw;
            }
        }
        return out;
    }
    template <class F, class Exec>
    auto run_async(const char *key, F &&fn, Exec &&exec)
        -> future<detail::async_value_t<std::decay_t<F>>> {
        return run_async(detail::c_string_key(key), std::forward<F>(fn), std::forward<Exec>(exec));
    }

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

    // As forget(), but only while nobody has joined the flight.
    bool forget_unshared(std::string_view key) {
        int rc = sf_group_forget_unshared(g_, key.data(), key.size());
        check(rc);
        return rc == 1;
    }
    bool forget_unshared(const char *key) { return forget_unshared(detail::c_string_key(key)); }
    void forget_unshared(std::nullptr_t) = delete;
};

// ---- shared groups: one flight per key across the processes of a host ------
//
//   singleflight::shared_group g("users");          // every worker opens it
//   auto r = g.run("user:42", [] { return load_row(42); });  // a std::string
//   use(r.value(), r.shared());
//
// Values cross processes as bytes, so fn returns them as bytes: a
// std::string, a std::string_view or a contiguous container of 1-byte
// elements (std::vector<char>, std::vector<unsigned char>, std::vector<
// std::byte>, ...), copied into the segment; every caller in every process
// gets the same bytes as a std::string.  An exception cannot cross a
// process: the leader rethrows its own exception (original type), and the
// followers, in this process or another, throw singleflight::panic_error
// carrying its what().  A leader whose process dies inside fn (SIGKILL
// included), or whose thread exits there, makes every follower throw
// singleflight::error(SF_EGOEXIT); the next caller of the key leads afresh.

// What shared_group's constructor passes to sf_group_open_shared.  Zero
// sizes take the library's defaults (or, for a later opener, the segment's).
struct shared_options {
    // A file to map instead of POSIX shared memory (a volume that containers
    // share); the group's name must then be empty.
    std::string path;
    unsigned table_slots = 0;           // flights in flight at once; 0: 4096
    unsigned max_processes = 0;         // processes attached at once; 0: 64
    std::uint64_t arena_bytes = 0;      // 0: 16 MiB
    std::uint64_t max_value_bytes = 0;  // the largest value; 0: 1 MiB
    unsigned mode = 0;                  // the segment's permissions; 0: 0600
    bool run_unshared = false;          // full table/arena: coalesce in-process
};

class bytes_result;
namespace detail {
inline bytes_result settle_bytes(int rc, sf_result *raw, int shared);
}  // namespace detail

// One caller's copy of a shared flight's value, and whether it was shared.
// An ordinary value type: copies are independent, usable on any thread.
class bytes_result {
public:
    // The flight's bytes (any bytes, NULs included).
    const std::string &value() const noexcept { return value_; }
    const std::string &operator*() const noexcept { return value_; }
    const std::string *operator->() const noexcept { return &value_; }
    // Go's `shared`: true for every follower, and for the leader when a
    // caller in any process joined its flight.
    bool shared() const noexcept { return shared_; }

private:
    friend bytes_result detail::settle_bytes(int, sf_result *, int);
    bytes_result(std::string v, bool shared) : value_(std::move(v)), shared_(shared) {}

    std::string value_;
    bool shared_;
};

namespace detail {

// The bytes of a value fn returned: anything a std::string_view can be made
// from, or a contiguous container of 1-byte trivially copyable elements.
template <class V>
std::string_view byte_view(const V &v) {
    if constexpr (std::is_convertible_v<const V &, std::string_view>) {
        return std::string_view(v);
    } else {
        using E = std::remove_cv_t<std::remove_pointer_t<decltype(std::data(v))>>;
        static_assert(sizeof(E) == 1 && std::is_trivially_copyable_v<E>,
                      "a shared group's fn returns bytes: std::string, std::string_view or a "
                      "contiguous container of 1-byte elements");
        return std::string_view(reinterpret_cast<const char *>(std::data(v)), std::size(v));
    }
}

// What the leader's trampoline shares with shared_group::run's frame: fn,
// and what went wrong while publishing, for the leader to rethrow.
template <class F>
struct bytes_leader {
    std::remove_reference_t<F> *fn;
    std::exception_ptr thrown;  // fn's exception, rethrown in the leader
    int store_rc = SF_OK;       // sf_call_set_bytes's refusal, if any
};

// Publishes the leader's bytes, or its failure as the flight's panic.
inline void publish_bytes(sf_call *call, std::string_view bytes, int &store_rc) noexcept {
    int rc = sf_call_set_bytes(call, bytes.data(), bytes.size());
    if (rc == SF_OK) return;
    store_rc = rc;
    // Without a value the followers would read nothing: fail them instead,
    // with the reason (too large for max_value_bytes, or no room).
    sf_call_panic(call, rc == SF_EINVAL
                            ? "singleflight: the value is larger than the group's max_value_bytes"
                            : "singleflight: no room for the value in the shared group");
}

// Publishes an exception as the flight's panic, its what() as the message.
inline void publish_exception(sf_call *call, const std::exception_ptr &e) noexcept {
    std::string message;
    try {
        message = describe(e);
    } catch (...) {
        // Out of memory copying what(): the panic goes out without text.
    }
    sf_call_panic(call, message.empty() ? nullptr : message.c_str());
}

// The sf_fn of shared_group::run.  Every ordinary exception stops here; a
// forced unwind (the thread exiting inside fn) goes on, so that the library
// releases the followers with SF_EGOEXIT (see produce()).
template <class F>
SINGLEFLIGHT_FORCED_UNWIND_SAFE_ int bytes_trampoline(sf_call *call, void *payload) {
    auto &st = *static_cast<bytes_leader<F> *>(payload);
    try {
        const auto &value = std::invoke(std::forward<F>(*st.fn));
        publish_bytes(call, byte_view(value), st.store_rc);
#if defined(__GLIBCXX__)
    } catch (abi::__forced_unwind &) {
        throw;
#endif
    } catch (...) {
        st.thrown = std::current_exception();
        publish_exception(call, st.thrown);
    }
    return 0;
}

// Turns a completed shared flight into this caller's bytes or exception.
// Takes ownership of raw in every case.
inline bytes_result settle_bytes(int rc, sf_result *raw, int shared) {
    owned_result owned(raw);
    if (rc == SF_EPANIC) throw panic_error(sf_result_panic_message(raw));
    if (rc != SF_OK) throw error(rc);
    std::size_t n = 0;
    const void *p = sf_result_bytes(raw, &n);
    // Only a leader outside this wrapper can finish without bytes.
    if (p == nullptr) throw error(SF_ESTATE, "the flight completed without a byte value");
    return bytes_result(std::string(static_cast<const char *>(p), n), shared != 0);
}

}  // namespace detail

// The two-phase form on a shared group, obtained from shared_group::begin():
// the leader produces the bytes itself (an event loop, say), followers wait.
// An unfinished leader's destruction releases its followers, in every
// process, with SF_EGOEXIT.  Move-only; may move between threads, not for
// concurrent use.
class shared_flight : public detail::call_handle {
public:
    shared_flight(shared_flight &&) noexcept = default;
    shared_flight &operator=(shared_flight &&) noexcept = default;

    // Leader only: copies bytes (see byte_view for what a value may be)
    // into the flight and wakes every follower in every process.  Throws
    // singleflight::error: SF_ESTATE for a follower or a finished flight,
    // SF_EINVAL when larger than max_value_bytes, SF_ENOMEM; the flight
    // then stays unfinished (fail() or destruction ends it).
    template <class V>
    void finish(const V &bytes) {
        const std::string_view b = detail::byte_view(bytes);
        check(sf_call_set_bytes(c_, b.data(), b.size()));
        check(sf_call_finish(c_, 0));
    }

    // Leader only: completes the flight as panicked; every caller's wait()
    // throws singleflight::panic_error with e's what().  A null e is
    // SF_EINVAL; otherwise the errors of finish().
    void fail(const std::exception_ptr &e) {
        if (!e) throw error(SF_EINVAL, "fail() needs an exception");
        check(sf_call_panic(c_, detail::describe(e).c_str()));
    }

    // Blocks until the flight completes, then returns its bytes or throws
    // (panic_error, error(SF_EGOEXIT), ...).  A leader may wait after
    // finishing; before that it is error(SF_EDEADLK).
    bytes_result wait() { return *wait_ns(-1); }

    // As wait(), giving up after timeout (zero polls): std::nullopt when the
    // flight has not completed yet.
    template <class Rep, class Period>
    std::optional<bytes_result> wait_for(std::chrono::duration<Rep, Period> timeout) {
        auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(timeout).count();
        return wait_ns(ns < 0 ? 0 : static_cast<sf_i64>(ns));
    }

private:
    friend class shared_group;
    shared_flight(sf_call *c, bool leader) noexcept : call_handle(c, leader) {}

    std::optional<bytes_result> wait_ns(sf_i64 ns) {
        sf_result *raw = nullptr;
        int shared = 0;
        int rc = sf_call_wait(c_, ns, &raw, &shared);
        if (rc == SF_ETIMEDOUT) return std::nullopt;
        return detail::settle_bytes(rc, raw, shared);
    }
};

// This process's attachment to a group in shared memory (POSIX shm by name,
// or a file): run()/begin() for a key share one flight with every process
// that opened the same group.  Owns its C handle; move-only.  Every member
// is thread-safe except destruction and assignment, which need this
// attachment's flights to be over.  The last process to close the group
// removes its segment.
class shared_group : public detail::group_handle {
public:
    // Opens (creating if no process has it open) the group called name: 1
    // to 200 bytes of [A-Za-z0-9._-], not starting with '.'; or, with an
    // empty name, the file opts.path.  Throws singleflight::error: SF_EINVAL
    // (a bad name or option), SF_EPERM (another user's segment, or wider
    // permissions than opts.mode), SF_EINCOMPAT (another layout or other
    // sizes than asked for), SF_EBUSY (max_processes attached), SF_ENOMEM.
    explicit shared_group(std::string_view name, const shared_options &opts = {}) {
        sf_shared_options o;
        check(sf_shared_options_init(&o, SF_SHARED_OPTIONS_VERSION));
        o.flags = opts.run_unshared ? SF_SHARED_RUN_UNSHARED : 0u;
        o.path = opts.path.empty() ? nullptr : opts.path.c_str();
        o.table_slots = opts.table_slots;
        o.max_processes = opts.max_processes;
        o.arena_bytes = opts.arena_bytes;
        o.max_value_bytes = opts.max_value_bytes;
        o.mode = opts.mode;
        const std::string n(name);  // the C API wants it NUL-terminated
        check(sf_group_open_shared(name.empty() ? nullptr : n.c_str(), &o, &g_));
    }
    shared_group(shared_group &&) noexcept = default;
    shared_group &operator=(shared_group &&) noexcept = default;

    // Detaches this process.  Destroying it while one of its flights or
    // shared_flight handles is alive is a bug; the attachment then leaks.
    ~shared_group() = default;

    // Go's Do across processes: runs fn() once for all concurrent callers
    // of key in every process attached, on the first caller's thread, and
    // gives each caller fn's bytes (see byte_view) and the shared flag.
    // If fn throws, the leader rethrows that exception and every follower
    // throws singleflight::panic_error with its what().  Throws
    // singleflight::error for the other outcomes: SF_EGOEXIT (the leader's
    // process died or its thread exited inside fn), SF_EDEADLK (fn runs key
    // on this group on its own thread), SF_ENOMEM (no room in the table or
    // arena); the leader throws SF_EINVAL when the value exceeds
    // max_value_bytes (its followers get a panic_error saying so).  fn is
    // borrowed for the call only and runs at most once.
    template <class F>
    bytes_result run(std::string_view key, F &&fn) {
        static_assert(!std::is_void_v<std::invoke_result_t<F>>,
                      "fn must return the bytes to share");
        detail::bytes_leader<F> st{std::addressof(fn), nullptr, SF_OK};
        sf_result *raw = nullptr;
        int shared = 0;
        int rc = sf_group_do(g_, key.data(), key.size(), &detail::bytes_trampoline<F>, &st, &raw,
                             &shared);
        if (st.thrown) {
            sf_result_release(raw);
            std::rethrow_exception(st.thrown);
        }
        if (st.store_rc != SF_OK) {
            sf_result_release(raw);
            throw error(st.store_rc, "storing the value in the shared group");
        }
        return detail::settle_bytes(rc, raw, shared);
    }
    template <class F>
    bytes_result run(const char *key, F &&fn) {
        return run(detail::c_string_key(key), std::forward<F>(fn));
    }
    template <class F>
    void run(std::nullptr_t, F &&) = delete;

    // Starts or joins key's flight without running anything (the two-phase
    // form).  Throws singleflight::error on failure (SF_ENOMEM: no room).
    shared_flight begin(std::string_view key) {
        sf_call *c = nullptr;
        int rc = sf_group_begin(g_, key.data(), key.size(), &c);
        check(rc);
        return shared_flight(c, rc == SF_LEADER);
    }
    shared_flight begin(const char *key) { return begin(detail::c_string_key(key)); }
    void begin(std::nullptr_t) = delete;
};

}  // namespace singleflight

#endif  // SINGLEFLIGHT_HPP
