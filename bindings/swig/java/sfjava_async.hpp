// sfjava_async.hpp - the native half of Group.callAsync (issue 12).
//
// The Java async callers of one key in one Group share one AsyncFlight, and
// an AsyncFlight is one party of a C flight: one sf_call, a leader's or a
// follower's.  No Java thread waits for it.  A follower flight is completed
// by the C library's done callback, an upcall into AsyncFlight.delivered on
// the thread that completes the C flight (in practice the Java thread whose
// stage completed the leader; any other thread is attached for the upcall
// and detached after it).  A leader flight is completed by its own Java code.
// When every party has given up, the abandon callback runs on the thread of
// the last one leaving and upcalls AsyncFlight.abandoned, which cancels the
// leader's stage.
//
// Handles are passed to Java as longs.  Who may use one when is decided on
// the Java side (AsyncFlight), because callers give up at any moment on any
// thread: a follower flight's handle is released by whoever claims it first
// (the done callback or the give-up), a leader's only by the code that
// finishes the flight.
//
// The uncontended path (a Java leader that nobody joined in C) crosses JNI
// twice, begin and finish, through two hand-written natives of AsyncFlight
// (at the end of this file) that take and return only primitives: the key
// arrives packed in three longs when it is up to 24 bytes, the handle and
// the role go back in one long, and neither calls a JNI function.  The rest
// is called from the generated SWIG wrappers, which catch C++ exceptions;
// the hand-written natives and the callbacks are noexcept and leave no Java
// exception pending.
#ifndef SFJAVA_ASYNC_HPP
#define SFJAVA_ASYNC_HPP

#include <jni.h>

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>

#include "sfswig.hpp"

