package io.github.libsingleflight;

import io.github.libsingleflight.internal.singleflight_core;
import io.github.libsingleflight.internal.singleflight_coreConstants;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.concurrent.CancellationException;
import java.util.concurrent.CompletionException;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.ConcurrentMap;
import java.util.concurrent.Executor;
import java.util.function.Supplier;

/**
 * The Java async callers of one key in one {@link Group}, as one party of a flight of the C
 * library: one {@code sf_call}, a leader's or a follower's.
 *
 * <p>Why one handle for many callers: a caller joining in Java costs a few compare-and-swaps, a
 * caller crossing into C a JNI call each way and a global reference. The C library still does
 * the coalescing that matters: with blocking callers of the same group, across threads, and
 * between this flight and any other party. Interest is counted here the way C counts it for
 * handles: when the last Java caller of this flight gives up, its handle gives up in C ({@code
 * sf_call_cancel}); when that was the last party, C abandons the flight and its abandon callback
 * cancels the leader's stage.
 *
 * <p>No thread waits for it. A follower flight is completed by C's done callback, an upcall
 * ({@link #delivered}) on the thread that completes the C flight; a leader flight by its own code
 * when the stage completes. Either way the outcome reaches every waiter on that thread.
 *
 * <p>Who touches the handle when: a follower flight's handle is released by whoever swaps {@link
 * #handle} to 0 first (the done callback or giving up). A leader flight's is used by giving up and
 * by finishing, never both at once and never after finishing, which {@link #leaderState}
 * arbitrates: a stage completing while the give-up is inside C (on another thread, or on this one,
 * when the abandon callback cancels the stage) leaves the finishing to the give-up, after C
 * returns.
 */
final class AsyncFlight<T> {
    static {
        NativeLibrary.load();
        singleflight_core.async_init(AsyncFlight.class);
    }

    // joined: the number of interested waiters; the CLOSED bit once the
    // flight takes none any more (it completed, or every waiter left).
    private static final int CLOSED = Integer.MIN_VALUE;

    // leaderState bits.
    private static final int GAVE_UP = 1; // the handle gave up (once)
    private static final int CANCELLING = 2; // ... and is inside sf_call_cancel now
    private static final int FINISHING = 4; // the stage completed: finish (once)

    // The waiters list once the outcome is out: a waiter that finds it
    // serves itself.
    private static final AsyncCaller<?> DONE = new AsyncCaller<>();

    private static final VarHandle JOINED;
    private static final VarHandle WAITERS;
    private static final VarHandle HANDLE;
    private static final VarHandle LEADER_STATE;

    static {
        try {
            MethodHandles.Lookup l = MethodHandles.lookup();
            JOINED = l.findVarHandle(AsyncFlight.class, "joined", int.class);
            WAITERS = l.findVarHandle(AsyncFlight.class, "waiters", AsyncCaller.class);
            HANDLE = l.findVarHandle(AsyncFlight.class, "handle", long.class);
            LEADER_STATE = l.findVarHandle(AsyncFlight.class, "leaderState", int.class);
        } catch (ReflectiveOperationException e) {
            throw new ExceptionInInitializerError(e);
        }
    }

    // The leader flights whose fn runs on this thread now (Group.execute: a
    // blocking call for such a key would wait for itself).
    private static final ThreadLocal<ArrayList<AsyncFlight<?>>> IN_FN = ThreadLocal.withInitial(ArrayList::new);

    private final ConcurrentMap<Object, AsyncFlight<?>> flights; // the group's, to leave it
    private final Object mapKey;
    private long group; // the native AsyncGroup, kept alive by this flight's handle
    private byte[] key;

    private volatile int joined = 1; // its creator
    private volatile AsyncCaller<T> waiters;

    // Written by native async_begin (also read there, by name).
    @SuppressWarnings("unused")
    private volatile long handle;
    @SuppressWarnings("unused")
    private long abandonPayload;

    private boolean leader;
    private volatile int leaderState;
    private volatile boolean abandoned;
    private volatile CompletionStage<T> stage;

    // The outcome, written before the waiters list becomes DONE.
    private T value;
    private Throwable failure;

