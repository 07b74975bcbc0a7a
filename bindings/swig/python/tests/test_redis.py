"""Behaviour of RedisGroup, the Redis tier (libsingleflight-redis), against a
real redis-server each test starts on 127.0.0.1 on a free port and stops.

No test relies on timing for correctness: a leader's fn returns only once
the other callers have shown up (a counter or a file), and a caller that
arrives after a flight completed finds its value in Redis (read-through),
so fn runs once either way.  Every wait is bounded by DEADLINE.
"""

import asyncio
import multiprocessing
import os
import threading
import time

import pytest

from libsingleflight import Group, PanicError, RedisAuthError, RedisGroup, RedisUnavailableError, SharedGroup
from redis_server import RedisServer, unused_port_url
from redis_workers import DEADLINE, executions, stampede_redis
from test_singleflight import run_threads, wait_until


@pytest.fixture
def server():
    with RedisServer() as s:
        yield s


@pytest.fixture
def group(server):
    with RedisGroup(server.url) as g:
        yield g


def redis_keys(server):
    return sorted(server.command("KEYS", "*"))


# ---- values, options ---------------------------------------------------------


def test_value_is_bytes_and_served_from_redis_afterwards(group, server):
    runs = []

    def fn():
        runs.append(1)
        return bytearray(b"row 7")

    value = group.do("item:7", fn)
    assert type(value) is bytes and value == b"row 7"
    # Read-through: the value is in Redis now, so fn does not run again.
    assert group.do(b"item:7", fn) == b"row 7"
    assert len(runs) == 1
    assert any(b"item:7" in k for k in redis_keys(server)), redis_keys(server)
    s = group.stats()
    assert s.executions == 1 and s.hits >= 1, s


def test_key_and_value_types_are_checked(group):
    with pytest.raises(TypeError, match="str or bytes"):
        group.do(42, lambda: b"")
    with pytest.raises(TypeError, match="bytes"):
        group.do("k", lambda: {"not": "bytes"})


def test_value_above_max_value_bytes_is_value_error(server):
    with RedisGroup(server.url, max_value_bytes=16) as g:
        with pytest.raises(ValueError):
            g.do("big", lambda: b"x" * 17)
        assert g.do("small", lambda: b"x" * 16) == b"x" * 16


def test_urls_and_options_are_checked(server):
    for bad in ("http://127.0.0.1:1/", "redis://", "redis://127.0.0.1:notaport/0", "unix://"):
        with pytest.raises(ValueError):
            RedisGroup(bad)
    with pytest.raises(ValueError):
        RedisGroup(server.url, lease_ms=-1)
    with pytest.raises(TypeError):
        RedisGroup(server.url, front=object())


def test_closed_group_raises_value_error(server):
    g = RedisGroup(server.url)
    g.close()
    g.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        g.do("k", lambda: b"v")


def test_password_and_database_in_the_url():
    with RedisServer(password="s3cret") as s:
        with RedisGroup(s.url.replace("/0", "/3")) as g:
            assert g.do("k", lambda: b"authed") == b"authed"
        assert s.command("DBSIZE") == 0  # database 0: the value went to 3
        assert s.command("DBSIZE", db=3) >= 1
        wrong = s.url.replace("s3cret", "wrong")
        with pytest.raises(RedisAuthError):
            RedisGroup(wrong)


# ---- one execution, across threads and processes -----------------------------------


