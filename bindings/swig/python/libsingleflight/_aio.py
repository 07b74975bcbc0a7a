"""Group.do_async: the asyncio half.  The C half is _Call in sfpy.hpp.

One flight, any number of awaiting callers, in any loop or thread:

- The leader's caller starts ``coro_fn()`` as a task of its own, so that it
  can leave like any other caller while the work goes on for the rest, and
  awaits a future the task resolves.
- A follower registers a completion callback (sf_call_on_done) that
  resolves its future on its own loop's thread: nobody waits in a thread.
- A caller that leaves (cancelled, timed out) gives up its interest
  (sf_call_cancel) and nobody else's.  When the last one does, the library
  takes the flight out of the table and runs the abandon callback
  (sf_call_on_abandon), which cancels the leader's task on its loop.

Imported by the package on first use: asyncio is slow to import, and
``Group.do`` does not need it.
"""

import asyncio
import contextvars
from functools import partial

from . import LeaderExitedError, _set_outcome
from . import _singleflight_core as _native
from . import singleflight_core as _core

_EPANIC = _core.EPANIC
_begin = _native._begin
_raise_outcome = _native._raise_outcome
_get_running_loop = asyncio.get_running_loop
_CancelledError = asyncio.CancelledError

# The flights led by the current task and the tasks it started, as
# (group, key, call): awaiting one's own key from inside coro_fn would wait
# for itself forever.
_led = contextvars.ContextVar("libsingleflight_led", default=())

_TIMEOUT = object()  # what a caller's future gets when its timer fires first


def _expire(fut):
    if not fut.done():
        fut.set_result(_TIMEOUT)


def _as_bytes(key):
    return key.encode() if isinstance(key, str) else key


def _leads(led, h, key):
    k = _as_bytes(key)
    return any(lh is h and call.pending and _as_bytes(lkey) == k for lh, lkey, call in led)


async def do_async(h, key, coro_fn, timeout):
    """Group.do_async(key, coro_fn, timeout=timeout) on the group capsule h."""
    if timeout is not None and not timeout >= 0:  # negative or NaN
        raise ValueError("timeout must be None or a non-negative number of seconds")
    led = _led.get()
    if led and _leads(led, h, key):
        raise RuntimeError(
            "singleflight: do_async inside coro_fn asked for its own key %r: "
            "it would wait for itself (SF_EDEADLK)" % (key,)
        )
    loop = _get_running_loop()
    call, fut = _begin(h, key, loop)  # a follower's fut is resolved by the library's callback
    leader = call.leader
    if leader:
        try:
            # The task owns the leader's handle from here on: it finishes
            # the flight whatever happens to this caller.
            task = loop.create_task(_lead(call, coro_fn, fut, h, key))
        except BaseException:
            call.release()  # nobody runs the work: followers get LeaderExitedError
            raise
        task.add_done_callback(partial(_lead_done, call, fut, key))
        call.on_abandon(loop, task)  # if this fails (no memory), the task still finishes
    if timeout is None:
        try:
            out = await fut
        except BaseException:  # cancelled: this caller gives up, nobody else
            _give_up(call, leader)
            raise
    else:
        timer = loop.call_later(timeout, _expire, fut)
        try:
            out = await fut
        except BaseException:
            _give_up(call, leader)
            raise
        finally:
            timer.cancel()
        if out is _TIMEOUT:
            _give_up(call, leader)
            raise TimeoutError("singleflight: gave up waiting for key %r" % (key,))
    if not leader:
        call.release()
    if out.__class__ is tuple:  # (value, shared): what we return
        return out
    status, value, message = out  # [status, value, message]: what we raise
    try:
        _raise_outcome(status, value, message, key)
    finally:
        del value, out  # else traceback -> this frame -> the exception: a cycle


def _give_up(call, leader):
    call.cancel()  # this caller's interest goes; the others keep theirs
    if not leader:
        call.release()  # the leader's task releases the leader's handle


async def _lead(call, coro_fn, fut, h, key):
    """The leader's task: runs the work and finishes the flight, whoever is
    still waiting.  Delivers the leader's caller its outcome through fut."""
    _led.set(_led.get() + ((h, key, call),))
    try:
        value = await coro_fn()
    except _CancelledError:
        _cancelled(call, fut, key)
        raise
    except BaseException as exc:  # noqa: B902 - every caller must see it
        call.fail(exc)
        _set_outcome(fut, [_EPANIC, exc, None])
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise  # the loop's business too
        return None  # delivered to every caller; the task ends quietly
    _set_outcome(fut, (value, call.finish(value)))
    return None


def _cancelled(call, fut, key):
    """The leader's task was cancelled: finishes its flight."""
    if call.abandoned():
        call.finish(None)  # every caller has gone: nobody receives anything
    else:
        # Cancelled by someone else (its loop shutting down): the callers
        # still waiting get what a leader that went away gives.
        exc = LeaderExitedError("singleflight: the leader's coroutine for key %r was cancelled" % (key,))
        call.fail(exc)
        _set_outcome(fut, [_EPANIC, exc, None])


def _lead_done(call, fut, key, task):
    # A task cancelled before its first step never runs _lead's body (the
    # CancelledError is thrown in at its first line): finish for it here.
    if call.pending:
        _cancelled(call, fut, key)
