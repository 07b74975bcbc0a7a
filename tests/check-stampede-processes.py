#!/usr/bin/env python3
"""The README demo's multi-process stampede (examples/stampede, part 3) says
what it promises, in its quick form.

    check-stampede-processes.py STAMPEDE_BINARY after|before

Runs the part once as JSON and once as the table a user reads, with the
shared group opened after fork (by every worker) or before it (by the
parent), and checks, for every run:
  - every request of every way was served;
  - the shared group sent exactly one database query per key per expiry;
  - a group per process sent exactly one per process (each process has its
    own cache and its own group, and every process asks for every key);
  - without singleflight every process queried every key itself, at least;
  - no shared-memory segment of the run was left in /dev/shm;
  - the table prints the same figures per key per expiry.
Every figure asserted here is exact by construction (barriers, not timing):
see examples/stampede/procs.cpp.
"""
import json
import re
import subprocess
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree from the imports below

from stampede_checks import check_ways


def run(binary, open_when, *extra):
    args = [binary, "--part", "3", "--quick", "--shared-open", open_when, *extra]
    p = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        sys.exit("%s exited with %d:\n%s%s" % (" ".join(args), p.returncode, p.stdout, p.stderr))
    return p.stdout


def main():
    binary, open_when = sys.argv[1], sys.argv[2]
    problems = []

    r = json.loads(run(binary, open_when, "--json"))["processes"]
    procs = r["processes"]
    if r["shared_open"] != open_when:
        problems.append("the run opened the shared group %s fork, not %s" % (r["shared_open"], open_when))
    check_ways(r, ("none", "per_process", "shared"), {"shared": 1, "per_process": procs}, problems)
    none = r["none"]
    if none["fewest_key_expiry"] < procs or none["db_queries"] < r["per_process"]["db_queries"]:
        problems.append("no singleflight: fewest %d queries for a key x expiry pair with %d processes, %d in all"
                        % (none["fewest_key_expiry"], procs, none["db_queries"]))
    if r["segment_left"]:
        problems.append("/dev/shm still holds libsingleflight.%s after the run" % r["segment"])

    # The table: its row of queries per key per expiry, one column per way.
    table = run(binary, open_when, "--no-progress")
    m = re.search(r"^\s*queries per key per expiry\s+(\S+)\s+(\S+)\s+(\S+)\s*$", table, re.M)
    if not re.search(r"no singleflight\s+group per process\s+shared group", table):
        problems.append("the table has not the three columns")
    if not m:
        problems.append("the table has no row of queries per key per expiry")
    else:
        none_q, per_q, shared_q = (float(x) for x in m.groups())
        if shared_q != 1.0 or per_q != float(procs) or none_q < per_q:
            problems.append("the table says %s, %s, %s queries per key per expiry" % m.groups())
    if "warning" in table:
        problems.append("the table run warned: " + table[table.index("warning"):].strip())

    if problems:
        print(table)
        sys.exit("stampede processes (%s fork) FAILED:\n  " % open_when + "\n  ".join(problems))
    print(table)
    print("ok: shared group opened %s fork: 1 query per key per expiry; group per process: %d; "
          "none: %.1f (fewest %d)" % (open_when, procs, none["per_key_expiry"], none["fewest_key_expiry"]))


if __name__ == "__main__":
    main()
