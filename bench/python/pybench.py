#!/usr/bin/env python3
"""One cell of the benchmark matrix for the Python (SWIG) binding.

Same workload and the same JSON line as bench/sfbench.cpp and bench/go; run by
bench/run.py when the binding builds.  Python threads share one interpreter
lock, so the thread counts measure the binding under the GIL: that is the
configuration Python users have.
"""
import argparse
import json
import resource
import sys
import threading
import time

import libsingleflight

now = time.monotonic_ns


def make_keys(n, prefix, keylen):
    keys = []
    for i in range(n):
        k = "%s%04d" % (prefix, i)
        if keylen:
            k = k[-keylen:] if len(k) > keylen else k + "x" * (keylen - len(k))
        keys.append(k)
    return keys


def pct(xs, p):
    if not xs:
        return -1
    xs = sorted(xs)
    return float(xs[int(p * (len(xs) - 1))])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--keys", default="1")
    ap.add_argument("--fn", default="trivial", choices=["trivial", "spin", "sleep"])
    ap.add_argument("--duration-ms", type=int, default=200)
    ap.add_argument("--warmup-ms", type=int, default=50)
    ap.add_argument("--keylen", type=int, default=0)
    a = ap.parse_args()

    g = libsingleflight.Group()
    threads = a.threads
    unique = a.keys == "unique"
    shared_keys = None if unique else make_keys(int(a.keys), "key:", a.keylen)
    timed = a.fn != "trivial"
    phase = [0]  # 0 warmup, 2 measure, 3 stop; a list so workers see writes
    ready = threading.Barrier(threads + 1)
    go = threading.Event()
    results = [None] * threads

    def worker(t):
        ks = make_keys(4096, "u:%d:" % t, a.keylen) if unique else shared_keys
        n = len(ks)
        idx = t * n // threads
        execs = [0]
        wake = []

        if a.fn == "trivial":
            def fn():
                execs[0] += 1
                return 1
        elif a.fn == "spin":
            def fn():
                execs[0] += 1
                t0 = now()
                t = now()
                while t - t0 < 1000:
                    t = now()
                return t
        else:
            def fn():
                execs[0] += 1
                time.sleep(0.001)
                return now()

        def one(record):
            nonlocal idx
            k = ks[idx]
            idx += 1
            if idx == n:
                idx = 0
            e0 = execs[0]
            v, _ = g.do(k, fn)
            if record and timed and execs[0] == e0:
                wake.append(now() - v)

        while phase[0] == 0:
            one(False)
        ready.wait()
        go.wait()
        e0, ops = execs[0], 0
        while phase[0] == 2:
            one(True)
            ops += 1
        results[t] = (ops, execs[0] - e0, wake)

    ths = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for th in ths:
        th.start()
    time.sleep(a.warmup_ms / 1000)
    phase[0] = 1
    ready.wait()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = now()
    phase[0] = 2
    go.set()
    time.sleep(a.duration_ms / 1000)
    phase[0] = 3
    for th in ths:
        th.join()
    wall = now() - t0
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = ((ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)) * 1e9
    ops = sum(r[0] for r in results)
    execs = sum(r[1] for r in results)
    wake = [w for r in results for w in r[2]]
    print(json.dumps({
        "kind": "cell", "contender": "python", "threads": threads, "keys": a.keys, "fn": a.fn,
        "keylen": a.keylen, "ops": ops, "wall_ns": wall,
        "ns_per_op": wall / ops if ops else 0, "cpu_ns_per_op": cpu / ops if ops else 0, "execs_per_call": execs / ops if ops else 0,
        "allocs_per_call": None, "wake_n": len(wake),
        "wake_p50_ns": pct(wake, 0.5), "wake_p99_ns": pct(wake, 0.99),
    }))


if __name__ == "__main__":
    sys.exit(main())
