package io.github.libsingleflight;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.lang.ref.WeakReference;
import java.nio.charset.StandardCharsets;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Callable;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.function.BooleanSupplier;

import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Behaviour of the Java binding, one behaviour per test. Concurrency tests hold the leader inside
 * its callable until stats() shows the followers have joined (a condition with a deadline), so
 * they do not depend on timing.
 */
@Timeout(60)
class GroupTest {
    private static final long DEADLINE_MS = 20_000;

    private Group group;
    private ExecutorService pool;

    @BeforeEach
    void setUp() {
        group = new Group();
        pool = Executors.newCachedThreadPool();
    }

    @AfterEach
    void tearDown() throws InterruptedException {
        pool.shutdownNow();
        assertTrue(pool.awaitTermination(DEADLINE_MS, TimeUnit.MILLISECONDS));
        group.close();
    }

    private static void await(BooleanSupplier condition, String what) throws InterruptedException {
        long end = System.currentTimeMillis() + DEADLINE_MS;
        while (!condition.getAsBoolean()) {
            if (System.currentTimeMillis() > end) throw new AssertionError("timed out waiting for " + what);
            Thread.sleep(1);
        }
    }

    private void awaitFollowers(long n) throws InterruptedException {
        await(() -> group.stats().followers() >= n, n + " followers");
    }

    /** Runs n copies of task concurrently and returns their futures, all completed. */
    private <T> List<Future<T>> runConcurrently(int n, Callable<T> task) throws Exception {
        List<Future<T>> futures = new ArrayList<>();
        for (int i = 0; i < n; i++) futures.add(pool.submit(task));
        for (Future<T> f : futures) {
            try {
                f.get(DEADLINE_MS, TimeUnit.MILLISECONDS);
            } catch (ExecutionException expected) {
                // inspected by the test
            }
        }
        return futures;
    }

    private static Throwable failureOf(Future<?> f) throws InterruptedException {
        try {
            f.get();
            throw new AssertionError("expected the call to throw");
        } catch (ExecutionException e) {
            return e.getCause();
        }
    }

    @Test
    void singleCallerGetsTheValueNotShared() throws Exception {
        Result<String> r = group.execute("k", () -> "v");
        assertEquals("v", r.value());
        assertFalse(r.shared());
        assertEquals(42, (int) group.<Integer>call("n", () -> 42));
    }

    @Test
    void nullIsAValue() throws Exception {
        assertNull(group.call("k", () -> null));
    }

    @Test
    void concurrentCallersShareOneExecutionAndTheSameObject() throws Exception {
        int n = 8;
        AtomicInteger runs = new AtomicInteger();
        Callable<Object> fn = () -> {
            runs.incrementAndGet();
            awaitFollowers(n - 1);
            return new Object();
        };
        List<Future<Result<Object>>> futures = runConcurrently(n, () -> group.execute("k", fn));
        Object first = futures.get(0).get().value();
        for (Future<Result<Object>> f : futures) {
            assertSame(first, f.get().value());
            assertTrue(f.get().shared());
        }
        assertEquals(1, runs.get());
        Stats s = group.stats();
        assertEquals(new Stats(n, 1, n - 1, 0, 0, 0, 0, 0), s);
    }

    @Test
    void aCheckedExceptionIsRethrownInEveryCallerAsTheSameObject() throws Exception {
        int n = 5;
        Callable<String> fn = () -> {
            awaitFollowers(n - 1);
            throw new IOException("db down");
        };
        List<Future<String>> futures = runConcurrently(n, () -> group.call("k", fn));
        Throwable first = failureOf(futures.get(0));
        assertTrue(first instanceof IOException);
        assertEquals("db down", first.getMessage());
        for (Future<String> f : futures) assertSame(first, failureOf(f));
        assertEquals(1, group.stats().panics());
        // The failure is not cached: the key runs again.
        assertEquals("ok", group.call("k", () -> "ok"));
    }

    static final class CustomError extends Error {
        private static final long serialVersionUID = 1L;
    }

    @Test
    void errorsAndRuntimeExceptionsAreRethrownAsThemselves() {
        CustomError error = new CustomError();
        assertSame(error, assertThrows(CustomError.class, () -> group.call("e", () -> {
            throw error;
        })));
        IllegalStateException ise = new IllegalStateException("x");
        assertSame(ise, assertThrows(IllegalStateException.class, () -> group.call("r", () -> {
            throw ise;
        })));
    }

