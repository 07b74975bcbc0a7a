"""Behaviour of SharedGroup, a group shared by the processes of a host: one
behaviour per test, across threads, multiprocessing children (fork and
spawn) and real gunicorn workers.

No test relies on timing for correctness: a leader's fn returns only once
the group (whose counters cover every process) shows the expected
followers, and every wait is for a condition bounded by a deadline that
fails the test instead of hanging it.
"""

import asyncio
import http.client
import multiprocessing
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from libsingleflight import LeaderExitedError, PanicError, SharedGroup
from shared_workers import (
    DEADLINE,
    executions,
    follow_one,
    hang_in_fn,
    stampede_do,
    stampede_do_async,
    wait_until,
    wait_until_async as until,
)
from test_singleflight import run_threads

HERE = os.path.dirname(os.path.abspath(__file__))


def segment_path(name):
    return "/dev/shm/libsingleflight." + name


@pytest.fixture
def name(request):
    """A group name of this test's own, so its counters start at zero."""
    n = re.sub(r"[^A-Za-z0-9._-]", "-", "pytest-%d-%s" % (os.getpid(), request.node.name))[:200]
    yield n
    assert not os.path.exists(segment_path(n)) or _attached_elsewhere(n), "segment left behind"


def _attached_elsewhere(n):
    # A process of the group that is still attached keeps the segment; the
    # tests close every group they open, and their children have exited.
    try:
        g = SharedGroup(n)
    except Exception:  # noqa: BLE001
        return False
    try:
        return g.stats().processes > 1
    finally:
        g.close()


@pytest.fixture
def group(name):
    g = SharedGroup(name)
    yield g
    g.close()


def queue_results(q, n):
    out = [q.get(timeout=DEADLINE) for _ in range(n)]
    return out


def join_all(procs):
    for p in procs:
        p.join(DEADLINE)
        if p.is_alive():
            p.kill()
            p.join()
            pytest.fail("a child process did not finish (deadlock?)")


# ---- values, types, options ----------------------------------------------------


def test_value_is_bytes_and_alone_not_shared(group):
    assert group.do("k", lambda: b"v") == (b"v", False)
    assert group.do(b"k2", lambda: bytearray(b"ba")) == (b"ba", False)
    value, shared = group.do("k3", lambda: memoryview(b"mv"))
    assert type(value) is bytes and value == b"mv" and not shared
    s = group.stats()
    assert (s.calls, s.leaders, s.followers, s.in_flight) == (3, 3, 0, 0)
    assert s.processes == 1


def test_followers_in_threads_get_equal_bytes(group):
    def fn():
        wait_until(lambda: group.stats().followers >= 3, "3 followers")
        return b"x" * 300  # past the inline size: through the arena

    results = run_threads(4, lambda i: group.do("k", fn))
    assert [r[0] for r in results] == ["ok"] * 4
    assert {r[1] for r in results} == {(b"x" * 300, True)}
    assert group.stats().leaders == 1


def test_value_that_is_not_bytes_raises_type_error_in_leader_and_panic_in_followers(group):
    def fn():
        wait_until(lambda: group.stats().followers >= 1, "a follower")
        return {"not": "bytes"}

    results = run_threads(2, lambda i: group.do("k", fn))
    kinds = sorted((r[1].__class__.__name__, str(r[1])) for r in results)
    assert kinds[0][0] == "PanicError" and kinds[0][1].startswith("TypeError: SharedGroup: fn must return bytes")
    assert kinds[1][0] == "TypeError" and "not dict" in kinds[1][1] and "do_pickled" in kinds[1][1]
    for value in (42, "text", None):
        with pytest.raises(TypeError, match="bytes-like"):
            group.do("k", lambda: value)
    assert group.stats().in_flight == 0


def test_key_must_be_str_or_bytes(group):
    with pytest.raises(TypeError, match="str or bytes"):
        group.do(42, lambda: b"")
    assert group.stats().calls == 0


def test_str_and_utf8_bytes_are_one_key(group):
    def fn():
        wait_until(lambda: group.stats().followers >= 1, "a follower")
        return b"one"

    results = run_threads(2, lambda i: group.do("ключ" if i else "ключ".encode(), fn))
    assert {r[1] for r in results} == {(b"one", True)}


