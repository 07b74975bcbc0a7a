"""What runs in the other processes of test_shared.py: multiprocessing
children (forked, or spawned, which import this module by name) and the
gunicorn workers of shared_wsgi_app.py.  Not a test module itself.

Every wait is for a condition (a group counter, a file), bounded by
DEADLINE, which only a broken build reaches: a child that times out
reports it instead of hanging the test.
"""

import asyncio
import os
import threading
import time

import libsingleflight
from test_singleflight import DEADLINE, wait_until  # noqa: F401 - the workers' too


async def wait_until_async(pred, what):
    """wait_until for a coroutine: the loop goes on between checks."""
    end = time.monotonic() + DEADLINE
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("timed out waiting for " + what)
        await asyncio.sleep(0.001)


def count_execution(path):
    """One line per execution of fn, from any process (O_APPEND writes of
    one line are atomic)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"%d\n" % os.getpid())
    finally:
        os.close(fd)


def executions(path):
    try:
        with open(path, "rb") as f:
            return [int(line) for line in f.read().split()]
    except FileNotFoundError:
        return []


def open_group(group):
    """A forked child gets its parent's SharedGroup; a spawned one its name."""
    return group if isinstance(group, libsingleflight.SharedGroup) else libsingleflight.SharedGroup(group)


def report(results, fn):
    """Puts ("ok", pid, fn()) or ("raised", pid, type name, text) on the
    results queue, so failures in a child reach the test."""
    try:
        results.put(("ok", os.getpid(), fn()))
    except BaseException as exc:  # noqa: B902 - reported to the test
        results.put(("raised", os.getpid(), type(exc).__name__, str(exc)))


def stampede_do(group, key, counter, callers, barrier, results):
    """One of `callers` processes calling do(key) at once.  The leader's fn
    counts itself and returns only once every other caller has joined, so
    nobody can arrive after the flight and lead a second one."""
    g = open_group(group)

    def fn():
        count_execution(counter)
        wait_until(lambda: g.stats().followers >= callers - 1, "%d followers" % (callers - 1))
        return b"value from leader %d" % os.getpid()

    barrier.wait(DEADLINE)
    report(results, lambda: g.do(key, fn))


def stampede_do_async(group, key, counter, callers, alive_dir, loop_kind, barrier, results):
    """One of `callers` processes awaiting do_async(key) at once.  While its
    call waits, another task of the same loop marks this process alive in
    alive_dir once every caller has joined; the leader's work returns only
    when every process has: a do_async that blocked its loop's thread would
    never let that task run, and the test would time out."""
    g = open_group(group)

    async def work():
        count_execution(counter)
        await wait_until_async(lambda: len(os.listdir(alive_dir)) >= callers, "%d loops alive" % callers)
        return b"async value from leader %d" % os.getpid()

    async def main():
        call = asyncio.ensure_future(g.do_async(key, work))
        await wait_until_async(lambda: g.stats().followers >= callers - 1, "every caller joined")
        assert not call.done()
        open(os.path.join(alive_dir, str(os.getpid())), "wb").close()
        return await call

    def run():
        if loop_kind == "uvloop":
            import uvloop

            loop = uvloop.new_event_loop()
        else:
            loop = asyncio.new_event_loop()
        try:
            return loop.run_until_complete(main())
        finally:
            loop.close()

    barrier.wait(DEADLINE)
    report(results, run)


def hang_in_fn(group, key, in_fn):
    """A leader whose fn never returns: the test SIGKILLs this process."""
    g = open_group(group)

    def fn():
        in_fn.set()
        threading.Event().wait(10 * DEADLINE)  # the test kills us long before
        return b"never"

    g.do(key, fn)


def follow_one(group, key, results):
    """A follower in another process: reports what do(key) gave it (its fn
    would only run if this process led, which the test rules out)."""
    g = open_group(group)
    report(results, lambda: g.do(key, lambda: b"this process led"))
