"""Behaviour of Group.do_async, one behaviour per test, each on asyncio's own
event loop and on uvloop's.

No test relies on timing for correctness: a step waits for a condition (a
stats counter, an asyncio.Event, a threading.Event), bounded by a deadline
that fails the test instead of hanging it.
"""

import asyncio
import gc
import os
import sys
import threading
import time

import pytest

import libsingleflight
from libsingleflight import _aio
from libsingleflight import _singleflight_core as _native
from test_singleflight import DEADLINE, wait_until


def new_loop_factory(kind):
    if kind == "asyncio":
        return asyncio.new_event_loop
    try:
        import uvloop
    except ImportError:  # pragma: no cover - scripts/setup.sh installs it
        pytest.fail("uvloop is not installed in this venv: scripts/setup.sh installs it")
    return uvloop.new_event_loop


# How the leader's work starts: "default" is what do_async does on this
# Python (inline until it first suspends, on 3.10+); "factory" is a loop
# with a task factory, which decides what the work's task is, so the work
# is a task from the start; "eager-task" (3.12+) is a task made with
# eager_start=True instead of the inline step.
START_MODES = ["default", "factory"] + (["eager-task"] if sys.version_info >= (3, 12) else [])


def inline_start(start):
    """Whether the work's first step runs in its caller's step."""
    return start in ("default", "eager-task") and (start != "default" or _aio._mode != 0)


def make_runner(kind, start):
    factory = new_loop_factory(kind)

    def run(coro):
        """Runs coro to completion on a new loop of the kind under test,
        like asyncio.run (tasks left over are cancelled, then the loop is
        closed)."""
        loop = factory()
        if start == "factory":
            loop.set_task_factory(lambda loop, coro, **kw: asyncio.Task(coro, loop=loop, **kw))
        if start == "eager-task":
            _aio._configure(2)
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, DEADLINE))
        finally:
            if start == "eager-task":
                _aio._configure()
            left = asyncio.all_tasks(loop)
            for t in left:
                t.cancel()
            if left:
                loop.run_until_complete(asyncio.gather(*left, return_exceptions=True))
            loop.close()

    run.inline = inline_start(start)
    return run


@pytest.fixture(params=[(k, s) for k in ("asyncio", "uvloop") for s in START_MODES], ids="-".join)
def run(request):
    """run(coro) in every loop kind and start mode; run.inline says whether
    the leader's work starts in its caller."""
    return make_runner(*request.param)


@pytest.fixture(params=[("asyncio", "default"), ("uvloop", "default")], ids="-".join)
def run_inline(request):
    """run(coro) where the leader's work starts inline (do_async's default
    on 3.10 and later)."""
    if _aio._mode == 0:
        pytest.skip("the work starts as a task on Python %d.%d" % sys.version_info[:2])
    return make_runner(*request.param)


async def until(pred, what):
    """Yields to the loop until pred() holds."""
    end = time.monotonic() + DEADLINE
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for " + what)
        await asyncio.sleep(0)


class Work:
    """A coroutine function that counts its runs, signals that it started,
    and returns only when released (or ends when cancelled)."""

    def __init__(self, value=None, exc=None):
        self.value = object() if value is None else value
        self.exc = exc
        self.runs = 0
        self.cancelled = 0
        self.started = None
        self.release = None
        self.released = False
        self.was_cancelled = threading.Event()

    def running(self):
        return self.started is not None and self.started.is_set()

    def let_go(self):
        """Lets the work return; call it on the loop that runs the work."""
        self.released = True
        if self.release is not None:
            self.release.set()

    async def __call__(self):
        if self.started is None:  # made in the loop that runs the work
            self.started, self.release = asyncio.Event(), asyncio.Event()
            if self.released:
                self.release.set()
        self.runs += 1
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            self.was_cancelled.set()
            raise
        if self.exc is not None:
            raise self.exc
        return self.value


# ---------------------------------------------------------------------------
# results
# ---------------------------------------------------------------------------


def test_a_single_caller_gets_the_value_not_shared(run):
    g = libsingleflight.Group()

    async def one():
        return 42

    assert run(g.do_async("k", one)) == (42, False)
    s = g.stats()
    assert (s.calls, s.leaders, s.in_flight) == (1, 1, 0)


