"""Duplicate call suppression: Go's singleflight for Python.

When many threads ask a :class:`Group` for the same key at once, exactly one
of them (the leader) runs the function; the others (followers) wait, with the
GIL released, and receive the very same object.  An exception raised by the
function is raised in every caller.

    >>> import libsingleflight
    >>> g = libsingleflight.Group()
    >>> g.do("answer", lambda: 42)
    (42, False)

The work is done by libsingleflight, a C library; this module is its SWIG
binding.
"""

from __future__ import annotations

import collections
import select
import threading
from typing import Callable, Optional, Tuple, TypeVar, Union

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
    "calls leaders followers panics goexits timeouts forgets in_flight",
)
Stats.__doc__ = """A snapshot of a group's counters.

calls = leaders + followers; leaders is the number of executions; timeouts
counts follower waits that gave up; in_flight the flights not yet complete.
"""


class LeaderExitedError(RuntimeError):
    """The flight's leader went away without producing a result.

    Go's runtime.Goexit case: the leader's thread stopped inside fn without
    returning or raising (it cannot happen to a Python leader, whose fn always
    returns or raises, but the C library reports it and we do not hide it).
    """


class PanicError(RuntimeError):
    """The flight failed with a message but no Python exception object."""


def version() -> str:
    """The version of the loaded C library, e.g. ``"1.0.0"``."""
    return _core.version_string()


def _timeout_ns(timeout: Optional[float]) -> int:
    if timeout is None:
        return -1
    if timeout != timeout or timeout < 0:  # NaN or negative
        raise ValueError("timeout must be None or a non-negative number of seconds")
    return int(timeout * 1e9)


def _wait_interruptibly(flight, timeout: Optional[float]) -> int:
    # Python runs signal handlers (Ctrl-C) only on the main thread, and only
    # between bytecodes: a main thread blocked inside the library would not
    # see KeyboardInterrupt until the flight ended.  poll() on the flight's
    # eventfd blocks with the GIL released too, but returns to Python for
    # every signal (PEP 475), so a handler that raises interrupts the wait.
    poller = select.poll()
    poller.register(flight.fd(), select.POLLIN)
    if poller.poll(None if timeout is None else timeout * 1000.0):
        return flight.wait(0)  # done: returns the outcome at once
    # Time is up.  A last wait with a (1 ns) timeout, rather than a poll,
    # so the library counts the timeout just as for any other follower.
    return flight.wait(1)


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


class Group:
    """A namespace of keys within which calls are deduplicated.

    Thread-safe: share one Group between any number of threads.  Groups are
    independent of each other.  The underlying C group is freed when the Group
    and every call in progress on it are gone.
    """

    __slots__ = ("_g", "__weakref__")

    def __init__(self) -> None:
        self._g = _core.Group()

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
        timeout_ns = _timeout_ns(timeout)
        flight = self._g.begin_on_thread(key)
        try:
            if flight.is_leader():
                self._lead(flight, fn)
                status = flight.wait(0)  # finished: reads our own result at once
            elif threading.current_thread() is threading.main_thread():
                status = _wait_interruptibly(flight, timeout)
            else:
                status = flight.wait(timeout_ns)
            if status == _core.ETIMEDOUT:
                raise TimeoutError("singleflight: gave up waiting for key %r" % (key,))
            value = flight.get_object()
            if status == _core.OK:
                return value, flight.shared()
            if status == _core.EPANIC:
                if isinstance(value, BaseException):
                    try:
                        raise value
                    finally:
                        value = None  # else traceback -> this frame -> value: a cycle
                raise PanicError(flight.panic_message() or "panic")
            raise LeaderExitedError("singleflight: the leader of key %r exited without a result" % (key,))
        finally:
            # Drops this caller's reference to the result; the last caller's
            # release is what frees the shared value.
            flight.release()

    @staticmethod
    def _lead(flight, fn) -> None:
        try:
            value = fn()
        except BaseException as exc:  # noqa: B902 - every caller must see it, even KeyboardInterrupt
            flight.set_object(exc)
            flight.panic(_describe(exc))
        else:
            flight.set_object(value)
            flight.finish(0)

    def forget(self, key: Key) -> bool:
        """Make the next ``do(key, ...)`` run ``fn`` again instead of joining
        the flight in progress, which still delivers to its own callers.
        Returns whether a flight was in progress."""
        return self._g.forget(key)

    def forget_unshared(self, key: Key) -> bool:
        """Like :meth:`forget`, but only if no follower has joined the flight.
        Returns whether the flight was forgotten."""
        return self._g.forget_unshared(key)

    def stats(self) -> Stats:
        """A snapshot of this group's counters (see :class:`Stats`)."""
        s = self._g.stats()
        return Stats(s.calls, s.leaders, s.followers, s.panics, s.goexits,
                     s.timeouts, s.forgets, s.in_flight)
