"""Behaviour of the Python binding, one behaviour per test.

Concurrency tests never rely on timing for correctness: a leader's fn waits
until stats() shows the expected followers have joined (a condition, bounded
by a deadline that fails the test instead of hanging it).
"""

import functools
import gc
import os
import signal
import sys
import threading
import time
import weakref

import pytest

import libsingleflight

DEADLINE = 20.0  # seconds; only reached when something is broken


def wait_until(pred, what):
    end = time.monotonic() + DEADLINE
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.001)


def run_threads(n, target):
    """Runs target(i) on n threads; returns their results or raises the first
    failure, so assertion errors inside threads fail the test."""
    results = [None] * n
    errors = []

    def body(i):
        try:
            results[i] = ("ok", target(i))
        except BaseException as exc:  # noqa: B902 - reported to the test
            results[i] = ("raised", exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE)
        if t.is_alive():
            errors.append("thread did not finish (deadlock?)")
    assert not errors, errors
    return results


def joined_by(g, followers):
    """An fn body step: block until `followers` callers have joined."""
    wait_until(lambda: g.stats().followers >= followers, "%d followers" % followers)


def test_single_caller_gets_value_not_shared():
    g = libsingleflight.Group()
    assert g.do("k", lambda: 42) == (42, False)


def test_concurrent_callers_share_one_execution_and_the_same_object():
    g = libsingleflight.Group()
    n = 8
    runs = []

    def fn():
        runs.append(1)
        joined_by(g, n - 1)
        return object()

    results = run_threads(n, lambda i: g.do("k", fn))
    assert all(kind == "ok" for kind, _ in results), results
    values = [r[1][0] for r in results]
    assert len(runs) == 1
    assert all(v is values[0] for v in values)
    assert all(r[1][1] is True for r in results)  # the leader had followers too
    s = g.stats()
    assert (s.calls, s.leaders, s.followers, s.in_flight) == (n, 1, n - 1, 0)


def test_exception_in_fn_is_raised_in_every_caller_as_the_same_object():
    g = libsingleflight.Group()
    n = 5

    class Boom(Exception):
        pass

    def fn():
        joined_by(g, n - 1)
        raise Boom("db down")

    results = run_threads(n, lambda i: g.do("k", fn))
    assert all(kind == "raised" for kind, _ in results), results
    excs = [exc for _, exc in results]
    assert isinstance(excs[0], Boom) and str(excs[0]) == "db down"
    assert all(e is excs[0] for e in excs)
    assert g.stats().panics == 1


def test_an_exception_with_a_broken_str_still_reaches_the_callers():
    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("no")

    class WithNul(Exception):
        pass

    g = libsingleflight.Group()
    with pytest.raises(Unprintable):
        g.do("k", functools.partial(_raise, Unprintable()))
    with pytest.raises(WithNul):
        g.do("k", functools.partial(_raise, WithNul("a\0b")))
    s = g.stats()
    assert (s.panics, s.goexits) == (2, 0)


def _raise(exc):
    raise exc


def test_after_an_exception_the_key_runs_again():
    g = libsingleflight.Group()
    with pytest.raises(ValueError):
        g.do("k", functools.partial(int, "not a number"))
    assert g.do("k", lambda: "fine") == ("fine", False)


def test_distinct_keys_run_separately():
    g = libsingleflight.Group()
    assert g.do("a", lambda: 1) == (1, False)
    assert g.do("b", lambda: 2) == (2, False)
    assert g.stats().leaders == 2


def test_any_callable_works():
    class Callable:
        def __call__(self):
            return "called"

    g = libsingleflight.Group()
    assert g.do("a", Callable())[0] == "called"
    assert g.do("b", functools.partial(str.upper, "x"))[0] == "X"
    assert g.do("c", dict)[0] == {}


def test_none_is_a_value():
    g = libsingleflight.Group()
    assert g.do("k", lambda: None) == (None, False)


@pytest.mark.parametrize("bad", [1, 1.5, None, ["k"], bytearray(b"k"), object()])
def test_keys_other_than_str_or_bytes_raise_type_error(bad):
    g = libsingleflight.Group()
    with pytest.raises(TypeError):
        g.do(bad, lambda: 1)
    with pytest.raises(TypeError):
        g.forget(bad)
    with pytest.raises(TypeError):
        g.forget_unshared(bad)
    assert g.stats().calls == 0


