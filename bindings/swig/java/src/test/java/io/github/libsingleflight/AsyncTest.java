package io.github.libsingleflight;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertNotSame;
import static org.junit.jupiter.api.Assertions.assertSame;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import java.io.IOException;
import java.lang.management.ManagementFactory;
import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.CancellationException;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.ExecutionException;
import java.util.concurrent.ExecutorService;
import java.util.concurrent.Executors;
import java.util.concurrent.Future;
import java.util.concurrent.RejectedExecutionException;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;
import java.util.concurrent.atomic.AtomicInteger;
import java.util.concurrent.atomic.AtomicReference;
import java.util.function.BooleanSupplier;
import java.util.function.Supplier;

import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeEach;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/**
 * Behaviour of Group.callAsync, one behaviour per test. The leader's stage is a CompletableFuture
 * the test completes or watches itself, so every step is a handshake: nothing sleeps and nothing
 * waits for a thread that is not known to be there.
 */
@Timeout(60)
class AsyncTest {
    private static final long DEADLINE_MS = 20_000;

    private Group group;
    private long refsBefore;
    private long valuesBefore;

    @BeforeEach
    void setUp() {
        group = new Group();
        refsBefore = AsyncFlight.liveReferences();
        valuesBefore = Group.liveNativeValues();
    }

    @AfterEach
    void tearDown() {
        assertEquals(0, group.stats().inFlight(), "a flight was left running");
        group.close();
        // Every test ends with every flight complete: all references back.
        assertEquals(refsBefore, AsyncFlight.liveReferences(), "JNI global references of the async path");
        assertEquals(valuesBefore, Group.liveNativeValues(), "values held by the library");
    }

    /** fn for a leader: hands out the stage the test controls and counts its runs. */
    private static final class Work<T> implements Supplier<CompletionStage<T>> {
        final CompletableFuture<T> stage = new CompletableFuture<>();
        final AtomicInteger runs = new AtomicInteger();

        @Override
        public CompletionStage<T> get() {
            runs.incrementAndGet();
            return stage;
        }
    }

    private static Throwable failureOf(Future<?> f) throws Exception {
        ExecutionException e = assertThrows(ExecutionException.class, () -> f.get(DEADLINE_MS, TimeUnit.MILLISECONDS));
        return e.getCause();
    }

    private static void await(BooleanSupplier condition, String what) throws InterruptedException {
        long end = System.currentTimeMillis() + DEADLINE_MS;
        while (!condition.getAsBoolean()) {
            if (System.currentTimeMillis() > end) throw new AssertionError("timed out waiting for " + what);
            Thread.sleep(1);
        }
    }

    @Test
    void aLoneCallerGetsItsStagesValue() throws Exception {
        CompletableFuture<String> f = group.callAsync("k", () -> CompletableFuture.completedFuture("v"));
        assertEquals("v", f.get());
        assertEquals(1, group.stats().leaders());
    }

    @Test
    void concurrentCallersShareOneStageAndGetTheSameObject() throws Exception {
        Work<Object> work = new Work<>();
        List<CompletableFuture<Object>> callers = new ArrayList<>();
        for (int i = 0; i < 50; i++) callers.add(group.callAsync("k", work));
        for (CompletableFuture<Object> f : callers) assertFalse(f.isDone(), "nobody has a value yet");
        Object value = new Object();
        work.stage.complete(value);
        for (CompletableFuture<Object> f : callers) assertSame(value, f.getNow(null), "completed on this thread");
        assertEquals(1, work.runs.get(), "fn ran once");
        assertEquals(new Stats(1, 1, 0, 0, 0, 0, 0, 0), group.stats(),
                "the async callers of one key are one call into C");
    }

    @Test
    void callersOnOtherThreadsJoinTheSameFlight() throws Exception {
        Work<String> work = new Work<>();
        CompletableFuture<String> leader = group.callAsync("k", work);
        ExecutorService pool = Executors.newFixedThreadPool(4);
        try {
            List<Future<CompletableFuture<String>>> joined = new ArrayList<>();
            for (int i = 0; i < 8; i++) joined.add(pool.submit(() -> group.callAsync("k", work)));
            List<CompletableFuture<String>> followers = new ArrayList<>();
            for (Future<CompletableFuture<String>> j : joined) followers.add(j.get());
            work.stage.complete("v");
            assertEquals("v", leader.get());
            for (CompletableFuture<String> f : followers) assertEquals("v", f.get());
        } finally {
            pool.shutdownNow();
        }
        assertEquals(1, work.runs.get());
    }

    @Test
    void anExceptionOfTheStageReachesEveryCallerAsTheSameObject() throws Exception {
        Work<String> work = new Work<>();
        List<CompletableFuture<String>> callers = new ArrayList<>();
        for (int i = 0; i < 5; i++) callers.add(group.callAsync("k", work));
        IOException failure = new IOException("db down");
        work.stage.completeExceptionally(failure);
        for (CompletableFuture<String> f : callers) assertSame(failure, failureOf(f));
        assertEquals(1, group.stats().panics());
        assertEquals("ok", group.callAsync("k", () -> CompletableFuture.completedFuture("ok")).get(),
                "a failure is not kept: the key runs again");
    }

