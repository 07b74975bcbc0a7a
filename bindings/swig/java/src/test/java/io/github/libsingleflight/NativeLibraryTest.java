package io.github.libsingleflight;

import static org.junit.jupiter.api.Assertions.assertNotNull;

import org.junit.jupiter.api.Test;

/** The jar's copy of the JNI library is where NativeLibrary looks for it. */
class NativeLibraryTest {
    @Test
    void theClasspathCarriesTheJniLibraryUnderThisPlatformsName() {
        String resource =
                "native/" + NativeLibrary.platform() + "/" + System.mapLibraryName(NativeLibrary.NAME);
        assertNotNull(
                NativeLibrary.class.getResource(resource),
                resource + " is not on the classpath: CMake and NativeLibrary.platform() disagree");
    }
}
