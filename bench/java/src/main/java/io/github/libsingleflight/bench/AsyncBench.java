package io.github.libsingleflight.bench;

import io.github.libsingleflight.Group;
import io.github.libsingleflight.bench.Peers.Coalescer;

import java.lang.management.ManagementFactory;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.function.Supplier;

/**
 * Group.callAsync against its peers ({@link Peers}: Caffeine's AsyncCache, a ConcurrentHashMap
 * of CompletableFuture handing out the shared future or a copy() per caller), measured side by
 * side in one JVM (issues 12 and 17):
 *
 * <ul>
 *   <li>stampede: 10,000 futures on one key, one execution, thread count before/while/after;
 *   <li>coalesced: ns per call for N callers of one key plus the completion that reaches them
 *       all;
 *   <li>lone: ns per call of one caller of a key whose stage is already complete (the
 *       uncontended path: a flight begins and ends in every call);
 *   <li>cancel latency: from the last caller's cancel() to the leader's stage seeing its
 *       cancellation, p50/p99, within one Java flight and through C's abandon callback.
 * </ul>
 *
 * Each run measures every variant once, interleaved (the order rotates from run to run), and the
 * medians over runs are printed, with each peer's figure divided by callAsync's in the same run
 * (median of those ratios).
 *
 * <pre>
 *   bench/java/run.sh [-- --runs R --callers N --lone-calls L --cancel-rounds C]
 * </pre>
 */
public final class AsyncBench {
    static final Object VALUE = new Object();

    /** The key of the lone calls: the length of a typical cache key, ASCII. */
    static final String LONE_KEY = "user:4242";

    /** N callers on one key, then the stage completes; returns ns per call. */
    static double coalesced(Coalescer c, int n, List<CompletableFuture<Object>> scratch) {
        CompletableFuture<Object> stage = new CompletableFuture<>();
        Supplier<CompletionStage<Object>> fn = () -> stage;
        scratch.clear();
        long t0 = System.nanoTime();
        for (int i = 0; i < n; i++) scratch.add(c.call("hot", fn));
        stage.complete(VALUE);
        long t1 = System.nanoTime();
        for (CompletableFuture<Object> f : scratch) {
            if (f.getNow(null) != VALUE) throw new AssertionError("a caller did not get the value");
        }
        return (double) (t1 - t0) / n;
    }

    /** One caller per key, its stage already complete; returns ns per call. */
    static double lone(Coalescer c, int n) {
        CompletableFuture<Object> done = CompletableFuture.completedFuture(VALUE);
        Supplier<CompletionStage<Object>> fn = () -> done;
        long t0 = System.nanoTime();
        for (int i = 0; i < n; i++) {
            if (c.call(LONE_KEY, fn).getNow(null) != VALUE) throw new AssertionError();
        }
        return (double) (System.nanoTime() - t0) / n;
    }

    /**
     * Rounds of leader + follower; the follower leaves last. Returns sorted latencies in ns.
     * viaCallback: the follower is a caller of the key's byte[] form, a second party in C, so the
     * stage is cancelled by the C library's abandon callback (a JNI upcall) when it leaves; else
     * both share one Java flight, whose last caller leaving gives up in C and cancels the stage
     * itself.
     */
    static long[] cancelLatency(Group g, int rounds, boolean viaCallback) {
        long[] lat = new long[rounds];
        long[] seen = new long[1];
        byte[] bytes = {'c'};
        for (int r = 0; r < rounds; r++) {
            CompletableFuture<Object> stage = new CompletableFuture<>();
            stage.whenComplete((v, e) -> seen[0] = System.nanoTime());
            CompletableFuture<Object> leader = g.callAsync("c", () -> stage);
            CompletableFuture<Object> follower = viaCallback ? g.callAsync(bytes, () -> stage)
                    : g.callAsync("c", () -> stage);
            leader.cancel(true);
            long t0 = System.nanoTime();
            follower.cancel(true);
            if (!stage.isCancelled()) throw new AssertionError("the stage was not cancelled");
            lat[r] = seen[0] - t0;
        }
        Arrays.sort(lat);
        return lat;
    }

    static double median(List<Double> xs) {
        double[] a = xs.stream().mapToDouble(Double::doubleValue).sorted().toArray();
        return a.length % 2 == 1 ? a[a.length / 2] : (a[a.length / 2 - 1] + a[a.length / 2]) / 2;
    }

    static int threads() {
        return ManagementFactory.getThreadMXBean().getThreadCount();
    }

