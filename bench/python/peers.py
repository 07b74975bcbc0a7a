#!/usr/bin/env python3
"""Group.do_async against the asyncio singleflights on PyPI and the two
idioms, on asyncio's loop and on uvloop's, in one process.

Contenders (versions pinned in bench/python/requirements-peers.txt):

  libsingleflight  Group.do_async(key, fn)
  oneflight        oneflight.AsyncOneFlight().do(key, fn)
  coalescer        coalescer.Coalescer().do(key, fn)
  cacheflight      cacheflight.CacheFlight().run(key, fn)
  aiocoalesce      aiocoalesce.Coalescer().run(key, fn())
  singleflight     singleflight.asynchronous.SingleFlightAsync().call(fn, key)
  futures          a dict of futures: the first caller runs the work inline,
                   the others await its future (asyncbench.py's FutureDict)
  tasks            a dict of tasks: the work runs as a task, every caller
                   awaits asyncio.shield(task) (asyncbench.py's TaskDict)

Measured, CPU time of the thread per call, medians of --repeats rounds, the
contenders interleaved round by round (the collector runs between rounds):

  uncontended   one task at a time, the same key, a trivial coroutine
  suspend-once  the same, the coroutine awaits asyncio.sleep(0) once
  herd          --herd tasks on one key at once (asyncio.gather), the work
                awaits asyncio.sleep(0) once: every other caller joins it

and, per contender, three cancellation checks (each a handshake, no timing):

  starter       the first caller is cancelled while two others wait: do they
                still get the work's value?
  all-gone      every caller is cancelled: is the work cancelled?
  one-alone     one follower is cancelled: does it alone raise
                CancelledError, and do the others get the value?

  PYTHONPATH=build/default/bindings/swig/python build/venv/bin/python bench/python/peers.py
"""
import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
from importlib import metadata

import libsingleflight

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from asyncbench import FutureDict, TaskDict  # noqa: E402

cpu = time.thread_time_ns
PINNED = ("oneflight", "coalescer", "cacheflight", "aiocoalesce", "singleflight", "uvloop")


def contenders():
    """name -> (factory of a fresh instance's call(key, fn) -> value, version)."""
    out = {}

    def sf():
        g = libsingleflight.Group()

        async def call(key, fn):
            return (await g.do_async(key, fn))[0]

        return call

    out["libsingleflight"] = (sf, libsingleflight.version())
    missing = []
    try:
        import oneflight

        def one():
            o = oneflight.AsyncOneFlight()

            async def call(key, fn):
                return (await o.do(key, fn))[0]

            return call

        out["oneflight"] = (one, metadata.version("oneflight"))
    except ImportError:
        missing.append("oneflight")
    try:
        import coalescer

        out["coalescer"] = (lambda: coalescer.Coalescer().do, metadata.version("coalescer"))
    except ImportError:
        missing.append("coalescer")
    try:
        import cacheflight

        out["cacheflight"] = (lambda: cacheflight.CacheFlight().run, metadata.version("cacheflight"))
    except ImportError:
        missing.append("cacheflight")
    try:
        import aiocoalesce

        def aioc():
            c = aiocoalesce.Coalescer()

            def call(key, fn):  # takes the awaitable itself; closes it when joining
                return c.run(key, fn())

            return call

        out["aiocoalesce"] = (aioc, metadata.version("aiocoalesce"))
    except ImportError:
        missing.append("aiocoalesce")
    try:
        from singleflight.asynchronous import SingleFlightAsync

        def sfa():
            s = SingleFlightAsync()

            def call(key, fn):
                return s.call(fn, key)

            return call

        out["singleflight"] = (sfa, metadata.version("singleflight"))
    except ImportError:
        missing.append("singleflight")

    def futures():
        d = FutureDict()

        async def call(key, fn):
            return (await d.do(key, fn))[0]

        return call

    def tasks():
        d = TaskDict()

        async def call(key, fn):
            return (await d.do(key, fn))[0]

        return call

    out["futures"] = (futures, "idiom")
    out["tasks"] = (tasks, "idiom")
    if missing:
        print("not installed (pip install -r bench/python/requirements-peers.txt): " + ", ".join(missing),
              file=sys.stderr)
    return out