    @Test
    void aCompletionExceptionIsUnwrappedForEveryCaller() throws Exception {
        Work<String> work = new Work<>();
        IllegalStateException cause = new IllegalStateException("upstream");
        CompletableFuture<String> leader = group.callAsync("k",
                () -> work.get().thenApply(v -> { throw cause; }));
        CompletableFuture<String> follower = group.callAsync("k", work);
        work.stage.complete("v");
        assertSame(cause, failureOf(leader));
        assertSame(cause, failureOf(follower));
    }

    @Test
    void whatFnThrowsOrANullStageFailsTheFlight() throws Exception {
        RuntimeException thrown = new RuntimeException("fn threw");
        assertSame(thrown, failureOf(group.callAsync("k", () -> { throw thrown; })));
        assertInstanceOf(NullPointerException.class, failureOf(group.callAsync("k", () -> null)));
    }

    @Test
    void theExecutorRunsFnAndARefusingOneFailsTheFlight() throws Exception {
        AtomicReference<Thread> ranOn = new AtomicReference<>();
        ExecutorService single = Executors.newSingleThreadExecutor();
        try {
            CompletableFuture<String> f = group.callAsync("k", () -> {
                ranOn.set(Thread.currentThread());
                return CompletableFuture.completedFuture("v");
            }, single);
            assertEquals("v", f.get());
            assertNotSame(Thread.currentThread(), ranOn.get());
        } finally {
            single.shutdownNow();
        }
        RejectedExecutionException no = new RejectedExecutionException("full");
        assertSame(no, failureOf(group.callAsync("k", () -> CompletableFuture.completedFuture("x"),
                task -> { throw no; })));
    }

    @Test
    void cancellingOneFollowerLeavesTheOthersTheirValue() throws Exception {
        Work<String> work = new Work<>();
        CompletableFuture<String> leader = group.callAsync("k", work);
        CompletableFuture<String> quitter = group.callAsync("k", work);
        CompletableFuture<String> stayer = group.callAsync("k", work);
        assertTrue(quitter.cancel(true));
        assertTrue(quitter.isCancelled());
        assertFalse(work.stage.isDone(), "the stage goes on");
        work.stage.complete("v");
        assertEquals("v", leader.get());
        assertEquals("v", stayer.get());
        assertThrows(CancellationException.class, quitter::get);
    }

    @Test
    void cancellingTheLeadersFutureLeavesTheFollowersTheirValue() throws Exception {
        Work<String> work = new Work<>();
        CompletableFuture<String> leader = group.callAsync("k", work);
        CompletableFuture<String> follower = group.callAsync("k", work);
        assertTrue(leader.cancel(true));
        assertFalse(work.stage.isDone(), "the leader still owes the others its stage");
        work.stage.complete("v");
        assertEquals("v", follower.get());
        assertTrue(leader.isCancelled());
    }

    @Test
    void whenEveryCallerCancelsTheLeadersStageIsCancelled() throws Exception {
        // Every order of leaving: the leader first, in the middle, last.
        for (int leaderAt = 0; leaderAt < 3; leaderAt++) {
            Work<String> work = new Work<>();
            List<CompletableFuture<String>> callers = new ArrayList<>();
            for (int i = 0; i < 3; i++) callers.add(group.callAsync("k" + leaderAt, work));
            List<CompletableFuture<String>> order = new ArrayList<>(callers.subList(1, 3));
            order.add(leaderAt, callers.get(0));
            for (int i = 0; i < order.size(); i++) {
                assertFalse(work.stage.isDone(), "cancelled before the last caller left (" + i + ")");
                assertTrue(order.get(i).cancel(true));
            }
            assertTrue(work.stage.isCancelled(), "cancelled on the thread of the last caller to leave");
        }
        assertEquals(3, group.stats().leaders());
        assertEquals(3, group.stats().abandons(), "each flight counted abandoned once");
    }

    @Test
    void aCallerArrivingAfterAbandonmentStartsAFreshFlight() throws Exception {
        Work<String> first = new Work<>();
        CompletableFuture<String> a = group.callAsync("k", first);
        CompletableFuture<String> b = group.callAsync("k", first);
        a.cancel(true);
        b.cancel(true);
        assertTrue(first.stage.isCancelled());
        Work<String> second = new Work<>();
        CompletableFuture<String> c = group.callAsync("k", second);
        assertEquals(1, second.runs.get(), "a new flight, not the abandoned one");
        second.stage.complete("fresh");
        assertEquals("fresh", c.get());
        assertEquals(2, group.stats().leaders());
    }