    public static void main(String[] args) throws Exception {
        int runs = 15, callers = 10_000, loneCalls = 1_000_000, cancelRounds = 20_000;
        for (int i = 0; i < args.length; i++) {
            switch (args[i]) {
                case "--runs": runs = Integer.parseInt(args[++i]); break;
                case "--callers": callers = Integer.parseInt(args[++i]); break;
                case "--lone-calls": loneCalls = Integer.parseInt(args[++i]); break;
                case "--cancel-rounds": cancelRounds = Integer.parseInt(args[++i]); break;
                default: throw new IllegalArgumentException("unknown argument " + args[i]);
            }
        }
        String[] names = Peers.NAMES;
        Coalescer[] all = new Coalescer[names.length];
        for (int i = 0; i < names.length; i++) all[i] = Peers.make(names[i]);
        Peers.Ours ours = (Peers.Ours) all[0];
        List<CompletableFuture<Object>> scratch = new ArrayList<>(callers);

        // The stampede, once, on a fresh key.
        coalesced(ours, 100, scratch); // loads and links everything first
        int before = threads();
        CompletableFuture<Object> stage = new CompletableFuture<>();
        int[] executions = new int[1];
        scratch.clear();
        for (int i = 0; i < 10_000; i++) {
            scratch.add(ours.group.callAsync("stampede", () -> {
                executions[0]++;
                return stage;
            }));
        }
        int waiting = threads();
        stage.complete(VALUE);
        long completed = scratch.stream().filter(f -> f.getNow(null) == VALUE).count();
        System.out.printf(Locale.ROOT, "stampede: 10000 futures on one key: %d execution(s), %d completed; "
                + "JVM threads before %d, while 10000 wait %d, after %d%n",
                executions[0], completed, before, waiting, threads());

        // Warm-up: the JIT compiles every variant before anything counts.
        for (int w = 0; w < 5; w++) {
            for (Coalescer c : all) {
                coalesced(c, callers, scratch);
                lone(c, loneCalls);
            }
            cancelLatency(ours.group, 2_000, false);
            cancelLatency(ours.group, 2_000, true);
        }

        List<List<Double>> co = new ArrayList<>(), lo = new ArrayList<>(), coRatio = new ArrayList<>(),
                loRatio = new ArrayList<>();
        for (int i = 0; i < all.length; i++) {
            co.add(new ArrayList<>());
            lo.add(new ArrayList<>());
            coRatio.add(new ArrayList<>());
            loRatio.add(new ArrayList<>());
        }
        List<Double> p50 = new ArrayList<>(), p99 = new ArrayList<>();
        List<Double> cbP50 = new ArrayList<>(), cbP99 = new ArrayList<>();
        double[] coRun = new double[all.length], loRun = new double[all.length];
        for (int r = 0; r < runs; r++) {
            for (int i = 0; i < all.length; i++) {
                // Rotate the order so that no variant always runs first.
                int k = (i + r) % all.length;
                coRun[k] = coalesced(all[k], callers, scratch);
                loRun[k] = lone(all[k], loneCalls);
            }
            for (int k = 0; k < all.length; k++) {
                co.get(k).add(coRun[k]);
                lo.get(k).add(loRun[k]);
                coRatio.get(k).add(coRun[k] / coRun[0]);
                loRatio.get(k).add(loRun[k] / loRun[0]);
            }
            long[] lat = cancelLatency(ours.group, cancelRounds, false);
            p50.add((double) lat[lat.length / 2]);
            p99.add((double) lat[(int) (lat.length * 0.99)]);
            lat = cancelLatency(ours.group, cancelRounds, true);
            cbP50.add((double) lat[lat.length / 2]);
            cbP99.add((double) lat[(int) (lat.length * 0.99)]);
        }

        System.out.printf(Locale.ROOT, "lone: one caller at a time, key \"%s\", stage already complete; ns per call "
                + "(median of %d interleaved runs of %d calls; range), and its ratio to callAsync in the same run%n",
                LONE_KEY, runs, loneCalls);
        for (int i = 0; i < all.length; i++) {
            System.out.printf(Locale.ROOT, "  %-30s %8.1f  (%.1f-%.1f)  x%.2f of callAsync%n", Peers.describe(names[i]),
                    median(lo.get(i)), min(lo.get(i)), max(lo.get(i)), median(loRatio.get(i)));
        }
        System.out.printf(Locale.ROOT, "coalesced: %d callers of one key, ns per call (median of %d interleaved runs)%n",
                callers, runs);
        for (int i = 0; i < all.length; i++) {
            System.out.printf(Locale.ROOT, "  %-30s %8.1f  (%.1f-%.1f)  x%.2f of callAsync%n", Peers.describe(names[i]),
                    median(co.get(i)), min(co.get(i)), max(co.get(i)), median(coRatio.get(i)));
        }
        System.out.printf(Locale.ROOT, "cancel latency: last caller's cancel() to the stage cancelled, "
                + "%d rounds per run, median over runs:%n", cancelRounds);
        System.out.printf(Locale.ROOT, "  one Java flight (gives up in C, cancels itself)  p50 %.2f us, p99 %.2f us%n",
                median(p50) / 1e3, median(p99) / 1e3);
        System.out.printf(Locale.ROOT, "  two C parties (C's abandon callback, an upcall)   p50 %.2f us, p99 %.2f us%n",
                median(cbP50) / 1e3, median(cbP99) / 1e3);
    }

    static double min(List<Double> xs) {
        return xs.stream().mapToDouble(Double::doubleValue).min().orElse(Double.NaN);
    }

    static double max(List<Double> xs) {
        return xs.stream().mapToDouble(Double::doubleValue).max().orElse(Double.NaN);
    }
}
