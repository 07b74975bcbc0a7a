package io.github.libsingleflight.bench;

import com.github.benmanes.caffeine.cache.AsyncCache;
import com.github.benmanes.caffeine.cache.Caffeine;
import io.github.libsingleflight.Group;

import java.util.concurrent.CompletableFuture;
import java.util.concurrent.CompletionStage;
import java.util.concurrent.ConcurrentHashMap;
import java.util.concurrent.Executor;
import java.util.function.BiFunction;
import java.util.function.Supplier;

/**
 * What callAsync is measured against: the ways a Java program coalesces concurrent async calls
 * of one key without this library, each written the way its users write it, each a {@link
 * Coalescer}. A coalescer hands every caller a future and runs fn once per flight; a flight ends
 * when its stage completes, and the next caller starts a new one (as singleflight does: nothing
 * is cached).
 */
final class Peers {
    private Peers() {}

    interface Coalescer {
        <T> CompletableFuture<T> call(String key, Supplier<? extends CompletionStage<T>> fn);
    }

    /** The names the harnesses accept (JMH's peer parameter, AsyncBench's rows). */
    static final String[] NAMES = {"callAsync", "caffeine", "chm-shared", "chm-copy"};

    static Coalescer make(String name) {
        switch (name) {
            case "callAsync": return new Ours();
            case "caffeine": return new CaffeineAsync();
            case "chm-shared": return new MapOfFutures(false);
            case "chm-copy": return new MapOfFutures(true);
            default: throw new IllegalArgumentException("unknown peer " + name);
        }
    }

    static String describe(String name) {
        switch (name) {
            case "callAsync": return "Group.callAsync";
            case "caffeine": return "Caffeine AsyncCache.get";
            case "chm-shared": return "CHM of CF, shared future";
            case "chm-copy": return "CHM of CF, copy() per caller";
            default: return name;
        }
    }

    /** libsingleflight. */
    static final class Ours implements Coalescer {
        final Group group = new Group();

        @Override
        public <T> CompletableFuture<T> call(String key, Supplier<? extends CompletionStage<T>> fn) {
            return group.callAsync(key, fn);
        }
    }

    /**
     * Caffeine's AsyncCache as a coalescer: {@code get(key, mappingFunction)} hands every caller
     * of a key the future the first one's mapping function returned (the stage itself), and the
     * caller that made it removes it once it completes, so that nothing is cached.
     */
    static final class CaffeineAsync implements Coalescer {
        final AsyncCache<String, Object> cache = Caffeine.newBuilder().buildAsync();

        /** The mapping function; remembers the future it made, so that its caller knows it led. */
        private static final class Loader<T> implements BiFunction<String, Executor, CompletableFuture<Object>> {
            final Supplier<? extends CompletionStage<T>> fn;
            CompletableFuture<Object> made;

            Loader(Supplier<? extends CompletionStage<T>> fn) {
                this.fn = fn;
            }

            @Override
            @SuppressWarnings("unchecked")
            public CompletableFuture<Object> apply(String key, Executor executor) {
                return made = (CompletableFuture<Object>) fn.get().toCompletableFuture();
            }
        }

        @Override
        @SuppressWarnings("unchecked")
        public <T> CompletableFuture<T> call(String key, Supplier<? extends CompletionStage<T>> fn) {
            Loader<T> loader = new Loader<>(fn);
            CompletableFuture<Object> f = cache.get(key, loader);
            CompletableFuture<Object> made = loader.made;
            if (made != null) made.whenComplete((v, e) -> cache.asMap().remove(key, made));
            return (CompletableFuture<T>) f;
        }
    }

    /**
     * The JDK idiom: a ConcurrentHashMap of CompletableFuture, {@code computeIfAbsent} to join,
     * the entry removed when the stage completes. Every caller gets the one shared future (one
     * caller's cancel cancels everyone's), or with copyPerCaller its own {@code copy()} of it.
     */
    static final class MapOfFutures implements Coalescer {
        private final ConcurrentHashMap<String, CompletableFuture<?>> map = new ConcurrentHashMap<>();
        private final boolean copyPerCaller;

        MapOfFutures(boolean copyPerCaller) {
            this.copyPerCaller = copyPerCaller;
        }

        @Override
        @SuppressWarnings("unchecked")
        public <T> CompletableFuture<T> call(String key, Supplier<? extends CompletionStage<T>> fn) {
            CompletableFuture<T> mine = new CompletableFuture<>();
            CompletableFuture<T> shared = (CompletableFuture<T>) map.computeIfAbsent(key, k -> mine);
            if (shared == mine) {
                fn.get().whenComplete((v, e) -> {
                    map.remove(key, mine);
                    if (e != null) mine.completeExceptionally(e); else mine.complete(v);
                });
            }
            return copyPerCaller ? shared.copy() : shared;
        }
    }
}
