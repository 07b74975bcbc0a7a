package io.github.libsingleflight;

/**
 * Loads the JNI part of the binding once. The system property {@code singleflight.jni} names the
 * library file explicitly; otherwise {@code libsingleflight_core_jni.so} is looked up on {@code
 * java.library.path}. It needs libsingleflight.so, found through its rpath or the loader path.
 */
final class NativeLibrary {
    private NativeLibrary() {}

    static synchronized void load() {
        String path = System.getProperty("singleflight.jni");
        if (path != null && !path.isEmpty()) {
            System.load(path);
        } else {
            System.loadLibrary("singleflight_core_jni");
        }
    }
}