    static final class UnprintableException extends Exception {
        private static final long serialVersionUID = 1L;

        @Override
        public String toString() {
            throw new IllegalStateException("no");
        }
    }

    @Test
    void anExceptionWithABrokenToStringStillReachesTheCaller() {
        UnprintableException e = new UnprintableException();
        assertSame(e, assertThrows(UnprintableException.class, () -> group.call("k", () -> {
            throw e;
        })));
        assertEquals(0, group.stats().goexits());
        assertEquals(1, group.stats().panics());
    }

    @Test
    void aFollowerTimeoutThrowsTimeoutExceptionAndTheFlightGoesOn() throws Exception {
        CountDownLatch entered = new CountDownLatch(1);
        CountDownLatch release = new CountDownLatch(1);
        Future<Result<String>> leader = pool.submit(() -> group.execute("k", () -> {
            entered.countDown();
            assertTrue(release.await(DEADLINE_MS, TimeUnit.MILLISECONDS));
            return "late";
        }));
        assertTrue(entered.await(DEADLINE_MS, TimeUnit.MILLISECONDS));
        assertThrows(TimeoutException.class,
                () -> group.execute("k", Duration.ofMillis(50), () -> "never runs"));
        release.countDown();
        Result<String> r = leader.get(DEADLINE_MS, TimeUnit.MILLISECONDS);
        assertEquals("late", r.value());
        assertTrue(r.shared(), "the follower had joined");
        Stats s = group.stats();
        assertEquals(1, s.timeouts());
        assertEquals(0, s.inFlight());
        assertThrows(IllegalArgumentException.class,
                () -> group.execute("k", Duration.ofMillis(-1), () -> "x"));
    }

    @Test
    void forgetMakesTheNextCallRunAgainWhileTheOldFlightDelivers() throws Exception {
        CountDownLatch entered = new CountDownLatch(1);
        CountDownLatch release = new CountDownLatch(1);
        Future<String> first = pool.submit(() -> group.call("k", () -> {
            entered.countDown();
            assertTrue(release.await(DEADLINE_MS, TimeUnit.MILLISECONDS));
            return "first";
        }));
        assertTrue(entered.await(DEADLINE_MS, TimeUnit.MILLISECONDS));
        assertTrue(group.forget("k"));
        assertEquals("second", group.call("k", () -> "second"));
        release.countDown();
        assertEquals("first", first.get(DEADLINE_MS, TimeUnit.MILLISECONDS));
        assertFalse(group.forget("k"));
        assertEquals(1, group.stats().forgets());
    }

    @Test
    void forgetUnsharedOnlyForgetsAFlightNobodyJoined() throws Exception {
        CountDownLatch release = new CountDownLatch(1);
        CountDownLatch entered = new CountDownLatch(2);
        Callable<String> slow = () -> {
            entered.countDown();
            assertTrue(release.await(DEADLINE_MS, TimeUnit.MILLISECONDS));
            return "v";
        };
        Future<String> leader = pool.submit(() -> group.call("shared", slow));
        Future<String> follower = pool.submit(() -> group.call("shared", slow));
        awaitFollowers(1);
        assertFalse(group.forgetUnshared("shared"));
        Future<String> lone = pool.submit(() -> group.call("lone", slow));
        assertTrue(entered.await(DEADLINE_MS, TimeUnit.MILLISECONDS)); // both leaders are inside
        assertTrue(group.forgetUnshared("lone"));
        release.countDown();
        assertEquals("v", leader.get());
        assertEquals("v", follower.get());
        assertEquals("v", lone.get());
    }

    @Test
    void nullKeysAndNullCallablesAreRejected() {
        assertThrows(NullPointerException.class, () -> group.call((String) null, () -> "x"));
        assertThrows(NullPointerException.class, () -> group.call((byte[]) null, () -> "x"));
        assertThrows(NullPointerException.class, () -> group.call("k", null));
        assertThrows(NullPointerException.class, () -> group.forget((String) null));
        assertThrows(NullPointerException.class, () -> group.forgetUnshared((String) null));
        assertThrows(NullPointerException.class, () -> group.forgetUnshared((byte[]) null));
        assertEquals(0, group.stats().calls());
    }