def test_names_and_options_are_checked(name):
    for bad in ("a/b", "x" * 300, "", ".hidden"):
        with pytest.raises(ValueError, match="cannot open the shared group"):
            SharedGroup(bad)
    with pytest.raises(ValueError, match="a name or a path"):
        SharedGroup()
    with pytest.raises(ValueError, match="a name or a path"):
        SharedGroup(name, path="/tmp/x")
    with pytest.raises(TypeError):
        SharedGroup(b"bytes-name")
    with pytest.raises(ValueError, match="table_slots"):
        SharedGroup(name, table_slots=-1)
    with pytest.raises(ValueError, match="mode"):
        SharedGroup(name, mode=0o1000)
    # The sizes are the creator's: asking for others is refused.
    with SharedGroup(name, table_slots=64):
        with pytest.raises(RuntimeError, match="SF_EINCOMPAT"):
            SharedGroup(name, table_slots=128)
        with SharedGroup(name) as again:  # None: the segment's
            assert again.stats().processes == 2


def test_value_above_max_value_bytes_is_value_error(name):
    with SharedGroup(name, arena_bytes=1 << 20, max_value_bytes=1024) as g:
        assert g.do("small", lambda: b"x" * 1024) == (b"x" * 1024, False)
        with pytest.raises(ValueError, match="1025 bytes is larger than the group's max_value_bytes"):
            g.do("big", lambda: b"x" * 1025)
        assert g.stats().panics == 1


@pytest.mark.parametrize("run_unshared", [False, True])
def test_full_table_is_memory_error_or_runs_unshared(name, run_unshared):
    """More flights at once than the table has slots: the calls that find
    no room raise MemoryError, or with run_unshared run fn in this process
    alone; the flights already running are unaffected."""

    async def main(g):
        go, work = gated()
        calls = [asyncio.ensure_future(g.do_async("k%d" % i, work)) for i in range(200)]
        await until(lambda: all(c.done() for c in calls) or g.stats().in_flight >= 1, "a flight")
        go.set()
        return await asyncio.gather(*calls, return_exceptions=True)

    with SharedGroup(name, table_slots=64, run_unshared=run_unshared) as g:
        out = asyncio.run(main(g))
        refused = [o for o in out if isinstance(o, BaseException)]
        assert all(isinstance(o, MemoryError) and "full" in str(o) for o in refused), refused
        assert [o for o in out if not isinstance(o, BaseException)] == [(b"v", False)] * (200 - len(refused))
        if run_unshared:
            assert not refused
        else:
            assert refused and g.stats().in_flight_high <= 64


def test_group_by_path_shares_between_attachments(tmp_path):
    path = tmp_path / "segment"
    with SharedGroup(path=path) as a, SharedGroup(path=str(path)) as b:
        assert a.name == str(path)

        def fn():
            wait_until(lambda: a.stats().followers >= 1, "a follower through the other attachment")
            return b"by path"

        results = run_threads(2, lambda i: (a if i else b).do("k", fn))
        assert {r[1] for r in results} == {(b"by path", True)}
        assert a.stats().processes == 2


def test_pickled_values(group):
    value, shared = group.do_pickled("obj", lambda: {"rows": [1, 2, 3], "name": "x"})
    assert value == {"rows": [1, 2, 3], "name": "x"} and shared is False

    async def coro():
        return ("tuple", 1.5)

    assert asyncio.run(group.do_async_pickled("obj2", coro)) == (("tuple", 1.5), False)


def test_do_inside_fn_for_its_own_key_raises(group):
    def fn():
        with pytest.raises(RuntimeError, match="its own key"):
            group.do("k", lambda: b"inner")
        return b"outer"

    assert group.do("k", fn) == (b"outer", False)

    async def coro():
        with pytest.raises(RuntimeError, match="its own key"):
            await group.do_async("a", coro)
        await asyncio.sleep(0)  # the work goes on in a task of this loop:
        with pytest.raises(RuntimeError, match="event loop leads"):
            group.do("a", lambda: b"blocking")  # it would stop that loop
        assert group.do("other", lambda: b"b") == (b"b", False)
        return b"outer"

    assert asyncio.run(group.do_async("a", coro)) == (b"outer", False)
    assert group.do("a", lambda: b"after") == (b"after", False)


