package io.github.libsingleflight.bench;

import io.github.libsingleflight.bench.Peers.Coalescer;

import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;

import org.openjdk.jmh.annotations.Benchmark;
import org.openjdk.jmh.annotations.BenchmarkMode;
import org.openjdk.jmh.annotations.Mode;
import org.openjdk.jmh.annotations.OperationsPerInvocation;
import org.openjdk.jmh.annotations.OutputTimeUnit;
import org.openjdk.jmh.annotations.Param;
import org.openjdk.jmh.annotations.Scope;
import org.openjdk.jmh.annotations.Setup;
import org.openjdk.jmh.annotations.State;
import org.openjdk.jmh.infra.Blackhole;

/**
 * JMH: callAsync and its {@link Peers}, one thread. bench/java/run.sh --jmh runs it one peer per
 * fork, the peers interleaved round by round, and prints the medians over rounds.
 *
 * <ul>
 *   <li>{@code lone}: the uncontended path, one caller of a key whose stage fn returns already
 *       complete, so that a flight begins and ends within each call;
 *   <li>{@code coalesced}: 100 callers join one flight, then its stage completes and reaches them
 *       all; time per caller.
 * </ul>
 */
@State(Scope.Thread)
@BenchmarkMode(Mode.AverageTime)
@OutputTimeUnit(TimeUnit.NANOSECONDS)
public class PeersBench {
    static final Object VALUE = new Object();
    static final int CALLERS = 100;

    @Param({"callAsync", "caffeine", "chm-shared", "chm-copy"})
    public String peer;

    private Coalescer coalescer;
    private Supplier<CompletionStage<Object>> done;
    @SuppressWarnings("unchecked")
    private final CompletableFuture<Object>[] futures = new CompletableFuture[CALLERS];

    @Setup
    public void setUp() {
        coalescer = Peers.make(peer);
        CompletableFuture<Object> complete = CompletableFuture.completedFuture(VALUE);
        done = () -> complete;
    }

    @Benchmark
    public Object lone() {
        Object v = coalescer.call(AsyncBench.LONE_KEY, done).getNow(null);
        if (v != VALUE) throw new AssertionError("the caller did not get the value");
        return v;
    }

    @Benchmark
    @OperationsPerInvocation(CALLERS)
    public void coalesced(Blackhole bh) {
        CompletableFuture<Object> stage = new CompletableFuture<>();
        Supplier<CompletionStage<Object>> fn = () -> stage;
        for (int i = 0; i < CALLERS; i++) futures[i] = coalescer.call("hot", fn);
        stage.complete(VALUE);
        for (int i = 0; i < CALLERS; i++) {
            if (futures[i].getNow(null) != VALUE) throw new AssertionError("a caller did not get the value");
            bh.consume(futures[i]);
        }
    }
}
