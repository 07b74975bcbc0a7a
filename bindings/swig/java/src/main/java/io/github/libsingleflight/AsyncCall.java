package io.github.libsingleflight;

import io.github.libsingleflight.internal.singleflight_core;
import io.github.libsingleflight.internal.singleflight_coreConstants;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.concurrent.CancellationException;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionException;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.Executor;
import java.util.function.Supplier;

/**
 * One caller's future from {@link Group#callAsync}: its part in a flight of the C library, as a
 * leader or a follower.
 *
 * <p>No thread waits for it. A follower's future is completed by the library's done callback, an
 * upcall ({@link #delivered}) on the thread that completes the flight; a leader's by the code that
 * finishes the flight when the leader's stage completes. Completing the future from outside
 * ({@code cancel}, {@code complete}, {@code completeExceptionally}, and so {@code orTimeout}) is
 * this caller giving up: {@code sf_call_cancel} on its handle only. When every caller of the
 * flight has given up, the library's abandon callback runs on the thread of the last one and
 * {@link #abandoned} cancels the leader's stage.
 *
 * <p>Who may touch the native handle when: a follower's is released by whoever swaps {@link
 * #handle} to 0 first (the done callback, or giving up). A leader's is used by giving up and by
 * finishing, never both at once and never after finishing, which {@link #state} arbitrates: a
 * stage completing while the leader's give-up is inside C (the abandon callback cancelling the
 * stage on the same thread, or another thread) leaves the finishing to the give-up, after C has
 * returned.
 */
final class AsyncCall<T> extends CompletableFuture<T> {
    static {
        NativeLibrary.load();
        singleflight_core.async_init(AsyncCall.class);
    }

    // Leader state bits.
    private static final int GAVE_UP = 1; // the leader's caller gave up (once)
    private static final int CANCELLING = 2; // ... and is inside sf_call_cancel now
    private static final int FINISHING = 4; // the stage completed: finish (once)

    private static final VarHandle HANDLE;
    private static final VarHandle STATE;

    static {
        try {
            MethodHandles.Lookup l = MethodHandles.lookup();
            HANDLE = l.findVarHandle(AsyncCall.class, "handle", long.class);
            STATE = l.findVarHandle(AsyncCall.class, "state", int.class);
        } catch (ReflectiveOperationException e) {
            throw new ExceptionInInitializerError(e);
        }
    }

    // The leaders whose fn runs on this thread now (Group.execute: a blocking
    // call for such a key would wait for itself).
    private static final ThreadLocal<ArrayList<AsyncCall<?>>> IN_FN = ThreadLocal.withInitial(ArrayList::new);

    private final long group; // the native AsyncGroup, kept alive by this call's handle
    private byte[] key; // the leader's

    // Written by native async_begin (also read there, by name).
    @SuppressWarnings("unused")
    private volatile long handle; // this caller's sf_call; a follower's: 0 once claimed
    @SuppressWarnings("unused")
    private long abandonPayload; // a leader's abandon callback payload

    private boolean leader;

    // The leader's side.
    private volatile int state;
    private volatile boolean abandoned;
    private volatile CompletionStage<? extends T> stage;
    private T value; // written before FINISHING is set, read after
    private Throwable failure;

    AsyncCall(long group) {
        this.group = group;
    }

    /** Starts or joins key's flight; false for a follower (then this future completes by itself). */
    boolean begin(byte[] key) {
        leader = singleflight_core.async_begin(group, key, this) == singleflight_coreConstants.LEADER;
        if (leader) this.key = key;
        return leader;
    }

    /** Whether a leader of key in group is running its fn on this thread. */
    static boolean fnRunsHere(long group, byte[] key) {
        for (AsyncCall<?> c : IN_FN.get()) {
            if (c.group == group && Arrays.equals(c.key, key)) return true;
        }
        return false;
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

    private void start(Supplier<? extends CompletionStage<T>> fn) {
        if (abandoned) {
            stageDone(null, new CancellationException("singleflight: every caller gave up before fn ran"));
            return;
        }
        CompletionStage<T> s = null;
        Throwable thrown = null;
        ArrayList<AsyncCall<?>> running = IN_FN.get();
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
            int s = state;
            if (STATE.compareAndSet(this, s, s | FINISHING)) {
                if ((s & CANCELLING) != 0) return; // the give-up in progress finishes
                break;
            }
        }
        finish();
    }

