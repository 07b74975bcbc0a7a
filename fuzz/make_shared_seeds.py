#!/usr/bin/env python3
"""Writes the seed inputs of fuzz_shared (fuzz/corpus-shared/).

Each operation is an opcode byte (its value mod 13 picks the operation, its
top bit the attachment), a byte that picks a call handle, then the
operation's own bytes; see run_op in fuzz_shared.cpp.  Run from anywhere:
    python3 fuzz/make_shared_seeds.py
"""
import os

BEGIN, SET, FINISH, PANIC, WAIT, RELEASE, CANCEL, DO, FORGET, STATS, RESULT, POKE, FD = range(13)


def op(code, att=0, pick=0, *args):
    return bytes([code | (0x80 if att else 0), pick, *args])


def poke(offset, data):
    return op(POKE) + offset.to_bytes(4, "big") + bytes([len(data) - 1]) + bytes(data)


SEEDS = {
    "two_phase_across": op(BEGIN, 0, 0, 0) + op(BEGIN, 1, 0, 0) + op(SET, 0, 0, 100)
    + op(FD, 0, 1) + op(FINISH, 0, 0, 0) + op(WAIT, 0, 1) + op(STATS, 1)
    + op(RESULT, 0, 0, 0) + op(RELEASE, 0, 0) + op(RELEASE, 0, 0),
    "do_every_key": b"".join(op(DO, k % 2, 0, k, k * 40, 1) for k in range(6)) + op(STATS),
    "panic_across": op(BEGIN, 1, 0, 5) + op(BEGIN, 0, 0, 5) + op(PANIC, 0, 0)
    + op(WAIT, 0, 1) + op(WAIT, 0, 0),
    "cancel_abandon": op(BEGIN, 0, 0, 1) + op(BEGIN, 1, 0, 1) + op(CANCEL, 0, 1)
    + op(CANCEL, 0, 0) + op(WAIT, 0, 0) + op(WAIT, 0, 1) + op(BEGIN, 1, 0, 1) + op(STATS),
    "forget_lead_again": op(BEGIN, 0, 0, 2) + op(FORGET, 0, 0, 2) + op(BEGIN, 1, 0, 2)
    + op(SET, 0, 1, 3) + op(FINISH, 0, 1, 0) + op(FINISH, 0, 0, 1),
    "arena_pressure": b"".join(op(BEGIN, k % 2, 0, k) + op(SET, 0, k, 255) for k in range(6))
    + b"".join(op(SET, 0, k, 200) for k in range(6)) + op(STATS),
    "poke_header": op(BEGIN, 0, 0, 0) + poke(0, [0xff] * 8) + op(BEGIN, 1, 0, 0)
    + op(DO, 0, 0, 1, 3, 1) + op(FINISH) + op(STATS),
    "poke_table": op(BEGIN, 0, 0, 3) + op(BEGIN, 1, 0, 4) + poke(4096 + 64 * 40, [0x41] * 8)
    + poke(4096 + 64 * 100, [0, 0, 0, 0x7f, 0xff, 0xff, 0xff, 0xff]) + op(BEGIN, 0, 0, 3)
    + op(FINISH, 0, 0) + op(WAIT, 1, 1) + op(FORGET, 0, 0, 4),
    "poke_arena": op(BEGIN, 0, 0, 5) + op(SET, 0, 0, 200) + poke(0x7fffff00, [0x55] * 8)
    + poke(0xfffffff0, [0, 1, 2, 3, 4, 5, 6, 7]) + op(FINISH) + op(BEGIN, 1, 0, 5)
    + op(WAIT, 1, 1) + op(RESULT),
}

here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus-shared")
os.makedirs(here, exist_ok=True)
for name, data in SEEDS.items():
    with open(os.path.join(here, name), "wb") as f:
        f.write(data)
print(f"{len(SEEDS)} seeds in {here}")