namespace sfjava {

#ifndef SWIG

// The VM every global reference belongs to (a process has one).  Set from a
// Java thread before the first reference this module makes.
inline std::atomic<JavaVM *> &vm() {
    static std::atomic<JavaVM *> v{nullptr};
    return v;
}

inline void remember_vm(JNIEnv *env) {
    if (vm().load(std::memory_order_acquire)) return;
    JavaVM *v = nullptr;
    if (env->GetJavaVM(&v) == JNI_OK) vm().store(v, std::memory_order_release);
}

// The calling thread's JNIEnv.  A thread the VM does not know (possible
// only when something outside Java completes or leaves a flight) is
// attached as a daemon for the guard's lifetime: attaching is slow, but it
// never happens on the paths Java code drives.  get() is NULL when there is
// no VM or attaching failed; then nothing Java can be touched.
class Env {
public:
    Env() noexcept {
        JavaVM *v = vm().load(std::memory_order_acquire);
        if (!v) return;
        jint rc = v->GetEnv(reinterpret_cast<void **>(&env_), JNI_VERSION_1_6);
        if (rc == JNI_EDETACHED) {
            if (v->AttachCurrentThreadAsDaemon(reinterpret_cast<void **>(&env_), nullptr) == JNI_OK)
                attached_ = v;
            else env_ = nullptr;
        } else if (rc != JNI_OK) {
            env_ = nullptr;
        }
    }
    ~Env() {
        if (attached_) attached_->DetachCurrentThread();
    }
    Env(const Env &) = delete;
    Env &operator=(const Env &) = delete;
    JNIEnv *get() const noexcept { return env_; }

private:
    JNIEnv *env_ = nullptr;
    JavaVM *attached_ = nullptr;
};

// JNI global references this file made and has not deleted yet: the async
// leak tests compare it with its value before.
inline std::atomic<long> &live_refs() {
    static std::atomic<long> n{0};
    return n;
}

inline jobject new_global(JNIEnv *env, jobject obj) {
    jobject ref = env->NewGlobalRef(obj);
    if (!ref) throw std::bad_alloc();
    live_refs().fetch_add(1, std::memory_order_relaxed);
    return ref;
}

inline void delete_global(JNIEnv *env, jobject ref) noexcept {
    env->DeleteGlobalRef(ref);
    live_refs().fetch_sub(1, std::memory_order_relaxed);
}

// What the upcalls need, looked up once by async_init from AsyncFlight's
// static initializer (a Java thread, with AsyncFlight's class loader: a
// FindClass on a callback thread could see another loader, or none).
struct Upcalls {
    jclass cls = nullptr;           // AsyncFlight, a global reference
    jmethodID delivered = nullptr;  // static long delivered(AsyncFlight, int, Object, String)
    jmethodID abandoned = nullptr;  // static void abandoned(AsyncFlight)
    jfieldID abandon = nullptr;     // long abandonPayload
};
inline Upcalls &upcalls() {
    static Upcalls u;
    return u;
}

// callAsync's view of a C group.  Two things must stay alive, each for its
// own users, without a lock on the path of every call:
//
//  - the C group (`group`), used by begins and by the handles they made.
//    `uses` counts the handles not yet released and the begins in progress;
//    its kClosed bit is set once, by close_group (Group.close, or the
//    Cleaner).  A begin counts itself in only while the bit is clear (a CAS,
//    so no count lands after it), and whoever brings `uses` to exactly
//    kClosed, closing or releasing, drops the group: sf_group_free would
//    refuse (SF_EBUSY) a group with a handle out, so the last of them frees
//    it instead.
//  - this struct, read by every begin and every release.  `owners` is one
//    for the Java Group, dropped only by its Cleaner, once no Java code can
//    begin on it any more (callAsync keeps the Group reachable until its
//    begin has returned), and one for the group, dropped with it.  A closed
//    Group's struct, a few words, stays until the Group is collected.
struct AsyncGroup {
    explicit AsyncGroup(std::shared_ptr<sf_group> g) : group(std::move(g)) {}
    static constexpr long kClosed = 1L << 62;
    std::shared_ptr<sf_group> group;
    std::atomic<long> uses{0};
    std::atomic<int> owners{2};
};

inline AsyncGroup *as_group(long long p) { return reinterpret_cast<AsyncGroup *>(p); }
inline sf_call *as_call(long long p) { return reinterpret_cast<sf_call *>(p); }

inline void drop_owner(AsyncGroup *ag) noexcept {
    if (ag->owners.fetch_sub(1, std::memory_order_acq_rel) == 1) delete ag;
}

// Closed and unused: nobody reads `group` any more.
inline void drop_group(AsyncGroup *ag) noexcept {
    ag->group.reset();
    drop_owner(ag);
}

// A begin counts itself in; false once the group is closed.
inline bool acquire_use(AsyncGroup *ag) noexcept {
    long n = ag->uses.load(std::memory_order_relaxed);
    do {
        if (n & AsyncGroup::kClosed) return false;
    } while (!ag->uses.compare_exchange_weak(n, n + 1, std::memory_order_acquire,
                                             std::memory_order_relaxed));
    return true;
}

// A handle released, or a begin that made none.
inline void release_use(AsyncGroup *ag) noexcept {
    if (ag->uses.fetch_sub(1, std::memory_order_acq_rel) == AsyncGroup::kClosed + 1) drop_group(ag);
}

// Takes no more begins; the group goes with the last handle.  Idempotent.
inline void close_group(AsyncGroup *ag) noexcept {
    long n = ag->uses.fetch_or(AsyncGroup::kClosed, std::memory_order_acq_rel);
    if (n == 0) drop_group(ag);
}

// Releases a handle that the Java side has claimed, and its use of the group.
inline void release_call(AsyncGroup *ag, sf_call *call) noexcept {
    sf_call_release(call);
    release_use(ag);
}

// A follower's done callback payload: its future, held by a global reference
// until the callback (which runs exactly once) has delivered to it.
struct FollowerPayload {
    jobject flight;
    AsyncGroup *ag;
};

// A leader's abandon callback payload.  Two owners: the callback, and the
// code finishing the flight, which learns after finishing whether the
// callback will ever run (sf_call_abandoned) and if not drops both shares.
struct LeaderPayload {
    jobject flight;
    std::atomic<int> owners{2};
};

inline void drop(LeaderPayload *lp, JNIEnv *env, int shares) noexcept {
    if (lp->owners.fetch_sub(shares, std::memory_order_acq_rel) != shares) return;
    if (env) delete_global(env, lp->flight);
    delete lp;
}

// After an upcall: nothing may stay pending on a thread that returns into C
// (or, in a callback, into an unrelated native frame).  AsyncFlight catches
// everything itself, so only a VM error (a StackOverflowError) lands here.
inline bool upcall_failed(JNIEnv *env) noexcept {
    if (!env->ExceptionCheck()) return false;
    env->ExceptionDescribe();
    env->ExceptionClear();
    return true;
}

// Gives payload (new, owned here) a global reference to flight and hands it
// to a callback registration, which owns it from then on: for a follower the
// callback may already have run and freed it when this returns.  On failure
// nothing is left behind.
template <class Payload, class Register>
Payload *register_payload(JNIEnv *env, jobject flight, Payload *payload, const char *what,
                          Register reg) {
    std::unique_ptr<Payload> owned(payload);
    owned->flight = new_global(env, flight);
    int rc = reg(owned.get());
    if (rc != SF_OK) {
        delete_global(env, owned->flight);
        throw sfswig::Error(rc, what);
    }
    return owned.release();
}

inline void on_done(int status, sf_result *result, int /*shared*/, void *payload) noexcept {
    FollowerPayload *fp = static_cast<FollowerPayload *>(payload);
    Env guard;
    JNIEnv *env = guard.get();
    // SF_ECANCELED: this flight gave up, through AsyncFlight, which claimed
    // the handle before asking C to cancel, and has nobody left to serve.
    if (env && status != SF_ECANCELED) {
        const Upcalls &u = upcalls();
        // The value is the leader's global reference, valid on any thread;
        // passing it creates no local reference.
        jobject value = static_cast<jobject>(sf_result_value(result));
        jstring message = nullptr;
        if (status == SF_EPANIC && !value) {
            const char *m = sf_result_panic_message(result);
            message = env->NewStringUTF(m ? m : "panic");
            if (!message) env->ExceptionClear();  // out of memory: a generic message
        }
        jlong claimed = env->CallStaticLongMethod(u.cls, u.delivered, fp->flight,
                                                  static_cast<jint>(status), value, message);
        if (upcall_failed(env)) claimed = 0;
        if (message) env->DeleteLocalRef(message);
        if (claimed) release_call(fp->ag, as_call(claimed));
    }
    if (env) delete_global(env, fp->flight);
    delete fp;
}

inline void on_abandon(sf_call *, void *payload) noexcept {
    LeaderPayload *lp = static_cast<LeaderPayload *>(payload);
    Env guard;
    JNIEnv *env = guard.get();
    if (env) {
        env->CallStaticVoidMethod(upcalls().cls, upcalls().abandoned, lp->flight);
        upcall_failed(env);
    }
    drop(lp, env, 1);
}

inline void destroy_value(void *value) {
    sfswig::live_counter().fetch_sub(1);
    Env guard;
    if (JNIEnv *env = guard.get()) env->DeleteGlobalRef(static_cast<jobject>(value));
}

#endif  // SWIG

// ---- entry points (bound by SWIG into singleflight_core) -------------------

// Called once, from AsyncFlight's static initializer, with AsyncFlight.class
// (a jobject: SWIG has no typemap for jclass).
inline void async_init(JNIEnv *jenv_, jobject klass) {
    jclass cls = static_cast<jclass>(klass);
    remember_vm(jenv_);
    Upcalls u;
    u.delivered = jenv_->GetStaticMethodID(
        cls, "delivered",
        "(Lio/github/libsingleflight/AsyncFlight;ILjava/lang/Object;Ljava/lang/String;)J");
    if (!u.delivered) return;  // NoSuchMethodError is pending
    u.abandoned =
        jenv_->GetStaticMethodID(cls, "abandoned", "(Lio/github/libsingleflight/AsyncFlight;)V");
    if (!u.abandoned) return;
    u.abandon = jenv_->GetFieldID(cls, "abandonPayload", "J");
    if (!u.abandon) return;
    u.cls = static_cast<jclass>(jenv_->NewGlobalRef(cls));
    if (!u.cls) throw std::bad_alloc();
    upcalls() = u;
}

// The C group behind g, for callAsync: close it with async_group_close
// (Group.close) and, once the Java Group is unreachable, drop it with
// async_group_drop (its Cleaner).
inline long long async_group_new(sfswig::Group *g) {
    if (!g) throw sfswig::Error(SF_EINVAL, "async_group_new");
    return reinterpret_cast<long long>(new AsyncGroup(g->handle()));
}

// Takes no more begins (they return 0); the C group goes with the last
// handle.  Idempotent; the struct stays valid for async_group_drop.
inline void async_group_close(long long ag) {
    if (ag) close_group(as_group(ag));
}

// The Java Group is gone: closes, and drops the Group's ownership of the
// struct.  Once only, from the Cleaner.
inline void async_group_drop(long long ag) {
    if (!ag) return;
    close_group(as_group(ag));
    drop_owner(as_group(ag));
}

// A follower flight's handle, from AsyncFlight.begin0, which already stored
// it in flight.handle: registers the done callback that completes flight
// (possibly at once, on this thread).  On failure the handle is released.
inline void async_follow(JNIEnv *jenv_, long long agp, long long callp, jobject flight) {
    AsyncGroup *ag = as_group(agp);
    sf_call *call = as_call(callp);
    try {
        register_payload(jenv_, flight, new FollowerPayload{nullptr, ag}, "sf_call_on_done",
                         [call](FollowerPayload *p) { return sf_call_on_done(call, on_done, p); });
    } catch (...) {
        release_call(ag, call);
        throw;
    }
}

// A leader's code: completes the flight with value (failed: a Throwable,
// message its description), delivering to every follower on this thread,
// and releases the handle.  Returns 0 when nobody joined a successful
// flight (then the value never left Java), else 1.
inline int async_finish(JNIEnv *jenv_, long long agp, long long callp, long long payload,
                        jobject value, bool failed, const char *message) {
    sf_call *call = as_call(callp);
    LeaderPayload *lp = reinterpret_cast<LeaderPayload *>(payload);
    // A value nobody joined for: finished and released in one step.  Such a
    // flight was never abandoned (abandonment unpublishes it, which this
    // refuses), so the abandon callback will never run.  A failure always
    // goes the long way, so that the group's stats count it as a panic.
    int rc = failed ? 1 : sf_call_finish_unshared(call, 0);
    if (rc == 0) {
        if (lp) drop(lp, jenv_, 2);
        release_use(as_group(agp));
        return 0;
    }
    if (rc != 1) throw sfswig::Error(rc, "sf_call_finish_unshared");
    if (value) {
        jobject ref = jenv_->NewGlobalRef(value);
        if (!ref) {
            // No value for the others: they get a panic saying why.
            jenv_->ExceptionClear();
            failed = true;
            message = "singleflight: out of memory storing the value";
        } else {
            sfswig::live_counter().fetch_add(1);
            sf_call_set_value(call, ref, destroy_value);
        }
    }
    rc = failed ? sf_call_panic(call, message) : sf_call_finish(call, 0);
    // Abandonment marks the flight only while it is unfinished: read after
    // finishing, 0 means the callback never runs, 1 that it ran or runs.
    const bool abandoned = sf_call_abandoned(call) == 1;
    release_call(as_group(agp), call);
    if (lp) drop(lp, jenv_, abandoned ? 1 : 2);
    if (rc != SF_OK) throw sfswig::Error(rc, failed ? "sf_call_panic" : "sf_call_finish");
    return 1;
}

// The flight behind a claimed handle gives up (sf_call_cancel).  A
// follower's done callback runs now with SF_ECANCELED and its handle is
// released.  A leader's handle stays with the code that must still finish
// the flight; when the give-up abandoned the flight (returns 1) the caller
// cancels the work itself, and when other parties are still interested
// (returns 0) the abandon callback is registered now, to upcall
// AsyncFlight.abandoned on the thread of the last of them to leave (at once,
// here, if that already happened).  Its payload goes to flight.abandonPayload
// for async_finish.  Returns sf_call_cancel's result.
inline int async_cancel(JNIEnv *jenv_, long long agp, long long callp, jobject flight) {
    sf_call *call = as_call(callp);
    const int rc = sf_call_cancel(call);
    if (sf_call_role(call) == SF_FOLLOWER) {
        release_call(as_group(agp), call);
        return rc;
    }
    if (rc == 0) {
        try {
            LeaderPayload *lp = register_payload(
                jenv_, flight, new LeaderPayload, "sf_call_on_abandon",
                [call](LeaderPayload *p) { return sf_call_on_abandon(call, on_abandon, p); });
            jenv_->SetLongField(flight, upcalls().abandon, reinterpret_cast<jlong>(lp));
        } catch (...) {
            // Out of memory: the work runs to its end if everyone leaves.
            // Giving up itself has happened and must not fail.
            jenv_->ExceptionClear();
        }
    }
    return rc;
}

// Global references made by the async path and not yet deleted.
inline long long async_live_refs() { return live_refs().load(); }

// The name of a status begin0 returned ("SF_ENOMEM"), for its exception.
inline const char *async_status_name(int rc) { return sf_err_name(rc); }

#ifndef SWIG
// ---- hand-written natives of AsyncFlight (the uncontended path) ------------

// The bytes of a key packed by AsyncFlight (beginAscii, beginBytes): byte i
// is bits 8*(i%8).. of k[i/8], i.e. the longs' little-endian bytes in order.
// out has room for 24 bytes.
inline void unpack_key(jlong k0, jlong k1, jlong k2, jint len, char *out) noexcept {
    const jlong k[3] = {k0, k1, k2};
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
    (void)len;
    std::memcpy(out, k, sizeof k);  // one fixed-size copy; bytes past len are ignored
#else
    for (jint i = 0; i < len; i++)
        out[i] = static_cast<char>(static_cast<unsigned long long>(k[i / 8]) >> (8 * (i % 8)));
#endif
}

// AsyncFlight.begin0: starts or joins the key's C flight.  The key is
// k0..k2 (len bytes, len <= 24) when big is null, else big's bytes.
// Returns the new handle with bit 0 set for a follower (handles are
// aligned), 0 when the group is closed, or a negative SF_E* status.  The
// handle counts as a use of the group until it is released.
extern "C" JNIEXPORT jlong JNICALL Java_io_github_libsingleflight_AsyncFlight_begin0(
    JNIEnv *env, jclass, jlong agp, jlong k0, jlong k1, jlong k2, jint len, jbyteArray big) {
    AsyncGroup *ag = as_group(agp);
    char small[256];
    std::unique_ptr<char[]> heap;
    const char *key = small;
    size_t key_len = 0;
    if (!big) {
        if (len < 0 || len > 24) return SF_EINVAL;
        unpack_key(k0, k1, k2, len, small);
        key_len = static_cast<size_t>(len);
    } else {
        const jsize n = env->GetArrayLength(big);
        if (static_cast<size_t>(n) > sizeof small) {
            heap.reset(new (std::nothrow) char[static_cast<size_t>(n)]);
            if (!heap) return SF_ENOMEM;
            key = heap.get();
        }
        env->GetByteArrayRegion(big, 0, n, reinterpret_cast<jbyte *>(const_cast<char *>(key)));
        key_len = static_cast<size_t>(n);
    }
    if (!acquire_use(ag)) return 0;
    sf_call *call = nullptr;
    const int role = sf_group_begin(ag->group.get(), key, key_len, &call);
    if (role != SF_LEADER && role != SF_FOLLOWER) {
        release_use(ag);
        return role < 0 ? role : SF_EINVAL;
    }
    return static_cast<jlong>(reinterpret_cast<uintptr_t>(call)) | (role == SF_FOLLOWER ? 1 : 0);
}

// AsyncFlight.finish0: a leader's flight that its stage completed with a
// value.  0: nobody joined in C; finished, the handle released and its use
// of the group dropped.  1: someone did; nothing changed, finish the long
// way (async_finish).  Anything else is sf_call_finish_unshared's error.
extern "C" JNIEXPORT jint JNICALL Java_io_github_libsingleflight_AsyncFlight_finish0(JNIEnv *,
                                                                                     jclass,
                                                                                     jlong agp,
                                                                                     jlong callp) {
    const int rc = sf_call_finish_unshared(as_call(callp), 0);
    if (rc == 0) release_use(as_group(agp));
    return rc;
}
#endif  // SWIG

// ---- for tests: a caller on a thread the JVM does not know ------------------

#ifndef SWIG
// One two-phase caller of a key on its own std::thread, which runs the
// operations a test posts, one at a time: the done and abandon callbacks
// of a flight it completes or leaves last then run on a thread that must be
// attached for their upcalls.
class TestParty {
public:
    TestParty(std::shared_ptr<sf_group> g, std::string key)
        : group_(std::move(g)), key_(std::move(key)), thread_([this] { loop(); }) {}
    ~TestParty() {
        run(kStop);
        thread_.join();
    }

