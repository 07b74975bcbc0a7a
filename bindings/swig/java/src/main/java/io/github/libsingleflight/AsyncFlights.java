package io.github.libsingleflight;

import java.lang.invoke.MethodHandles;
import java.lang.invoke.VarHandle;
import java.nio.ByteBuffer;
import java.nio.charset.CharacterCodingException;
import java.nio.charset.CodingErrorAction;
import java.nio.charset.StandardCharsets;
import java.util.Arrays;
import java.util.Set;
import java.util.concurrent.ConcurrentHashMap;

/**
 * One {@link Group}'s open async flights, by key: callers of a key join its flight here without
 * crossing into C. A key is a {@code String}, or a {@link ByteKey} for {@code byte[]} keys; the
 * same bytes in both forms make two flights, which C coalesces. Thread-safe, lock-free.
 *
 * <p>Two places: a direct-mapped table of {@link #SLOTS} slots, where a flight goes in and out
 * with one compare-and-swap each (the uncontended path), and a ConcurrentHashMap for a key whose
 * slot another key holds. A caller looks in its key's slot; when that is empty it also looks in
 * the map (unless the map is empty), and when another key holds it, only in the map. Two callers of one key that race a third key for the slot can end up leading one
 * flight each (one in the slot, one in the map): C then coalesces them, as it does the String and
 * byte[] forms, so nobody runs fn twice; it costs one more C registration, nothing else.
 *
 * <p>Also answers {@link Group#execute}'s question "does the fn of an async leader of this key run
 * on this thread?", without costing the uncontended path a thread-local: a leader's fn is found
 * through its flight, which is in the table while its fn runs, or, when it left the table before
 * its fn returned (every caller gave up while an executor had not run fn yet, or forget), in {@link
 * #orphans}.
 */
final class AsyncFlights {
    static final int SLOTS = 256; // a power of two
    private static final VarHandle SLOT = MethodHandles.arrayElementVarHandle(AsyncFlight[].class);

    private final AsyncFlight<?>[] slots = new AsyncFlight<?>[SLOTS];
    private final ConcurrentHashMap<Object, AsyncFlight<?>> map = new ConcurrentHashMap<>();

    // Leaders that left the table while their fn may still run.  Rare: added
    // to only on the paths that take a leader out early, and purged of those
    // whose fn returned whenever one is added or searched.
    private final Set<AsyncFlight<?>> orphans = ConcurrentHashMap.newKeySet();

    static int slotOf(Object key) {
        int h = key.hashCode();
        return (h ^ (h >>> 16)) & (SLOTS - 1);
    }

    /**
     * Joins caller to the open flight of key, or makes a new flight with caller as its first
     * waiter and returns it: the caller then leads it (begin, then lead).
     */
    @SuppressWarnings("unchecked")
    <T> AsyncFlight<T> joinOrCreate(Object key, AsyncCaller<T> caller) {
        int i = slotOf(key);
        for (;;) {
            AsyncFlight<T> s = (AsyncFlight<T>) SLOT.getAcquire(slots, i);
            if (s == null) {
                // The key may have gone to the map while the slot was taken.
                if (!map.isEmpty()) {
                    AsyncFlight<T> f = (AsyncFlight<T>) map.get(key);
                    if (f != null) {
                        if (f.join(caller)) return null;
                        map.remove(key, f); // closed: make room for a new one
                        continue;
                    }
                }
                AsyncFlight<T> mine = new AsyncFlight<>(this, key, i, caller);
                if (SLOT.compareAndSet(slots, i, null, mine)) return mine;
                continue;
            }
            if (s.mapKey.equals(key)) {
                if (s.join(caller)) return null;
                SLOT.compareAndSet(slots, i, s, null); // closed: make room for a new one
                continue;
            }
            // The slot is another key's.
            AsyncFlight<T> f = (AsyncFlight<T>) map.get(key);
            if (f == null) {
                AsyncFlight<T> mine = new AsyncFlight<>(this, key, -1, caller);
                f = (AsyncFlight<T>) map.putIfAbsent(key, mine);
                if (f == null) return mine;
            }
            if (f.join(caller)) return null;
            map.remove(key, f);
        }
    }

