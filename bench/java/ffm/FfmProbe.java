import io.github.libsingleflight.Group;
import static java.lang.foreign.ValueLayout.ADDRESS;
import static java.lang.foreign.ValueLayout.JAVA_INT;
import static java.lang.foreign.ValueLayout.JAVA_LONG;

import java.lang.foreign.Arena;
import java.lang.foreign.FunctionDescriptor;
import java.lang.foreign.Linker;
import java.lang.foreign.MemorySegment;
import java.lang.foreign.SymbolLookup;
import java.lang.invoke.MethodHandle;
import java.lang.invoke.MethodHandles;
import java.lang.invoke.MethodType;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.CompletableFuture;

/**
 * What a JNI crossing costs on the uncontended path, against the Foreign Function API (JDK 22
 * and newer; the binding's release level is 17, so this is a probe, not part of the build):
 * AsyncFlight's begin0 + finish0 (JNI, the group's use count included) against
 * sf_group_begin + sf_call_finish_unshared called directly through FFM downcall handles, default
 * and {@code Linker.Option.critical(false)}, on the same 9-byte key, 12 interleaved runs of
 * 3,000,000 pairs, medians of the last 9.
 *
 * <pre>
 *   bench/java/run.sh --checks     # builds the jar (any mode does)
 *   J=/path/to/jdk-22-or-newer/bin
 *   jar=$(ls build/default/bindings/swig/java/maven/libsingleflight-*.jar)
 *   $J/javac -cp $jar -d /tmp/ffm bench/java/ffm/FfmProbe.java
 *   $J/java --enable-native-access=ALL-UNNAMED -Dsf.lib=build/default/libsingleflight.so.1 -cp $jar:/tmp/ffm FfmProbe
 * </pre>
 */
public class FfmProbe {
    // Constants, so that the JIT inlines the handles as a program's own would.
    static final Group JAVA_GROUP = new Group(); // reachable: its Cleaner would close the native view
    static final long ASYNC_GROUP;
    static final MethodHandle BEGIN0, FINISH0, FFM_BEGIN, FFM_FINISH, CRITICAL_BEGIN, CRITICAL_FINISH;
    static final MemorySegment GROUP, KEY, OUT;

    static {
        try {
            Group g = JAVA_GROUP;
            g.callAsync("x", () -> CompletableFuture.completedFuture("y")).get(); // makes the native view
            var field = Group.class.getDeclaredField("asyncGroup");
            field.setAccessible(true);
            ASYNC_GROUP = field.getLong(g);
            Class<?> flight = Class.forName("io.github.libsingleflight.AsyncFlight");
            var lookup = MethodHandles.privateLookupIn(flight, MethodHandles.lookup());
            BEGIN0 = lookup.findStatic(flight, "begin0", MethodType.methodType(long.class, long.class, long.class,
                    long.class, long.class, int.class, byte[].class));
            FINISH0 = lookup.findStatic(flight, "finish0", MethodType.methodType(int.class, long.class, long.class));

            Linker linker = Linker.nativeLinker();
            SymbolLookup lib = SymbolLookup.libraryLookup(System.getProperty("sf.lib"), Arena.global());
            MethodHandle groupNew = linker.downcallHandle(lib.find("sf_group_new").get(),
                    FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS));
            MemorySegment groupOut = Arena.global().allocate(ADDRESS);
            if ((int) groupNew.invokeExact(groupOut, MemorySegment.NULL) != 0) throw new AssertionError("sf_group_new");
            GROUP = groupOut.get(ADDRESS, 0);
            KEY = Arena.global().allocate(24);
            KEY.setString(0, "user:4242");
            OUT = Arena.global().allocate(ADDRESS);
            FunctionDescriptor beginType = FunctionDescriptor.of(JAVA_INT, ADDRESS, ADDRESS, JAVA_LONG, ADDRESS);
            FunctionDescriptor finishType = FunctionDescriptor.of(JAVA_INT, ADDRESS, JAVA_INT);
            FFM_BEGIN = linker.downcallHandle(lib.find("sf_group_begin").get(), beginType);
            FFM_FINISH = linker.downcallHandle(lib.find("sf_call_finish_unshared").get(), finishType);
            CRITICAL_BEGIN = linker.downcallHandle(lib.find("sf_group_begin").get(), beginType,
                    Linker.Option.critical(false));
            CRITICAL_FINISH = linker.downcallHandle(lib.find("sf_call_finish_unshared").get(), finishType,
                    Linker.Option.critical(false));
        } catch (Throwable t) {
            throw new ExceptionInInitializerError(t);
        }
    }

    public static void main(String[] args) throws Throwable {
        int n = 3_000_000;
        String[] names = {"JNI begin0+finish0", "FFM default", "FFM critical"};
        List<List<Double>> results = new ArrayList<>();
        for (int i = 0; i < names.length; i++) results.add(new ArrayList<>());
        for (int r = 0; r < 12; r++) {
            for (int i = 0; i < names.length; i++) {
                int k = (i + r) % names.length; // rotate the order
                long t0 = System.nanoTime();
                long sum = k == 0 ? jni(n) : k == 1 ? ffm(n, false) : ffm(n, true);
                double ns = (System.nanoTime() - t0) / (double) n;
                if (sum != 0) throw new AssertionError("a begin or finish failed, or found a follower");
                if (r >= 3) results.get(k).add(ns); // the first 3 rounds warm up
            }
        }
        for (int i = 0; i < names.length; i++) {
            List<Double> x = results.get(i);
            Collections.sort(x);
            System.out.printf(Locale.ROOT, "%-20s median %.1f ns (%.1f-%.1f)%n", names[i], x.get(x.size() / 2), x.get(0),
                    x.get(x.size() - 1));
        }
    }

    /** n uncontended flights through the binding's natives; the sum of the finishes' statuses. */
    static long jni(int n) throws Throwable {
        long sum = 0;
        for (int i = 0; i < n; i++) {
            long h = (long) BEGIN0.invokeExact(ASYNC_GROUP, 0x3234323a72657375L, 0x32L, 0L, 9, (byte[]) null);
            sum += (int) FINISH0.invokeExact(ASYNC_GROUP, h);
        }
        return sum;
    }

    /** The same through FFM downcalls to the shared C library. */
    static long ffm(int n, boolean critical) throws Throwable {
        long sum = 0;
        for (int i = 0; i < n; i++) {
            int role = critical ? (int) CRITICAL_BEGIN.invokeExact(GROUP, KEY, 9L, OUT)
                    : (int) FFM_BEGIN.invokeExact(GROUP, KEY, 9L, OUT);
            if (role != 1) throw new AssertionError("sf_group_begin: " + role);
            MemorySegment call = OUT.get(ADDRESS, 0);
            sum += critical ? (int) CRITICAL_FINISH.invokeExact(call, 0) : (int) FFM_FINISH.invokeExact(call, 0);
        }
        return sum;
    }
}