    @Test
    void aCallerWhoseTimeoutRunsOutHasGivenUp() throws Exception {
        Work<String> work = new Work<>();
        CountDownLatch stageCancelled = new CountDownLatch(1);
        work.stage.whenComplete((v, e) -> {
            if (e instanceof CancellationException) stageCancelled.countDown();
        });
        CompletableFuture<String> leader = group.callAsync("k", work);
        CompletableFuture<String> follower = group.callAsync("k", work).orTimeout(1, TimeUnit.MILLISECONDS);
        leader.cancel(true);
        assertInstanceOf(TimeoutException.class, failureOf(follower));
        // orTimeout completed the follower's future from its timer thread:
        // that was the last caller leaving, so the stage is cancelled, and
        // the flight finishes on that thread.
        assertTrue(stageCancelled.await(DEADLINE_MS, TimeUnit.MILLISECONDS));
        await(() -> group.stats().inFlight() == 0, "the flight to finish on the timer thread");
    }

    @Test
    void completingTheFutureFromOutsideIsGivingUpToo() throws Exception {
        Work<String> work = new Work<>();
        CompletableFuture<String> leader = group.callAsync("k", work);
        CompletableFuture<String> follower = group.callAsync("k", work);
        assertTrue(follower.complete("mine"));
        assertTrue(leader.completeExceptionally(new IOException("not interested")));
        assertTrue(work.stage.isCancelled());
        assertEquals("mine", follower.get());
    }

    @Test
    void aCallerArrivingAfterCompletionStartsANewFlight() throws Exception {
        Work<String> first = new Work<>();
        CompletableFuture<String> a = group.callAsync("k", first);
        CompletableFuture<String> b = group.callAsync("k", first);
        first.stage.complete("old");
        Work<String> second = new Work<>();
        CompletableFuture<String> c = group.callAsync("k", second);
        assertEquals(1, second.runs.get(), "not the completed flight");
        second.stage.complete("new");
        assertEquals("old", a.get());
        assertEquals("old", b.get());
        assertEquals("new", c.get());
        assertFalse(b.cancel(true), "a served caller cannot leave");
    }

    @Test
    void cancellingAfterCompletionChangesNothing() throws Exception {
        Work<String> work = new Work<>();
        CompletableFuture<String> leader = group.callAsync("k", work);
        CompletableFuture<String> follower = group.callAsync("k", work);
        work.stage.complete("v");
        assertFalse(leader.cancel(true));
        assertFalse(follower.cancel(true));
        assertEquals("v", leader.get());
        assertEquals("v", follower.get());
    }

    @Test
    void theLeaderGivingUpBeforeItsExecutorRanFnSkipsFn() throws Exception {
        List<Runnable> queued = new ArrayList<>();
        Work<String> work = new Work<>();
        CompletableFuture<String> leader = group.callAsync("k", work, queued::add);
        leader.cancel(true);
        queued.get(0).run();
        assertEquals(0, work.runs.get(), "nobody wanted it any more");
    }

    @Test
    void asyncAndBlockingCallersShareOneFlight() throws Exception {
        Work<String> work = new Work<>();
        CompletableFuture<String> leader = group.callAsync("k", work);
        // A blocking caller on this very thread joins the flight this
        // thread began: its stage completes on another thread, so this is
        // no deadlock.
        Thread completer = new Thread(() -> {
            try {
                await(() -> group.stats().followers() == 1, "the blocking follower");
            } catch (InterruptedException e) {
                return;
            }
            work.stage.complete("v");
        });
        completer.start();
        assertEquals("v", group.call("k", () -> "never runs"));
        completer.join();
        assertEquals("v", leader.get());
        // And a blocking leader's flight is joined by an async caller.
        CountDownLatch joined = new CountDownLatch(1);
        AtomicReference<CompletableFuture<String>> async = new AtomicReference<>();
        Thread joiner = new Thread(() -> {
            try {
                await(() -> group.stats().leaders() == 2, "the blocking leader");
            } catch (InterruptedException e) {
                return;
            }
            async.set(group.callAsync("k2", work));
            joined.countDown();
        });
        joiner.start();
        assertEquals("sync", group.call("k2", () -> {
            assertTrue(joined.await(DEADLINE_MS, TimeUnit.MILLISECONDS));
            return "sync";
        }));
        joiner.join();
        assertEquals("sync", async.get().get());
    }

