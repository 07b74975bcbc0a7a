package io.github.libsingleflight;

/**
 * A snapshot of a group's counters. {@code calls = leaders + followers}; {@code leaders} counts
 * executions; {@code timeouts} counts follower waits that gave up; {@code inFlight} the flights
 * not yet complete. Immutable.
 */
public record Stats(
        long calls,
        long leaders,
        long followers,
        long panics,
        long goexits,
        long timeouts,
        long forgets,
        long inFlight) {}
