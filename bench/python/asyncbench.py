#!/usr/bin/env python3
"""Group.do_async measured, on asyncio's loop and on uvloop's:

stampede     10,000 tasks on one key: executions, whether all completed,
             threads before/after (threading.active_count, /proc/self/task)
overhead     CPU ns per call of rounds of --tasks concurrent tasks on one key,
             side by side with the asyncio idioms, interleaved round by
             round (medians):
               futures  a dict of futures: the first caller runs the work
                        inline, the others await its future
               tasks    a dict of tasks: the work runs as a task, every
                        caller awaits asyncio.shield(task) (so a caller that
                        is cancelled does not cancel the work for the others)
             Every round's work is one `await asyncio.sleep(0)`: it suspends
             once, so the followers of a round join its flight.  The garbage
             collector runs between rounds only.
cancel       latency from the last caller leaving (its task.cancel()) to
             the leader's coroutine seeing CancelledError, p50/p99: every
             caller in the leader's loop, and the last one in another loop
             on another thread; plus the part from the abandon callback on.

  PYTHONPATH=<build>/bindings/swig/python python3 bench/python/asyncbench.py
"""
import argparse
import asyncio
import gc
import json
import os
import statistics
import sys
import threading
import time

import libsingleflight
from libsingleflight import _singleflight_core as _native

now = time.perf_counter_ns
# A round is single-threaded and never sleeps: its CPU time is its cost, and
# unlike wall time it does not count the other processes of a shared machine.
cpu = time.thread_time_ns


def loop_factories():
    out = {"asyncio": asyncio.new_event_loop}
    try:
        import uvloop

        out["uvloop"] = uvloop.new_event_loop
    except ImportError:
        print("uvloop not installed: asyncio only", file=sys.stderr)
    return out


def run_on(factory, coro):
    loop = factory()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def threads():
    return threading.active_count(), len(os.listdir("/proc/self/task"))


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


# ---- stampede ---------------------------------------------------------------


async def stampede(n):
    g = libsingleflight.Group()
    runs = [0]
    release = asyncio.Event()
    value = object()

    async def work():
        runs[0] += 1
        await release.wait()
        return value

    # Threads of an earlier measurement are joined but may not have left
    # the kernel yet: start from a settled count.
    while threads()[1] != threading.active_count():
        await asyncio.sleep(0.001)
    before = threads()
    tasks = [asyncio.ensure_future(g.do_async("hot", work)) for _ in range(n)]
    while g.stats().calls < n or runs[0] == 0:
        await asyncio.sleep(0)
    during = threads()
    t0 = now()
    release.set()
    results = await asyncio.gather(*tasks)
    wall = now() - t0
    return {
        "tasks": n, "executions": runs[0],
        "completed": sum(1 for v, _ in results if v is value),
        "threads_before": before, "threads_waiting": during, "threads_after": threads(),
        "release_to_all_done_ms": wall / 1e6,
    }


# ---- overhead ---------------------------------------------------------------


async def work():
    await asyncio.sleep(0)
    return 1


class FutureDict:
    def __init__(self):
        self.m = {}

    async def do(self, key, coro_fn):
        fut = self.m.get(key)
        if fut is not None:
            return await fut, True
        fut = asyncio.get_running_loop().create_future()
        self.m[key] = fut
        try:
            value = await coro_fn()
        except BaseException as exc:  # noqa: B902
            del self.m[key]
            fut.set_exception(exc)
            raise
        del self.m[key]
        fut.set_result(value)
        return value, False


class TaskDict:
    def __init__(self):
        self.m = {}

    async def do(self, key, coro_fn):
        task = self.m.get(key)
        shared = task is not None
        if task is None:
            task = asyncio.ensure_future(coro_fn())
            self.m[key] = task
            task.add_done_callback(lambda t: self.m.pop(key, None))
        return await asyncio.shield(task), shared


async def one_round(do, n):
    # The collector runs between rounds, not inside one: a full collection
    # landing in one contender's round would decide the ratio.
    gc.collect()
    gc.disable()
    try:
        t0 = cpu()
        await asyncio.gather(*[do("k", work) for _ in range(n)])
        return (cpu() - t0) / n
    finally:
        gc.enable()


async def overhead(n, rounds):
    contenders = {
        "libsingleflight": libsingleflight.Group().do_async,
        "futures": FutureDict().do,
        "tasks": TaskDict().do,
    }
    samples = {k: [] for k in contenders}
    for do in contenders.values():  # warm-up
        for _ in range(3):
            await one_round(do, n)
    for _ in range(rounds):
        for k, do in contenders.items():
            samples[k].append(await one_round(do, n))
    return {k: statistics.median(v) for k, v in samples.items()}


# ---- cancellation -------------------------------------------------------------

_abandon_at = []


def _timed_cancel_task(task_ref):
    _abandon_at.append(now())
    libsingleflight._cancel_task(task_ref)


def timestamp_abandonment():
    """Re-registers the package's callbacks with a _cancel_task that notes
    when the abandon callback runs."""
    _native._init(libsingleflight.PanicError, libsingleflight.LeaderExitedError,
                  libsingleflight._describe, _timed_cancel_task)


def untimestamp_abandonment():
    _native._init(libsingleflight.PanicError, libsingleflight.LeaderExitedError,
                  libsingleflight._describe, libsingleflight._cancel_task)


class Blocked:
    """Work that waits forever and notes when it is cancelled."""

    def __init__(self):
        self.started = threading.Event()
        self.cancelled_at = None
        self.cancelled = threading.Event()

    async def __call__(self):
        self.started.set()
        try:
            await asyncio.get_running_loop().create_future()
        except asyncio.CancelledError:
            self.cancelled_at = now()
            self.cancelled.set()
            raise