def test_concurrent_tasks_share_one_execution_and_the_same_object(run):
    g = libsingleflight.Group()
    work = Work()
    n = 50

    async def main():
        tasks = [asyncio.ensure_future(g.do_async("k", work)) for _ in range(n)]
        await until(lambda: g.stats().calls == n and work.running(), "every caller to join")
        work.let_go()
        return await asyncio.gather(*tasks)

    results = run(main())
    assert work.runs == 1
    assert all(v is work.value and shared is True for v, shared in results)
    s = g.stats()
    assert (s.leaders, s.followers, s.in_flight) == (1, n - 1, 0)


def test_an_exception_is_raised_in_every_caller_as_the_same_object(run):
    g = libsingleflight.Group()
    work = Work(exc=KeyError("missing"))
    n = 5

    async def main():
        tasks = [asyncio.ensure_future(g.do_async("k", work)) for _ in range(n)]
        await until(lambda: g.stats().calls == n and work.running(), "every caller to join")
        work.let_go()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run(main())
    assert all(r is work.exc for r in results), results
    assert g.stats().panics == 1


def test_any_awaitable_factory_works_and_a_plain_function_error_reaches_the_caller(run):
    g = libsingleflight.Group()

    def not_a_coroutine_function():
        return 7  # not awaitable: awaiting it raises TypeError

    async def main():
        loop = asyncio.get_running_loop()

        def a_future():
            fut = loop.create_future()
            loop.call_soon(fut.set_result, "from a future")
            return fut

        assert await g.do_async("f", a_future) == ("from a future", False)
        with pytest.raises(TypeError):
            await g.do_async("p", not_a_coroutine_function)

    run(main())


@pytest.mark.parametrize("bad", [1, None, bytearray(b"k")])
def test_keys_other_than_str_or_bytes_raise_type_error(run, bad):
    g = libsingleflight.Group()

    async def one():
        return 1

    with pytest.raises(TypeError):
        run(g.do_async(bad, one))
    assert g.stats().calls == 0


def test_str_and_its_utf8_bytes_are_the_same_key(run):
    g = libsingleflight.Group()
    work = Work()

    async def main():
        a = asyncio.ensure_future(g.do_async("é", work))
        b = asyncio.ensure_future(g.do_async("é".encode(), work))
        await until(lambda: g.stats().calls == 2 and work.running(), "both callers")
        work.let_go()
        return await asyncio.gather(a, b)

    (va, _), (vb, _) = run(main())
    assert va is vb and work.runs == 1


def test_timeout_must_be_none_or_non_negative(run):
    g = libsingleflight.Group()

    async def one():
        return 1

    for bad in (-1, float("nan")):
        with pytest.raises(ValueError):
            run(g.do_async("k", one, timeout=bad))
    assert g.stats().calls == 0


def test_awaiting_the_own_key_inside_coro_fn_raises_instead_of_deadlocking(run):
    g = libsingleflight.Group()

    async def inner():
        return 1

    async def outer():
        return await g.do_async("k", inner)

    async def other_key():
        return await g.do_async("other", inner)

    with pytest.raises(RuntimeError, match="SF_EDEADLK"):
        run(g.do_async("k", outer))
    assert run(g.do_async("k", other_key)) == ((1, False), False)


def test_a_do_async_inside_a_do_fn_on_the_same_thread_and_key_raises(run):
    # The fn of a blocking do runs an event loop on its own thread; a
    # coroutine there asking for fn's key would wait for the thread it blocks.
    g = libsingleflight.Group()

    async def inner():
        return 1

    with pytest.raises(RuntimeError, match="SF_EDEADLK"):
        g.do("k", lambda: run(g.do_async("k", inner)))


def test_a_blocking_do_on_the_loops_thread_for_a_key_the_loop_leads_raises(run):
    # Its flight's work is a task of this very loop, which the blocking call
    # would stop; on the main thread it would wait (interruptibly) for ever.
    g = libsingleflight.Group()
    work = Work()

    async def main():
        leader = asyncio.ensure_future(g.do_async("k", work))
        await until(work.running, "the work to start")
        with pytest.raises(RuntimeError, match="SF_EDEADLK"):
            g.do("k", lambda: "never runs")
        assert g.do("other", lambda: "fine") == ("fine", False)
        work.let_go()
        return await leader

    assert run(main()) == (work.value, False)
    assert g.do("k", lambda: "again") == ("again", False)  # the flight is over