    @Test
    void asyncCallersWhoAllGiveUpLeaveABlockingLeadersFlightRunning() throws Exception {
        CountDownLatch gaveUp = new CountDownLatch(1);
        AtomicReference<List<CompletableFuture<String>>> quitters = new AtomicReference<>();
        AtomicReference<CompletableFuture<String>> late = new AtomicReference<>();
        Thread asyncSide = new Thread(() -> {
            try {
                await(() -> group.stats().leaders() == 1, "the blocking leader");
            } catch (InterruptedException e) {
                return;
            }
            List<CompletableFuture<String>> fs = new ArrayList<>();
            for (int i = 0; i < 3; i++) fs.add(group.callAsync("k", () -> CompletableFuture.completedFuture("never")));
            for (CompletableFuture<String> f : fs) f.cancel(true);
            quitters.set(fs);
            // The C flight goes on for the blocking leader: a new async
            // caller joins it again, as a new party.
            late.set(group.callAsync("k", () -> CompletableFuture.completedFuture("never")));
            gaveUp.countDown();
        });
        asyncSide.start();
        assertEquals("v", group.call("k", () -> {
            assertTrue(gaveUp.await(DEADLINE_MS, TimeUnit.MILLISECONDS));
            return "v";
        }));
        asyncSide.join();
        for (CompletableFuture<String> f : quitters.get()) assertTrue(f.isCancelled());
        assertEquals("v", late.get().get());
        assertEquals(1, group.stats().leaders(), "one execution");
    }

    @Test
    void anAsyncLeaderWhoseCallersAllGiveUpStillServesABlockingFollower() throws Exception {
        Work<String> work = new Work<>();
        CompletableFuture<String> leader = group.callAsync("k", work);
        AtomicReference<Object> got = new AtomicReference<>();
        Thread blocking = new Thread(() -> {
            try {
                got.set(group.call("k", () -> "never runs"));
            } catch (Exception e) {
                got.set(e);
            }
        });
        blocking.start();
        await(() -> group.stats().followers() == 1, "the blocking follower");
        assertTrue(leader.cancel(true));
        assertFalse(work.stage.isDone(), "a blocking caller still wants it");
        work.stage.complete("v");
        blocking.join();
        assertEquals("v", got.get());
    }

    @Test
    void theStageIsCancelledWhenAnotherPartyLeavesAfterTheLeader() throws Exception {
        // The String and the byte[] form of a key make two async flights,
        // two parties of one C flight: the second to give up abandons it.
        Work<String> work = new Work<>();
        CompletableFuture<String> byString = group.callAsync("k", work);
        CompletableFuture<String> byBytes = group.callAsync(new byte[] {'k'}, work);
        assertEquals(1, work.runs.get());
        byString.cancel(true);
        assertFalse(work.stage.isDone(), "the byte[] caller still wants it");
        byBytes.cancel(true);
        assertTrue(work.stage.isCancelled(), "cancelled on the thread of the last party leaving");
    }

    /** A two-phase caller of key on a thread the JVM does not know (native, for tests). */
    private static final class NativeParty implements AutoCloseable {
        private final long party;

        NativeParty(Group g, String key) {
            party = g.testParty(key);
        }

        NativeParty(Group g, byte[] key) {
            party = g.testParty(key);
        }

        int run(int op) {
            return io.github.libsingleflight.internal.singleflight_core.test_party_run(party, op);
        }

        @Override
        public void close() {
            io.github.libsingleflight.internal.singleflight_core.test_party_delete(party);
        }
    }

    private static final int BEGIN = 1, FINISH = 2, CANCEL = 3, RELEASE = 4;

    @Test
    void aFollowerFlightIsServedFromAThreadTheJvmDoesNotKnow() throws Exception {
        try (NativeParty leader = new NativeParty(group, "k")) {
            assertEquals(1, leader.run(BEGIN), "the native party leads");
            CompletableFuture<String> f = group.callAsync("k", () -> CompletableFuture.completedFuture("never"));
            assertFalse(f.isDone());
            // Its finish runs the done callback on the native thread, which is
            // attached for the upcall and detached after it.
            assertEquals(0, leader.run(FINISH));
            assertTrue(f.isDone());
            assertEquals(null, f.get(), "the native leader stored no value");
            leader.run(RELEASE);
        }
    }

    @Test
    void theLastPartyLeavingOnAThreadTheJvmDoesNotKnowCancelsTheStage() throws Exception {
        Work<String> work = new Work<>();
        AtomicReference<Thread> cancelledOn = new AtomicReference<>();
        work.stage.whenComplete((v, e) -> cancelledOn.set(Thread.currentThread()));
        CompletableFuture<String> leader = group.callAsync("k", work);
        try (NativeParty follower = new NativeParty(group, "k")) {
            assertEquals(2, follower.run(BEGIN), "the native party follows");
            assertTrue(leader.cancel(true));
            assertFalse(work.stage.isDone(), "the native follower still wants it");
            assertEquals(1, follower.run(CANCEL), "its cancel abandons the flight");
            assertTrue(work.stage.isCancelled(), "cancelled by the abandon callback's upcall");
            assertNotSame(Thread.currentThread(), cancelledOn.get(), "on the native thread, attached");
            follower.run(RELEASE);
        }
    }

