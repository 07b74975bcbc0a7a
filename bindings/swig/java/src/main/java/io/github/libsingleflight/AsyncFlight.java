package io.github.libsingleflight;

import io.github.libsingleflight.internal.singleflight_core;
import io.github.libsingleflight.internal.singleflight_coreConstants;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.nio.charset.StandardCharsets;
import java.util.concurrent.CancellationException;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.Executor;
import java.util.function.BiConsumer;
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
 * <p>The uncontended path (one caller, a leader nobody joins) is: a slot of the group's table
 * ({@link AsyncFlights}) taken, {@link #begin0} (the key packed into longs, no JNI function
 * called), fn, {@link #finish0}, the slot freed and the caller's future completed. No lock, no
 * thread-local, no {@code whenComplete} for a stage that is already complete, and the key is
 * encoded once, by the leader only.
 *
 * <p>Who touches the handle when: a follower flight's handle is released by whoever swaps {@link
 * #handle} to 0 first (the done callback or giving up). A leader flight's is used by giving up and
 * by finishing, never both at once and never after finishing, which {@link #leaderState}
 * arbitrates: a stage completing while the give-up is inside C (on another thread, or on this one,
 * when the abandon callback cancels the stage) leaves the finishing to the give-up, after C
 * returns. Which of the two comes first is decided by {@link #joined}: the stage completing sets
 * CLOSED and STAGE_DONE in one step, the last waiter leaving sets CLOSED; a stage that finds the
 * flight still open knows no give-up has happened or ever will, and finishes without {@link
 * #leaderState}.
 */
final class AsyncFlight<T> implements BiConsumer<T, Throwable> {
    static {
        NativeLibrary.load();
        singleflight_core.async_init(AsyncFlight.class);
    }

    // joined: the number of interested waiters; the CLOSED bit once the
    // flight takes none any more (it completed, or every waiter left), and
    // with it, for a leader, STAGE_DONE once its stage completed (so that a
    // stage calling its action twice finishes once).
    private static final int CLOSED = Integer.MIN_VALUE;
    private static final int STAGE_DONE = 1 << 30;

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

    private final AsyncFlights flights; // the group's, to leave it
    final Object mapKey; // a String, or an AsyncFlights.ByteKey
    final int slot; // its place in flights: a slot, or -1 for the map
    private long group; // the native AsyncGroup, kept alive by this flight's handle

    private volatile int joined; // 1, its creator, from the constructor on
    private volatile AsyncCaller<T> waiters;
    private final AsyncCaller<T> first; // its creator's

    // The C handle: a follower's is claimed (swapped to 0) by whoever
    // releases it, the done callback or giving up.
    private volatile long handle;
    // Written by native async_cancel (by name).
    @SuppressWarnings("unused")
    private long abandonPayload;

    // The thread running this leader's fn right now, else null.  A blocking
    // call for the key on that thread would wait for itself (Group.execute
    // asks).  Plain: only the thread that wrote it can find itself in it.
    Thread fnThread;
    // Once fn has returned, or will never run.  Plain: read only to drop
    // orphans (AsyncFlights), where a stale false keeps one a little longer.
    private boolean fnOver;
    // In AsyncFlights' orphans: it left the table before its fn returned.
    volatile boolean orphaned;

    private boolean leader;
    private volatile int leaderState;
    private volatile boolean abandoned;
    private volatile CompletionStage<T> stage;

    // The outcome, written before the waiters list becomes DONE.
    private T value;
    private Throwable failure;

    /**
     * A flight whose first waiter is {@code first}. Plain writes: the compare-and-swap that
     * publishes the flight in the table orders them before anyone else can see it.
     */
    AsyncFlight(AsyncFlights flights, Object mapKey, int slot, AsyncCaller<T> first) {
        this.flights = flights;
        this.mapKey = mapKey;
        this.slot = slot;
        this.first = first;
        first.flight = this;
        JOINED.set(this, 1);
        WAITERS.set(this, first);
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

    // Hand-written natives in sfjava_async.hpp.  begin0 returns the handle
    // with bit 0 set for a follower, 0 when the group is closed, or a
    // negative SF_E* status; the key is k0..k2 (len bytes) unless big is
    // given.  finish0 returns sf_call_finish_unshared's status.
    private static native long begin0(long group, long k0, long k1, long k2, int len, byte[] big);

    private static native int finish0(long group, long handle);

    /**
     * Its creator's part: starts or joins the key's flight in C. The key is {@code bytes} when
     * given, else {@code key}'s UTF-8 encoding. True when this flight leads it: then call {@link
     * #lead}. Throws {@link IllegalStateException} when the group is closed.
     */
    boolean begin(long asyncGroup, String key, byte[] bytes) {
        this.group = asyncGroup;
        long r;
        if (bytes == null && key.length() <= 24) {
            r = beginAscii(asyncGroup, key);
        } else {
            r = beginBytes(asyncGroup, bytes != null ? bytes : key.getBytes(StandardCharsets.UTF_8));
        }
        if (r == 0) throw new IllegalStateException("singleflight group is closed");
        if (r < 0) throw new RuntimeException("sf_group_begin: " + singleflight_core.async_status_name((int) r));
        if ((r & 1) == 0) {
            HANDLE.set(this, r);
            leader = true;
            return true;
        }
        long h = r & ~1L;
        // Stored before the callback is registered: from then on it may run
        // (on another thread, or here) and claim it.
        handle = h;
        try {
            singleflight_core.async_follow(asyncGroup, h, this);
        } catch (RuntimeException | Error e) {
            handle = 0; // async_follow released it
            throw e;
        }
        return false;
    }

    // A key of up to 24 chars, all ASCII: its UTF-8 bytes are its chars,
    // packed little-end first into three longs, with no array made.
    private static long beginAscii(long group, String key) {
        long k0 = 0, k1 = 0, k2 = 0;
        int n = key.length();
        for (int i = 0; i < n; i++) {
            char c = key.charAt(i);
            if (c >= 0x80) return beginBytes(group, key.getBytes(StandardCharsets.UTF_8));
            long b = (long) c << ((i & 7) << 3);
            if (i < 8) k0 |= b;
            else if (i < 16) k1 |= b;
            else k2 |= b;
        }
        return begin0(group, k0, k1, k2, n, null);
    }

    private static long beginBytes(long group, byte[] key) {
        int n = key.length;
        if (n > 24) return begin0(group, 0, 0, 0, n, key);
        long k0 = 0, k1 = 0, k2 = 0;
        for (int i = 0; i < n; i++) {
            long b = (key[i] & 0xffL) << ((i & 7) << 3);
            if (i < 8) k0 |= b;
            else if (i < 16) k1 |= b;
            else k2 |= b;
        }
        return begin0(group, k0, k1, k2, n, null);
    }

    /** When begin failed: every waiter gets t. */
    void fail(Throwable t) {
        JOINED.getAndBitwiseOr(this, CLOSED);
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
            fnOver = true;
            stageDone(null, rejected);
        }
    }

    /** How many waiters are interested now (0 once it takes no more). */
    int waiting() {
        int n = joined;
        return n < 0 ? 0 : n;
    }

    /** Whether this flight's fn may run now or later (a leader whose fn has not returned). */
    boolean mayRunFn() {
        return leader && !fnOver;
    }

    private void start(Supplier<? extends CompletionStage<T>> fn) {
        if (abandoned) {
            fnOver = true;
            stageDone(null, new CancellationException("singleflight: every caller gave up before fn ran"));
            return;
        }
        CompletionStage<T> s = null;
        Throwable thrown = null;
        Thread outer = fnThread; // a fn of this flight already running here (an executor running inline)
        fnThread = Thread.currentThread();
        try {
            s = fn.get();
            if (s == null) thrown = new NullPointerException("singleflight: fn returned no CompletionStage");
        } catch (Throwable t) {
            thrown = t;
        } finally {
            fnThread = outer;
            fnOver = true;
            if (orphaned) flights.fnReturned(this); // not kept (with its value) until the next purge
        }
        if (thrown != null) {
            stageDone(null, thrown);
            return;
        }
        // A plain CompletableFuture that already has its value: finish now,
        // without a dependent (whenComplete makes a future of its own).  Only
        // the exact class: a subclass (a minimal stage) may refuse getNow.
        if (s.getClass() == CompletableFuture.class) {
            CompletableFuture<T> cf = (CompletableFuture<T>) s;
            if (cf.isDone() && !cf.isCompletedExceptionally()) {
                stageDone(cf.getNow(null), null);
                return;
            }
        }
        stage = s;
        // Abandoned between the check above and now: the callback may have
        // found no stage to cancel.  Cancelling twice is harmless.
        if (abandoned) cancelStage(s);
        s.whenComplete(this);
    }

    /** The stage's outcome ({@code whenComplete}); the first call counts, any later is ignored. */
    @Override
    public void accept(T v, Throwable e) {
        stageDone(v, e);
    }

    private void stageDone(T v, Throwable e) {
        int before = (int) JOINED.getAndBitwiseOr(this, CLOSED | STAGE_DONE);
        if ((before & STAGE_DONE) != 0) return; // the stage called its action twice
        if (e != null) {
            failure = e instanceof CompletionException && e.getCause() != null ? e.getCause() : e;
        } else {
            value = v;
        }
        if (before >= 0) {
            // Still open: nobody gave up, and now nobody can (leave() finds
            // it CLOSED), so no give-up is in C.  A value nobody joined for in
            // C finishes with two primitives; the rest goes the long way.
            if (e == null) {
                int rc;
                try {
                    rc = finish0(group, handle);
                } catch (Throwable vmError) {
                    rc = 1; // the long way releases the handle whatever happens
                }
                if (rc == 0) {
                    if (before == 1 && !first.isDone()) {
                        publishAlone(v);
                    } else {
                        publish(v, null);
                    }
                    return;
                }
            }
            finish();
            return;
        }
        // Every waiter left first: a give-up began.  Whoever of the two
        // (this, or the give-up coming out of C) is last finishes.
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
        // Claimed, so that no path can finish a released handle twice.
        long h = (long) HANDLE.getAndSet(this, 0L);
        try {
            if (h != 0) {
                singleflight_core.async_finish(group, h, abandonPayload, f == null ? value : f, f != null,
                        f == null ? null : describe(f));
            }
        } catch (Throwable t) {
            // Only a VM error gets here; C released the handle whatever
            // happened, and the waiters still get the outcome.
        }
        publish(value, f);
    }

    /**
     * Serves every waiter that joined: those on the list now, and those that joined but are not on
     * it yet (they find the list DONE). The flight is CLOSED already: it takes no more.
     */
    private void publish(T v, Throwable f) {
        value = v;
        failure = f;
        flights.remove(this);
        @SuppressWarnings("unchecked")
        AsyncCaller<T> list = (AsyncCaller<T>) WAITERS.getAndSet(this, DONE);
        while (list != null) {
            AsyncCaller<T> next = list.next;
            list.next = null;
            list.deliver(v, f);
            list = next;
        }
    }

    /**
     * publish, when the flight closed with one waiter counted, its creator, still waiting: then no
     * caller is between counting itself in and adding itself to the list (join does both before
     * its future escapes, and that one would be counted), so the list is complete and nobody adds
     * to it any more: served without the hand-off to DONE. Callers on it who left have completed
     * their futures already and are skipped by deliver.
     */
    private void publishAlone(T v) {
        value = v;
        flights.remove(this);
        AsyncCaller<T> list = waiters;
        while (list != null) {
            AsyncCaller<T> next = list.next;
            list.next = null;
            list.deliver(v, null);
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
            // The last one out takes the flight out of the table before its fn
            // may have run (an executor): keep it findable meanwhile.
            if (n == 1) flights.leavingEarly(this);
            if (JOINED.compareAndSet(this, n, next)) {
                if (next == CLOSED) giveUp();
                return;
            }
        }
    }

    private void giveUp() {
        flights.remove(this);
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
        JOINED.getAndBitwiseOr(this, CLOSED);
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
