package io.github.libsingleflight;

/** The flight failed with a message but no Java throwable to rethrow. */
public final class PanicException extends RuntimeException {
    private static final long serialVersionUID = 1L;

    PanicException(String message) {
        super(message);
    }
}