def test_str_key_is_its_utf8_bytes_and_empty_and_nul_keys_work():
    g = libsingleflight.Group()
    entered, release = threading.Event(), threading.Event()

    def fn():
        entered.set()
        assert release.wait(DEADLINE)
        return "v"

    t = threading.Thread(target=g.do, args=("é\0x", fn))
    t.start()
    assert entered.wait(DEADLINE)
    assert g.forget("é\0x".encode()) is True  # the same key, spelt as bytes
    release.set()
    t.join(DEADLINE)
    assert g.do("", lambda: "empty") == ("empty", False)
    assert g.do(b"", lambda: "again") == ("again", False)


def test_main_thread_follower_timeout_raises_timeout_error_and_flight_goes_on():
    g = libsingleflight.Group()
    entered, release = threading.Event(), threading.Event()
    leader_result = []

    def fn():
        entered.set()
        assert release.wait(DEADLINE)
        return "late"

    t = threading.Thread(target=lambda: leader_result.append(g.do("k", fn)))
    t.start()
    assert entered.wait(DEADLINE)
    with pytest.raises(TimeoutError):
        g.do("k", lambda: "never runs", timeout=0.05)
    release.set()
    t.join(DEADLINE)
    assert leader_result == [("late", True)]  # the follower had joined
    s = g.stats()
    assert (s.leaders, s.followers, s.timeouts, s.in_flight) == (1, 1, 1, 0)


def test_ctrl_c_interrupts_a_main_thread_follower_and_the_flight_goes_on():
    assert threading.current_thread() is threading.main_thread()
    g = libsingleflight.Group()
    entered, release = threading.Event(), threading.Event()
    leader_result = []

    def fn():
        entered.set()
        assert release.wait(DEADLINE)
        return "done"

    def interrupter():
        joined_by(g, 1)  # the main thread is waiting as a follower
        os.kill(os.getpid(), signal.SIGINT)

    leader = threading.Thread(target=lambda: leader_result.append(g.do("k", fn)))
    leader.start()
    assert entered.wait(DEADLINE)
    sender = threading.Thread(target=interrupter)
    sender.start()
    with pytest.raises(KeyboardInterrupt):
        g.do("k", lambda: "never runs")
    sender.join(DEADLINE)
    release.set()
    leader.join(DEADLINE)
    assert leader_result == [("done", True)]
    assert g.stats().in_flight == 0


def test_worker_thread_follower_timeout_raises_timeout_error():
    # Followers off the main thread wait inside the library, not in poll().
    g = libsingleflight.Group()
    entered, release = threading.Event(), threading.Event()

    def fn():
        entered.set()
        assert release.wait(DEADLINE)
        return "late"

    leader = threading.Thread(target=g.do, args=("k", fn))
    leader.start()
    assert entered.wait(DEADLINE)
    [(kind, exc)] = run_threads(1, lambda i: g.do("k", lambda: "never runs", timeout=0.05))
    assert kind == "raised" and isinstance(exc, TimeoutError), (kind, exc)
    release.set()
    leader.join(DEADLINE)
    s = g.stats()
    assert (s.timeouts, s.in_flight) == (1, 0)


def test_timeout_must_be_non_negative():
    g = libsingleflight.Group()
    with pytest.raises(ValueError):
        g.do("k", lambda: 1, timeout=-1)
    assert g.stats().calls == 0


def test_forget_makes_the_next_call_run_again_while_the_old_flight_delivers():
    g = libsingleflight.Group()
    entered, release = threading.Event(), threading.Event()
    first = []

    def slow():
        entered.set()
        assert release.wait(DEADLINE)
        return "first"

    t = threading.Thread(target=lambda: first.append(g.do("k", slow)))
    t.start()
    assert entered.wait(DEADLINE)
    assert g.forget("k") is True
    assert g.do("k", lambda: "second") == ("second", False)
    release.set()
    t.join(DEADLINE)
    assert first == [("first", False)]
    assert g.forget("k") is False  # nothing in flight any more
    assert g.stats().forgets == 1


def test_forget_unshared_only_forgets_a_flight_nobody_joined():
    g = libsingleflight.Group()
    entered, release = threading.Event(), threading.Event()

    def slow():
        entered.set()
        assert release.wait(DEADLINE)
        return "v"

    leader = threading.Thread(target=g.do, args=("k", slow))
    leader.start()
    assert entered.wait(DEADLINE)
    follower = threading.Thread(target=g.do, args=("k", slow))
    follower.start()
    joined_by(g, 1)
    assert g.forget_unshared("k") is False
    release.set()
    leader.join(DEADLINE)
    follower.join(DEADLINE)

    entered.clear()
    release.clear()
    lone = threading.Thread(target=g.do, args=("k2", slow))
    lone.start()
    assert entered.wait(DEADLINE)
    assert g.forget_unshared("k2") is True
    release.set()
    lone.join(DEADLINE)


