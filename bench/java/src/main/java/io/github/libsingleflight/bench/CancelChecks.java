package io.github.libsingleflight.bench;

import io.github.libsingleflight.bench.Peers.Coalescer;

import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.function.Supplier;

/**
 * The cancellation cases, one small check each, run against every peer ({@link Peers}) and
 * printed as a table (docs/performance.md, "Java against its peers"). Single-threaded and
 * deterministic: every stage is a CompletableFuture the check completes itself.
 *
 * <ol>
 *   <li>one caller (not the first) cancels its future: do the others still get the value?
 *   <li>the first caller, whose call started the work, cancels after others joined: do the
 *       others still get the value?
 *   <li>every caller cancels: is the work's stage cancelled, and after whose cancel?
 *   <li>the first caller cancels before anyone else calls; two more call: what do they get, and
 *       how often did fn run?
 * </ol>
 *
 * What is right (the project's rule): a caller giving up leaves alone; the work is cancelled only
 * when every caller has gone; a caller never receives another caller's cancellation.
 *
 * <pre>
 *   bench/java/run.sh --checks
 * </pre>
 */
public final class CancelChecks {
    /** fn: a new stage per run, all kept, so the check can complete and inspect them. */
    static final class Work implements Supplier<CompletionStage<Object>> {
        final List<CompletableFuture<Object>> stages = new ArrayList<>();

        @Override
        public CompletionStage<Object> get() {
            CompletableFuture<Object> s = new CompletableFuture<>();
            stages.add(s);
            return s;
        }

        void completeAll(Object v) {
            for (CompletableFuture<Object> s : stages) s.complete(v);
        }
    }

    static final Object VALUE = "v";

    static String outcome(CompletableFuture<Object> f) {
        if (f.isCancelled()) return "cancelled";
        if (f.isCompletedExceptionally()) return "failed";
        if (!f.isDone()) return "pending";
        return f.getNow(null) == VALUE ? "value" : "other";
    }

    /** 1 (quitter = 1) or 2 (quitter = 0): the others' outcomes after one caller cancels. */
    static String othersAfterOneCancels(Coalescer c, int quitter) {
        Work w = new Work();
        List<CompletableFuture<Object>> callers = new ArrayList<>();
        for (int i = 0; i < 3; i++) callers.add(c.call("k", w));
        callers.get(quitter).cancel(true);
        w.completeAll(VALUE);
        int served = 0;
        for (int i = 0; i < 3; i++) {
            if (i != quitter && outcome(callers.get(i)).equals("value")) served++;
        }
        return served == 2 ? "yes" : "no: " + served + " of 2 got it (" + others(callers, quitter) + ")";
    }

    static String others(List<CompletableFuture<Object>> callers, int except) {
        StringBuilder b = new StringBuilder();
        for (int i = 0; i < callers.size(); i++) {
            if (i == except) continue;
            if (b.length() > 0) b.append(", ");
            b.append(outcome(callers.get(i)));
        }
        return b.toString();
    }

    /** 3: when the stage was cancelled, as the callers leave one by one. */
    static String stageAfterAllCancel(Coalescer c) {
        Work w = new Work();
        List<CompletableFuture<Object>> callers = new ArrayList<>();
        for (int i = 0; i < 3; i++) callers.add(c.call("k", w));
        CompletableFuture<Object> stage = w.stages.get(0);
        for (int i = 0; i < 3; i++) {
            callers.get(i).cancel(true);
            if (stage.isCancelled()) {
                String verdict = i == 2 ? "yes, when the last caller left"
                        : "yes, but at the " + (i == 0 ? "first" : "second") + " caller's cancel, with others still waiting";
                w.completeAll(VALUE);
                return verdict;
            }
        }
        w.completeAll(VALUE);
        return "no: the work runs to its end for nobody";
    }

    /** 4: callers arriving after the first one left alone. */
    static String lateCallersAfterStarterLeft(Coalescer c) {
        Work w = new Work();
        CompletableFuture<Object> starter = c.call("k", w);
        starter.cancel(true);
        boolean firstCancelled = w.stages.get(0).isCancelled();
        CompletableFuture<Object> a = c.call("k", w), b = c.call("k", w);
        w.completeAll(VALUE);
        String late = outcome(a) + ", " + outcome(b);
        String runs = w.stages.size() + " run" + (w.stages.size() == 1 ? "" : "s") + " of fn";
        String first = firstCancelled ? "the first run cancelled" : "the first run not cancelled";
        boolean ok = outcome(a).equals("value") && outcome(b).equals("value");
        return (ok ? "value" : "no: " + late) + " (" + runs + ", " + first + ")";
    }

    public static void main(String[] args) {
        String[] cases = {
            "1. one caller (not the first) cancels: the others get the value",
            "2. the first caller cancels after others joined: the others get the value",
            "3. every caller cancels: the work's stage is cancelled",
            "4. the first caller cancels before others call: what the later callers get",
        };
        System.out.println("| case | " + String.join(" | ", describeAll()) + " |");
        System.out.println("|---|" + "---|".repeat(Peers.NAMES.length));
        for (int k = 0; k < cases.length; k++) {
            StringBuilder row = new StringBuilder("| " + cases[k] + " |");
            for (String name : Peers.NAMES) {
                Coalescer c = Peers.make(name);
                String r;
                switch (k) {
                    case 0: r = othersAfterOneCancels(c, 1); break;
                    case 1: r = othersAfterOneCancels(c, 0); break;
                    case 2: r = stageAfterAllCancel(c); break;
                    default: r = lateCallersAfterStarterLeft(c); break;
                }
                row.append(' ').append(r).append(" |");
            }
            System.out.println(row);
        }
        System.out.printf(Locale.ROOT, "(peers: %s)%n", String.join(", ", Peers.NAMES));
    }

    static String[] describeAll() {
        String[] d = new String[Peers.NAMES.length];
        for (int i = 0; i < d.length; i++) d[i] = Peers.describe(Peers.NAMES[i]);
        return d;
    }
}