# ---------------------------------------------------------------------------
# the leader's work starts inline, in its caller, until it first suspends
# ---------------------------------------------------------------------------


def ready_callbacks(loop):
    """How many callbacks asyncio's loop has queued (None for uvloop, which
    does not show them)."""
    ready = getattr(loop, "_ready", None)
    return None if ready is None else len(ready)


def test_a_work_that_completes_without_suspending_never_touches_the_loop(run_inline):
    g = libsingleflight.Group()
    seen = {}

    # Inline (3.10-3.13) the work's first step runs with its task-to-be as
    # current_task(); on 3.14+ (whose current-task table do_async cannot
    # set) it runs in a task started eagerly, which is a real task.
    inline = _aio._mode == 1

    async def work():
        seen["task"] = asyncio.current_task()
        seen["repr"] = repr(seen["task"])  # anyio formats it when a deadline passes
        if inline:
            with pytest.raises(RuntimeError, match="first step"):
                seen["task"].add_done_callback(print)  # it may never run: said plainly
        return "value"

    async def failing():
        raise KeyError("first step")

    async def main():
        loop = asyncio.get_running_loop()
        tasks, queued = asyncio.all_tasks(), ready_callbacks(loop)
        coro = g.do_async("k", work)
        with pytest.raises(StopIteration) as stop:
            coro.send(None)  # one step: do_async never waited for anything
        assert stop.value.value == ("value", False)
        assert asyncio.all_tasks() == tasks and ready_callbacks(loop) == queued
        assert seen["task"] is not asyncio.current_task() and isinstance(seen["task"], asyncio.Task)
        assert seen["task"] not in asyncio.all_tasks()
        if inline:
            # The work's task-to-be was never initialised: no task was made.
            assert seen["task"].get_coro() is None and "first step" in seen["repr"]
        else:
            # The eager task ran to its end in its first step, never scheduled.
            assert seen["task"].done() and not seen["task"].cancelled()
        coro = g.do_async("e", failing)
        with pytest.raises(KeyError, match="first step"):
            coro.send(None)
        assert asyncio.all_tasks() == tasks and ready_callbacks(loop) == queued

    run_inline(main())
    s = g.stats()
    assert (s.calls, s.leaders, s.panics, s.in_flight) == (2, 2, 1, 0)


def test_a_work_that_suspends_goes_on_in_the_task_that_was_current_during_its_first_step(run):
    g = libsingleflight.Group()

    async def work():
        first = asyncio.current_task()
        await asyncio.sleep(0)
        later = asyncio.current_task()
        return first, later

    async def main():
        caller = asyncio.current_task()
        (first, later), shared = await g.do_async("k", work)
        assert first is later, "the work changed tasks"
        assert first is not caller and first.done() and first.get_coro().__name__ == "_lead"
        return shared

    assert run(main()) is False


