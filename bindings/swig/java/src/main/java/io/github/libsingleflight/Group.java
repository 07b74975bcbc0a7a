package io.github.libsingleflight;

import io.github.libsingleflight.internal.NativeFlight;
import io.github.libsingleflight.internal.NativeGroup;
import io.github.libsingleflight.internal.NativeStats;
import io.github.libsingleflight.internal.singleflight_core;
import io.github.libsingleflight.internal.singleflight_coreConstants;

import java.lang.ref.Cleaner;
import java.lang.ref.Reference;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.Objects;
import java.util.concurrent.Callable;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.Executor;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.locks.ReentrantReadWriteLock;
import java.util.function.Supplier;

/**
 * Duplicate call suppression (Go's singleflight) backed by libsingleflight.
 *
 * <p>When many threads call {@link #call(String, Callable)} with the same key at once, exactly
 * one of them (the leader) runs the callable; the others (followers) block until it is done and
 * receive the very same object. An exception thrown by the callable is thrown, as the same
 * object, in every caller.
 *
 * <p>Thread-safe: share one Group between any number of threads. Keys are byte strings; a
 * {@code String} key is encoded as UTF-8. {@link #close()} frees the native group once the calls
 * in progress are done; a group that is never closed is freed by the garbage collector.
 *
 * <p>A follower waits inside the native library and does not respond to {@link
 * Thread#interrupt()}; bound the wait with {@link #execute(String, Duration, Callable)} where that
 * matters, or use {@link #callAsync(String, Supplier)}, where nobody waits and every caller can
 * give up on its own.
 */
public final class Group implements AutoCloseable {
    static {
        NativeLibrary.load();
    }

    // Guards the native handle against close(): blocking calls hold the read
    // lock only while they touch the group itself (begin, forget, stats); a
    // flight in progress keeps the native group alive on its own.  callAsync
    // takes no lock: its native half counts begins in progress itself.
    private final ReentrantReadWriteLock lock = new ReentrantReadWriteLock();
    private NativeGroup group = new NativeGroup();

    // callAsync's view of the C group (sfjava_async.hpp's AsyncGroup), made
    // by the first callAsync, closed by close() (begins fail from then on,
    // and the C group goes with the last handle) and dropped by the cleaner
    // once this Group is unreachable, so that a callAsync racing close()
    // still finds it there.
    private final Object asyncInit = new Object();
    private volatile long asyncGroup;
    private volatile boolean closed;

    // The open async flights by key: callers of a key join its flight there
    // without crossing into C.
    private final AsyncFlights flights = new AsyncFlights();

    private static final class AsyncCleaner {
        static final Cleaner CLEANER = Cleaner.create();
    }

    /** Creates an empty group. */
    public Group() {}

    /**
     * Runs {@code fn} once for all concurrent callers of {@code key} and returns its value.
     *
     * @param key compared as its UTF-8 bytes; must not be null
     * @param fn the work; run on the calling thread when this caller leads
     * @return the object {@code fn} returned (possibly null), the same object for every caller
     * @throws Exception whatever {@code fn} threw, rethrown in every caller (an {@link Error} is
     *     rethrown as itself)
     */
    public <T> T call(String key, Callable<? extends T> fn) throws Exception {
        return this.<T>execute(utf8(key), fn, -1).value();
    }

    /** As {@link #call(String, Callable)}, for a key of arbitrary bytes (copied; not retained). */
    public <T> T call(byte[] key, Callable<? extends T> fn) throws Exception {
        return this.<T>execute(key, fn, -1).value();
    }

    /**
     * As {@link #call(String, Callable)}, returning also whether the value was shared (Go's
     * {@code shared}: always true for a follower, true for the leader iff anyone joined).
     */
    public <T> Result<T> execute(String key, Callable<? extends T> fn) throws Exception {
        return execute(utf8(key), fn, -1);
    }

    /** As {@link #execute(String, Callable)}, for a key of arbitrary bytes. */
    public <T> Result<T> execute(byte[] key, Callable<? extends T> fn) throws Exception {
        return execute(key, fn, -1);
    }