    AsyncFlight(ConcurrentMap<Object, AsyncFlight<?>> flights, Object mapKey) {
        this.flights = flights;
        this.mapKey = mapKey;
    }

    /** Adds a waiter to a flight that is still open; false when it is closed. */
    boolean join(AsyncCaller<T> caller) {
        for (;;) {
            int n = joined;
            if (n < 0) return false; // CLOSED
            if (JOINED.compareAndSet(this, n, n + 1)) break;
        }
        add(caller);
        return true;
    }

    /** Adds a counted waiter: to the list, or served at once when the outcome is already out. */
    void add(AsyncCaller<T> caller) {
        caller.flight = this;
        for (;;) {
            AsyncCaller<T> head = waiters;
            if (head == DONE) {
                caller.deliver(value, failure);
                return;
            }
            caller.next = head;
            if (WAITERS.compareAndSet(this, head, caller)) return;
        }
    }

    /**
     * Its creator's part, under the group's read lock: starts or joins key's flight in C. True
     * when this flight leads it: then call {@link #lead}.
     */
    boolean begin(long asyncGroup, byte[] key) {
        this.group = asyncGroup;
        this.key = key;
        leader = singleflight_core.async_begin(asyncGroup, key, this) == singleflight_coreConstants.LEADER;
        return leader;
    }

    /** When begin failed: every waiter gets t. */
    void fail(Throwable t) {
        publish(null, t);
    }

    /** The leader: gets the stage from fn (on executor when given) and finishes with its outcome. */
    void lead(Supplier<? extends CompletionStage<T>> fn, Executor executor) {
        if (executor == null) {
            start(fn);
            return;
        }
        try {
            executor.execute(() -> start(fn));
        } catch (Throwable rejected) {
            stageDone(null, rejected);
        }
    }

    /** How many waiters are interested now (0 once it takes no more). */
    int waiting() {
        int n = joined;
        return n < 0 ? 0 : n;
    }

    /** Whether a leader flight of key in group is running its fn on this thread. */
    static boolean fnRunsHere(long group, byte[] key) {
        for (AsyncFlight<?> f : IN_FN.get()) {
            if (f.group == group && Arrays.equals(f.key, key)) return true;
        }
        return false;
    }

    private void start(Supplier<? extends CompletionStage<T>> fn) {
        if (abandoned) {
            stageDone(null, new CancellationException("singleflight: every caller gave up before fn ran"));
            return;
        }
        CompletionStage<T> s = null;
        Throwable thrown = null;
        ArrayList<AsyncFlight<?>> running = IN_FN.get();
        running.add(this);
        try {
            s = fn.get();
            if (s == null) thrown = new NullPointerException("singleflight: fn returned no CompletionStage");
        } catch (Throwable t) {
            thrown = t;
        } finally {
            running.remove(running.size() - 1);
        }
        if (thrown != null) {
            stageDone(null, thrown);
            return;
        }
        stage = s;
        // Abandoned between the check above and now: the callback may have
        // found no stage to cancel.  Cancelling twice is harmless.
        if (abandoned) cancelStage(s);
        s.whenComplete(this::stageDone);
    }

    private void stageDone(T v, Throwable e) {
        if (e != null) {
            failure = e instanceof CompletionException && e.getCause() != null ? e.getCause() : e;
        } else {
            value = v;
        }
        for (;;) {
            int s = leaderState;
            if (LEADER_STATE.compareAndSet(this, s, s | FINISHING)) {
                if ((s & CANCELLING) != 0) return; // the give-up in progress finishes
                break;
            }
        }
        finish();
    }

    // The leader: completes the C flight (its followers there are served on
    // this thread), then this flight's waiters.  Once.
    private void finish() {
        Throwable f = failure;
        try {
            singleflight_core.async_finish(group, handle, abandonPayload, f == null ? value : f, f != null,
                    f == null ? null : describe(f));
        } catch (Throwable t) {
            // Only a VM error gets here; C released the handle whatever
            // happened, and the waiters still get the outcome.
        }
        publish(value, f);
    }