    @Test
    void forgetMakesTheNextAsyncCallerStartANewFlight() throws Exception {
        Work<String> first = new Work<>();
        CompletableFuture<String> a = group.callAsync("k", first);
        CompletableFuture<String> b = group.callAsync("k".getBytes(java.nio.charset.StandardCharsets.UTF_8), first);
        assertTrue(group.forget("k"));
        Work<String> second = new Work<>();
        CompletableFuture<String> c = group.callAsync("k", second);
        assertEquals(1, second.runs.get(), "a new flight");
        second.stage.complete("new");
        first.stage.complete("old");
        assertEquals("old", a.get(), "the forgotten flight still delivers to its callers");
        assertEquals("old", b.get());
        assertEquals("new", c.get());
    }

    @Test
    void forgetUnsharedRefusesAFlightTwoAsyncCallersJoined() throws Exception {
        Work<String> work = new Work<>();
        CompletableFuture<String> a = group.callAsync("k", work);
        CompletableFuture<String> b = group.callAsync("k", work);
        assertFalse(group.forgetUnshared("k"), "two callers share it, though C sees one");
        b.cancel(true);
        assertTrue(group.forgetUnshared("k"), "one caller left");
        Work<String> second = new Work<>();
        CompletableFuture<String> c = group.callAsync("k", second);
        assertEquals(1, second.runs.get());
        work.stage.complete("old");
        second.stage.complete("new");
        assertEquals("old", a.get());
        assertEquals("new", c.get());
    }

    @Test
    void aBlockingCallForItsOwnKeyInsideFnThrowsInsteadOfWaitingForItself() throws Exception {
        CompletableFuture<String> f = group.callAsync("k", () -> {
            try {
                return CompletableFuture.completedFuture(group.call("k", () -> "x"));
            } catch (Exception e) {
                return CompletableFuture.failedFuture(e);
            }
        });
        Throwable e = failureOf(f);
        assertTrue(e.getMessage().contains("SF_EDEADLK"), e.getMessage());
    }

    @Test
    void closingTheGroupLetsTheFlightsInProgressFinish() throws Exception {
        Group g = new Group();
        Work<String> work = new Work<>();
        CompletableFuture<String> leader = g.callAsync("k", work);
        CompletableFuture<String> follower = g.callAsync("k", work);
        g.close();
        assertThrows(IllegalStateException.class, () -> g.callAsync("k", work));
        work.stage.complete("v");
        assertEquals("v", leader.get());
        assertEquals("v", follower.get());
    }

    @Test
    void tenThousandFuturesOnOneKeyNeedNoThreads() throws Exception {
        int n = 10_000;
        Work<Object> work = new Work<>();
        group.callAsync("warm-up", () -> CompletableFuture.completedFuture("x")).get();
        int threadsBefore = ManagementFactory.getThreadMXBean().getThreadCount();
        List<CompletableFuture<Object>> callers = new ArrayList<>(n);
        for (int i = 0; i < n; i++) callers.add(group.callAsync("k", work));
        int threadsWaiting = ManagementFactory.getThreadMXBean().getThreadCount();
        Object value = new Object();
        work.stage.complete(value);
        int done = 0;
        for (CompletableFuture<Object> f : callers) {
            if (f.getNow(null) == value) done++;
        }
        int threadsAfter = ManagementFactory.getThreadMXBean().getThreadCount();
        System.out.printf("callAsync: %d futures on one key, %d execution(s), %d completed; "
                + "threads before %d, while waiting %d, after %d%n",
                n, work.runs.get(), done, threadsBefore, threadsWaiting, threadsAfter);
        assertEquals(1, work.runs.get());
        assertEquals(n, done);
        assertEquals(threadsBefore, threadsWaiting, "no thread per waiter");
        assertEquals(threadsBefore, threadsAfter);
    }

    @Test
    void cancelsRacingTheStagesCompletionLoseNothing() throws Exception {
        // Each round: a stage completes on one thread while callers cancel on
        // two others.  Whatever the interleaving, every future ends either
        // with the value or cancelled, and (checked in tearDown) no handle,
        // reference or value is left behind.
        int rounds = 2_000;
        int cancelled = 0;
        ExecutorService pool = Executors.newFixedThreadPool(3);
        try {
            for (int r = 0; r < rounds; r++) {
                Work<String> work = new Work<>();
                List<CompletableFuture<String>> callers = new ArrayList<>();
                for (int i = 0; i < 4; i++) callers.add(group.callAsync("race", work));
                CyclicBarrier start = new CyclicBarrier(3);
                Future<?> complete = pool.submit(() -> {
                    start.await();
                    work.stage.complete("v");
                    return null;
                });
                Future<?> cancelA = pool.submit(() -> {
                    start.await();
                    callers.get(0).cancel(true);
                    callers.get(1).cancel(true);
                    return null;
                });
                Future<?> cancelB = pool.submit(() -> {
                    start.await();
                    callers.get(3).cancel(true);
                    return null;
                });
                complete.get();
                cancelA.get();
                cancelB.get();
                for (CompletableFuture<String> f : callers) {
                    assertTrue(f.isCancelled() || "v".equals(f.getNow(null)), "round " + r + ": " + f);
                }
                assertEquals("v", callers.get(2).getNow(null), "round " + r + ": the caller who stayed");
                for (CompletableFuture<String> f : callers) {
                    if (f.isCancelled()) cancelled++;
                }
            }
        } finally {
            pool.shutdownNow();
        }
        System.out.printf("cancels vs completion: %d of %d cancels came first%n", cancelled, 3 * rounds);
    }

