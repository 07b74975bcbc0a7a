"""Duplicate call suppression: Go's singleflight for Python.

When many threads ask a :class:`Group` for the same key at once, exactly one
of them (the leader) runs the function; the others (followers) wait, with the
GIL released, and receive the very same object.  An exception raised by the
function is raised in every caller.

    >>> import libsingleflight
    >>> g = libsingleflight.Group()
    >>> g.do("answer", lambda: 42)
    (42, False)

Coroutines coalesce the same way, across tasks, event loops and threads,
with ``await g.do_async(key, coro_fn)``; a caller that gives up leaves the
others unaffected, and when every caller has given up the work is cancelled.

The work is done by libsingleflight, a C library; this module is its
binding (a SWIG module whose hot paths are written by hand).
"""

from __future__ import annotations

import collections
import os
import threading
from typing import Awaitable, Callable, Optional, Tuple, TypeVar, Union

from . import _singleflight_core as _native  # sfpy.hpp: the hand-written calls
from . import singleflight_core as _core

__all__ = ["Group", "Stats", "LeaderExitedError", "PanicError", "version"]

T = TypeVar("T")
Key = Union[str, bytes]

if not _core.version_matches():
    raise ImportError(
        "singleflight: built against libsingleflight %s but loaded %s"
        % (_core.BUILT_VERSION, _core.version_string())
    )

Stats = collections.namedtuple(
    "Stats",
    "calls leaders followers panics goexits timeouts forgets in_flight abandons cancels",
)
Stats.__doc__ = """A snapshot of a group's counters.

calls = leaders + followers; leaders is the number of executions; timeouts
counts follower waits that gave up; in_flight the flights not yet complete;
cancels the do_async callers that gave up (cancelled or timed out) and
abandons the flights every caller gave up on, whose work was cancelled.
"""


class LeaderExitedError(RuntimeError):
    """The flight's leader went away without producing a result.

    Go's runtime.Goexit case.  A Python ``fn`` always returns or raises; a
    ``do_async`` leader's coroutine that is cancelled while callers still
    wait for it (its event loop shutting down, say) ends its flight this way
    for them.
    """


class PanicError(RuntimeError):
    """The flight failed with a message but no Python exception object."""


def version() -> str:
    """The version of the loaded C library, e.g. ``"1.0.0"``."""
    return _core.version_string()


def _describe(exc: BaseException) -> str:
    # The library's copy of the panic message; the Python callers get the
    # exception object itself.  It must not fail: if it raised, the flight
    # would end as a leader exit instead of carrying the exception.
    try:
        text = str(exc)
    except Exception:  # noqa: BLE001 - a broken __str__ must not lose the flight
        text = "<unprintable %s>" % type(exc).__qualname__
    name = getattr(type(exc), "__qualname__", "exception")
    return (name + (": " + text if text else "")).replace("\0", "\\0")


# Run by the library's abandon callback on an event loop's own thread
# (sfpy.hpp): the cancellation of abandoned work, whose task it holds
# weakly.
def _cancel_task(task_ref) -> None:
    task = task_ref()
    if task is not None:
        task.cancel()


_native._init(PanicError, LeaderExitedError, _describe, _cancel_task)
# Followers on the thread Python runs signal handlers on wait interruptibly;
# after a fork that is the thread that forked.
_native._set_main_thread(threading.main_thread().ident)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _native._set_main_thread(threading.get_ident()))

_do = _native._do
_async = None  # libsingleflight._aio, imported on first use: asyncio costs 40-70 ms to import


def _load_async():
    global _async
    from . import _aio

    _async = _aio
    return _aio


class Group:
    """A namespace of keys within which calls are deduplicated.

    Thread-safe: share one Group between any number of threads, tasks and
    event loops.  Groups are independent of each other.  The underlying C
    group is freed when the Group and every call in progress on it are gone.
    """

    __slots__ = ("_h", "__weakref__")

    def __init__(self) -> None:
        self._h = _native._group_new()

    def do(self, key: Key, fn: Callable[[], T], *, timeout: Optional[float] = None) -> Tuple[T, bool]:
        """Run ``fn()`` once for all concurrent callers of ``key``.

        Returns ``(value, shared)``: the object ``fn`` returned (the same
        object for every caller) and whether it went to more than one caller.
        If ``fn`` raises, every caller raises that same exception object.

        ``key`` is a ``str`` (compared as UTF-8) or ``bytes``; anything else
        raises ``TypeError``.  ``timeout`` (seconds) bounds how long a
        follower waits: past it the follower raises ``TimeoutError`` and the
        flight goes on for everyone else.  The leader ignores it, since it is
        the one running ``fn``.  Followers wait with the GIL released; on the
        main thread the wait also stays interruptible (Ctrl-C raises
        ``KeyboardInterrupt`` in the waiting caller only; the flight goes on).

        Calling ``do`` for the same key from inside ``fn`` raises
        ``RuntimeError`` (it would wait for itself).
        """
        return _do(self._h, key, fn, timeout)

    def do_async(
        self, key: Key, coro_fn: Callable[[], Awaitable[T]], *, timeout: Optional[float] = None
    ) -> Awaitable[Tuple[T, bool]]:
        """``await g.do_async(key, coro_fn)``: ``do`` for asyncio.

        Awaits ``coro_fn()`` once for all concurrent callers of ``key``, in
        any task, event loop or thread of the process (and together with
        ``do`` callers of the same key), and returns ``(value, shared)`` as
        ``do`` does; an exception raised by the coroutine is raised in every
        caller.  Nobody waits in a thread: a caller's task sleeps on a future
        of its own loop.

        The leader's coroutine starts inline, in its caller, as an eager task
        would (Python 3.12's ``eager_start``): a coroutine that completes
        without suspending never touches the loop.  If it suspends, it goes
        on as a task of its own in the caller's loop (the task that
        ``asyncio.current_task()`` already was during the first step), so
        that caller can leave like any other.  The callers of one loop share
        one registration with the library per flight and are woken together.
        A caller that is cancelled raises ``CancelledError`` and the others
        go on; when every caller has been cancelled (or timed out), in every
        loop, the flight is abandoned: its task is cancelled, and the next
        caller starts afresh.  ``timeout`` (seconds) gives up this caller
        only, with ``TimeoutError``, the leader's caller included.

        Thread rules: call it from a coroutine running in an event loop
        (asyncio, or uvloop), on that loop's thread.  Awaiting ``do_async``
        for the same key from inside ``coro_fn`` raises ``RuntimeError`` (it
        would wait for itself).  Ownership: the value is the coroutine's
        return value itself, shared by every caller.
        """
        return (_async or _load_async()).do_async(self._h, key, coro_fn, timeout)

    def forget(self, key: Key) -> bool:
        """Make the next ``do(key, ...)`` run ``fn`` again instead of joining
        the flight in progress, which still delivers to its own callers.
        Returns whether a flight was in progress."""
        return _native._forget(self._h, key)

    def forget_unshared(self, key: Key) -> bool:
        """Like :meth:`forget`, but only if no follower has joined the flight.
        Returns whether the flight was forgotten."""
        return _native._forget_unshared(self._h, key)

    def stats(self) -> Stats:
        """A snapshot of this group's counters (see :class:`Stats`)."""
        return Stats._make(_native._stats(self._h))