    /**
     * Takes no more waiters and serves every one that joined: those on the list now, and those
     * that joined but are not on it yet (they find the list DONE).
     */
    private void publish(T v, Throwable f) {
        value = v;
        failure = f;
        JOINED.getAndBitwiseOr(this, CLOSED);
        flights.remove(mapKey, this);
        @SuppressWarnings("unchecked")
        AsyncCaller<T> list = (AsyncCaller<T>) WAITERS.getAndSet(this, DONE);
        while (list != null) {
            AsyncCaller<T> next = list.next;
            list.next = null;
            list.deliver(v, f);
            list = next;
        }
    }

    // The library's copy of the panic message, for followers in other
    // languages; it must not throw.
    private static String describe(Throwable t) {
        try {
            return String.valueOf(t);
        } catch (Throwable brokenToString) {
            return t.getClass().getName();
        }
    }

    private static void cancelStage(CompletionStage<?> s) {
        try {
            s.toCompletableFuture().cancel(true);
        } catch (Throwable notCancellable) {
            // A stage that cannot be cancelled (toCompletableFuture is
            // optional) runs to its end; nobody gets its outcome.  Whoever
            // gave up last must not see this as their cancel() failing.
        }
    }

    /** A waiter gave up; the last one to leave an open flight gives its handle up in C. */
    void leave() {
        for (;;) {
            int n = joined;
            if (n < 0) return; // CLOSED: served, or given up already
            int next = n == 1 ? CLOSED : n - 1;
            if (JOINED.compareAndSet(this, n, next)) {
                if (next == CLOSED) giveUp();
                return;
            }
        }
    }

    private void giveUp() {
        flights.remove(mapKey, this);
        if (!leader) {
            long h = (long) HANDLE.getAndSet(this, 0L);
            if (h != 0) singleflight_core.async_cancel(group, h, this);
            return;
        }
        for (;;) {
            int s = leaderState;
            if ((s & (GAVE_UP | FINISHING)) != 0) return;
            if (LEADER_STATE.compareAndSet(this, s, s | GAVE_UP | CANCELLING)) break;
        }
        try {
            // 1: this was the last party; else C calls abandoned() when
            // the last one leaves.
            if (singleflight_core.async_cancel(group, handle, this) == 1) abandon();
        } finally {
            for (;;) {
                int s = leaderState;
                if (LEADER_STATE.compareAndSet(this, s, s & ~CANCELLING)) {
                    if ((s & FINISHING) != 0) finish();
                    break;
                }
            }
        }
    }

    // A follower flight's outcome, from the done callback.
    @SuppressWarnings("unchecked")
    private void settle(int status, Object v, String message) {
        if (status == singleflight_coreConstants.OK) {
            publish((T) v, null);
        } else if (status == singleflight_coreConstants.EPANIC) {
            publish(null, v instanceof Throwable ? (Throwable) v : new PanicException(message != null ? message : "panic"));
        } else {
            publish(null, new LeaderExitedException());
        }
    }

    /**
     * Upcall from a follower flight's done callback, on the thread completing the C flight (any
     * status but SF_ECANCELED). Returns the handle it claimed, for C to release, or 0 when giving
     * up claimed it first. Never throws.
     */
    private static long delivered(AsyncFlight<?> f, int status, Object v, String message) {
        long h = (long) HANDLE.getAndSet(f, 0L);
        try {
            f.settle(status, v, message);
        } catch (Throwable ignored) {
            // Waiters are CompletableFutures, whose dependents catch their
            // own exceptions; nothing may return into C.
        }
        return h;
    }

    /** Upcall from the leader's abandon callback, on the thread of the last party leaving. */
    private static void abandoned(AsyncFlight<?> f) {
        try {
            f.abandon();
        } catch (Throwable ignored) {
            // The stage's own dependents ran here; nothing may return into C.
        }
    }

    // Nobody wants the outcome any more: stop the work.
    private void abandon() {
        abandoned = true;
        CompletionStage<?> s = stage;
        if (s != null) cancelStage(s);
    }

    /** JNI global references the async path holds now (leak tests). */
    static long liveReferences() {
        return singleflight_core.async_live_refs();
    }
}