    @Test
    void everyCallerLeavingRacingTheStagesCompletionEndsCleanly() throws Exception {
        // The last caller leaving at the instant the stage completes: either
        // the stage was cancelled first, or it completed and nobody wanted it.
        int rounds = 2_000;
        int abandonedFirst = 0;
        ExecutorService pool = Executors.newFixedThreadPool(2);
        try {
            for (int r = 0; r < rounds; r++) {
                Work<String> work = new Work<>();
                CompletableFuture<String> a = group.callAsync("race", work);
                CompletableFuture<String> b = group.callAsync("race", work);
                CyclicBarrier start = new CyclicBarrier(2);
                Future<?> complete = pool.submit(() -> {
                    start.await();
                    work.stage.complete("v");
                    return null;
                });
                Future<?> leave = pool.submit(() -> {
                    start.await();
                    b.cancel(true);
                    a.cancel(true);
                    return null;
                });
                complete.get();
                leave.get();
                assertTrue(work.stage.isDone());
                if (work.stage.isCancelled()) abandonedFirst++;
            }
        } finally {
            pool.shutdownNow();
        }
        System.out.printf("last caller leaving vs completion: abandoned first in %d of %d rounds%n",
                abandonedFirst, rounds);
    }

    // ---- issue 17: the uncontended path's shortcuts ------------------------

    /** Keys of every shape the fast path encodes itself (packed in longs) or hands over as bytes. */
    private static final String[] KEY_SHAPES = {
        "", "k", "user:4242", "exactly-twenty-four-char", "twenty-five-characters-ok", "ключ", "naïve", "a\u0000b",
        "emoji \uD83D\uDE00", "x".repeat(300),
    };

    @Test
    void everyKeyShapeReachesCAsItsUtf8Bytes() throws Exception {
        // A native party beginning on the UTF-8 bytes joins the async
        // leader's C flight only if begin0 got exactly those bytes.
        for (String key : KEY_SHAPES) {
            Work<String> work = new Work<>();
            CompletableFuture<String> leader = group.callAsync(key, work);
            try (NativeParty party = new NativeParty(group, key)) {
                assertEquals(2, party.run(BEGIN), "key \"" + key + "\": the native party follows");
                party.run(RELEASE);
            }
            work.stage.complete("v");
            assertEquals("v", leader.get());
        }
    }

    @Test
    void everyByteKeyShapeReachesCAsItsBytes() throws Exception {
        byte[][] keys = {
            {}, {0}, {(byte) 0xff, 0, (byte) 0x80}, new byte[24], new byte[25], new byte[257],
        };
        for (int i = 0; i < keys[3].length; i++) keys[3][i] = (byte) (0x80 + i);
        for (int i = 0; i < keys[5].length; i++) keys[5][i] = (byte) i;
        for (byte[] key : keys) {
            Work<String> work = new Work<>();
            CompletableFuture<String> leader = group.callAsync(key, work);
            try (NativeParty party = new NativeParty(group, key)) {
                assertEquals(2, party.run(BEGIN), key.length + "-byte key: the native party follows");
                party.run(RELEASE);
            }
            work.stage.complete("v");
            assertEquals("v", leader.get());
        }
    }

    /** n distinct keys that share one slot of the Java table. */
    private static List<String> collidingKeys(int n) {
        List<String> keys = new ArrayList<>();
        int slot = AsyncFlights.slotOf("collide-0");
        for (int i = 0; keys.size() < n; i++) {
            String k = "collide-" + i;
            if (AsyncFlights.slotOf(k) == slot) keys.add(k);
        }
        return keys;
    }

    @Test
    void keysSharingATableSlotEachCoalesceOnTheirOwn() throws Exception {
        List<String> keys = collidingKeys(3);
        List<Work<String>> works = new ArrayList<>();
        List<List<CompletableFuture<String>>> callers = new ArrayList<>();
        for (String k : keys) {
            Work<String> w = new Work<>();
            works.add(w);
            List<CompletableFuture<String>> cs = new ArrayList<>();
            for (int i = 0; i < 3; i++) cs.add(group.callAsync(k, w));
            callers.add(cs);
        }
        // The first key leaves the slot; a caller of the second, which
        // waits in the map, still joins its flight there.
        works.get(0).stage.complete("v0");
        CompletableFuture<String> late = group.callAsync(keys.get(1), works.get(1));
        for (int i = 0; i < keys.size(); i++) {
            works.get(i).stage.complete("v" + i);
            assertEquals(1, works.get(i).runs.get(), keys.get(i) + ": fn ran once");
            for (CompletableFuture<String> f : callers.get(i)) assertEquals("v" + i, f.get());
        }
        assertEquals("v1", late.get());
        assertEquals(3, group.stats().leaders(), "one C flight per key");
    }