# ---- close ------------------------------------------------------------------------


def test_close_detaches_and_later_use_raises(name):
    with SharedGroup(name) as g:
        assert os.path.exists(segment_path(name))
        assert g.do("k", lambda: b"v") == (b"v", False)
    assert g.closed
    assert not os.path.exists(segment_path(name))  # the last process removed it
    for use in (
        lambda: g.do("k", lambda: b""),
        lambda: g.stats(),
        lambda: g.forget("k"),
        lambda: g.do_async("k", None),
    ):
        with pytest.raises(ValueError, match="closed"):
            use()
    g.close()  # idempotent
    assert "closed" in repr(g)


def test_close_during_a_call_detaches_after_it(name):
    g = SharedGroup(name)
    in_fn, release = threading.Event(), threading.Event()

    def fn():
        in_fn.set()
        assert release.wait(DEADLINE)
        return b"finished after close"

    out = []
    t = threading.Thread(target=lambda: out.append(g.do("k", fn)))
    t.start()
    assert in_fn.wait(DEADLINE)
    g.close()
    with pytest.raises(ValueError, match="closed"):
        g.do("other", lambda: b"")
    assert os.path.exists(segment_path(name))  # still attached: a call is in progress
    release.set()
    t.join(DEADLINE)
    assert out == [(b"finished after close", False)]
    assert not os.path.exists(segment_path(name))


# ---- across processes ------------------------------------------------------------


