#!/usr/bin/env python3
# Writes the structured seed inputs of fuzz/corpus/ (one per API area), so the
# corpus can be rebuilt and extended when fuzz_capi.cpp's input layout
# changes.  The byte layout is the one run_op and the op_* functions read.
#   python3 fuzz/make_seeds.py fuzz/corpus
import os, sys
out = sys.argv[1]
# Each helper emits exactly the bytes the harness reads for that operation.
def key(k): return [k]                 # <200: one of "", "a", "b", "key", "\0\0"
def longkey(n):                        # 200, then a length, then the bytes
    if n < 255:
        return [200, n] + [0x41] * n
    extra = (n - 255) // 4             # 255 means 255 + 4 * next byte
    return [200, 255, extra] + [0x42] * (255 + 4 * extra)
def fn(how, err, msg=None, nested=None):
    b = ([] if nested is None else [nested]) + [how, err]
    if ((how >> 1) & 7) in (0, 1): b += [len(msg or b"")] + list(msg or b"")
    return b
def do(g, k, flags, body, slot=0):     # body: fn(...) bytes; slot kept unless flags & 1
    return [0 | (g << 7)] + k + [flags] + body + ([] if flags & 1 else [slot])
def async_(g, k, body=()): return [2 | (g << 7)] + k + list(body)
def begin(g, k, slot): return [3 | (g << 7)] + k + [slot]
def set_value(slot): return [5, 0, slot]
def finish(slot, err): return [5, 1, slot, 128 + err]
def panic(slot, msg): return [5, 2, slot, len(msg)] + list(msg) + ([0] if not msg else [])
def wait_pending(slot, poll=True): return [5, 3, slot, 1 if poll else 0]
def wait_done(slot, keep): return [5, 3, slot, 0, keep]
def on_done(slot): return [5, 4, slot, 0]
def fd(slot): return [5, 5, slot]
def release(slot): return [5, 6, slot]
def role(slot): return [5, 7, slot]
def forget(g, k, unshared): return [7 | (g << 7)] + k + [unshared]
def run_task(g, body=()): return [8 | (g << 7)] + list(body)
def res(slot, what, keep=None): return [9, slot, what] + ([] if keep is None else [keep])
def bad(i, *extra): return [10, i] + list(extra)
def oom(n): return [11, n]
def free(g): return [12 | (g << 7)]
A, B, KEY, EMPTY, NULS = key(1), key(2), key(3), key(0), key(4)

seeds = {
 "two_phase": [0x00] + begin(0, A, 0) + begin(0, A, 1) + fd(1) + wait_pending(1) + wait_pending(1, poll=False)
   + set_value(0) + on_done(1) + finish(0, 2) + wait_done(1, 3) + fd(1) + release(1) + finish(0, 1)
   + wait_done(0, 4) + role(0) + release(0),
 "leader_release": [0x00] + begin(1, B, 2) + begin(1, B, 3) + release(2) + wait_done(3, 0) + res(0, 2) + release(3),
 "panic_two_phase": [0x00] + begin(0, KEY, 0) + begin(0, KEY, 1) + panic(0, b"boom") + wait_done(1, 1)
   + res(1, 2) + res(1, 1, 5) + panic(0, b"late") + release(0) + release(1),
 "do_outcomes": [0x00] + do(0, EMPTY, 0, fn(0x09, 3, nested=0), 0) + do(0, A, 0, fn(0x00, 1, b"p!", nested=0), 1)
   + do(0, B, 0, fn(0x02, 1, b"thrown", nested=0), 2) + do(0, NULS, 2, fn(0x04, 0, nested=0), 3)
   + do(1, A, 1, fn(0x06, 2, nested=0)) + do(0, KEY, 0, fn(0x41, 4, b"", nested=0), 4),
 "nested_in_fn": [0x00] + [0] + A + [0] + [3]
   + [0] + A + [0]                      # nested: Do on its own key -> SF_EDEADLK
   + forget(0, A, 0)                    # nested: forget its own flight
   + begin(0, A, 2)                     # nested: a new flight for the same key
   + fn(0x09, 2) + [5]                  # outer fn's outcome, result kept in slot 5
   + finish(2, 0) + release(2)
   + [0] + KEY + [0] + [2]
   + do(0, B, 0, fn(0x08, 1), 6)        # nested: Do on another key
   + [11]                               # nested: stats check
   + fn(0x08, 0) + [7],
 "async_deferred": [0x00] + async_(0, A) + async_(0, A) + begin(0, A, 5) + on_done(5) + wait_pending(5)
   + forget(0, A, 1) + run_task(0, fn(0x09, 1, nested=0)) + wait_done(5, 2) + forget(0, A, 0) + release(5)
   + async_(0, B) + forget(0, B, 0) + async_(0, B) + run_task(0, fn(0x08, 0, nested=0))
   + run_task(0, fn(0x02, 1, b"x", nested=0)),
 "async_inline_refuse": [0x01 | (2 << 2)] + async_(0, B, fn(0x09, 1, nested=0)) + async_(1, B)
   + begin(1, KEY, 0) + async_(1, KEY) + finish(0, 0) + do(1, A, 0, fn(0x09, 0, nested=0), 1)
   + free(1) + release(0) + free(1) + do(1, A, 0, fn(0x09, 0, nested=0), 2),
 "forget": [0x00] + begin(0, A, 0) + begin(0, A, 1) + forget(0, A, 1) + forget(0, A, 0) + begin(0, A, 2)
   + finish(2, 1) + finish(0, 2) + wait_done(1, 0) + begin(0, B, 3) + forget(0, B, 1) + release(3)
   + release(0) + release(1) + release(2),
 "long_keys": [0x10, 3, 5] + begin(0, longkey(300), 0) + begin(0, longkey(300), 1) + forget(0, longkey(300), 1)
   + finish(0, 0) + wait_done(1, 0) + do(1, longkey(40), 0, fn(0x09, 0, nested=0), 1),
 # Allocation failure makes the library's choices unpredictable from here:
 # this seed only starts the fuzzer in that region.
 "oom": [0x00] + oom(2) + begin(0, longkey(100), 0) + do(0, A, 0, fn(0x00, 0, b"msg", nested=0)) + async_(0, B)
   + oom(0x80) + run_task(0, fn(0x08, 0, nested=0)) + panic(0, b""),
 "bad_args": [0x00] + bad(0) + bad(1, 5) + bad(2) + bad(3) + bad(4) + bad(5) + bad(6, 0, 0, 0, 1)
   + bad(6, 0, 0, 0, 7) + bad(7, 0xff, 0xff, 0xff, 0xfd) + bad(8, 0, 0, 0, 1) + bad(8, 0, 0, 0, 9)
   + bad(9) + bad(10) + bad(10) + bad(11),
 "free_busy_then_free": [0x00] + do(1, A, 0, fn(0x09, 2, nested=0), 0) + begin(1, B, 0) + free(1) + finish(0, 0)
   + free(1) + release(0) + free(1) + res(0, 2) + res(0, 1, 1) + do(1, A, 0, fn(0x09, 3, nested=0), 2)
   + async_(0, KEY) + free(0) + run_task(0, fn(0x09, 0, nested=0)) + free(0),
}
os.makedirs(out, exist_ok=True)
for n, b in seeds.items():
    open(os.path.join(out, n), "wb").write(bytes(b))