    /**
     * As {@link #execute(String, Callable)}, but a follower gives up after {@code timeout} with a
     * {@link TimeoutException}; the flight goes on for everyone else. The leader is the one
     * running {@code fn}, so the timeout does not apply to it.
     */
    public <T> Result<T> execute(String key, Duration timeout, Callable<? extends T> fn)
            throws Exception {
        Objects.requireNonNull(timeout, "timeout");
        if (timeout.isNegative()) throw new IllegalArgumentException("negative timeout");
        long ns;
        try {
            ns = timeout.toNanos();
        } catch (ArithmeticException tooLong) {
            ns = Long.MAX_VALUE;
        }
        return execute(utf8(key), fn, ns);
    }

    /**
     * Coalesces concurrent callers of {@code key} onto one stage, without a thread waiting for it.
     *
     * <p>The first caller (the leader) calls {@code fn} on this thread; everyone who calls while
     * its stage runs, here or through {@link #call(String, Callable)}, joins it. Each caller gets
     * its own future, completed with the stage's value (the same object for every caller) or
     * with its exception (the same {@code Throwable}, unwrapped from a {@code
     * CompletionException}). Followers' futures are completed on the thread that completes the
     * stage, as {@link CompletableFuture} dependents are; use the {@code *Async} methods to move
     * work elsewhere.
     *
     * <p>Giving up: a caller that cancels its future (or completes it itself, as {@code
     * orTimeout} does) stops waiting, and only that caller: the others still get the value. When
     * every caller has given up while the stage runs, the stage is cancelled ({@code
     * toCompletableFuture().cancel(true)}) on the thread of the last one to give up, and the key
     * is free at once: the next caller starts afresh.
     *
     * <p>The async callers of one key share one call into the C library (they join in Java), so
     * {@link #stats()} counts them as one call. Thread-safe, like every method here.
     *
     * @param key compared as its UTF-8 bytes; must not be null
     * @param fn returns the stage doing the work; must not return null. What it throws, or a null
     *     stage, fails the flight for every caller
     * @return this caller's future; never completed by a thread waiting for it
     * @throws IllegalStateException when the group is closed
     */
    public <T> CompletableFuture<T> callAsync(String key, Supplier<? extends CompletionStage<T>> fn) {
        return callAsync(Objects.requireNonNull(key, "key"), null, fn, null);
    }

    /**
     * As {@link #callAsync(String, Supplier)}, but the leader calls {@code fn} on {@code executor}
     * instead of this thread (an executor that refuses the task fails the flight with its
     * exception).
     */
    public <T> CompletableFuture<T> callAsync(String key, Supplier<? extends CompletionStage<T>> fn,
            Executor executor) {
        return callAsync(Objects.requireNonNull(key, "key"), null, fn, Objects.requireNonNull(executor, "executor"));
    }

    /** As {@link #callAsync(String, Supplier)}, for a key of arbitrary bytes (copied). */
    public <T> CompletableFuture<T> callAsync(byte[] key, Supplier<? extends CompletionStage<T>> fn) {
        AsyncFlights.ByteKey k = new AsyncFlights.ByteKey(Objects.requireNonNull(key, "key").clone());
        return callAsync(k, k.bytes, fn, null);
    }

    /** As {@link #callAsync(String, Supplier, Executor)}, for a key of arbitrary bytes. */
    public <T> CompletableFuture<T> callAsync(byte[] key, Supplier<? extends CompletionStage<T>> fn,
            Executor executor) {
        AsyncFlights.ByteKey k = new AsyncFlights.ByteKey(Objects.requireNonNull(key, "key").clone());
        return callAsync(k, k.bytes, fn, Objects.requireNonNull(executor, "executor"));
    }