    @Test
    void aKeyWaitingInTheMapIsCancelledAndForgottenLikeAnyOther() throws Exception {
        List<String> keys = collidingKeys(2);
        Work<String> inSlot = new Work<>(), inMap = new Work<>();
        CompletableFuture<String> a = group.callAsync(keys.get(0), inSlot);
        CompletableFuture<String> b1 = group.callAsync(keys.get(1), inMap);
        CompletableFuture<String> b2 = group.callAsync(keys.get(1), inMap);
        assertFalse(group.forgetUnshared(keys.get(1)), "two callers share it");
        b1.cancel(true);
        assertFalse(inMap.stage.isDone());
        b2.cancel(true);
        assertTrue(inMap.stage.isCancelled(), "every caller left");
        Work<String> again = new Work<>();
        CompletableFuture<String> b3 = group.callAsync(keys.get(1), again);
        assertTrue(group.forget(keys.get(1)));
        assertEquals(1, again.runs.get());
        again.stage.complete("b");
        inSlot.stage.complete("a");
        assertEquals("a", a.get());
        assertEquals("b", b3.get());
    }

    @Test
    void aBlockingCallInsideFnFindsItsFlightAfterEveryAsyncCallerLeft() throws Exception {
        // fn runs on the executor after the only async caller gave up; a
        // blocking follower keeps the C flight alive, so the flight has left
        // the Java table while its fn still runs.  A blocking call for the
        // key inside fn must still be refused, not wait for itself.
        List<Runnable> queued = new ArrayList<>();
        AtomicReference<Throwable> inside = new AtomicReference<>();
        CompletableFuture<String> leader = group.callAsync("k", () -> {
            try {
                group.call("k", () -> "never runs");
            } catch (Throwable t) {
                inside.set(t);
            }
            return CompletableFuture.completedFuture("v");
        }, queued::add);
        AtomicReference<Object> blockingGot = new AtomicReference<>();
        Thread blocking = new Thread(() -> {
            try {
                blockingGot.set(group.call("k", () -> "never runs either"));
            } catch (Exception e) {
                blockingGot.set(e);
            }
        });
        blocking.start();
        await(() -> group.stats().followers() == 1, "the blocking follower");
        assertTrue(leader.cancel(true));
        assertEquals(1, group.asyncOrphans(), "its fn has not run: kept findable");
        assertEquals(1, queued.size());
        // On a thread of its own, so that a regression fails here instead of
        // hanging the suite: it would wait for itself in C for ever.
        Thread executor = new Thread(queued.get(0));
        executor.setDaemon(true);
        executor.start();
        executor.join(DEADLINE_MS);
        assertFalse(executor.isAlive(), "fn's blocking call for its own key waits for itself");
        assertTrue(inside.get() != null && inside.get().getMessage().contains("SF_EDEADLK"), String.valueOf(inside.get()));
        blocking.join();
        assertEquals("v", blockingGot.get(), "the blocking follower still got fn's value");
        assertEquals(0, group.asyncOrphans(), "dropped once its fn returned");
    }

    /** A stage that runs its whenComplete action twice (a broken CompletionStage). */
    private static final class Twice<T> extends CompletableFuture<T> {
        @Override
        public CompletableFuture<T> whenComplete(java.util.function.BiConsumer<? super T, ? super Throwable> action) {
            return super.whenComplete((v, e) -> {
                action.accept(v, e);
                action.accept(v, e);
            });
        }
    }

    @Test
    void aStageThatCompletesItsActionTwiceFinishesTheFlightOnce() throws Exception {
        Twice<String> stage = new Twice<>();
        CompletableFuture<String> leader = group.callAsync("k", () -> stage);
        CompletableFuture<String> follower = group.callAsync("k", () -> stage);
        try (NativeParty party = new NativeParty(group, "k")) {
            assertEquals(2, party.run(BEGIN), "a C follower too: the long finish");
            stage.complete("v");
            party.run(RELEASE);
        }
        assertEquals("v", leader.get());
        assertEquals("v", follower.get());
        Twice<String> alone = new Twice<>();
        CompletableFuture<String> lone = group.callAsync("k2", () -> alone);
        alone.complete("w");
        assertEquals("w", lone.get(), "the short finish, once");
    }

    @Test
    void cancellingTheSameFutureTwiceLeavesOnce() throws Exception {
        Work<String> work = new Work<>();
        CompletableFuture<String> leader = group.callAsync("k", work);
        CompletableFuture<String> follower = group.callAsync("k", work);
        assertTrue(follower.cancel(true));
        assertTrue(follower.cancel(true), "cancelled already: true, as CompletableFuture answers");
        assertFalse(work.stage.isDone(), "the leader's caller is still there");
        assertFalse(follower.complete("late"));
        assertFalse(work.stage.isDone());
        assertTrue(leader.cancel(true));
        assertTrue(work.stage.isCancelled());
    }