    /** f leaves the table (it completed, or it was given up): the next caller starts anew. */
    void remove(AsyncFlight<?> f) {
        if (f.slot >= 0) {
            SLOT.compareAndSet(slots, f.slot, f, null);
        } else {
            map.remove(f.mapKey, f);
        }
    }

    /**
     * f is about to leave the table before it completed: keeps it findable while its fn may run.
     * Called before it leaves, so that it is always in one place or the other.
     */
    void leavingEarly(AsyncFlight<?> f) {
        if (!f.mayRunFn()) return;
        orphans.removeIf(o -> !o.mayRunFn());
        f.orphaned = true;
        orphans.add(f);
    }

    /** An orphan's fn returned: it need not be found any more. */
    void fnReturned(AsyncFlight<?> f) {
        orphans.remove(f);
    }

    /** Tests only: how many orphans are kept now. */
    int orphanCount() {
        return orphans.size();
    }

    /** Whether the fn of an async leader of these key bytes runs on the calling thread now. */
    boolean fnRunsHere(byte[] key) {
        Thread me = Thread.currentThread();
        Object[] keys = keysOf(key);
        for (AsyncFlight<?> f : of(keys)) {
            if (f != null && f.fnThread == me) return true;
        }
        if (orphans.isEmpty()) return false;
        orphans.removeIf(o -> !o.mayRunFn());
        for (AsyncFlight<?> o : orphans) {
            if (o.fnThread == me) {
                for (Object k : keys) {
                    if (k.equals(o.mapKey)) return true;
                }
            }
        }
        return false;
    }

    /** The next async caller of these key bytes starts from C again (forget). */
    void detach(byte[] key) {
        for (AsyncFlight<?> f : of(keysOf(key))) {
            if (f == null) continue;
            leavingEarly(f);
            remove(f);
        }
    }

    /** The open flights of these key bytes, in each form and place they can have (nulls too). */
    AsyncFlight<?>[] of(byte[] key) {
        return of(keysOf(key));
    }

    private AsyncFlight<?>[] of(Object[] keys) {
        AsyncFlight<?>[] found = new AsyncFlight<?>[2 * keys.length];
        for (int i = 0; i < keys.length; i++) {
            AsyncFlight<?> s = (AsyncFlight<?>) SLOT.getAcquire(slots, slotOf(keys[i]));
            if (s != null && s.mapKey.equals(keys[i])) found[2 * i] = s;
            found[2 * i + 1] = map.get(keys[i]);
        }
        return found;
    }

    // The map keys an async flight of these key bytes can have: the bytes,
    // and the String they are the UTF-8 encoding of, if any.
    private static Object[] keysOf(byte[] key) {
        ByteKey bytes = new ByteKey(key);
        try {
            String s = StandardCharsets.UTF_8.newDecoder()
                    .onMalformedInput(CodingErrorAction.REPORT)
                    .onUnmappableCharacter(CodingErrorAction.REPORT)
                    .decode(ByteBuffer.wrap(key)).toString();
            return new Object[] {bytes, s};
        } catch (CharacterCodingException notUtf8) {
            return new Object[] {bytes};
        }
    }

    /** A byte[] key with value equality, for the table. */
    static final class ByteKey {
        final byte[] bytes;
        private final int hash;

        ByteKey(byte[] bytes) {
            this.bytes = bytes;
            this.hash = Arrays.hashCode(bytes);
        }

        @Override
        public boolean equals(Object o) {
            return o instanceof ByteKey && Arrays.equals(bytes, ((ByteKey) o).bytes);
        }

        @Override
        public int hashCode() {
            return hash;
        }
    }
}