    @Test
    void aStringKeyIsItsUtf8BytesAndEmptyKeysWork() throws Exception {
        CountDownLatch entered = new CountDownLatch(1);
        CountDownLatch release = new CountDownLatch(1);
        Future<String> leader = pool.submit(() -> group.call("é\0x", () -> {
            entered.countDown();
            assertTrue(release.await(DEADLINE_MS, TimeUnit.MILLISECONDS));
            return "v";
        }));
        assertTrue(entered.await(DEADLINE_MS, TimeUnit.MILLISECONDS));
        assertTrue(group.forget("é\0x".getBytes(StandardCharsets.UTF_8)));
        release.countDown();
        assertEquals("v", leader.get());
        assertEquals("empty", group.call("", () -> "empty"));
        assertEquals("bytes", group.call(new byte[0], () -> "bytes"));
    }

    @Test
    void callingTheOwnKeyInsideTheCallableThrowsInsteadOfDeadlocking() throws Exception {
        RuntimeException e = assertThrows(RuntimeException.class,
                () -> group.call("k", () -> group.call("k", () -> "x")));
        assertTrue(e.getMessage().contains("SF_EDEADLK"), e.getMessage());
        assertEquals("7", group.call("k", () -> group.call("other", () -> "7")));
    }

    @Test
    void noGlobalReferencesLeakOverThousandsOfCalls() throws Exception {
        long before = Group.liveNativeValues();
        Object value = new Object();
        IOException failure = new IOException("x");
        for (int i = 0; i < 20_000; i++) {
            assertSame(value, group.call("k" + (i % 7), () -> value));
            assertThrows(IOException.class, () -> group.call("e", () -> {
                throw failure;
            }));
        }
        assertEquals(before, Group.liveNativeValues());
        assertEquals(0, group.stats().inFlight());
    }

    @Test
    void theLibraryKeepsNoReferenceToAValueOnceEveryCallerIsDone() throws Exception {
        WeakReference<Object> ref = new WeakReference<>(group.call("k", Object::new));
        await(() -> {
            System.gc();
            return ref.get() == null;
        }, "the value to be collected");
    }

    @Test
    void manyThreadsOnFewKeysAllGetTheirKeysValue() throws Exception {
        int threads = 8;
        int calls = 2_000;
        long before = Group.liveNativeValues();
        List<Future<Integer>> futures = runConcurrently(threads, () -> {
            int wrong = 0;
            for (int i = 0; i < calls; i++) {
                String key = "key" + (i % 4);
                if (!key.equals(group.call(key, () -> new String(key)))) wrong++;
            }
            return wrong;
        });
        for (Future<Integer> f : futures) assertEquals(0, (int) f.get());
        Stats s = group.stats();
        assertEquals((long) threads * calls, s.calls());
        assertEquals(s.calls(), s.leaders() + s.followers());
        assertEquals(0, s.inFlight());
        assertEquals(before, Group.liveNativeValues());
    }

    @Test
    void aClosedGroupRejectsNewCallsAndCloseIsIdempotent() throws Exception {
        Group g = new Group();
        assertEquals("v", g.call("k", () -> "v"));
        g.close();
        g.close();
        assertThrows(IllegalStateException.class, () -> g.call("k", () -> "v"));
        assertThrows(IllegalStateException.class, g::stats);
    }

    @Test
    void closingDuringAFlightLetsItFinish() throws Exception {
        Group g = new Group();
        CountDownLatch entered = new CountDownLatch(1);
        CountDownLatch release = new CountDownLatch(1);
        Future<String> call = pool.submit(() -> g.call("k", () -> {
            entered.countDown();
            assertTrue(release.await(DEADLINE_MS, TimeUnit.MILLISECONDS));
            return "done";
        }));
        assertTrue(entered.await(DEADLINE_MS, TimeUnit.MILLISECONDS));
        g.close();
        release.countDown();
        assertEquals("done", call.get(DEADLINE_MS, TimeUnit.MILLISECONDS));
    }

    @Test
    void theNativeLibraryVersionIsReported() {
        assertEquals(2, Group.nativeVersion().chars().filter(c -> c == '.').count());
    }
}
