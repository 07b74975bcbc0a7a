#!/usr/bin/env python3
"""Why Group.do is written by hand: an uncontended call through
each way SWIG can make it, side by side with the hand-written one.

Builds, in a temporary directory, the SWIG module of this checkout three
more times (default proxies, -fastproxy, -builtin), each with a prototype
Flight.finish_unshared() added to a copy of sfswig.hpp, and times:

  old flow    SWIG proxies, Group.do as it was: begin_on_thread, is_leader,
              set_object, finish, wait, get_object, shared, release
  3 calls     begin_on_thread, is_leader, finish_unshared (the fewest
              SWIG calls a two-phase leader needs: the Flight is a proxy
              object, so the role is a call of its own), per SWIG flavour
  by hand     libsingleflight.Group.do from the build (sfpy.hpp: one call)

Only the uncontended leader path is timed.  SWIG modules made from one
interface share a type table and cannot be loaded side by side, so every
sample is a process of its own, the processes interleaved repeat by repeat.

  python3 bench/python/swig_alternatives.py --build-dir build/default
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SWIG_DIR = os.path.join(ROOT, "bindings", "swig")
FLAVOURS = {"default": [], "fastproxy": ["-fastproxy"], "builtin": ["-builtin"]}
PROTOTYPE = """    // Prototype (bench/python/swig_alternatives.py): finishes and releases
    // in one step when nobody joined.
    int finish_unshared() {
        unmark_led();
        int rc = sf_call_finish_unshared(call_, 0);
        if (rc == 0) call_ = nullptr;
        return rc;
    }

"""
ANCHOR = "    // Leader only: completes the flight as panicked;"
VARIANTS = ["default:old", "default:three", "fastproxy:three", "builtin:three", "byhand"]
LABELS = {
    "default:old": "SWIG proxies, the old flow (8 wrapper calls)",
    "default:three": "SWIG proxies, 3 calls",
    "fastproxy:three": "SWIG -fastproxy, 3 calls",
    "builtin:three": "SWIG -builtin, 3 calls",
    "byhand": "by hand (sfpy.hpp), 1 call",
}
N = 50000


def build(tmp, bdir):
    src = os.path.join(tmp, "src")
    os.makedirs(os.path.join(src, "python"))
    for f in ("singleflight.i", "sfswig.hpp"):
        shutil.copy(os.path.join(SWIG_DIR, f), src)
    for f in ("singleflight_core.i", "sfpy.hpp", "sfpy_shared.hpp"):
        shutil.copy(os.path.join(SWIG_DIR, "python", f), os.path.join(src, "python"))
    hpp = os.path.join(src, "sfswig.hpp")
    with open(hpp) as f:
        text = f.read()
    if ANCHOR not in text:
        sys.exit("sfswig.hpp changed: update PROTOTYPE's anchor")
    with open(hpp, "w") as f:
        f.write(text.replace(ANCHOR, PROTOTYPE + ANCHOR, 1))
    swig = shutil.which("swig") or shutil.which("swig4.0")
    inc = sysconfig.get_paths()["include"]
    ext = sysconfig.get_config_var("EXT_SUFFIX")
    capi = os.path.join(ROOT, "capi", "include")
    for name, flags in FLAVOURS.items():
        pkg = os.path.join(tmp, "sf_" + name)
        os.makedirs(pkg)
        open(os.path.join(pkg, "__init__.py"), "w").close()
        wrap = os.path.join(tmp, name + ".cxx")
        subprocess.check_call([swig, "-c++", "-python", "-threads"] + flags +
                              ["-I" + src, "-I" + capi, "-outdir", pkg, "-o", wrap,
                               os.path.join(src, "python", "singleflight_core.i")])
        subprocess.check_call(["c++", "-O2", "-fPIC", "-shared", "-std=c++17", "-fvisibility=hidden", "-w",
                               "-I" + src, "-I" + os.path.join(src, "python"), "-I" + capi, "-I" + inc,
                               wrap, "-o", os.path.join(pkg, "_singleflight_core" + ext),
                               "-L" + bdir, "-lsingleflight", "-Wl,-rpath," + bdir])


def fn():
    return 1


def old_flow(g):
    def do(key, fn):
        flight = g.begin_on_thread(key)
        try:
            if flight.is_leader():
                flight.set_object(fn())
                flight.finish(0)
                flight.wait(0)
            return flight.get_object(), flight.shared()
        finally:
            flight.release()
    return do


def three_calls(g):
    def do(key, fn):
        flight = g.begin_on_thread(key)
        if flight.is_leader():
            value = fn()
            if flight.finish_unshared() == 0:
                return value, False
        raise NotImplementedError("only the uncontended leader is timed")
    return do


def child(variant, tmp, pydir):
    if variant == "byhand":
        sys.path.insert(0, pydir)
        import libsingleflight
        do = libsingleflight.Group().do
    else:
        sys.path.insert(0, tmp)
        flavour, flow = variant.split(":")
        mod = __import__("sf_%s.singleflight_core" % flavour, fromlist=["Group"])
        do = (old_flow if flow == "old" else three_calls)(mod.Group())

    def run():
        t0 = time.perf_counter_ns()
        for _ in range(N):
            do("key", fn)
        return (time.perf_counter_ns() - t0) / N

    run()  # warm-up
    print(json.dumps([run() for _ in range(3)]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--build-dir", required=True, help="a CMake build with -DSF_BUILD_PYTHON=ON")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(*a.child)
    bdir = os.path.abspath(a.build_dir)
    pydir = os.path.join(bdir, "bindings", "swig", "python")
    with tempfile.TemporaryDirectory(prefix="sf-swig-alternatives-") as tmp:
        build(tmp, bdir)
        samples = {v: [] for v in VARIANTS}
        for _ in range(a.repeats):
            for v in VARIANTS:
                out = subprocess.check_output([sys.executable, __file__, "--build-dir", bdir,
                                               "--child", v, tmp, pydir], text=True)
                samples[v] += json.loads(out)
    print("Uncontended Group.do, ns per call, medians of %d samples (%d interleaved processes x 3)"
          % (3 * a.repeats, a.repeats))
    for v in VARIANTS:
        print("  %-46s %6.0f ns" % (LABELS[v], statistics.median(samples[v])))
    print(json.dumps({"kind": "python-swig-alternatives",
                      "ns_per_call": {v: statistics.median(s) for v, s in samples.items()}}))


if __name__ == "__main__":
    sys.exit(main())
