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

:class:`SharedGroup` is one group for every process of the host that opens
the same name (gunicorn workers, a multiprocessing pool), with ``bytes``
values.  :class:`RedisGroup` coalesces across hosts on Redis (when the
package was built with the Redis tier).

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

__all__ = [
    "Group",
    "SharedGroup",
    "Stats",
    "SharedStats",
    "LeaderExitedError",
    "PanicError",
    "version",
]

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


SharedStats = collections.namedtuple(
    "SharedStats", Stats._fields + ("in_flight_high", "arena_used", "arena_high", "processes")
)
SharedStats.__doc__ = """A snapshot of a shared group's counters, over every process.

The fields of :class:`Stats`, then: in_flight_high, the most flights in
flight at once; arena_used and arena_high, the segment's bytes in use now and
at most (keys and values above 64 bytes, panic messages); processes, the
processes attached now.
"""


class LeaderExitedError(RuntimeError):
    """The flight's leader went away without producing a result.

    Go's runtime.Goexit case.  A Python ``fn`` always returns or raises; a
    ``do_async`` leader's coroutine that is cancelled while callers still
    wait for it (its event loop shutting down, say) ends its flight this way
    for them.
    """


class PanicError(RuntimeError):
    """The flight failed with a message but no Python exception object.

    A :class:`SharedGroup`'s followers raise it when fn raised: the
    exception crosses processes as its text, ``"ValueError: bad row"``."""


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


_shared_async = None  # libsingleflight._shared_aio, imported on first use


def _load_shared_async():
    global _shared_async
    from . import _shared_aio

    _shared_async = _shared_aio
    return _shared_aio


def _size_option(name: str, value: Optional[int]) -> int:
    if value is None:
        return 0  # the library's default
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError("SharedGroup: %s must be None or a positive int, not %r" % (name, value))
    return value