def stampede(ctx, n, target, *args):
    """Runs target(*args, barrier, results) in n processes of ctx, which
    each report one outcome; returns the outcomes (all of them values) and
    the processes."""
    barrier, results = ctx.Barrier(n), ctx.Queue()
    procs = [ctx.Process(target=target, args=args + (barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    out = queue_results(results, n)
    join_all(procs)
    assert [r[0] for r in out] == ["ok"] * n, out
    return out, procs


def assert_one_execution(out, counter, value_format):
    """fn ran once, and every caller got its value, shared."""
    leaders = executions(counter)
    assert len(leaders) == 1, leaders
    assert {r[2] for r in out} == {(value_format % leaders[0], True)}


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_stampede_across_processes_runs_fn_once(name, tmp_path, start):
    """N processes wait at a barrier, then call do on one cold key: fn runs
    once in all, and every process gets the same bytes."""
    n = 4
    ctx = multiprocessing.get_context(start)
    counter = str(tmp_path / "executions")
    with SharedGroup(name) as g:
        # A forked child uses the parent's SharedGroup itself; a spawned one
        # opens the name.
        target_group = g if start == "fork" else name
        out, procs = stampede(ctx, n, stampede_do, target_group, "cold", counter, n)
        assert_one_execution(out, counter, b"value from leader %d")
        assert {r[1] for r in out} == {p.pid for p in procs}
        s = g.stats()
        assert (s.leaders, s.followers, s.in_flight) == (1, n - 1, 0)


@pytest.mark.parametrize("loop_kind", ["asyncio", "uvloop"])
def test_do_async_stampede_across_processes(name, tmp_path, loop_kind):
    """do_async in N spawned processes: fn once, equal bytes, and every
    follower's loop kept running while its call waited."""
    n = 3
    ctx = multiprocessing.get_context("spawn")
    counter = str(tmp_path / "executions")
    alive = tmp_path / "alive"
    alive.mkdir()
    with SharedGroup(name) as g:
        out, procs = stampede(ctx, n, stampede_do_async, name, "cold", counter, n, str(alive), loop_kind)
        assert_one_execution(out, counter, b"async value from leader %d")
        assert sorted(os.listdir(alive)) == sorted(str(p.pid) for p in procs)
        assert g.stats().leaders == 1


def test_exception_crosses_processes_as_text(group, name):
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    child = ctx.Process(target=follow_one, args=(name, "k", results))

    def fn():
        child.start()  # a follower in another process joins the flight
        wait_until(lambda: group.stats().followers >= 1, "the other process to join")
        raise ValueError("bad row 7")

    with pytest.raises(ValueError, match="bad row 7") as info:
        group.do("k", fn)
    assert type(info.value) is ValueError  # the leader's caller: the exception itself
    out = queue_results(results, 1)
    join_all([child])
    assert out == [("raised", child.pid, "PanicError", "ValueError: bad row 7")]
    assert group.stats().panics == 1


def test_leader_killed_releases_followers_and_next_call_leads(group, name):
    """SIGKILL of the leader's process inside fn: the followers in every
    process raise LeaderExitedError at once, and the key is not stuck."""
    fork, spawn = multiprocessing.get_context("fork"), multiprocessing.get_context("spawn")
    in_fn = fork.Event()
    leader = fork.Process(target=hang_in_fn, args=(group, "k", in_fn))
    leader.start()
    try:
        assert in_fn.wait(DEADLINE)
        results = spawn.Queue()
        other = spawn.Process(target=follow_one, args=(name, "k", results))
        other.start()
        outcomes = []

        def follow_here():
            try:
                group.do("k", lambda: b"this thread led")
            except BaseException as exc:  # noqa: B902
                outcomes.append((type(exc), time.monotonic()))

        async def follow_async():
            try:
                await group.do_async("k", None)  # never runs: a follower
            except BaseException as exc:  # noqa: B902
                outcomes.append((type(exc), time.monotonic()))

        threads = [
            threading.Thread(target=follow_here),
            threading.Thread(target=lambda: asyncio.run(follow_async())),
        ]
        for t in threads:
            t.start()
        wait_until(lambda: group.stats().followers >= 3, "three followers in two processes")
        killed = time.monotonic()
        os.kill(leader.pid, signal.SIGKILL)
        for t in threads:
            t.join(DEADLINE)
        out = queue_results(results, 1)
        join_all([other])
    finally:
        if leader.is_alive():
            leader.kill()
        leader.join(DEADLINE)
    assert [o[0] for o in outcomes] == [LeaderExitedError, LeaderExitedError]
    assert out == [("raised", other.pid, "LeaderExitedError", out[0][3])]
    # Promptly: the library's bound is 100 ms; this only catches a follower
    # that waited for some timer instead of the kernel's word.
    assert max(o[1] for o in outcomes) - killed < 5.0
    assert group.stats().goexits == 1
    assert group.do("k", lambda: b"fresh") == (b"fresh", False)
    assert group.stats().leaders == 2


# ---- do_async within one process ---------------------------------------------------


@pytest.fixture(params=["asyncio", "uvloop"])
def arun(request):
    if request.param == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    else:
        factory = asyncio.new_event_loop

    def run(coro):
        loop = factory()
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, DEADLINE))
        finally:
            loop.close()

    return run


def gated():
    """(go, work): work() returns b"v" once go is set."""
    go = asyncio.Event()

    async def work():
        await go.wait()
        return b"v"

    return go, work


async def leader_and_follower(group, key, work):
    """Two callers of key on this loop, once the second has joined."""
    leader = asyncio.ensure_future(group.do_async(key, work))
    follower = asyncio.ensure_future(group.do_async(key, work))
    await until(lambda: group.stats().followers >= 1, "the follower")
    return leader, follower


def test_async_followers_share_and_exceptions_cross_as_text(group, arun):
    async def main():
        go, work = gated()
        calls = [asyncio.ensure_future(group.do_async("k", work)) for _ in range(3)]
        await until(lambda: group.stats().followers >= 2, "two followers")
        go.set()
        assert await asyncio.gather(*calls) == [(b"v", True)] * 3

        boom = ValueError("boom")

        async def failing():
            await until(lambda: group.stats().followers >= 3, "a follower")
            raise boom

        calls = [asyncio.ensure_future(group.do_async("e", failing)) for _ in range(2)]
        out = await asyncio.gather(*calls, return_exceptions=True)
        assert out[0] is boom  # the leader's caller: the exception itself
        assert type(out[1]) is PanicError and str(out[1]) == "ValueError: boom"

    arun(main())


def test_async_value_that_is_not_bytes_raises_type_error(group, arun):
    async def work():
        return 42

    async def main():
        with pytest.raises(TypeError, match="not int"):
            await group.do_async("k", work)

    arun(main())
    assert group.stats().panics == 1


def test_async_cancelled_follower_gives_up_alone(group, arun):
    async def main():
        go, work = gated()
        leader, follower = await leader_and_follower(group, "k", work)
        follower.cancel()
        with pytest.raises(asyncio.CancelledError):
            await follower
        assert group.stats().cancels == 1
        go.set()
        assert (await leader)[0] == b"v"

    arun(main())
    assert group.stats().abandons == 0


def test_async_timeout_gives_up_alone(group, arun):
    async def main():
        go, work = gated()
        leader = asyncio.ensure_future(group.do_async("k", work))
        await until(lambda: group.stats().leaders >= 1, "the leader")
        with pytest.raises(TimeoutError, match="gave up waiting"):
            await group.do_async("k", work, timeout=0.01)
        go.set()
        assert await leader == (b"v", True)

    arun(main())
    assert group.stats().cancels == 1


def test_async_cancelled_leader_alone_abandons_its_work(group, arun):
    seen = []

    async def main():
        started = asyncio.Event()

        async def work():
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                seen.append("work cancelled")
                raise
            return b"never"

        caller = asyncio.ensure_future(group.do_async("k", work))
        await started.wait()
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        await until(lambda: seen, "the work's cancellation")
        assert await group.do_async("k", lambda: _value(b"fresh")) == (b"fresh", False)

    arun(main())
    s = group.stats()
    assert seen == ["work cancelled"]
    assert (s.abandons, s.leaders) == (1, 2)


def test_async_cancelled_leader_work_goes_on_for_a_follower(group, arun):
    async def main():
        go, work = gated()
        caller, follower = await leader_and_follower(group, "k", work)
        caller.cancel()
        with pytest.raises(asyncio.CancelledError):
            await caller
        go.set()
        assert await follower == (b"v", True)

    arun(main())
    assert group.stats().abandons == 0


async def _value(v):
    return v


def test_async_leader_cancelled_by_its_loop_gives_followers_leader_exited(group):
    """The leader's loop shuts down with the work unfinished while a caller
    in another thread still waits: that caller raises LeaderExitedError."""
    started = threading.Event()
    outcome = []

    async def work():
        started.set()
        await asyncio.Event().wait()

    async def leader_loop():
        asyncio.ensure_future(group.do_async("k", work))
        await until(lambda: group.stats().followers >= 1, "the follower")
        # asyncio.run cancels the caller and the work's task on the way out.

    def follower():
        assert started.wait(DEADLINE)
        try:
            group.do("k", lambda: b"this thread led")
        except BaseException as exc:  # noqa: B902
            outcome.append(exc)

    t = threading.Thread(target=follower)
    t.start()
    asyncio.run(leader_loop())
    t.join(DEADLINE)
    assert [type(e) for e in outcome] == [LeaderExitedError]
    assert "cancelled" in str(outcome[0])
    assert group.do("k", lambda: b"fresh") == (b"fresh", False)


def open_fds():
    return len(os.listdir("/proc/self/fd"))


def test_async_followers_of_a_loop_share_one_descriptor(group, arun):
    """A stampede of tasks in one process: every caller is a follower the
    library counts, but the loop reads one eventfd for all of them."""
    n = 2000

    async def main():
        go, work = gated()
        before = open_fds()
        calls = [asyncio.ensure_future(group.do_async("k", work)) for _ in range(n)]
        await until(lambda: group.stats().followers >= n - 1, "every follower")
        during = open_fds()
        go.set()
        assert await asyncio.gather(*calls) == [(b"v", True)] * n
        return during - before

    assert arun(main()) <= 2  # one eventfd (uvloop may add one of its own)
    s = group.stats()
    assert (s.calls, s.leaders, s.followers) == (n, 1, n - 1)


def test_async_follower_holding_the_reader_hands_it_over_when_it_leaves(group, arun):
    async def main():
        go, work = gated()
        leader = asyncio.ensure_future(group.do_async("k", work))
        followers = [asyncio.ensure_future(group.do_async("k", work)) for _ in range(3)]
        await until(lambda: group.stats().followers >= 3, "three followers")
        followers[0].cancel()  # the first one holds the loop's reader
        with pytest.raises(asyncio.CancelledError):
            await followers[0]
        with pytest.raises(TimeoutError):  # and its successor times out
            await group.do_async("k", work, timeout=0)
        go.set()
        assert await asyncio.gather(leader, *followers[1:]) == [(b"v", True)] * 3

    arun(main())
    assert group.stats().cancels == 2


def test_async_followers_after_a_forget_wait_for_their_own_flight(group, arun):
    async def main():
        go1, work1 = gated()
        go2 = asyncio.Event()

        async def work2():
            await go2.wait()
            return b"second"

        first = await leader_and_follower(group, "k", work1)
        assert group.forget("k")
        second = await leader_and_follower(group, "k", work2)
        go2.set()  # the later flight completes first: its follower wakes now
        assert await asyncio.gather(*second) == [(b"second", True)] * 2
        assert not first[1].done()
        go1.set()
        assert await asyncio.gather(*first) == [(b"v", True)] * 2

    arun(main())
    assert group.stats().leaders == 2


# ---- gunicorn --------------------------------------------------------------------

# Debian's gunicorn (scripts/setup.sh installs it) is pure Python in
# Debian's dist-packages; the workers run this interpreter, the one the
# module was built for, with that directory last on their path.
DEBIAN_DIST = "/usr/lib/python3/dist-packages"
GUNICORN_MAIN = (
    "import sys; sys.path.append(%r); sys.argv[0] = 'gunicorn'; "
    "from gunicorn.app.wsgiapp import run; run()" % DEBIAN_DIST
)


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=DEADLINE)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read(), int(r.getheader("X-Worker")), r.getheader("X-Shared")
    finally:
        conn.close()


