#!/usr/bin/env python3
"""The README demo's fleet stampede (examples/stampede, part 3 with --redis)
says what it promises, in its quick form, against a redis-server this
script starts on 127.0.0.1 on a free port and stops.

    check-stampede-redis.py STAMPEDE_BINARY

Runs the part once as JSON and once as the table a user reads, and checks:
  - every request of every way was served;
  - the Redis tier, with every worker process standing in for a host with
    a cache and an sf_redis handle of its own, sent exactly one database
    query per key per expiry across the whole fleet;
  - a group per process sent exactly one per process;
  - the table has the Redis tier's column and prints 1.0 in it;
  - with Zipf keys (--proc-zipf, 64 hot keys), the Redis tier sent exactly
    one query per requested key x expiry pair, fewer than a group per
    process.
Exact by construction: the key's Redis name carries the expiry's tick, and
a lease plus the read-through value admit one fn run per name.
"""
import json
import os
import re
import subprocess
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the source tree from the imports below

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bindings", "swig", "python", "tests"))
from redis_server import RedisServer  # noqa: E402 - after the path
from stampede_checks import check_ways  # noqa: E402 - this folder, on the path as the script's


def run(binary, port, *extra):
    args = [binary, "--part", "3", "--quick", "--redis", "127.0.0.1:%d" % port, *extra]
    p = subprocess.run(args, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        sys.exit("%s exited with %d:\n%s%s" % (" ".join(args), p.returncode, p.stdout, p.stderr))
    return p.stdout


def main():
    binary = sys.argv[1]
    problems = []
    with RedisServer() as server:
        r = json.loads(run(binary, server.port, "--json"))["processes"]
        table = run(binary, server.port, "--no-progress")
        # Zipf keys: each thread draws its requests; a pair nobody asked for
        # is not counted, and each requested one costs the fleet one query.
        z = json.loads(run(binary, server.port, "--json", "--proc-zipf", "--keys", "64", "--hot-keys", "64"))["processes"]
        # The run's keys are prefixed with its own name, and expire.
        left = server.command("DBSIZE")

    procs = r["processes"]
    if "redis" not in r:
        sys.exit("the run has no Redis tier figures:\n" + json.dumps(r))
    check_ways(r, ("none", "per_process", "shared", "redis"), {"redis": 1, "per_process": procs}, problems)
    zr = z["redis"]
    if z["zipf"] <= 0 or zr["pairs"] < 1 or zr["db_queries"] != zr["pairs"] or (zr["fewest_key_expiry"], zr["most_key_expiry"]) != (1, 1):
        problems.append("Zipf keys: the Redis tier sent %d queries for %d requested key x expiry pairs (fewest %d, most %d)"
                        % (zr["db_queries"], zr["pairs"], zr["fewest_key_expiry"], zr["most_key_expiry"]))
    zp = z["per_process"]
    if zp["most_key_expiry"] > procs or zp["db_queries"] <= zr["db_queries"]:
        problems.append("Zipf keys: a group per process sent %d queries (most %d for a pair), the Redis tier %d"
                        % (zp["db_queries"], zp["most_key_expiry"], zr["db_queries"]))
    if left < 1:
        problems.append("Redis holds no value of the run: the tier did not cache through it")

    m = re.search(r"^\s*queries per key per expiry\s+(\S+)\s+(\S+)\s+(\S+)\s+(\S+)\s*$", table, re.M)
    if not re.search(r"no singleflight\s+group per process\s+shared group\s+Redis tier", table):
        problems.append("the table has not the four columns")
    if not m:
        problems.append("the table has no row of four queries per key per expiry")
    else:
        none_q, per_q, shared_q, redis_q = (float(x) for x in m.groups())
        if redis_q != 1.0 or per_q != float(procs):
            problems.append("the table says %s, %s, %s, %s queries per key per expiry" % m.groups())

    if problems:
        print(table)
        sys.exit("stampede on Redis FAILED:\n  " + "\n  ".join(problems))
    print(table)
    print("ok: Redis tier: 1 query per key per expiry across %d processes; group per process: %d; "
          "p99 %.2f ms (Redis tier) vs %.2f ms (group per process); Zipf keys: %.2f vs %.2f per expired key"
          % (procs, procs, r["redis"]["p99_ms"], r["per_process"]["p99_ms"], zr["per_key_expiry"], zp["per_key_expiry"]))


if __name__ == "__main__":
    main()
