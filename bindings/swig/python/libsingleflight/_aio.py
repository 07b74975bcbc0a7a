"""Group.do_async: the asyncio half.  The C half is _enter and _Flight in
sfpy.hpp, whose header comment says how a flight goes; in short:

- The leader's work runs inline, in its caller, until it first suspends
  (an eager start).  A work that completes without suspending never touches
  the loop.  One that suspends goes on in a task of its own (_lead), so its
  caller can leave like any other caller while the work goes on for the rest.
- The callers of one loop share one registration with the library per
  flight: the first asks the library, the next ones join in the loop (a
  future each, all resolved by one wake).
- A caller that leaves (cancelled, timed out) drops its own future; the last
  one of its loop gives up the loop's registration (sf_call_cancel).  When
  every registration has gone, in every loop and language, the library
  abandons the flight and the abandon callback cancels the work's task.

Imported by the package on first use: asyncio is slow to import, and
``Group.do`` does not need it.
"""

import asyncio
import contextvars
import sys
import types

from . import _singleflight_core as _native

_enter = _native._enter
_raise_outcome = _native._raise_outcome
_CancelledError = asyncio.CancelledError
_CoroutineType = types.CoroutineType
_isfuture = asyncio.isfuture

_TIMEOUT = object()  # what a caller's future gets when its timer fires first


def _expire(fut):
    if not fut.done():
        fut.set_result(_TIMEOUT)


async def do_async(h, key, coro_fn, timeout):
    """Group.do_async(key, coro_fn, timeout=timeout) on the group capsule h."""
    if timeout is not None and not timeout >= 0:  # negative or NaN
        raise ValueError("timeout must be None or a non-negative number of seconds")
    r = _enter(h, key, coro_fn)
    if type(r) is tuple:  # (value, shared): the work completed inline
        return r
    flight, fut = r  # wait for this loop's wake; leave alone if we go
    if timeout is None:
        try:
            out = await fut
        except BaseException:  # cancelled: this caller gives up, nobody else
            flight.leave(fut)
            raise
    else:
        timer = fut.get_loop().call_later(timeout, _expire, fut)
        try:
            out = await fut
        except BaseException:
            flight.leave(fut)
            raise
        finally:
            timer.cancel()
        if out is _TIMEOUT:
            flight.leave(fut)
            raise TimeoutError("singleflight: gave up waiting for key %r" % (key,))
    if type(out) is tuple:  # (value, shared): what we return
        return out
    status, value, message = out  # [status, value, message]: what we raise
    try:
        _raise_outcome(status, value, message, key)
    finally:
        del value, out  # else traceback -> this frame -> the exception: a cycle


async def _lead(flight, coro_fn, coro, pending):
    """The work's task: runs the rest of the work and finishes the flight,
    whoever is still waiting.  Returns the leader's caller's outcome.

    _enter starts it up to the first wait in _resume before any task runs
    it, so that a cancellation thrown in before the task's first step still
    reaches the work (and this function's handlers)."""
    try:
        value = await _resume(coro_fn, coro, pending)
    except (_CancelledError, GeneratorExit):
        # Abandoned (every caller gave up), or cancelled by someone else
        # (its loop shutting down), or destroyed unfinished: the callers
        # still waiting raise LeaderExitedError.
        flight.cancelled()
        raise
    except BaseException as exc:  # noqa: B902 - every caller must see it
        out = flight.fail(exc)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise  # the loop's business too
        return out  # delivered to every caller; the task ends quietly
    return flight.finish(value)