    enum Op { kBegin = 1, kFinish = 2, kCancel = 3, kRelease = 4, kStop = 5 };

    // Runs op on the party's thread and returns its status.
    int run(int op) {
        std::unique_lock<std::mutex> lock(mu_);
        op_ = op;
        cv_.notify_all();
        cv_.wait(lock, [this] { return op_ == 0; });
        return result_;
    }

private:
    void loop() {
        std::unique_lock<std::mutex> lock(mu_);
        for (;;) {
            cv_.wait(lock, [this] { return op_ != 0; });
            const int op = op_;
            result_ = apply(op);
            op_ = 0;
            cv_.notify_all();
            if (op == kStop) return;
        }
    }

    int apply(int op) {
        switch (op) {
            case kBegin:
                return sf_group_begin(group_.get(), key_.data(), key_.size(), &call_);
            case kFinish:
                return sf_call_finish(call_, 0);
            case kCancel:
                return sf_call_cancel(call_);
            case kRelease:
            case kStop:
                sf_call_release(call_);
                call_ = nullptr;
                return SF_OK;
        }
        return SF_EINVAL;
    }

    std::shared_ptr<sf_group> group_;
    std::string key_;
    sf_call *call_ = nullptr;
    std::mutex mu_;
    std::condition_variable cv_;
    int op_ = 0;
    int result_ = 0;
    std::thread thread_;  // last: starts once the rest is ready
};
#endif  // SWIG

// A TestParty for key in g; delete it with test_party_delete.
inline long long test_party_new(sfswig::Group *g, const char *akey, size_t akey_len) {
    return reinterpret_cast<long long>(new TestParty(g->handle(), std::string(akey, akey_len)));
}

// Runs op (1 begin, 2 finish with no value, 3 cancel, 4 release) on the
// party's thread; returns the C status.
inline int test_party_run(long long party, int op) {
    return reinterpret_cast<TestParty *>(party)->run(op);
}

inline void test_party_delete(long long party) { delete reinterpret_cast<TestParty *>(party); }

}  // namespace sfjava

#endif  // SFJAVA_ASYNC_HPP