class SharedGroup:
    """A group shared by every process of the host that opens the same name:
    one execution per key across gunicorn workers, multiprocessing pools,
    forked job runners.

    Values cross processes as ``bytes``: ``fn`` must return a bytes-like
    object (bytes, bytearray, memoryview...), and every caller receives
    equal ``bytes``; anything else raises ``TypeError`` in the leader and
    :class:`PanicError` in its followers.  :meth:`do_pickled` carries any
    picklable object instead.  An exception raised by ``fn`` is raised
    as itself in the leader's caller and as :class:`PanicError` with its
    text (``"ValueError: bad row"``) in every follower, in any process.
    A leader's process that dies inside ``fn`` (SIGKILL included) makes its
    followers raise :class:`LeaderExitedError` at once, and the next caller
    leads a fresh flight.

    ``name``: 1 to 200 characters of ``[A-Za-z0-9._-]``, not starting with
    ``.``; the group lives in ``/dev/shm/libsingleflight.<name>``.  Or
    ``path`` (with ``name=None``): a file to map instead, on a volume that
    containers share.  The sizes are the creator's (None: the library's
    defaults, 16 MiB arena, 4096 table slots, 1 MiB values, 64 processes);
    a later opener passing None takes the segment's, and one asking for
    others gets ``RuntimeError``.  ``mode``: the segment's permission bits;
    a segment of another user, or open to more than ``mode``, raises
    ``PermissionError``.  A full table or arena raises ``MemoryError`` for
    the call that needed the room, unless ``run_unshared``: then ``fn``
    runs coalesced within this process only.

    Thread rules: share one SharedGroup between any number of threads and
    tasks of a process; a forked child may keep using its parent's (it
    joins the group as a process of its own at its first call), and a
    spawned one opens the name again.  :meth:`close` (or a ``with`` block)
    detaches this process, once the calls in progress have returned; any
    later call raises ``ValueError``.  The last process to detach removes
    the segment.
    """

    __slots__ = ("_h", "_name", "__weakref__")

    def __init__(
        self,
        name: Optional[str] = None,
        *,
        arena_bytes: Optional[int] = None,
        table_slots: Optional[int] = None,
        max_value_bytes: Optional[int] = None,
        max_processes: Optional[int] = None,
        mode: int = 0o600,
        path: Union[str, bytes, "os.PathLike[str]", None] = None,
        run_unshared: bool = False,
    ) -> None:
        self._h = None
        if (name is None) == (path is None):
            raise ValueError("SharedGroup: give a name or a path, not both")
        if name is not None and not isinstance(name, str):
            raise TypeError("SharedGroup: name must be a str, not %s" % type(name).__name__)
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 < mode <= 0o777:
            raise ValueError("SharedGroup: mode must be permission bits such as 0o600, not %r" % (mode,))
        self._name = name if name is not None else os.fspath(path)
        self._h = _native._shared_open(
            name.encode("utf-8") if name is not None else None,
            os.fsencode(path) if path is not None else None,
            _size_option("arena_bytes", arena_bytes),
            _size_option("table_slots", table_slots),
            _size_option("max_value_bytes", max_value_bytes),
            _size_option("max_processes", max_processes),
            mode,
            bool(run_unshared),
        )

    def _handle(self):
        h = self._h
        if h is None:
            raise ValueError("singleflight: the SharedGroup is closed")
        return h

    @property
    def name(self):
        """The name (or path) the group was opened with."""
        return self._name

    @property
    def closed(self) -> bool:
        return self._h is None

    def do(self, key: Key, fn: Callable[[], bytes], *, timeout: Optional[float] = None) -> Tuple[bytes, bool]:
        """Run ``fn()`` once for all concurrent callers of ``key`` in every
        process of the group; returns ``(value, shared)`` with ``value`` the
        ``bytes`` fn returned (equal bytes in every caller).

        Keys, ``timeout``, the interruptible wait and the deadlock check of
        ``do`` inside ``fn`` are as for :meth:`Group.do`.  Raises
        ``TypeError`` when fn's value is not bytes-like, ``ValueError`` when
        it is larger than the group's ``max_value_bytes``.
        """
        return _native._shared_do(self._handle(), key, fn, timeout)

    def do_async(
        self, key: Key, coro_fn: Callable[[], Awaitable[bytes]], *, timeout: Optional[float] = None
    ) -> Awaitable[Tuple[bytes, bool]]:
        """``await g.do_async(key, coro_fn)``: :meth:`do` for asyncio (and
        uvloop).  The leader's ``coro_fn()`` runs as a task of its caller's
        loop; followers, in this process or another, sleep on their loop
        (an eventfd the library makes readable when the flight completes),
        blocking no thread.  A caller that is cancelled (or whose
        ``timeout`` passes: ``TimeoutError``) gives up alone; when every
        caller in every process has, the work's task is cancelled.  Call it
        from a coroutine on its loop's thread.
        """
        return (_shared_async or _load_shared_async()).do_async(self._handle(), key, coro_fn, timeout)

    def do_pickled(self, key: Key, fn: Callable[[], T], *, timeout: Optional[float] = None) -> Tuple[T, bool]:
        """:meth:`do` for any picklable value: fn's value crosses as
        ``pickle.dumps(value)`` and every caller gets ``pickle.loads`` of
        it (an equal object, not the same one).  Only for groups whose
        processes trust each other, as unpickling runs code: a shared
        group's peers are processes of the same user (see ``mode``)."""
        import pickle

        value, shared = self.do(key, lambda: pickle.dumps(fn()), timeout=timeout)
        return pickle.loads(value), shared

    async def do_async_pickled(
        self, key: Key, coro_fn: Callable[[], Awaitable[T]], *, timeout: Optional[float] = None
    ) -> Tuple[T, bool]:
        """:meth:`do_async` for any picklable value (see :meth:`do_pickled`)."""
        import pickle

        async def dumped():
            return pickle.dumps(await coro_fn())

        value, shared = await self.do_async(key, dumped, timeout=timeout)
        return pickle.loads(value), shared

    def forget(self, key: Key) -> bool:
        """As :meth:`Group.forget`, for every process of the group."""
        return _native._forget(self._handle(), key)

    def forget_unshared(self, key: Key) -> bool:
        """As :meth:`Group.forget_unshared`, for every process of the group."""
        return _native._forget_unshared(self._handle(), key)

    def stats(self) -> SharedStats:
        """The group's counters, over every process (see :class:`SharedStats`)."""
        h = self._handle()
        return SharedStats._make(_native._stats(h) + _native._shared_stats(h))

    def close(self) -> None:
        """Detach this process from the group: at once, or when the calls
        in progress on it have returned.  Later calls raise ``ValueError``.
        Idempotent; garbage collection of the SharedGroup does the same."""
        h, self._h = self._h, None
        if h is not None:
            _native._shared_close(h)

    def __enter__(self) -> "SharedGroup":
        self._handle()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<SharedGroup %r%s>" % (self._name, " closed" if self._h is None else "")


# Not in __all__: `from libsingleflight import *` must work without the tier.
_REDIS_NAMES = ("RedisGroup", "RedisStats", "RedisError", "RedisAuthError", "RedisUnavailableError")


def __getattr__(name):
    # The Redis tier (libsingleflight._redis) loads on first use: a build
    # without it (no hiredis) imports the rest of the package unchanged, and
    # asking for RedisGroup there raises ImportError saying why.
    if name in _REDIS_NAMES:
        from . import _redis

        return getattr(_redis, name)
    raise AttributeError("module %r has no attribute %r" % (__name__, name))