@types.coroutine
def _resume(coro_fn, coro, pending):
    """The work, from where its first step left it: the work's coroutine
    coro, suspended waiting for pending (a future, or None for a bare
    yield).  Without coro, the work starts here: coro_fn() in this task.

    A generator-based coroutine, because it has to hand pending to the task
    before it resumes coro: a task resumes a coroutine at once, and coro
    must not be resumed before what it waits for is done."""
    if coro is None:
        yield  # primed up to here; the task's first step goes on
        coro = coro_fn()
        if coro.__class__ is not _CoroutineType:
            coro = _await(coro)
        return (yield from coro)
    thrown = None
    try:
        yield  # primed up to here; the task's first step goes on
    except GeneratorExit:
        coro.close()
        raise
    except BaseException as exc:  # noqa: B902 - thrown in by the task: the work's
        thrown = exc
    else:
        if pending is None or (_isfuture(pending) and pending.done()):
            # A bare yield (asyncio.sleep(0)) asks to go on at the next
            # iteration of the loop, which this first step of the task is;
            # a future done meanwhile (by a callback of the same iteration)
            # need not be waited for either.
            return (yield from coro)
    while True:
        if thrown is not None:
            exc, thrown = thrown, None
            try:
                pending = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
            finally:
                del exc
        try:
            yield pending  # the task waits for what the work waits for
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # noqa: B902 - thrown in by the task: the work's
            thrown = exc
        else:
            return (yield from coro)


async def _await(awaitable):
    """A coroutine for what coro_fn returned when it is not one (a future,
    any awaitable); awaiting something else raises TypeError, in the work."""
    return await awaitable


class _WorkTask(asyncio.Task):
    """The work's task.  Allocated before the work's first step, which runs
    inline in the leader's caller with this object as current_task(), so
    that what the work captures there (asyncio.timeout, a TaskGroup, anyio's
    cancel scopes) is its own task; initialised as a task of the loop only
    if the work suspends.  Until then it is not a task yet, and the two
    methods that would crash on an uninitialised asyncio task (3.11-3.13)
    say so instead."""

    __slots__ = ()

    def get_coro(self):
        return super().get_coro() if self._loop is not None else None

    def add_done_callback(self, fn, *, context=None):
        if self._loop is None:
            # It has no loop yet, and it may never run (a work that completes
            # without suspending never becomes a task).
            raise RuntimeError(
                "singleflight: the work's task cannot take done callbacks in the work's first "
                "step, before the work first suspends (do_async starts it inline)"
            )
        return super().add_done_callback(fn, context=context)

    def __repr__(self):
        # Task's repr reads fields an uninitialised future refuses (anyio
        # formats the current task when a deadline passes).
        if self._loop is None:
            return "<%s pending: the work's first step, inline in its caller>" % type(self).__name__
        return super().__repr__()

    if hasattr(asyncio.Task, "get_context"):  # 3.12+

        def get_context(self):
            return super().get_context() if self._loop is not None else None


def _start_mode():
    """How _enter starts the leader's work on this Python (Start in sfpy.hpp):
    1 inline (3.10-3.13, with asyncio's C tasks: the current-task table is a
    dict), 2 as an eager task (3.12+, where the table is not a dict), 0 as a
    plain task."""
    try:
        import _asyncio
    except ImportError:  # pragma: no cover - CPython always has it
        return 0, None
    current = getattr(_asyncio, "_current_tasks", None)
    if (
        (3, 10) <= sys.version_info < (3, 14)
        and isinstance(current, dict)
        and asyncio.Task is _asyncio.Task
        and asyncio.tasks._enter_task is _asyncio._enter_task
    ):
        return 1, current
    if sys.version_info >= (3, 12):
        return 2, None
    return 0, None


# The flights led by the current task and the tasks it started, as (group,
# key, flight): awaiting one's own key from inside coro_fn would wait for
# itself forever.
_led = contextvars.ContextVar("libsingleflight_led", default=())


def _configure(mode=None):
    """Hands the C half its pieces, with the start mode this Python allows
    (or mode: the tests try the others where they work)."""
    global _mode
    best, current = _start_mode()
    _mode = best if mode is None else mode
    _native._aio_init(
        _mode,
        asyncio.get_running_loop,
        _lead,
        _await,
        _WorkTask,
        asyncio.Task,
        current,
        _CancelledError,
        _led,
        sys.version_info >= (3, 11),
        asyncio.Future,
        asyncio.BaseEventLoop.create_future,
        asyncio.InvalidStateError,
    )


_mode = 0
_configure()
