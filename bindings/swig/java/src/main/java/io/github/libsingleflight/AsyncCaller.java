package io.github.libsingleflight;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.util.concurrent.CompletableFuture;

/**
 * One caller's future from {@link Group#callAsync}, a waiter on an {@link AsyncFlight}.
 *
 * <p>Completing it from outside ({@code cancel}, {@code complete}, {@code completeExceptionally},
 * and so {@code orTimeout} and {@code completeOnTimeout}) is this caller giving up: its flight
 * loses one interested caller and nobody else is affected. Whichever comes first, the flight's
 * outcome or the giving up, claims the future, so a caller leaves its flight at most once and
 * never after it was served.
 */
final class AsyncCaller<T> extends CompletableFuture<T> {
    private static final VarHandle CLAIMED;

    static {
        try {
            CLAIMED = MethodHandles.lookup().findVarHandle(AsyncCaller.class, "claimed", int.class);
        } catch (ReflectiveOperationException e) {
            throw new ExceptionInInitializerError(e);
        }
    }

    private volatile int claimed;
    AsyncFlight<T> flight; // set before this future escapes
    AsyncCaller<T> next; // the flight's list of waiters

    private boolean claim() {
        return claimed == 0 && CLAIMED.compareAndSet(this, 0, 1);
    }

    /** The flight's outcome reaches this caller, unless it gave up first. */
    void deliver(T value, Throwable failure) {
        if (!claim()) return;
        if (failure == null) {
            super.complete(value);
        } else {
            super.completeExceptionally(failure);
        }
    }

    private void giveUp() {
        if (claim()) flight.leave();
    }

    @Override
    public boolean cancel(boolean mayInterruptIfRunning) {
        boolean cancelled = super.cancel(mayInterruptIfRunning);
        if (cancelled) giveUp();
        return cancelled;
    }

    @Override
    public boolean complete(T value) {
        boolean completed = super.complete(value);
        if (completed) giveUp();
        return completed;
    }

    @Override
    public boolean completeExceptionally(Throwable ex) {
        boolean completed = super.completeExceptionally(ex);
        if (completed) giveUp();
        return completed;
    }
}
