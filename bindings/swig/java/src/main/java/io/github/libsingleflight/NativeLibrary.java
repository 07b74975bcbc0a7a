package io.github.libsingleflight;

import java.io.IOException;
import java.io.InputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.util.Locale;

/**
 * Loads the JNI part of the binding once, from the first of:
 *
 * <ol>
 *   <li>the file named by the system property {@code singleflight.jni}, when set;
 *   <li>the copy bundled in this jar for the running platform (resource {@code
 *       native/<os>-<arch>/libsingleflight_core_jni.so} beside this class), extracted to
 *       {@code java.io.tmpdir}, loaded and deleted again;
 *   <li>{@code libsingleflight_core_jni.so} on {@code java.library.path}, for a platform the jar
 *       carries no copy for.
 * </ol>
 *
 * The bundled library contains the C library itself (linked statically, its symbols kept
 * private), so a jar needs no libsingleflight installed and cannot meet a mismatched one.
 */
final class NativeLibrary {
    static final String NAME = "singleflight_core_jni";

    private static boolean loaded;

    private NativeLibrary() {}

    static synchronized void load() {
        if (loaded) return;
        String path = System.getProperty("singleflight.jni");
        if (path != null && !path.isEmpty()) {
            System.load(path);
        } else if (!loadBundled()) {
            System.loadLibrary(NAME);
        }
        loaded = true;
    }

    /**
     * The platform directory the build put the library in: {@code <os>-<arch>} with the names
     * bindings/swig/CMakeLists.txt uses ({@code linux-x86_64}, {@code linux-aarch64}).
     */
    static String platform() {
        String os = System.getProperty("os.name", "").toLowerCase(Locale.ROOT);
        if (os.startsWith("linux")) os = "linux";
        else if (os.startsWith("mac")) os = "macos";
        else if (os.startsWith("windows")) os = "windows";
        String arch = System.getProperty("os.arch", "").toLowerCase(Locale.ROOT);
        if (arch.equals("amd64") || arch.equals("x86_64")) arch = "x86_64";
        else if (arch.equals("arm64") || arch.equals("aarch64")) arch = "aarch64";
        return os + "-" + arch;
    }

    /** False when the jar has no copy for this platform; throws when a copy fails to load. */
    private static boolean loadBundled() {
        String resource = "native/" + platform() + "/" + System.mapLibraryName(NAME);
        try (InputStream in = NativeLibrary.class.getResourceAsStream(resource)) {
            if (in == null) return false;
            Path file = Files.createTempFile("libsingleflight_core_jni", ".so");
            try {
                Files.copy(in, file, StandardCopyOption.REPLACE_EXISTING);
                System.load(file.toAbsolutePath().toString());
            } finally {
                // Mapped by now (or failed): the file itself is no longer needed.
                Files.deleteIfExists(file);
            }
            return true;
        } catch (IOException e) {
            UnsatisfiedLinkError error =
                    new UnsatisfiedLinkError(
                            "libsingleflight: cannot extract the bundled "
                                    + resource
                                    + " to java.io.tmpdir ("
                                    + e
                                    + "); set -Dsingleflight.jni=/path/to/"
                                    + System.mapLibraryName(NAME));
            error.initCause(e);
            throw error;
        }
    }
}
