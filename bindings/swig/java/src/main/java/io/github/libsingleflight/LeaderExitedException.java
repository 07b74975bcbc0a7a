package io.github.libsingleflight;

/**
 * The flight's leader went away without a result (Go's runtime.Goexit case). A Java leader
 * always returns or throws, so this only reports what the native library saw.
 */
public final class LeaderExitedException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    LeaderExitedException() {
        super("singleflight: the leader exited without producing a result");
    }
}
