#!/usr/bin/env python3
"""The cost of one uncontended Group.do (the target: <= 1 us), side
by side with what a Python programmer would write instead.

Contenders, run interleaved (one repeat of each in turn, --repeats times)
so every ratio compares runs made moments apart on the same machine:

  libsingleflight  Group.do(key, fn)
  idiom            a lock + dict + threading.Event singleflight in pure
                   Python (Go's algorithm, written the obvious way)
  bare             fn() itself, called through a two-argument function

for one key (every call leads a fresh flight) and for 1024 rotating keys,
in wall time and in the thread's CPU time.  Prints a table of medians and a
JSON line.

  PYTHONPATH=<build>/bindings/swig/python python3 bench/python/uncontended.py
"""
import argparse
import json
import statistics
import sys
import threading
import time

import libsingleflight


class _Call:
    __slots__ = ("done", "value", "exc", "dups")


class IdiomGroup:
    """The pure-Python singleflight: one lock, a dict of calls in flight,
    an Event per call for the followers."""

    def __init__(self):
        self._lock = threading.Lock()
        self._calls = {}

    def do(self, key, fn):
        lock = self._lock
        lock.acquire()
        c = self._calls.get(key)
        if c is not None:
            c.dups += 1
            lock.release()
            c.done.wait()
            if c.exc is not None:
                raise c.exc
            return c.value, True
        c = _Call()
        c.done = threading.Event()
        c.dups = 0
        c.value = c.exc = None
        self._calls[key] = c
        lock.release()
        try:
            c.value = fn()
        except BaseException as exc:  # noqa: B902 - every caller sees it
            c.exc = exc
        lock.acquire()
        del self._calls[key]
        lock.release()
        c.done.set()
        if c.exc is not None:
            raise c.exc
        return c.value, c.dups > 0


def fn():
    return 1


def bare(key, f):
    return f()


def time_calls(do, keys, n):
    """(wall, CPU) ns per call of do(key, fn) over n calls cycling through
    keys.  The calls never block, so CPU time is their cost too, and unlike
    wall time it leaves out the other processes of a shared machine."""
    nk = len(keys)
    t0, c0 = time.perf_counter_ns(), time.thread_time_ns()
    for i in range(n):
        do(keys[i % nk], fn)
    return (time.perf_counter_ns() - t0) / n, (time.thread_time_ns() - c0) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=50000, help="calls per repeat")
    ap.add_argument("--repeats", type=int, default=9)
    a = ap.parse_args()

    contenders = {
        "libsingleflight": libsingleflight.Group().do,
        "idiom": IdiomGroup().do,
        "bare": bare,
    }
    # The loop overhead (i % nk, the indexing) is in every figure alike.
    keysets = {"1 key": ["key:0000"], "1024 keys": ["key:%04d" % i for i in range(1024)]}
    rows = {}
    for kname, keys in keysets.items():
        for do in contenders.values():  # warm-up
            time_calls(do, keys, a.calls // 10)
        samples = {name: [] for name in contenders}
        for _ in range(a.repeats):
            for name, do in contenders.items():
                samples[name].append(time_calls(do, keys, a.calls))
        for i, clock in enumerate(("wall", "cpu")):
            rows["%s, %s" % (kname, clock)] = {name: statistics.median(x[i] for x in v)
                                              for name, v in samples.items()}

    print("Uncontended calls, Python %s, libsingleflight %s; medians of %d interleaved repeats of %d calls"
          % (sys.version.split()[0], libsingleflight.version(), a.repeats, a.calls))
    print("%-16s %16s %10s %8s %22s" % ("keys, clock", "libsingleflight", "idiom", "bare", "idiom / libsingleflight"))
    for kname, r in rows.items():
        print("%-16s %13.0f ns %7.0f ns %5.0f ns %21.1fx"
              % (kname, r["libsingleflight"], r["idiom"], r["bare"], r["idiom"] / r["libsingleflight"]))
    print(json.dumps({"kind": "python-uncontended", "calls": a.calls, "repeats": a.repeats,
                      "ns_per_call": rows}))


if __name__ == "__main__":
    sys.exit(main())