def test_calling_the_own_key_inside_fn_raises_instead_of_deadlocking():
    g = libsingleflight.Group()
    with pytest.raises(RuntimeError, match="SF_EDEADLK"):
        g.do("k", lambda: g.do("k", lambda: 1))
    # Another key inside fn is fine, and the key is free again afterwards.
    assert g.do("k", lambda: g.do("other", lambda: 7)) == ((7, False), False)


def test_followers_wait_with_the_gil_released():
    # The leader's fn runs Python code (the stats poll) while 7 threads wait
    # on the same key: if waiting held the GIL this would deadlock.
    g = libsingleflight.Group()
    n = 8

    def fn():
        joined_by(g, n - 1)
        return sum(range(1000))

    results = run_threads(n, lambda i: g.do("k", fn))
    assert {r[1][0] for r in results} == {499500}


def test_eight_threads_on_one_key_wait_together_for_one_slow_fn():
    # Not serialised: the seven others join while the one fn is still
    # running (it waits for them), and all get its value.  A handshake on
    # the counters, not a stopwatch.
    g = libsingleflight.Group()
    n = 8
    start_line = threading.Barrier(n)

    def fn():
        wait_until(lambda: g.stats().followers == n - 1, "the other callers to join")
        return "slow"

    def caller(i):
        start_line.wait(DEADLINE)
        return g.do("k", fn)

    results = run_threads(n, caller)
    assert all(r[1][0] == "slow" for r in results)
    assert all(r[1][1] is True for r in results), "every caller shared the one execution"
    s = g.stats()
    assert (s.leaders, s.followers) == (1, n - 1)


def test_no_reference_leaks_over_thousands_of_calls():
    g = libsingleflight.Group()
    value = object()
    fn = lambda: value  # noqa: E731
    exc = KeyError("missing")

    def raising():
        raise exc

    for _ in range(100):  # warm up any caches before measuring
        g.do("k", fn)
    value_refs, fn_refs, exc_refs = sys.getrefcount(value), sys.getrefcount(fn), sys.getrefcount(exc)
    for i in range(5000):
        assert g.do("k", fn)[0] is value
        assert g.do(b"k%d" % (i % 7), fn)[0] is value
        with pytest.raises(KeyError):
            g.do("e", raising)
        exc.__traceback__ = None  # raising appends frames; the test must not keep them
    # No gc.collect(): refcounting alone must drop every reference we took.
    assert sys.getrefcount(value) == value_refs
    assert sys.getrefcount(fn) == fn_refs
    assert sys.getrefcount(exc) == exc_refs
    assert libsingleflight.singleflight_core.live_values() == 0
    assert g.stats().in_flight == 0


def test_no_reference_leaks_with_concurrent_followers():
    g = libsingleflight.Group()
    value = object()
    before = sys.getrefcount(value)
    for _ in range(20):
        target = g.stats().followers + 3

        def fn():
            joined_by(g, target)
            return value

        results = run_threads(4, lambda i: g.do("k", fn))
        assert all(r[1][0] is value for r in results)
        del results
    gc.collect()
    assert sys.getrefcount(value) == before
    assert libsingleflight.singleflight_core.live_values() == 0


def test_the_value_lives_exactly_as_long_as_a_caller_holds_it():
    class Box:
        pass

    g = libsingleflight.Group()
    box, _ = g.do("k", Box)
    ref = weakref.ref(box)
    del box
    gc.collect()
    assert ref() is None  # the library kept no reference


def test_a_group_is_collected_when_dropped():
    g = libsingleflight.Group()
    g.do("k", lambda: 1)
    ref = weakref.ref(g)
    del g
    gc.collect()
    assert ref() is None


def test_stats_count_calls_leaders_and_followers():
    g = libsingleflight.Group()
    for _ in range(3):
        g.do("k", lambda: 1)
    s = g.stats()
    assert isinstance(s, libsingleflight.Stats)
    assert (s.calls, s.leaders, s.followers, s.panics, s.in_flight) == (3, 3, 0, 0, 0)


def test_version_is_the_loaded_library():
    assert libsingleflight.version().count(".") == 2
