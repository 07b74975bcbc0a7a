package io.github.libsingleflight;

/**
 * A snapshot of a group's counters. {@code calls = leaders + followers}; {@code leaders} counts
 * executions; {@code timeouts} counts follower waits that gave up; {@code inFlight} the flights
 * not yet complete; {@code abandons} the flights every caller gave up on while they ran, and
 * {@code cancels} the callers that gave up (both since 1.1). Immutable.
 */
public record Stats(
        long calls,
        long leaders,
        long followers,
        long panics,
        long goexits,
        long timeouts,
        long forgets,
        long inFlight,
        long abandons,
        long cancels) {

    /** The 1.0 constructor, for code that built a Stats itself: the 1.1 counters are 0. */
    public Stats(
            long calls,
            long leaders,
            long followers,
            long panics,
            long goexits,
            long timeouts,
            long forgets,
            long inFlight) {
        this(calls, leaders, followers, panics, goexits, timeouts, forgets, inFlight, 0, 0);
    }
}