def loop_factories():
    out = {"asyncio": asyncio.new_event_loop}
    try:
        import uvloop

        out["uvloop"] = uvloop.new_event_loop
    except ImportError:
        print("uvloop not installed: asyncio only", file=sys.stderr)
    return out


# ---- speed --------------------------------------------------------------------


async def trivial():
    return 1


async def suspend_once():
    await asyncio.sleep(0)
    return 1


async def sequential(call, fn, n):
    gc.collect()
    gc.disable()
    try:
        t0 = cpu()
        for _ in range(n):
            await call("k", fn)
        return (cpu() - t0) / n
    finally:
        gc.enable()


async def herd(call, n):
    runs = [0]

    async def work():
        runs[0] += 1
        await asyncio.sleep(0)
        return 1

    gc.collect()
    gc.disable()
    try:
        t0 = cpu()
        results = await asyncio.gather(*[call("k", work) for _ in range(n)])
        dt = (cpu() - t0) / n
    finally:
        gc.enable()
    assert results == [1] * n, "a herd round lost results"
    return dt, runs[0]


async def speed(cs, a):
    rows = {name: {"uncontended": [], "suspend-once": [], "herd": [], "herd_executions": []} for name in cs}
    calls = {name: make() for name, (make, _) in cs.items()}
    for call in calls.values():  # warm-up
        await sequential(call, trivial, a.calls // 10)
        await herd(call, a.herd // 10)
    for _ in range(a.repeats):
        for name, call in calls.items():
            r = rows[name]
            r["uncontended"].append(await sequential(call, trivial, a.calls))
            r["suspend-once"].append(await sequential(call, suspend_once, a.calls // 4))
            dt, runs = await herd(call, a.herd)
            r["herd"].append(dt)
            r["herd_executions"].append(runs)
    return {name: {"uncontended_ns": statistics.median(r["uncontended"]),
                   "suspend_once_ns": statistics.median(r["suspend-once"]),
                   "herd_ns": statistics.median(r["herd"]),
                   "herd_executions": max(r["herd_executions"])}
            for name, r in rows.items()}


# ---- cancellation ---------------------------------------------------------------


class Work:
    """A coroutine function that signals its start and returns its value
    when released; notes whether it was cancelled."""

    def __init__(self):
        self.value = object()
        self.runs = 0
        self.cancelled = False
        self.started = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self):
        self.runs += 1
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        return self.value


async def settle():
    """Lets every ready task run a few steps (they join a flight in their
    first step: no timing involved)."""
    for _ in range(5):
        await asyncio.sleep(0)


def describe(results, value):
    out = []
    for r in results:
        if r is value:
            out.append("value")
        elif isinstance(r, asyncio.CancelledError):
            out.append("CancelledError")
        elif isinstance(r, BaseException):
            out.append(type(r).__name__)
        else:
            out.append(repr(r))
    return ", ".join(sorted(set(out)))


async def check_starter(call):
    w = Work()
    starter = asyncio.ensure_future(call("k", w))
    await w.started.wait()
    others = [asyncio.ensure_future(call("k", w)) for _ in range(2)]
    await settle()
    starter.cancel()
    await asyncio.gather(starter, return_exceptions=True)
    await settle()
    w.release.set()
    results = await asyncio.gather(*others, return_exceptions=True)
    ok = all(r is w.value for r in results) and w.runs == 1
    return ok, "the others got: %s (work ran %d time(s))" % (describe(results, w.value), w.runs)


async def check_all_gone(call):
    w = Work()
    tasks = [asyncio.ensure_future(call("k", w)) for _ in range(3)]
    await w.started.wait()
    await settle()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await settle()
    ok = w.cancelled
    note = "the work was cancelled" if ok else "the work goes on with nobody waiting"
    w.release.set()  # lets a work that goes on end
    await settle()
    return ok, note


async def check_one_alone(call):
    w = Work()
    starter = asyncio.ensure_future(call("k", w))
    await w.started.wait()
    a, b = asyncio.ensure_future(call("k", w)), asyncio.ensure_future(call("k", w))
    await settle()
    a.cancel()
    ra = (await asyncio.gather(a, return_exceptions=True))[0]
    await settle()
    work_cancelled = w.cancelled
    w.release.set()
    rs, rb = await asyncio.gather(starter, b, return_exceptions=True)
    ok = isinstance(ra, asyncio.CancelledError) and rs is w.value and rb is w.value and not work_cancelled
    return ok, "the cancelled one: %s; the others: %s%s" % (
        describe([ra], w.value), describe([rs, rb], w.value), "; the work was cancelled" if work_cancelled else "")


CHECKS = {"starter": check_starter, "all-gone": check_all_gone, "one-alone": check_one_alone}


async def cancellation(cs):
    out = {}
    for name, (make, _) in cs.items():
        out[name] = {}
        for check, fn in CHECKS.items():
            try:
                ok, note = await asyncio.wait_for(fn(make()), 10)
            except Exception as exc:  # noqa: BLE001 - a peer failing a check is a finding
                ok, note = False, "the check failed: %s: %s" % (type(exc).__name__, exc)
            out[name][check] = {"ok": ok, "note": note}
    return out


def run_on(factory, coro):
    loop = factory()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=20000, help="calls per uncontended round")
    ap.add_argument("--herd", type=int, default=10000, help="tasks per herd round")
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--only", default="", help="comma-separated contenders")
    a = ap.parse_args()
    cs = contenders()
    if a.only:
        cs = {k: v for k, v in cs.items() if k in a.only.split(",")}
    versions = {name: v for name, (_, v) in cs.items()}
    for p in PINNED:
        try:
            versions.setdefault(p, metadata.version(p))
        except metadata.PackageNotFoundError:
            pass
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    out = {"kind": "python-peers", "python": sys.version.split()[0], "versions": versions, "loadavg_before": load,
           "repeats": a.repeats, "calls": a.calls, "herd": a.herd}
    print("Python %s; %s; load average %s" % (out["python"], ", ".join("%s %s" % kv for kv in versions.items()), load))
    for lname, factory in loop_factories().items():
        r = out[lname] = {}
        r["speed"] = s = run_on(factory, speed(cs, a))
        r["cancellation"] = c = run_on(factory, cancellation(cs))
        base = s["futures"]
        print("\n[%s] CPU ns per call, medians of %d interleaved rounds (ratio to the dict of futures)" % (lname, a.repeats))
        print("%-16s %18s %18s %18s %5s" % ("", "uncontended", "suspend-once", "herd of %d" % a.herd, "execs"))
        for name, v in s.items():
            print("%-16s %10.0f (%4.2fx) %10.0f (%4.2fx) %10.0f (%4.2fx) %5d" % (
                name, v["uncontended_ns"], v["uncontended_ns"] / base["uncontended_ns"],
                v["suspend_once_ns"], v["suspend_once_ns"] / base["suspend_once_ns"],
                v["herd_ns"], v["herd_ns"] / base["herd_ns"], v["herd_executions"]))
        print("[%s] cancellation (ok / WRONG)" % lname)
        for name, checks in c.items():
            print("%-16s %s" % (name, "; ".join("%s %s (%s)" % (k, "ok" if v["ok"] else "WRONG", v["note"])
                                                for k, v in checks.items())))
    with open("/proc/loadavg") as f:
        out["loadavg_after"] = " ".join(f.read().split()[:3])
    print(json.dumps(out))


if __name__ == "__main__":
    sys.exit(main())
