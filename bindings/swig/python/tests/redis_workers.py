"""What runs in the child processes of test_redis.py (forked or spawned,
which import this module by name).  Not a test module itself.

Each child stands in for a host: a RedisGroup of its own (a fork does not
copy one: its connections and watchdog thread stay in the parent) and
several threads calling do on one cold key.
"""

import os
import threading

from shared_workers import count_execution, executions  # noqa: F401 - the tests' too
from test_singleflight import DEADLINE, wait_until  # noqa: F401 - the tests' too




def stampede_redis(url, key, counter, arrived, callers, threads, barrier, results):
    """`threads` threads of this process call do(key) once the processes
    met at the barrier.  Each marks its arrival in the file `arrived` just
    before calling; the leader's fn (in whichever process) returns only
    once all `callers` have arrived, so every caller either joins its
    flight or, arriving after, finds its value in Redis.  Puts ("ok", pid,
    [values], leases this process took) or ("raised", pid, text) on
    results."""
    from libsingleflight import RedisGroup

    try:
        with RedisGroup(url) as g:

            def fn():
                count_execution(counter)
                wait_until(lambda: len(executions(arrived)) >= callers, "%d callers" % callers)
                return b"value from leader %d" % os.getpid()

            values = [None] * threads
            errors = []

            def call(i):
                try:
                    count_execution(arrived)
                    values[i] = g.do(key, fn)
                except BaseException as exc:  # noqa: B902 - reported to the test
                    errors.append("%s: %s" % (type(exc).__name__, exc))

            barrier.wait(DEADLINE)
            ts = [threading.Thread(target=call, args=(i,)) for i in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join(DEADLINE)
            if errors or any(t.is_alive() for t in ts):
                results.put(("raised", os.getpid(), "; ".join(errors) or "a thread hung"))
            else:
                results.put(("ok", os.getpid(), values, g.stats().lease_wins))
    except BaseException as exc:  # noqa: B902 - reported to the test
        results.put(("raised", os.getpid(), "%s: %s" % (type(exc).__name__, exc)))