    @Test
    void closeRacingCallAsyncLeavesNothingBehind() throws Exception {
        // Each round: one thread closes a fresh group while another calls
        // callAsync on it.  Every call either fails with
        // IllegalStateException or gets its value; nothing leaks (tearDown
        // counts global references and values).
        ExecutorService pool = Executors.newFixedThreadPool(2);
        int refused = 0;
        try {
            for (int r = 0; r < 500; r++) {
                Group g = new Group();
                g.callAsync("warm", () -> CompletableFuture.completedFuture("x")).get(); // native view made
                CyclicBarrier start = new CyclicBarrier(2);
                Future<Object> caller = pool.submit(() -> {
                    start.await();
                    List<CompletableFuture<String>> fs = new ArrayList<>();
                    try {
                        for (int i = 0; i < 20; i++) fs.add(g.callAsync("k" + (i % 3), () -> CompletableFuture.completedFuture("v")));
                    } catch (IllegalStateException closed) {
                        for (CompletableFuture<String> f : fs) assertEquals("v", f.get());
                        return closed;
                    }
                    for (CompletableFuture<String> f : fs) assertEquals("v", f.get());
                    return null;
                });
                Future<?> closer = pool.submit(() -> {
                    start.await();
                    g.close();
                    return null;
                });
                closer.get();
                if (caller.get() != null) refused++;
                assertThrows(IllegalStateException.class, () -> g.callAsync("k", () -> CompletableFuture.completedFuture("v")));
            }
        } finally {
            pool.shutdownNow();
        }
        System.out.printf("close racing callAsync: refused in %d of 500 rounds%n", refused);
    }

    @Test
    void manyThreadsOnKeysSharingSlotsEachGetTheirKeysValue() throws Exception {
        // Four threads call on keys of which three share one slot of the
        // table (the others go to the map), some fns completing at once and
        // some later on a completer thread, some callers cancelling (seeded).
        // Every future ends with its own key's value or cancelled, and
        // nothing is left behind (tearDown).
        List<String> keys = new ArrayList<>(collidingKeys(3));
        keys.add("plain-a");
        keys.add("plain-b");
        java.util.concurrent.LinkedBlockingQueue<Object[]> pending = new java.util.concurrent.LinkedBlockingQueue<>();
        Object stop = new Object();
        Thread completer = new Thread(() -> {
            try {
                for (;;) {
                    Object[] p = pending.take();
                    if (p[0] == stop) return;
                    @SuppressWarnings("unchecked")
                    CompletableFuture<String> stage = (CompletableFuture<String>) p[0];
                    stage.complete("v:" + p[1]);
                }
            } catch (InterruptedException e) {
                // the test is over
            }
        });
        completer.start();
        int threads = 4, calls = 3_000;
        ExecutorService pool = Executors.newFixedThreadPool(threads);
        CyclicBarrier start = new CyclicBarrier(threads);
        List<Future<Integer>> results = new ArrayList<>();
        try {
            for (int t = 0; t < threads; t++) {
                final long seed = 17 + t;
                results.add(pool.submit(() -> {
                    java.util.Random rnd = new java.util.Random(seed);
                    List<CompletableFuture<String>> fs = new ArrayList<>();
                    List<String> ks = new ArrayList<>();
                    start.await();
                    for (int i = 0; i < calls; i++) {
                        String k = keys.get(rnd.nextInt(keys.size()));
                        boolean now = rnd.nextInt(4) == 0;
                        CompletableFuture<String> f = group.callAsync(k, () -> {
                            if (now) return CompletableFuture.completedFuture("v:" + k);
                            CompletableFuture<String> stage = new CompletableFuture<>();
                            pending.add(new Object[] {stage, k});
                            return stage;
                        });
                        if (rnd.nextInt(8) == 0) f.cancel(true);
                        fs.add(f);
                        ks.add(k);
                    }
                    int cancelled = 0;
                    for (int i = 0; i < fs.size(); i++) {
                        CompletableFuture<String> f = fs.get(i);
                        if (f.isCancelled()) {
                            cancelled++;
                            continue;
                        }
                        assertEquals("v:" + ks.get(i), f.get(DEADLINE_MS, TimeUnit.MILLISECONDS));
                    }
                    return cancelled;
                }));
            }
            int cancelled = 0;
            for (Future<Integer> r : results) cancelled += r.get();
            System.out.printf("threads on shared slots: %d calls, %d cancelled, %d flights%n", threads * calls,
                    cancelled, group.stats().leaders());
        } finally {
            pool.shutdownNow();
            pending.add(new Object[] {stop, null});
            completer.join();
        }
    }
}