    // Completes the flight (every follower's future, on this thread), then
    // this caller's own future.  Once per flight.
    private void finish() {
        Throwable f = failure;
        try {
            singleflight_core.async_finish(group, handle, abandonPayload, f == null ? value : f, f != null,
                    f == null ? null : describe(f));
        } catch (Throwable t) {
            // Only a VM error gets here; the handle is released in C
            // whatever happened, and this caller still gets its outcome.
        }
        if (f == null) {
            super.complete(value);
        } else {
            super.completeExceptionally(f);
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
        } catch (UnsupportedOperationException notCancellable) {
            // A stage that cannot be cancelled runs to its end; nobody gets it.
        }
    }

    /** This caller gives up: its handle only, unless it was the last one interested. */
    private void giveUp() {
        if (!leader) {
            long h = (long) HANDLE.getAndSet(this, 0L);
            if (h != 0) singleflight_core.async_cancel(group, h, true);
            return;
        }
        for (;;) {
            int s = state;
            if ((s & (GAVE_UP | FINISHING)) != 0) return;
            if (STATE.compareAndSet(this, s, s | GAVE_UP | CANCELLING)) break;
        }
        try {
            singleflight_core.async_cancel(group, handle, false);
        } finally {
            for (;;) {
                int s = state;
                if (STATE.compareAndSet(this, s, s & ~CANCELLING)) {
                    if ((s & FINISHING) != 0) finish();
                    break;
                }
            }
        }
    }

    @Override
    public boolean cancel(boolean mayInterruptIfRunning) {
        boolean cancelled = super.cancel(mayInterruptIfRunning);
        if (cancelled) giveUp();
        return cancelled;
    }

    @Override
    public boolean complete(T v) {
        boolean completed = super.complete(v);
        if (completed) giveUp();
        return completed;
    }

    @Override
    public boolean completeExceptionally(Throwable ex) {
        boolean completed = super.completeExceptionally(ex);
        if (completed) giveUp();
        return completed;
    }

    // A follower's outcome, from the done callback.
    @SuppressWarnings("unchecked")
    private void settle(int status, Object v, String message) {
        if (status == singleflight_coreConstants.OK) {
            super.complete((T) v);
        } else if (status == singleflight_coreConstants.EPANIC) {
            super.completeExceptionally(v instanceof Throwable ? (Throwable) v
                    : new PanicException(message != null ? message : "panic"));
        } else {
            super.completeExceptionally(new LeaderExitedException());
        }
    }

    /**
     * Upcall from the follower's done callback, on the thread completing the flight (any status
     * but SF_ECANCELED). Returns the handle it claimed, for C to release, or 0 when giving up
     * claimed it first. Never throws.
     */
    private static long delivered(AsyncCall<?> c, int status, Object v, String message) {
        long h = (long) HANDLE.getAndSet(c, 0L);
        try {
            c.settle(status, v, message);
        } catch (Throwable ignored) {
            // settle only completes a CompletableFuture, whose dependents
            // catch their own exceptions; nothing may return into C.
        }
        return h;
    }

    /** Upcall from the leader's abandon callback, on the thread of the last caller leaving. */
    private static void abandoned(AsyncCall<?> c) {
        try {
            c.abandoned = true;
            CompletionStage<?> s = c.stage;
            if (s != null) cancelStage(s);
        } catch (Throwable ignored) {
            // The stage's own dependents ran here; nothing may return into C.
        }
    }

    /** JNI global references the async path holds now (leak tests). */
    static long liveReferences() {
        return singleflight_core.async_live_refs();
    }
}