    // mapKey: the String, or the ByteKey whose bytes are `bytes`.  No lock:
    // a close() racing this makes the begin fail (IllegalStateException).
    @SuppressWarnings("unchecked")
    private <T> CompletableFuture<T> callAsync(Object mapKey, byte[] bytes,
            Supplier<? extends CompletionStage<T>> fn, Executor executor) {
        Objects.requireNonNull(fn, "fn");
        if (closed) throw new IllegalStateException("singleflight group is closed");
        long ag = asyncGroup;
        if (ag == 0) ag = asyncGroupInit();
        AsyncCaller<T> caller = new AsyncCaller<>();
        AsyncFlight<T> mine = flights.joinOrCreate(mapKey, caller);
        if (mine == null) return caller; // joined a flight in Java
        boolean leads;
        try {
            leads = mine.begin(ag, bytes == null ? (String) mapKey : null, bytes);
        } catch (Throwable t) {
            mine.fail(t);
            throw t;
        } finally {
            // The cleaner drops the native group only once this Group is
            // unreachable: not before begin returned.
            Reference.reachabilityFence(this);
        }
        if (leads) mine.lead(fn, executor);
        return caller;
    }

    // The first callAsync: makes the native view of the group.
    private long asyncGroupInit() {
        lock.readLock().lock();
        try {
            NativeGroup g = open();
            synchronized (asyncInit) {
                long ag = asyncGroup;
                if (ag == 0) {
                    ag = singleflight_core.async_group_new(g);
                    final long drop = ag;
                    AsyncCleaner.CLEANER.register(this, () -> singleflight_core.async_group_drop(drop));
                    asyncGroup = ag;
                }
                return ag;
            }
        } finally {
            lock.readLock().unlock();
        }
    }

    /**
     * Makes the next call for {@code key} run its callable again instead of joining the flight
     * in progress, which still delivers to its own callers.
     *
     * @return whether a flight was in progress
     */
    public boolean forget(String key) {
        return forget(utf8(key));
    }

    /** As {@link #forget(String)}, for a key of arbitrary bytes. */
    public boolean forget(byte[] key) {
        Objects.requireNonNull(key, "key");
        lock.readLock().lock();
        try {
            // The async flights first: a caller arriving in between begins
            // in C and joins the flight about to be forgotten, as it would
            // have a moment earlier.
            flights.detach(key);
            return open().forget(key);
        } finally {
            lock.readLock().unlock();
        }
    }

    /**
     * Like {@link #forget(String)}, but only when no follower has joined the flight.
     *
     * @return whether the flight was forgotten
     */
    public boolean forgetUnshared(String key) {
        return forgetUnshared(utf8(key));
    }

    /** As {@link #forgetUnshared(String)}, for a key of arbitrary bytes. */
    public boolean forgetUnshared(byte[] key) {
        Objects.requireNonNull(key, "key");
        lock.readLock().lock();
        try {
            // Async callers who joined in Java joined the flight too, though
            // C sees their flight as one call.
            for (AsyncFlight<?> f : flights.of(key)) {
                if (f != null && f.waiting() > 1) return false;
            }
            boolean forgotten = open().forget_unshared(key);
            if (forgotten) flights.detach(key);
            return forgotten;
        } finally {
            lock.readLock().unlock();
        }
    }

    /** A snapshot of this group's counters. */
    public Stats stats() {
        lock.readLock().lock();
        try {
            NativeStats s = open().stats();
            try {
                return new Stats(s.getCalls(), s.getLeaders(), s.getFollowers(), s.getPanics(),
                        s.getGoexits(), s.getTimeouts(), s.getForgets(), s.getIn_flight(),
                        s.getAbandons(), s.getCancels());
            } finally {
                s.delete();
            }
        } finally {
            lock.readLock().unlock();
        }
    }

    /**
     * Releases this group's handle. Calls in progress complete normally; new calls throw {@link
     * IllegalStateException}. Idempotent.
     */
    @Override
    public void close() {
        lock.writeLock().lock();
        try {
            if (group != null) {
                group.delete();
                group = null;
            }
            closed = true;
            synchronized (asyncInit) {
                // Not the cleaner's drop: a callAsync that read asyncGroup
                // before `closed` was set may be about to begin on it.
                singleflight_core.async_group_close(asyncGroup);
            }
        } finally {
            lock.writeLock().unlock();
        }
    }