def test_an_asyncio_timeout_entered_in_the_first_step_times_out_the_work_not_its_callers(run):
    if sys.version_info < (3, 11):
        pytest.skip("asyncio.timeout is 3.11+")
    g = libsingleflight.Group()
    work_errors = []

    async def work():
        try:
            async with asyncio.timeout(0):  # expires at the loop's next iteration
                await asyncio.get_running_loop().create_future()
        except TimeoutError as exc:
            work_errors.append(exc)
            raise

    async def caller():
        try:
            return await g.do_async("k", work)
        finally:
            assert asyncio.current_task().cancelling() == 0, "the work's timeout cancelled its caller"

    async def main():
        tasks = [asyncio.ensure_future(caller()) for _ in range(3)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run(main())
    assert len(work_errors) == 1 and all(r is work_errors[0] for r in results), results


def test_a_task_group_entered_in_the_first_step_belongs_to_the_work(run):
    if sys.version_info < (3, 11):
        pytest.skip("asyncio.TaskGroup is 3.11+")
    g = libsingleflight.Group()

    async def fail_soon():
        await asyncio.sleep(0)
        raise ValueError("child")

    async def work():
        async with asyncio.TaskGroup() as tg:  # its parent is the work's task
            tg.create_task(fail_soon())
            await asyncio.get_running_loop().create_future()  # cancelled by the group

    async def caller():
        try:
            return await g.do_async("k", work)
        finally:
            assert asyncio.current_task().cancelling() == 0, "the work's task group cancelled its caller"

    async def main():
        return await asyncio.gather(caller(), caller(), return_exceptions=True)

    a, b = run(main())
    assert a is b and isinstance(a, BaseExceptionGroup)
    assert [type(e) for e in a.exceptions] == [ValueError]


def test_the_starter_cancelled_before_the_works_task_ran_leaves_the_work_to_the_others(run):
    g = libsingleflight.Group()
    work = Work()

    async def main():
        starter = asyncio.ensure_future(g.do_async("k", work))
        await asyncio.sleep(0)  # the starter leads; its work's task is queued, not yet run
        other = asyncio.ensure_future(g.do_async("k", work))
        await until(lambda: g.stats().calls == 2, "the other caller to join")
        starter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await starter
        await until(work.running, "the work to run")
        work.let_go()
        return await other

    value, shared = run(main())
    assert value is work.value and shared is True
    assert (work.runs, work.cancelled) == (1, 0)
    assert g.stats().abandons == 0


class Halt(BaseException):
    """Neither an Exception nor one that stops the loop."""


def test_a_base_exception_after_the_first_suspension_reaches_every_caller_as_the_same_object(run):
    g = libsingleflight.Group()
    work = Work(exc=Halt("stop"))

    async def main():
        tasks = [asyncio.ensure_future(g.do_async("k", work)) for _ in range(4)]
        await until(lambda: g.stats().calls == 4 and work.running(), "every caller to join")
        work.let_go()
        return await asyncio.gather(*tasks, return_exceptions=True)

    results = run(main())
    assert all(r is work.exc for r in results), results
    assert g.stats().panics == 1


def test_a_base_exception_in_the_first_step_reaches_the_callers_in_other_loops(loops):
    # The work raises in its first step, after a caller of another loop (on
    # another thread) joined through the library while the step ran.
    g = libsingleflight.Group()
    b = loops()
    halt = Halt("first step")

    async def work():
        wait_until(lambda: g.stats().calls == 2, "the caller in loop B")  # blocks this loop: fine here
        raise halt

    async def lead():
        with pytest.raises(Halt) as raised:
            await g.do_async("k", work)
        return raised.value

    leader = threading.Thread(target=lambda: asyncio.run(lead()))

    async def work_b():  # never runs: the flight is led elsewhere
        raise AssertionError("loop B ran the work")

    leader.start()
    wait_until(lambda: g.stats().calls == 1, "the leader")
    follower = b.submit(g.do_async("k", work_b))
    leader.join(DEADLINE)
    with pytest.raises(Halt) as raised:
        follower.result(DEADLINE)
    assert raised.value is halt


# ---------------------------------------------------------------------------
# the callers of one loop: one registration with the library per flight
# ---------------------------------------------------------------------------


def test_the_callers_of_each_loop_share_one_registration_and_one_wake(loops):
    g = libsingleflight.Group()
    work = Work()
    a, b = loops(), loops()
    wakes = []
    if hasattr(b.loop, "_ready"):  # asyncio's loop: count what reaches it from other threads
        threadsafe = b.loop.call_soon_threadsafe

        def counting(callback, *args, **kw):
            wakes.append(callback)
            return threadsafe(callback, *args, **kw)

        b.loop.call_soon_threadsafe = counting
    in_a = [a.submit(g.do_async("k", work)) for _ in range(10)]
    wait_until(lambda: g.stats().calls == 10 and work.running(), "the callers of loop A")
    in_b = [b.submit(g.do_async("k", work)) for _ in range(10)]
    wait_until(lambda: g.stats().calls == 20, "the callers of loop B")
    joins, left = _native._local_stats(g._h)
    assert (joins, left) == (18, 0)  # the library saw two: loop A's leader, loop B's first
    s = g.stats()
    assert (s.calls - joins, s.leaders, s.followers - joins) == (2, 1, 1)
    wakes.clear()
    a.loop.call_soon_threadsafe(work.let_go)
    assert all(f.result(DEADLINE)[0] is work.value for f in in_a + in_b)
    if hasattr(b.loop, "_ready"):
        assert [w.__name__ for w in wakes] == ["_wake"], wakes  # one wake for loop B's ten
    assert work.runs == 1


def test_callers_of_a_loop_leaving_one_by_one_keep_its_registration_until_the_last(loops):
    g = libsingleflight.Group()
    work = Work()
    a, b = loops(), loops()
    leader = a.submit(g.do_async("k", work))
    wait_until(lambda: g.stats().calls == 1 and work.running(), "the leader in loop A")
    in_b = [b.submit(g.do_async("k", work)) for _ in range(3)]
    wait_until(lambda: g.stats().calls == 4, "the callers of loop B")
    for i, f in enumerate(in_b[:2]):
        f.cancel()
        wait_until(lambda: _native._local_stats(g._h)[1] == i + 1, "a caller of loop B to leave")
    s = g.stats()
    assert (s.cancels, s.abandons) == (2, 0)  # loop B's registration stays: one caller is left
    in_b[2].cancel()
    wait_until(lambda: g.stats().cancels == 3, "loop B's registration to give up")
    assert g.stats().abandons == 0 and not work.was_cancelled.is_set()  # loop A's caller stays
    a.loop.call_soon_threadsafe(work.let_go)
    assert leader.result(DEADLINE) == (work.value, True)


def test_forget_makes_the_next_caller_of_the_loop_start_afresh(run):
    g = libsingleflight.Group()
    first, second = Work(value="first"), Work(value="second")

    async def main():
        a = asyncio.ensure_future(g.do_async("k", first))
        await until(first.running, "the first work")
        assert g.forget("k") is True
        b = asyncio.ensure_future(g.do_async("k", second))
        await until(second.running, "the second work")
        c = asyncio.ensure_future(g.do_async("k", first))  # joins the second flight
        await until(lambda: g.stats().calls == 3, "the third caller")
        first.let_go()
        second.let_go()
        return await asyncio.gather(a, b, c)

    (va, _), (vb, _), (vc, _) = run(main())
    assert (va, vb, vc) == ("first", "second", "second")
    assert (first.runs, second.runs) == (1, 1)


def test_forget_unshared_refuses_a_flight_a_caller_of_its_loop_joined(run):
    g = libsingleflight.Group()
    work = Work()

    async def main():
        leader = asyncio.ensure_future(g.do_async("k", work))
        await until(work.running, "the work")
        joiner = asyncio.ensure_future(g.do_async("k", work))
        await until(lambda: g.stats().calls == 2, "the joiner")
        assert g.forget_unshared("k") is False  # joined in the loop, unknown to the library
        assert g.forget_unshared(b"k") is False  # the same key
        work.let_go()
        return await asyncio.gather(leader, joiner)

    assert all(v is work.value for v, _ in run(main()))


def test_two_loops_taking_turns_on_one_thread_each_get_their_own_flights(run):
    # do_async keeps the running loop per thread (sfpy.hpp: running_loop):
    # loops that run one after the other on a thread must each be seen.
    g = libsingleflight.Group()

    async def work():
        await asyncio.sleep(0)
        return asyncio.get_running_loop()

    first, second = asyncio.new_event_loop(), asyncio.new_event_loop()
    try:
        for loop in (first, second, first, second):
            value, _ = loop.run_until_complete(g.do_async("k", work))
            assert value is loop
    finally:
        first.close()
        second.close()


# ---------------------------------------------------------------------------
# giving up: cancellation and timeouts
# ---------------------------------------------------------------------------


def test_cancelling_one_follower_raises_in_that_task_only(run):
    g = libsingleflight.Group()
    work = Work()

    async def main():
        tasks = [asyncio.ensure_future(g.do_async("k", work)) for _ in range(3)]
        await until(lambda: g.stats().calls == 3, "every caller to join")
        tasks[1].cancel()
        with pytest.raises(asyncio.CancelledError):
            await tasks[1]
        assert work.cancelled == 0
        work.let_go()
        return await tasks[0], await tasks[2]

    (v0, _), (v2, _) = run(main())
    assert v0 is work.value and v2 is work.value and work.runs == 1
    s = g.stats()
    assert (s.cancels, s.abandons) == (1, 0)


def test_the_leaders_caller_can_leave_while_the_work_goes_on_for_the_others(run):
    g = libsingleflight.Group()
    work = Work()

    async def main():
        leader = asyncio.ensure_future(g.do_async("k", work))
        await until(work.running, "the work to start")
        follower = asyncio.ensure_future(g.do_async("k", work))
        await until(lambda: g.stats().calls == 2, "the follower to join")
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        work.let_go()
        return await follower

    value, shared = run(main())
    assert value is work.value and shared is True
    assert (work.runs, work.cancelled) == (1, 0)
    assert g.stats().abandons == 0


def test_cancelling_every_caller_cancels_the_work_and_the_next_caller_starts_afresh(run):
    g = libsingleflight.Group()
    work = Work()

    async def main():
        tasks = [asyncio.ensure_future(g.do_async("k", work)) for _ in range(4)]
        await until(lambda: g.stats().calls == 4, "every caller to join")
        for t in tasks[:3]:
            t.cancel()
        await asyncio.gather(*tasks[:3], return_exceptions=True)
        assert work.cancelled == 0  # one caller is still interested
        tasks[3].cancel()
        await asyncio.gather(tasks[3], return_exceptions=True)
        await until(work.was_cancelled.is_set, "the work to be cancelled")
        assert all(t.cancelled() for t in tasks)
        # A new caller never receives the abandoned flight's result.
        fresh = Work(value="fresh")
        fresh_task = asyncio.ensure_future(g.do_async("k", fresh))
        await until(fresh.running, "the fresh work")
        fresh.let_go()
        return await fresh_task

    assert run(main()) == ("fresh", False)
    assert (work.runs, work.cancelled) == (1, 1)
    s = g.stats()
    assert (s.leaders, s.cancels, s.abandons, s.in_flight) == (2, 4, 1, 0)


def test_a_leader_task_cancelled_before_its_first_step_fails_the_callers_with_leader_exited(run):
    # What a loop shutting down does to the work's task that has not run
    # yet: the CancelledError is thrown in before the task's first step.
    # Started inline, the work is waiting and the cancellation reaches it;
    # started as a task, it never ran.
    g = libsingleflight.Group()
    work = Work()

    async def main():
        caller = asyncio.ensure_future(g.do_async("k", work))
        await asyncio.sleep(0)  # the caller runs once: it leads; the work's task is queued
        [leader_task] = [t for t in asyncio.all_tasks() if t.get_coro().__name__ == "_lead"]
        leader_task.cancel()
        with pytest.raises(libsingleflight.LeaderExitedError):
            await caller

    run(main())
    assert (work.runs, work.cancelled) == ((1, 1) if run.inline else (0, 0))
    s = g.stats()
    assert (s.panics, s.abandons, s.in_flight) == (1, 0, 0)


def test_a_timeout_gives_up_that_caller_only(run):
    g = libsingleflight.Group()
    work = Work()

    async def main():
        leader = asyncio.ensure_future(g.do_async("k", work))
        await until(lambda: g.stats().calls == 1, "the leader")
        with pytest.raises(TimeoutError):
            await g.do_async("k", work, timeout=0.01)
        assert work.cancelled == 0
        work.let_go()
        return await leader

    value, shared = run(main())
    assert value is work.value and shared is True  # the follower had joined
    s = g.stats()
    assert (s.cancels, s.abandons, s.followers) == (1, 0, 1)


def test_the_leaders_caller_times_out_too_and_the_work_goes_on_for_a_follower(run):
    g = libsingleflight.Group()
    work = Work()

    async def main():
        leader = asyncio.ensure_future(g.do_async("k", work, timeout=0.05))
        await until(lambda: g.stats().calls == 1, "the leader")
        follower = asyncio.ensure_future(g.do_async("k", work))
        with pytest.raises(TimeoutError):
            await leader
        work.let_go()
        return await follower

    value, _ = run(main())
    assert value is work.value and work.cancelled == 0


def test_timing_out_every_caller_abandons_the_work(run):
    g = libsingleflight.Group()
    work = Work()

    async def main():
        with pytest.raises(TimeoutError):
            await g.do_async("k", work, timeout=0.01)
        await until(work.was_cancelled.is_set, "the work to be cancelled")

    run(main())
    s = g.stats()
    assert (s.abandons, s.in_flight) == (1, 0)


# ---------------------------------------------------------------------------
# across event loops and threads
# ---------------------------------------------------------------------------


class LoopThread:
    """An event loop of the kind under test, running on a thread of its own."""

    def __init__(self, kind):
        self.loop = new_loop_factory(kind)()
        self.thread = threading.Thread(target=self.loop.run_forever)
        self.thread.start()

    def submit(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self):
        if self.loop.is_closed():  # a test closed it already
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(DEADLINE)
        self.loop.close()


@pytest.fixture(params=["asyncio", "uvloop"])
def loops(request):
    made = []

    def make():
        made.append(LoopThread(request.param))
        return made[-1]

    yield make
    for lt in made:
        lt.close()


def test_callers_in_two_loops_on_two_threads_share_one_execution(loops):
    g = libsingleflight.Group()
    work = Work()
    a, b = loops(), loops()
    fa = a.submit(g.do_async("k", work))
    wait_until(lambda: g.stats().calls == 1, "the leader in loop A")
    fb = [b.submit(g.do_async("k", work)) for _ in range(3)]
    wait_until(lambda: g.stats().calls == 4, "the followers in loop B")
    a.loop.call_soon_threadsafe(work.let_go)
    va, sa = fa.result(DEADLINE)
    assert va is work.value and sa is True
    assert all(f.result(DEADLINE)[0] is work.value for f in fb)
    assert work.runs == 1


def test_every_caller_leaving_from_another_loop_cancels_the_work_in_its_own(loops):
    g = libsingleflight.Group()
    work = Work()
    a, b = loops(), loops()
    leader = a.submit(g.do_async("k", work))
    wait_until(lambda: g.stats().calls == 1, "the leader in loop A")
    follower = b.submit(g.do_async("k", work))
    wait_until(lambda: g.stats().calls == 2, "the follower in loop B")
    leader.cancel()  # the leader's caller leaves first: the work goes on
    wait_until(lambda: g.stats().cancels == 1, "the leader's caller to give up")
    assert not work.was_cancelled.is_set()
    follower.cancel()  # the last caller leaves, from loop B's thread
    assert work.was_cancelled.wait(DEADLINE)
    wait_until(lambda: g.stats().in_flight == 0, "the flight to end")
    assert g.stats().abandons == 1


def test_blocking_do_callers_and_do_async_callers_share_a_flight(loops):
    g = libsingleflight.Group()
    work = Work()
    a = loops()
    async_leader = a.submit(g.do_async("k", work))
    wait_until(lambda: g.stats().calls == 1, "the async leader")
    got = []
    t = threading.Thread(target=lambda: got.append(g.do("k", lambda: "never runs")))
    t.start()
    wait_until(lambda: g.stats().followers == 1, "the blocking follower")
    a.loop.call_soon_threadsafe(work.let_go)
    t.join(DEADLINE)
    assert async_leader.result(DEADLINE) == (work.value, True)
    assert got == [(work.value, True)]

    # And the other way round: a coroutine joins a blocking do's flight.
    entered, release = threading.Event(), threading.Event()
    value = object()

    def fn():
        entered.set()
        assert release.wait(DEADLINE)
        return value

    t = threading.Thread(target=lambda: got.append(g.do("j", fn)))
    t.start()
    assert entered.wait(DEADLINE)
    follower = a.submit(g.do_async("j", work))
    wait_until(lambda: g.stats().followers == 2, "the async follower")
    release.set()
    t.join(DEADLINE)
    assert follower.result(DEADLINE) == (value, True)
    assert got[-1] == (value, True)


def test_a_leader_cancelled_by_its_loop_shutting_down_fails_the_others_with_leader_exited(loops):
    g = libsingleflight.Group()
    work = Work()
    a, b = loops(), loops()
    a.submit(g.do_async("k", work))
    wait_until(lambda: g.stats().calls == 1, "the leader in loop A")
    follower = b.submit(g.do_async("k", work))
    wait_until(lambda: g.stats().calls == 2, "the follower in loop B")

    async def cancel_everything():  # what asyncio.run does at its end
        for t in asyncio.all_tasks():
            if t is not asyncio.current_task():
                t.cancel()

    a.submit(cancel_everything()).result(DEADLINE)
    with pytest.raises(libsingleflight.LeaderExitedError):
        follower.result(DEADLINE)
    assert g.stats().abandons == 0


# ---------------------------------------------------------------------------
# scale and resources
# ---------------------------------------------------------------------------


def thread_count():
    return threading.active_count(), len(os.listdir("/proc/self/task"))


def test_ten_thousand_tasks_on_one_key_run_once_and_add_no_thread(run):
    g = libsingleflight.Group()
    work = Work()
    n = 10000

    async def main():
        # Threads of earlier tests are joined but may not have left the
        # kernel yet: start from a settled count.
        await until(lambda: thread_count()[1] == threading.active_count(), "earlier threads to exit")
        before = thread_count()
        tasks = [asyncio.ensure_future(g.do_async("k", work)) for _ in range(n)]
        await until(lambda: g.stats().calls == n, "every caller to join")
        during = thread_count()
        work.let_go()
        results = await asyncio.gather(*tasks)
        return before, during, thread_count(), results

    before, during, after, results = run(main())
    print("\n10,000 tasks on one key: threads (threading, /proc/self/task) before %s, while waiting %s, after %s"
          % (before, during, after))
    assert work.runs == 1
    assert len(results) == n and all(v is work.value for v, _ in results)
    assert before == during == after


def test_no_reference_leaks_over_thousands_of_async_calls(run):
    g = libsingleflight.Group()
    value = object()
    exc = KeyError("missing")

    async def fn():
        return value

    async def raising():
        raise exc

    async def batch(n):
        for _ in range(n):
            a = asyncio.ensure_future(g.do_async("k", fn))
            b = asyncio.ensure_future(g.do_async("k", fn))
            assert (await a)[0] is value and (await b)[0] is value
            with pytest.raises(KeyError):
                await g.do_async("e", raising)
            exc.__traceback__ = None  # raising appends frames; the test must not keep them

    run(batch(100))  # warms up every cache first
    refs = sys.getrefcount(value), sys.getrefcount(exc)
    run(batch(2000))
    gc.collect()
    assert (sys.getrefcount(value), sys.getrefcount(exc)) == refs
    assert libsingleflight.singleflight_core.live_values() == 0
    assert g.stats().in_flight == 0


def test_a_work_task_destroyed_unfinished_fails_the_other_callers_and_is_freed(loops):
    # The leader's loop goes away with the work suspended and its task never
    # cancelled (stopped and closed, not run to the end as asyncio.run
    # does).  Nothing holds the task but its own cycle (task, coroutine,
    # flight): the collector frees it, the work's coroutine is closed, and the
    # caller of another loop still waiting gets LeaderExitedError instead of
    # hanging.  Nothing outside the collector's sight (the abandon callback's
    # payload, the library's registrations) may keep the task alive.
    import weakref

    g = libsingleflight.Group()
    a, b = loops(), loops()
    started, closed = threading.Event(), threading.Event()
    task_ref = []

    async def work():
        task_ref.append(weakref.ref(asyncio.current_task()))
        started.set()
        try:
            await asyncio.get_running_loop().create_future()  # never resolved
        finally:
            closed.set()  # GeneratorExit, thrown in by the collector

    async def leader():
        await g.do_async("k", work)

    a.loop.set_exception_handler(lambda loop, ctx: None)  # "Task was destroyed but it is pending!"
    a.submit(leader())  # its concurrent future is dropped: it would hold the caller's task
    assert started.wait(DEADLINE)
    follower = b.submit(g.do_async("k", work))
    wait_until(lambda: g.stats().calls == 2, "the follower in loop B")
    a.close()  # stops and closes loop A: the work is left suspended
    del a
    gc.collect()
    assert closed.wait(DEADLINE), "the work's coroutine was not closed"
    assert task_ref[0]() is None, "something outside the collector's sight keeps the work's task"
    with pytest.raises(libsingleflight.LeaderExitedError):
        follower.result(DEADLINE)
    wait_until(lambda: g.stats().in_flight == 0, "the flight to end")
    assert g.stats().abandons == 0
