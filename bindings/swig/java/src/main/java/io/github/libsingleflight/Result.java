package io.github.libsingleflight;

/**
 * One caller's outcome of a flight: the shared value and whether it was shared. Immutable; safe
 * to pass between threads (the value itself is whatever the callable returned).
 */
public final class Result<T> {
    private final T value;
    private final boolean shared;

    Result(T value, boolean shared) {
        this.value = value;
        this.shared = shared;
    }

    /** The callable's return value: the same object for every caller of the flight. */
    public T value() {
        return value;
    }

    /** True for a follower, and for the leader iff any follower joined its flight. */
    public boolean shared() {
        return shared;
    }
}