    /**
     * Host values the native module holds right now, across all groups (JNI global references
     * not yet deleted). For leak tests: it returns to its old value once every call is done.
     */
    public static long liveNativeValues() {
        return singleflight_core.live_values();
    }

    /** Tests only: async leaders kept findable after leaving the table (AsyncFlights). */
    int asyncOrphans() {
        return flights.orphanCount();
    }

    /** Tests only: a native caller of key in this group (sfjava_async.hpp, TestParty). */
    long testParty(String key) {
        return testParty(utf8(key));
    }

    /** Tests only: a native caller of key's bytes in this group. */
    long testParty(byte[] key) {
        lock.readLock().lock();
        try {
            return singleflight_core.test_party_new(open(), key);
        } finally {
            lock.readLock().unlock();
        }
    }

    /** The version of the loaded C library, e.g. "1.0.0". */
    public static String nativeVersion() {
        return singleflight_core.version_string();
    }

    private NativeGroup open() {
        if (group == null) throw new IllegalStateException("singleflight group is closed");
        return group;
    }

    private static byte[] utf8(String key) {
        return Objects.requireNonNull(key, "key").getBytes(StandardCharsets.UTF_8);
    }

    private NativeFlight begin(byte[] key) {
        lock.readLock().lock();
        try {
            return open().begin_on_thread(key);
        } finally {
            lock.readLock().unlock();
        }
    }

    @SuppressWarnings("unchecked")
    private <T> Result<T> execute(byte[] key, Callable<? extends T> fn, long timeoutNs)
            throws Exception {
        Objects.requireNonNull(key, "key");
        Objects.requireNonNull(fn, "fn");
        NativeFlight flight = begin(key);
        try {
            int status;
            if (flight.is_leader()) {
                lead(flight, fn);
                status = flight.waitFor(0);
            } else {
                long ns = timeoutNs;
                if (ns < 0) {
                    // Not -1: C refuses an endless wait on a flight begun on
                    // this thread, but an async leader begun here finishes
                    // on whichever thread completes its stage.  Only while
                    // its fn runs here is waiting for it waiting for itself.
                    if (flights.fnRunsHere(key)) {
                        throw new RuntimeException("singleflight: a call inside callAsync's fn asked for"
                                + " its own key and would wait for itself (SF_EDEADLK)");
                    }
                    ns = Long.MAX_VALUE;
                }
                status = flight.waitFor(ns);
                if (status == singleflight_coreConstants.ETIMEDOUT) {
                    throw new TimeoutException("singleflight: gave up waiting for the flight");
                }
            }
            Object value = flight.get_object();
            if (status == singleflight_coreConstants.OK) {
                return new Result<>((T) value, flight.shared());
            }
            if (status == singleflight_coreConstants.EPANIC) {
                throw rethrow(value, flight.panic_message());
            }
            throw new LeaderExitedException();
        } finally {
            // Drops this caller's reference to the shared value (the last one
            // deletes its global reference) and, for a leader that never
            // finished, releases the followers.
            flight.delete();
        }
    }

    private static void lead(NativeFlight flight, Callable<?> fn) {
        Object value;
        try {
            value = fn.call();
        } catch (Throwable t) {
            flight.set_object(t);
            flight.panic(describe(t));
            return;
        }
        flight.set_object(value);
        flight.finish(0);
    }

    // The library's copy of the panic message. It must not throw: the flight
    // would then end as a leader exit instead of carrying the throwable.
    private static String describe(Throwable t) {
        try {
            return String.valueOf(t);
        } catch (Throwable brokenToString) {
            return t.getClass().getName();
        }
    }

    private static Exception rethrow(Object value, String message) {
        if (value instanceof Error) throw (Error) value;
        if (value instanceof Exception) return (Exception) value;
        return new PanicException(message != null ? message : "panic");
    }
}