def test_threads_on_one_cold_key_run_fn_once(group):
    n = 16
    arrived = []
    runs = []

    def fn():
        runs.append(1)
        # Hold the flight until every thread has called do: they either
        # join it or, arriving after, read its value from Redis.
        wait_until(lambda: len(arrived) >= n, "%d callers" % n)
        return b"cold value"

    def call(i):
        arrived.append(i)
        return group.do("cold", fn)

    results = run_threads(n, call)
    assert [r[0] for r in results] == ["ok"] * n, results
    assert {r[1] for r in results} == {b"cold value"}
    assert len(runs) == 1


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_processes_and_threads_on_one_cold_key_run_fn_once(server, tmp_path, start):
    """4 processes x 8 threads, each process with a RedisGroup of its own:
    fn runs once in all of them, everyone gets its bytes, and Redis saw one
    lease in all (a process's threads coalesce in its front group first)."""
    procs, threads = 4, 8
    ctx = multiprocessing.get_context(start)
    counter = str(tmp_path / "executions")
    arrived = str(tmp_path / "arrived")
    barrier = ctx.Barrier(procs)
    results = ctx.Queue()
    ps = [
        ctx.Process(target=stampede_redis, args=(server.url, "cold", counter, arrived, procs * threads, threads, barrier, results))
        for _ in range(procs)
    ]
    for p in ps:
        p.start()
    out = [results.get(timeout=DEADLINE) for _ in range(procs)]
    for p in ps:
        p.join(DEADLINE)
        assert p.exitcode == 0
    leaders = executions(counter)
    assert len(leaders) == 1, leaders
    want = b"value from leader %d" % leaders[0]
    assert all(kind == "ok" for kind, *_ in out), out
    assert {v for _, _, values, _ in out for v in values} == {want}
    assert sorted(leases for *_, leases in out) == [0] * (procs - 1) + [1], out


# ---- errors ---------------------------------------------------------------------


def test_exception_raises_in_leader_and_is_shared_as_text(server):
    with RedisGroup(server.url, error_ttl_ms=60_000) as g:
        runs = []

        def fn():
            runs.append(1)
            raise ValueError("bad row 7")

        with pytest.raises(ValueError, match="bad row 7") as info:
            g.do("k", fn)
        assert type(info.value) is ValueError  # the leader's caller: the exception itself
        # Within the error TTL another caller shares that outcome, as text.
        with pytest.raises(PanicError, match="ValueError: bad row 7"):
            g.do("k", fn)
        assert len(runs) == 1


def test_fn_calling_back_in_for_its_own_key_is_refused_at_once(server):
    # A wait for itself would last until wait_ms (a minute here).
    with RedisGroup(server.url, wait_ms=60_000) as g:
        seen = {}

        def fn():
            with pytest.raises(RuntimeError, match="SF_EDEADLK") as info:
                g.do("k", lambda: b"never")
            seen["same"] = info.value
            seen["other"] = g.do("other", lambda: b"inner")
            return b"outer"

        assert g.do("k", fn) == b"outer"
        assert "same" in seen and seen["other"] == b"inner"
        assert g.stats().executions == 2


def test_redis_down_falls_back_to_running_fn_or_fails_by_policy():
    url = unused_port_url()
    with RedisGroup(url, timeout_ms=500) as g:
        assert g.do("k", lambda: b"local") == b"local"
        assert g.stats().fallbacks >= 1
    with RedisGroup(url, timeout_ms=500, fallback=False) as g:
        with pytest.raises(RedisUnavailableError):
            g.do("k", lambda: b"never")
        assert issubclass(RedisUnavailableError, ConnectionError)


def test_redis_stopped_then_back_coalescing_resumes():
    s = RedisServer()
    port = s.port
    try:
        with RedisGroup(s.url, timeout_ms=500) as g:
            assert g.do("a", lambda: b"1") == b"1"
            s.stop()
            assert g.do("b", lambda: b"2") == b"2"  # fallback: fn ran here
            fell_back = g.stats().fallbacks
            assert fell_back >= 1
            s2 = RedisServer(port=port)
            try:
                # The group retries Redis on its own (after a short holdoff
                # that spares each call a connect timeout): a call soon
                # goes through Redis again, without falling back.
                def through_redis():
                    before = g.stats().fallbacks
                    g.do("probe", lambda: b"p")
                    return g.stats().fallbacks == before

                wait_until(through_redis, "calls to reach Redis again")
                fell_back = g.stats().fallbacks
                assert g.stats().reconnects >= 1
                runs = []
                assert g.do("c", lambda: runs.append(1) or b"3") == b"3"
                assert g.do("c", lambda: runs.append(1) or b"3") == b"3"
                assert len(runs) == 1  # served from Redis again
                assert g.stats().fallbacks == fell_back
            finally:
                s2.stop()
    finally:
        s.stop()


# ---- front groups ------------------------------------------------------------------