def test_gunicorn_workers_share_one_flight(name, tmp_path):
    """4 gunicorn sync workers; a burst of 4 requests for one cold key: a
    sync worker serves one request at a time, so the burst lands on the 4
    workers, and the loader runs once for all of them."""
    assert os.path.isdir(os.path.join(DEBIAN_DIST, "gunicorn")), (
        "Debian's gunicorn is not installed (scripts/setup.sh installs it)"
    )
    workers = 4
    counter = str(tmp_path / "executions")
    log = tmp_path / "gunicorn.log"
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))  # a free port, held from here on
    listener.listen(64)
    port = listener.getsockname()[1]
    env = dict(os.environ, SF_TEST_GROUP=name, SF_TEST_COUNTER=counter)
    with SharedGroup(name) as g, open(log, "wb") as logf:
        server = subprocess.Popen(
            [
                sys.executable, "-c", GUNICORN_MAIN,
                "--bind", "fd://%d" % listener.fileno(),
                "--workers", str(workers),
                "--worker-class", "sync",
                "--timeout", "120",
                "--graceful-timeout", "5",
                "--pythonpath", HERE,
                "--log-level", "warning",
                "shared_wsgi_app:app",
            ],
            env=env,
            pass_fds=[listener.fileno()],
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        listener.close()  # the server holds it now
        try:
            # Every worker has imported the app (and attached to the group):
            # the test's process and the workers.
            wait_until(
                lambda: g.stats().processes >= workers + 1 or server.poll() is not None,
                "the workers to attach",
            )
            assert server.poll() is None, log.read_text()
            for burst, key in enumerate(["/user/42", "/user/43"], start=1):
                path = "%s?followers=%d" % (key, burst * (workers - 1))
                results = run_threads(workers, lambda i: get(port, path))
                assert [r[0] for r in results] == ["ok"] * workers, results
                responses = [r[1] for r in results]
                assert {r[0] for r in responses} == {200}, responses
                leaders = executions(counter)
                assert len(leaders) == burst, leaders  # one more execution per burst
                assert {r[1] for r in responses} == {
                    b"%s loaded by worker %d" % (key.encode(), leaders[-1])
                }
                assert len({r[2] for r in responses}) == workers  # one request per worker
                assert {r[3] for r in responses} == {"1"}
            s = g.stats()
            assert (s.leaders, s.followers) == (2, 2 * (workers - 1))
        finally:
            os.killpg(server.pid, signal.SIGTERM)
            try:
                server.wait(DEADLINE)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
