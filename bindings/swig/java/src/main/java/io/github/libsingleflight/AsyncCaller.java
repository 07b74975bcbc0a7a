package io.github.libsingleflight;

import java.util.concurrent.CancellationException;
import java.util.concurrent.CompletableFuture;

/**
 * One caller's future from {@link Group#callAsync}, a waiter on an {@link AsyncFlight}.
 *
 * <p>Completing it from outside ({@code cancel}, {@code complete}, {@code completeExceptionally},
 * and so {@code orTimeout} and {@code completeOnTimeout}) is this caller giving up: its flight
 * loses one interested caller and nobody else is affected. Whichever completes the future first,
 * the flight's outcome or the giving up, wins it (the future's own compare-and-swap decides), so a
 * caller leaves its flight at most once and never after it was served.
 */
final class AsyncCaller<T> extends CompletableFuture<T> {
    AsyncFlight<T> flight; // set before this future escapes
    AsyncCaller<T> next; // the flight's list of waiters

    /** The flight's outcome reaches this caller, unless it gave up first. */
    void deliver(T value, Throwable failure) {
        if (failure == null) {
            super.complete(value);
        } else {
            super.completeExceptionally(failure);
        }
    }

    @Override
    public boolean cancel(boolean mayInterruptIfRunning) {
        // Not super.cancel: it also answers true when the future was
        // cancelled already, and this caller must leave only once.
        if (super.completeExceptionally(new CancellationException())) {
            flight.leave();
            return true;
        }
        return isCancelled();
    }

    @Override
    public boolean complete(T value) {
        boolean completed = super.complete(value);
        if (completed) flight.leave();
        return completed;
    }

    @Override
    public boolean completeExceptionally(Throwable ex) {
        boolean completed = super.completeExceptionally(ex);
        if (completed) flight.leave();
        return completed;
    }
}
