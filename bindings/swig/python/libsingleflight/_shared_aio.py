"""SharedGroup.do_async: the asyncio half, on _SharedCall (sfpy_shared.hpp).

- A follower's task sleeps on a future of its loop, resolved by a reader on
  a call's eventfd (sf_call_fd).  The library's helper thread in this
  process makes that fd readable when the flight completes in any process
  of the group, so the loop's thread never blocks, nothing polls, and no
  thread waits per caller.  Every follower has a call of its own (the
  library counts each, and forget and giving up work per caller), but the
  followers of one key on one loop share one reader (_Followers): a
  stampede of thousands of tasks in a process costs one descriptor, not
  thousands.
- The leader's work runs as a task of its own, and the leader's caller
  waits for it like a follower waits for the flight, so that caller can
  leave alone while the work goes on for the others.
- A caller that leaves (cancelled, timed out) gives up its interest
  (sf_call_cancel).  When nobody is left in any process, the library
  abandons the flight and the abandon callback cancels the work's task.

Imported by the package on first use: asyncio is slow to import.
"""

import asyncio
import contextvars
import weakref

from . import _singleflight_core as _native

_begin = _native._shared_begin
_epoch = _native._shared_epoch
_CancelledError = asyncio.CancelledError
_TIMEOUT = object()  # what a caller's future gets when its timer fires first

# The (group, key) flights the current task leads, and the tasks it started
# inherit: awaiting one's own key from inside coro_fn would wait for itself.
_led = contextvars.ContextVar("libsingleflight_shared_led", default=frozenset())


def _set(fut, value=None):
    if not fut.done():
        fut.set_result(value)


def _key_bytes(key):
    return key.encode("utf-8") if isinstance(key, str) else key


async def _wait(fut, timeout):
    """Awaits fut; _TIMEOUT when timeout (seconds) passed first."""
    if timeout is None:
        return await fut
    timer = fut.get_loop().call_later(timeout, _set, fut, _TIMEOUT)
    try:
        return await fut
    finally:
        timer.cancel()


def _timed_out(key):
    return TimeoutError("singleflight: gave up waiting for key %r" % (key,))


async def do_async(h, key, coro_fn, timeout):
    """SharedGroup.do_async(key, coro_fn, timeout=timeout) on capsule h."""
    if timeout is not None and not timeout >= 0:  # negative or NaN
        raise ValueError("timeout must be None or a non-negative number of seconds")
    loop = asyncio.get_running_loop()
    if isinstance(key, (str, bytes)) and (h, _key_bytes(key)) in _led.get():
        raise RuntimeError("singleflight: do_async inside coro_fn asked for its own key")
    call = _begin(h, key)
    if call.leader:
        return await _lead(loop, h, key, call, coro_fn, timeout)
    fut = loop.create_future()
    index = (loop, h, _key_bytes(key), _epoch(h))
    followers = _followers.get(index)
    if followers is None:
        followers = _followers[index] = _Followers(index)
    followers.add(fut, call)
    try:
        out = await _wait(fut, timeout)
    except BaseException:  # cancelled: this caller gives up, nobody else
        followers.leave(fut, call)
        raise
    if out is _TIMEOUT:
        followers.leave(fut, call)
        raise _timed_out(key)
    return call.collect(key)


# {(loop, group, key, forget epoch): _Followers} while a follower of that
# loop waits.
_followers = {}


class _Followers:
    """The followers of one key on one loop.  One of their calls, the
    holder, has its eventfd read by the loop; when it fires, every follower
    whose flight completed is woken, and a follower still waiting becomes
    the holder.  The holder's reader goes before its call can be released
    (which closes the fd).

    They normally wait for one flight.  After a forget in another process
    (one in this process starts a new _Followers), a later caller may join
    a newer flight than the holder's: if the newer one completes first, its
    follower wakes only when the holder's flight completes or the holder
    leaves.  Nobody is ever woken with a result that is not its own: done()
    and collect() ask each caller's own call."""

    __slots__ = ("index", "waiting", "holder", "fd")

    def __init__(self, index):
        self.index = index
        self.waiting = {}  # {future: call}, in arrival order
        self.holder = None
        self.fd = None

    def add(self, fut, call):
        self.waiting[fut] = call
        if self.holder is None:
            try:
                self._hold(call)
            except BaseException:
                del self.waiting[fut]
                self._settle()
                call.give_up()
                raise

    def leave(self, fut, call):
        """That caller gives up: its call is cancelled and released."""
        if self.waiting.pop(fut, None) is not None and call is self.holder:
            self._unhold()
        call.give_up()
        self._settle()

    def _hold(self, call):
        fd = call.fd()
        self.index[0].add_reader(fd, self._ready)
        self.holder, self.fd = call, fd

    def _unhold(self):
        self.index[0].remove_reader(self.fd)
        self.holder = self.fd = None

    def _ready(self):
        self._unhold()
        for fut, call in list(self.waiting.items()):
            if call.done():
                del self.waiting[fut]
                _set(fut)
        self._settle()

    def _settle(self):
        """A new holder if anyone still waits without one; else gone."""
        while self.waiting and self.holder is None:
            fut, call = next(iter(self.waiting.items()))
            try:
                self._hold(call)
            except BaseException as exc:  # noqa: B902 - no descriptor left: that caller raises
                del self.waiting[fut]
                if not fut.done():
                    fut.set_exception(exc)
        if not self.waiting and _followers.get(self.index) is self:
            del _followers[self.index]


async def _lead(loop, h, key, call, coro_fn, timeout):
    task = loop.create_task(_work(call, coro_fn, (h, _key_bytes(key))))
    call.on_abandon(loop, weakref.ref(task))
    done = loop.create_future()
    task.add_done_callback(lambda _t: _set(done))
    try:
        out = await _wait(done, timeout)
    except BaseException:
        call.give_up()  # the work goes on while anyone else waits for it
        raise
    if out is _TIMEOUT:
        call.give_up()
        raise _timed_out(key)
    if task.cancelled():  # by someone else than abandonment: its loop, say
        raise _native_leader_exited(key)
    ok, value = task.result()
    if ok:
        return value
    try:
        raise value
    finally:
        del value  # else traceback -> this frame -> the exception: a cycle


def _native_leader_exited(key):
    from . import LeaderExitedError

    return LeaderExitedError("singleflight: the leader's coroutine for key %r was cancelled" % (key,))


async def _work(call, coro_fn, token):
    """The work's task: awaits coro_fn() and finishes the flight, whoever
    still waits.  Returns (True, (bytes, shared)) or (False, exception)
    for the leader's caller, never raising what the work raised (nobody may
    be left to retrieve it)."""
    _led.set(_led.get() | {token})
    try:
        value = await coro_fn()
    except (_CancelledError, GeneratorExit):
        # Abandoned (every caller gave up), or cancelled by someone else, or
        # destroyed unfinished: the callers still waiting, in any process,
        # raise LeaderExitedError.
        call.cancelled()
        raise
    except BaseException as exc:  # noqa: B902 - every caller must see it
        call.fail(exc)
        if isinstance(exc, (KeyboardInterrupt, SystemExit)):
            raise  # the loop's business too
        return False, exc
    try:
        return True, call.finish(value)
    except Exception as exc:  # noqa: BLE001 - not bytes: raised in the leader's caller
        return False, exc