async def cancel_same_loop(trials, callers):
    g = libsingleflight.Group()
    e2e, from_cb = [], []
    for _ in range(trials):
        w = Blocked()
        tasks = [asyncio.ensure_future(g.do_async("k", w)) for _ in range(callers)]
        while g.stats().calls % callers or not w.started.is_set():
            await asyncio.sleep(0)
        for t in tasks[:-1]:
            t.cancel()
        await asyncio.gather(*tasks[:-1], return_exceptions=True)
        del _abandon_at[:]
        t0 = now()
        tasks[-1].cancel()
        await asyncio.gather(tasks[-1], return_exceptions=True)
        while not w.cancelled.is_set():
            await asyncio.sleep(0)
        e2e.append(w.cancelled_at - t0)
        from_cb.append(w.cancelled_at - _abandon_at[0])
    return e2e, from_cb


def cancel_cross_thread(factory, trials):
    """The leader's caller in loop A leaves first; the last caller, in loop
    B on another thread, leaves; A's coroutine is cancelled."""
    g = libsingleflight.Group()
    a_loop, b_loop = factory(), factory()
    ta = threading.Thread(target=a_loop.run_forever)
    tb = threading.Thread(target=b_loop.run_forever)
    ta.start()
    tb.start()
    e2e, from_cb = [], []
    try:
        for i in range(trials):
            w = Blocked()
            fa = asyncio.run_coroutine_threadsafe(g.do_async("k", w), a_loop)
            assert w.started.wait(10)
            fb = asyncio.run_coroutine_threadsafe(g.do_async("k", w), b_loop)
            while g.stats().calls < 2 * (i + 1):
                time.sleep(0)
            fa.cancel()
            while g.stats().cancels < 2 * i + 1:
                time.sleep(0)
            del _abandon_at[:]
            t0 = now()
            fb.cancel()  # cancels the task in loop B through its loop
            assert w.cancelled.wait(10)
            e2e.append(w.cancelled_at - t0)
            from_cb.append(w.cancelled_at - _abandon_at[0])
    finally:
        for lp, th in ((a_loop, ta), (b_loop, tb)):
            lp.call_soon_threadsafe(lp.stop)
            th.join()
            lp.close()
    return e2e, from_cb


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stampede", type=int, default=10000)
    ap.add_argument("--tasks", type=int, default=1000, help="tasks per overhead round")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--cancel-trials", type=int, default=1000)
    a = ap.parse_args()
    out = {"kind": "python-async", "python": sys.version.split()[0]}
    for name, factory in loop_factories().items():
        r = out[name] = {}
        r["stampede"] = s = run_on(factory, stampede(a.stampede))
        print("[%s] stampede: %d tasks on one key, %d execution(s), %d completed, threads "
              "(threading, /proc/self/task) before %s, while waiting %s, after %s; release to all done %.1f ms"
              % (name, s["tasks"], s["executions"], s["completed"], s["threads_before"],
                 s["threads_waiting"], s["threads_after"], s["release_to_all_done_ms"]))
        r["overhead_ns_per_call"] = o = run_on(factory, overhead(a.tasks, a.rounds))
        print("[%s] overhead, %d tasks per round, medians of %d interleaved rounds, CPU time: libsingleflight %.0f ns/call,"
              " dict of futures %.0f (ratio %.2fx), dict of tasks + shield %.0f (ratio %.2fx)"
              % (name, a.tasks, a.rounds, o["libsingleflight"], o["futures"], o["libsingleflight"] / o["futures"],
                 o["tasks"], o["libsingleflight"] / o["tasks"]))
        timestamp_abandonment()
        try:
            for callers in (1, 4):
                e2e, cb = run_on(factory, cancel_same_loop(a.cancel_trials, callers))
                r["cancel_same_loop_%d_callers" % callers] = c = {
                    "p50_us": pct(e2e, 0.5) / 1e3, "p99_us": pct(e2e, 0.99) / 1e3,
                    "from_abandon_callback_p50_us": pct(cb, 0.5) / 1e3,
                    "from_abandon_callback_p99_us": pct(cb, 0.99) / 1e3}
                print("[%s] cancel, %d caller(s) in the leader's loop, %d trials: last caller's cancel() to the"
                      " work's CancelledError p50 %.1f us p99 %.1f us (from the abandon callback: p50 %.1f us p99 %.1f us)"
                      % (name, callers, a.cancel_trials, c["p50_us"], c["p99_us"],
                         c["from_abandon_callback_p50_us"], c["from_abandon_callback_p99_us"]))
            trials = max(1, a.cancel_trials // 4)
            e2e, cb = cancel_cross_thread(factory, trials)
            r["cancel_cross_thread"] = c = {
                "p50_us": pct(e2e, 0.5) / 1e3, "p99_us": pct(e2e, 0.99) / 1e3,
                "from_abandon_callback_p50_us": pct(cb, 0.5) / 1e3,
                "from_abandon_callback_p99_us": pct(cb, 0.99) / 1e3}
            print("[%s] cancel, last caller in another loop on another thread, %d trials: its future's cancel() to the"
                  " work's CancelledError p50 %.1f us p99 %.1f us (from the abandon callback: p50 %.1f us p99 %.1f us)"
                  % (name, trials, c["p50_us"], c["p99_us"], c["from_abandon_callback_p50_us"],
                     c["from_abandon_callback_p99_us"]))
        finally:
            untimestamp_abandonment()
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
