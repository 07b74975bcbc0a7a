"""RedisGroup: fleet-wide coalescing on Redis (libsingleflight-redis).

Imported on first use of ``libsingleflight.RedisGroup``: the core package
imports and works without the Redis tier, which is built only with
SF_BUILD_REDIS (hiredis).
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import threading
from typing import Awaitable, Callable, Optional, Union
from urllib.parse import parse_qs, unquote, urlsplit

from . import LeaderExitedError, PanicError
from . import _singleflight_core as _core_native

try:
    from . import _singleflight_redis as _native
except ImportError as exc:  # pragma: no cover - a build without the Redis tier
    raise ImportError(
        "libsingleflight: RedisGroup needs the Redis tier, which this build does not have "
        "(configure with -DSF_BUILD_REDIS=ON; it needs libhiredis-dev): %s" % exc
    ) from exc

Key = Union[str, bytes]

RedisStats = collections.namedtuple(
    "RedisStats",
    "calls executions hits stale_hits lease_wins waits wakeups takeovers fallbacks unavailable "
    "fenced renewals timeouts reconnects",
)
RedisStats.__doc__ = """A snapshot of one RedisGroup's counters (this process's).

calls: do calls (front group followers included); executions: runs
of fn here; hits and stale_hits: values served from Redis fresh, or stale
while one caller refreshes; lease_wins: leases taken; waits and wakeups:
waits for another host's leader and those ended by a push; takeovers:
leases taken from a leader that lapsed; fallbacks: runs of fn without
Redis (Redis down, fallback=True); unavailable: calls that found Redis
down; fenced: result writes refused because the lease had lapsed;
renewals, timeouts, reconnects.
"""


class RedisError(RuntimeError):
    """Redis answered, but not as this library needs: a server that is not
    Redis, or an error for a command or script (SF_REDIS_EPROTO)."""


class RedisAuthError(RedisError, PermissionError):
    """Redis refused the password, user or database (SF_REDIS_EAUTH)."""


class RedisUnavailableError(ConnectionError):
    """Redis could not be reached or did not answer in time, and the group
    was made with ``fallback=False`` (SF_REDIS_EUNAVAILABLE)."""


def _raise_status(status: int, message=None, key=None):
    name, text = _native._status_text(status)
    what = "singleflight: %s (%s)" % (text, name) + ("" if key is None else " for key %r" % (key,))
    if status == _native.SF_EPANIC:
        # fn raised in another caller (of this process or another host):
        # its exception's text, as SharedGroup's followers get it.
        raise PanicError(message or "panic")
    if status == _native.SF_EGOEXIT:
        raise LeaderExitedError(what)
    if status == _native.SF_ETIMEDOUT:
        raise TimeoutError(what)
    if status == _native.SF_REDIS_EUNAVAILABLE:
        raise RedisUnavailableError(what)
    if status == _native.SF_REDIS_EAUTH:
        raise RedisAuthError(what)
    if status == _native.SF_REDIS_EPROTO:
        raise RedisError(what)
    if status in (_native.SF_EINVAL, _native.SF_REDIS_ETOOBIG):
        raise ValueError(what)
    if status == _native.SF_ENOMEM:
        raise MemoryError(what)
    raise RuntimeError(what)


def parse_url(url: str) -> dict:
    """The connection options of a URL:
    ``redis://[[user]:password@]host[:port][/db]`` or
    ``unix://[[user]:password@]/path/to/socket[?db=N]``.  Raises
    ``ValueError`` for anything else."""
    if not isinstance(url, str):
        raise TypeError("RedisGroup: url must be a str, not %s" % type(url).__name__)
    try:
        u = urlsplit(url)
        port = u.port
    except ValueError as exc:
        raise ValueError("RedisGroup: bad URL %r: %s" % (url, exc)) from None
    opts = {
        "username": unquote(u.username) if u.username else None,
        "password": unquote(u.password) if u.password is not None else None,
    }
    query = parse_qs(u.query)
    db = query.get("db", [None])[0]
    if u.scheme == "redis":
        if not u.hostname:
            raise ValueError("RedisGroup: no host in %r" % url)
        opts["host"] = u.hostname
        opts["port"] = 6379 if port is None else port
        path = u.path.strip("/")
        if path:
            db = path
    elif u.scheme == "unix":
        if not u.path:
            raise ValueError("RedisGroup: no socket path in %r" % url)
        opts["unix_path"] = unquote(u.path)
    else:
        raise ValueError("RedisGroup: %r is not a redis:// or unix:// URL" % url)
    if db is not None:
        if not db.isdigit():
            raise ValueError("RedisGroup: database %r in %r is not a number" % (db, url))
        opts["db"] = int(db)
    return opts


def _ms(name: str, value) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("RedisGroup: %s must be None or an int >= 0, not %r" % (name, value))
    return value


class RedisGroup:
    """Fleet-wide duplicate call suppression on Redis: ``do(key, fn)`` runs
    ``fn`` once for all concurrent callers of ``key`` on every host (every
    process) using the same Redis and ``prefix``, and returns its bytes.

    The callers of this process coalesce first in the front group (``front``:
    a :class:`Group`, or a :class:`SharedGroup` for the whole host; by
    default a private group of this RedisGroup); only the front group's
    leader talks to Redis, where the hosts' leaders compete for one fenced
    lease per key.  The lease winner runs ``fn``; the others are woken by a
    pub/sub push and read the same bytes.  With caching on (the default),
    the value stays in Redis: for ``soft_ttl_ms`` it is served without
    running ``fn``; until ``hard_ttl_ms`` it is served stale at once while
    one caller refreshes it.

    ``url``: ``redis://[[user]:password@]host[:port][/db]`` or
    ``unix:///path/to/socket[?db=N]``.  The other options are
    sf_redis_options' (redis/include/singleflight_redis.h); None means the
    library's default: ``lease_ms`` (3000) and ``renew_ms`` (lease_ms / 3),
    ``wait_ms`` (10000, the bound on waiting for another leader),
    ``soft_ttl_ms`` (60000), ``hard_ttl_ms`` (= soft), ``error_ttl_ms``
    (1000), ``cache`` (True; False: pure coalescing), ``prefix`` ("sf"),
    ``max_value_bytes`` (1 MiB), ``connect_timeout_ms`` and ``timeout_ms``
    (500 each, every Redis round trip).  ``fallback`` (True): when Redis is
    down or slow, run ``fn`` coalesced by the front group only (counted in
    ``stats().fallbacks``); False: raise :class:`RedisUnavailableError`.

    Values are bytes: ``fn`` returns a bytes-like object, every caller gets
    equal ``bytes``.  If ``fn`` raises, its caller raises that exception
    itself and every other caller of the flight, on any host, raises
    :class:`PanicError` with its text (``"ValueError: bad row"``), which
    stays in Redis for ``error_ttl_ms``.  ``TimeoutError`` when a wait for
    another leader passed ``wait_ms``; ``ValueError`` for a value over
    ``max_value_bytes`` (nothing is stored); :class:`RedisAuthError` for a
    refused password or database (at construction or later);
    :class:`RedisError` for a server that does not speak Redis.

    Thread rules: share one RedisGroup between any number of threads and
    tasks of a process.  It owns connections and a watchdog thread, which a
    fork does not copy: a child process makes its own RedisGroup (the
    parent's raises ``RuntimeError`` there).  The
    ``front`` group must not be used for the same keys directly (its
    flights carry this group's bytes); a SharedGroup front that is closed
    stays attached until this RedisGroup is closed.  :meth:`close` (or a
    ``with`` block) frees the connections once the calls in progress have
    returned; later calls raise ``ValueError``.
    """

    __slots__ = ("_h", "_front", "_url", "_executor", "_executor_lock", "__weakref__")

    def __init__(
        self,
        url: str = "redis://127.0.0.1:6379/0",
        *,
        lease_ms: Optional[int] = None,
        renew_ms: Optional[int] = None,
        wait_ms: Optional[int] = None,
        soft_ttl_ms: Optional[int] = None,
        hard_ttl_ms: Optional[int] = None,
        error_ttl_ms: Optional[int] = None,
        cache: bool = True,
        prefix: Optional[str] = None,
        max_value_bytes: Optional[int] = None,
        connect_timeout_ms: Optional[int] = None,
        timeout_ms: Optional[int] = None,
        fallback: bool = True,
        front=None,
    ) -> None:
        from . import Group, SharedGroup

        self._h = None
        self._front = None
        self._executor = None
        self._executor_lock = threading.Lock()
        self._url = url
        opts = parse_url(url)
        for name, value in (
            ("lease_ms", lease_ms),
            ("renew_ms", renew_ms),
            ("wait_ms", wait_ms),
            ("soft_ttl_ms", soft_ttl_ms),
            ("hard_ttl_ms", hard_ttl_ms),
            ("error_ttl_ms", error_ttl_ms),
            ("max_value_bytes", max_value_bytes),
            ("connect_timeout_ms", connect_timeout_ms),
            ("command_timeout_ms", timeout_ms),
        ):
            opts[name] = _ms(name, value)
        if prefix is not None and not isinstance(prefix, str):
            raise TypeError("RedisGroup: prefix must be a str")
        opts["key_prefix"] = prefix
        opts["cache"] = 1 if cache else 0
        opts["on_down"] = 0 if fallback else 1
        if front is not None:
            if not isinstance(front, (Group, SharedGroup)):
                raise TypeError("RedisGroup: front must be a Group or a SharedGroup, not %s" % type(front).__name__)
            handle = front._h if isinstance(front, Group) else front._handle()
            opts["front"] = _core_native._front_pin(handle)
            # Unpinned once the library handle is freed (close() with no call
            # in progress, or the last call's return), not before: the
            # library borrows the front group until then.
            unpin = functools.partial(_core_native._front_unpin, handle)
        else:
            unpin = None
        self._front = front  # kept alive as long as this group
        try:
            status, h = _native._open(opts, unpin)
        except BaseException:
            if unpin:
                unpin()
            raise
        if status != _native.SF_OK:
            if unpin:
                unpin()
            _raise_status(status)
        self._h = h

    def _handle(self):
        h = self._h
        if h is None:
            raise ValueError("singleflight: the RedisGroup is closed")
        return h

    @property
    def url(self) -> str:
        return self._url

    @property
    def closed(self) -> bool:
        return self._h is None

    def do(self, key: Key, fn: Callable[[], bytes]) -> bytes:
        """Returns key's value: fn's bytes, run once for all concurrent
        callers fleet-wide, or the value already in Redis (see the class).
        Blocks, with the GIL released, at most about ``wait_ms`` + fn's run
        time + a few ``timeout_ms``.  ``key``: str (as UTF-8) or bytes."""
        status, value = _native._do(self._handle(), key, fn)
        if status != _native.SF_OK:
            _raise_status(status, value, key)
        return value

    def _pool(self):
        # The blocking do calls of do_async's callers run here, not in the
        # loop's default executor, which the caller's other work may need.
        with self._executor_lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=32, thread_name_prefix="sf-redis"
                )
            return self._executor

    async def do_async(self, key: Key, coro_fn: Callable[[], Awaitable[bytes]]) -> bytes:
        """``await g.do_async(key, coro_fn)``: :meth:`do` for asyncio (and
        uvloop).  The leader's ``coro_fn()`` runs on the caller's loop; the
        wait (for the lease, another host's leader or Redis) runs on a
        thread of this group's pool, so the loop goes on meanwhile.  An
        exception raised by the coroutine is raised in its caller, and as
        :class:`PanicError` in the flight's other callers.  A caller that
        is cancelled stops waiting; the call it started goes on to its end
        (a leader's coroutine included, so that the other callers get its
        value).  Call it from a coroutine on its loop's thread."""
        import asyncio

        loop = asyncio.get_running_loop()
        h = self._handle()

        def fn():
            return asyncio.run_coroutine_threadsafe(coro_fn(), loop).result()

        def blocking():
            status, value = _native._do(h, key, fn)
            if status != _native.SF_OK:
                _raise_status(status, value, key)
            return value

        return await loop.run_in_executor(self._pool(), blocking)

    def forget(self, key: Key) -> None:
        """Deletes key's value from Redis: the next call runs fn (a flight in
        progress goes on).  Raises as :meth:`do` when Redis is down."""
        status = _native._forget(self._handle(), key)
        if status != _native.SF_OK:
            _raise_status(status, None, key)

    def stats(self) -> RedisStats:
        """This process's counters of this group (see :class:`RedisStats`)."""
        return RedisStats._make(_native._stats(self._handle()))

    def close(self) -> None:
        """Closes the connections and stops the watchdog, at once or when
        the calls in progress have returned; later calls raise
        ``ValueError``.  Idempotent; garbage collection does the same."""
        h, self._h = self._h, None
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False)
        if h is not None:
            _native._close(h)

    def __enter__(self) -> "RedisGroup":
        self._handle()
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return "<RedisGroup %r%s>" % (self._url, " closed" if self._h is None else "")