@pytest.mark.parametrize("front_kind", ["group", "shared"])
def test_front_group_coalesces_threads_before_redis(server, front_kind, request):
    front = Group() if front_kind == "group" else SharedGroup("pytest-redis-%d" % os.getpid())
    try:
        with RedisGroup(server.url, front=front) as g:
            n = 8
            runs = []

            def fn():
                runs.append(1)
                wait_until(lambda: front.stats().followers >= n - 1, "%d followers" % (n - 1))
                return b"fronted"

            results = run_threads(n, lambda i: g.do("k", fn))
            assert {r[1] for r in results} == {b"fronted"}
            assert len(runs) == 1
            # One lease for the whole process: the front group's leader was
            # the only caller that went to Redis.
            s = g.stats()
            assert (s.calls, s.lease_wins, s.waits, s.hits) == (n, 1, 0, 0), s
    finally:
        if front_kind == "shared":
            front.close()


# ---- asyncio ------------------------------------------------------------------------


def test_do_async_runs_the_coroutine_once(group):
    n = 8
    runs = []

    async def main():
        arrived = []

        async def work():
            runs.append(1)
            while len(arrived) < n:  # every caller has called do_async
                await asyncio.sleep(0.001)
            return b"async value"

        async def call(i):
            arrived.append(i)
            return await group.do_async("ak", work)

        return await asyncio.wait_for(asyncio.gather(*(call(i) for i in range(n))), DEADLINE)

    out = asyncio.run(main())
    assert out == [b"async value"] * n
    assert len(runs) == 1


def test_do_async_exception_in_leader(group):
    async def bad():
        raise KeyError("gone")

    async def main():
        return await group.do_async("bad", bad)

    with pytest.raises(KeyError):
        asyncio.run(main())


# ---- caching ------------------------------------------------------------------------


def test_cache_off_is_pure_coalescing(server):
    with RedisGroup(server.url, cache=False) as g:
        runs = []
        assert g.do("k", lambda: runs.append(1) or b"a") == b"a"
        assert g.do("k", lambda: runs.append(1) or b"b") == b"b"  # nothing kept: fn again
        assert len(runs) == 2
        # Kept only for late-woken waiters of its flight: wait_ms + lease_ms
        # (the defaults, 10 s + 3 s), never the cache's TTLs.
        ttl = server.command("PTTL", b"{sf:k}:val")
        assert 0 < ttl <= 13_000, ttl


def test_stale_value_is_served_at_once_while_one_caller_refreshes(server):
    n = 6
    with RedisGroup(server.url, soft_ttl_ms=50, hard_ttl_ms=60_000) as g:
        assert g.do("k", lambda: b"old") == b"old"
        # Past the soft TTL (the clock only moves on): stale, not gone.
        end = time.monotonic() + 0.06
        wait_until(lambda: time.monotonic() > end, "the soft TTL to pass")
        returned = []
        runs = []

        def refresh():
            runs.append(1)
            # Everyone else got the stale value without waiting for this.
            wait_until(lambda: len(returned) >= n - 1, "%d stale answers" % (n - 1))
            return b"new"

        def call(i):
            v = g.do("k", refresh)
            returned.append(v)
            return v

        results = run_threads(n, call)
        values = sorted(r[1] for r in results)
        assert values == [b"new"] + [b"old"] * (n - 1), results
        assert len(runs) == 1
        assert g.stats().stale_hits >= 1
        assert g.do("k", refresh) == b"new"  # fresh again: no run
        assert len(runs) == 1


def test_forked_child_must_make_its_own_group(group, tmp_path):
    """The parent's RedisGroup in a forked child raises instead of using
    connections and a watchdog thread that stayed in the parent, and
    dropping it there frees nothing of the parent's."""
    assert group.do("k", lambda: b"parent") == b"parent"
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()

    def child():
        try:
            group.do("k", lambda: b"child")
            results.put("no error")
        except RuntimeError as exc:
            results.put("RuntimeError: " + str(exc))

    p = ctx.Process(target=child)
    p.start()
    out = results.get(timeout=DEADLINE)
    p.join(DEADLINE)
    assert out.startswith("RuntimeError") and "forked child makes its own" in out, out
    assert p.exitcode == 0
    assert group.do("k", lambda: b"again") == b"parent"  # the parent's still works
