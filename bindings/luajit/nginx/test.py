#!/usr/bin/env python3
"""The LuaJIT binding's shared group in a real nginx with the Lua module.

    test.py LIBRARY      (libsingleflight.so.1 to load in the workers)

Starts nginx (4 workers, test.conf, its own prefix in a temporary
directory, 127.0.0.1 on a free port), then makes a stampede on one key:

 1. requests for /hot, one connection each, until every worker has taken at
    least two (each says at once which worker it is in; the first one
    leads and its fn holds the flight), so the leader's worker has a
    follower of its own and every other worker has followers too;
 2. /ping until every worker answered: no worker is blocked by the
    followers it parks;
 3. /go with the number of /hot requests: the leader's fn returns once
    every other one has joined its flight (the group's own count);
 4. every /hot response read to its end.

It asserts that fn ran once, that every response has the same value, and
that the followers waited by knocking on the doorbell (a cosocket each)
and never called ngx.sleep.  Then a leader killed inside fn: requests for
/doomed over every worker as in step 1, and once every one joined, SIGKILL
to the leader's worker: the followers in the other workers must answer
EGOEXIT, and the key's next request lead a fresh flight.  After stopping
nginx, the error log must have no error (but the killed worker's exit) and
the segment must be gone.  Every wait is bounded; none is a sleep that
hopes.
"""

import os
import re
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BINDING = os.path.dirname(HERE)
WORKERS = 4
PER_WORKER = 2        # /hot requests each worker must take
MOST_REQUESTS = 400   # bounds step 1: 4 * (3/4)^400 is the chance to need more
MOST_PINGS = 400      # the same for step 2
IO_SECONDS = 60       # any one socket operation; a hang becomes a failure


def fail(message, log=None):
    sys.stderr.write("nginx test: FAIL: %s\n" % message)
    if log and os.path.exists(log):
        sys.stderr.write("---- error.log ----\n")
        with open(log, errors="replace") as f:
            sys.stderr.write(f.read()[-8000:])
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(port):
    return socket.create_connection(("127.0.0.1", port), timeout=IO_SECONDS)


def request(port, path):
    """A whole HTTP/1.0 exchange: returns (status, body)."""
    with connect(port) as s:
        s.sendall(b"GET %s HTTP/1.0\r\nHost: test\r\n\r\n" % path.encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, body.decode(errors="replace")


def worker_of(body):
    m = re.match(r"worker (\d+)\n", body)
    return int(m.group(1)) if m else None


def counters(port):
    return dict(line.split(" ") for line in request(port, "/count")[1].splitlines())


class Hot:
    """One request for a key held open: the worker that took it is known
    once its first line arrived."""

    def __init__(self, port, path="/hot"):
        self.sock = connect(port)
        self.sock.sendall(b"GET %s HTTP/1.0\r\nHost: test\r\n\r\n" % path.encode())
        self.data = b""
        while b"\r\n\r\n" not in self.data or b"\n" not in self.data.partition(b"\r\n\r\n")[2]:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RuntimeError("a /hot request ended early: %r" % self.data)
            self.data += chunk
        self.worker = worker_of(self.data.partition(b"\r\n\r\n")[2].decode())

    def finish(self):
        while True:
            chunk = self.sock.recv(65536)
            if not chunk:
                break
            self.data += chunk
        self.sock.close()
        head, _, body = self.data.partition(b"\r\n\r\n")
        fields = dict(line.split(" ", 1) for line in body.decode().splitlines() if " " in line)
        fields["status"] = head.split(b" ", 2)[1].decode()
        return fields


def start(prefix, port, group, library):
    with open(os.path.join(HERE, "test.conf")) as f:
        conf = string.Template(f.read()).substitute(
            # As root, nginx would run its workers as www-data, who cannot
            # read a tree that only root can.
            user="user root;" if os.geteuid() == 0 else "",
            prefix=prefix, binding=BINDING, group=group, library=library, port=port)
    path = os.path.join(prefix, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    log = os.path.join(prefix, "error.log")
    if os.path.exists(log):
        os.remove(log)  # a try on a port taken meanwhile logged its failure
    # daemon off: the master is this script's child, stopped below.
    nginx = subprocess.Popen(["nginx", "-p", prefix, "-c", path, "-e", log],
                             stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    return nginx, log


def wait_ready(nginx, port, log):
    """Until a worker answers /ping (nginx binds before it starts the
    workers, so this is a handshake, bounded)."""
    deadline = time.monotonic() + IO_SECONDS
    while time.monotonic() < deadline:
        if nginx.poll() is not None:
            return False
        try:
            if request(port, "/ping")[0] == 200:
                return True
        except OSError:
            time.sleep(0.05)
    fail("nginx never answered", log)


def stop(nginx, log):
    """SIGQUIT: workers finish their requests and run exit_worker_by_lua."""
    if nginx.poll() is None:
        nginx.send_signal(signal.SIGQUIT)
        try:
            nginx.wait(timeout=IO_SECONDS)
        except subprocess.TimeoutExpired:
            nginx.kill()
            nginx.wait()
            fail("nginx did not stop on SIGQUIT", log)


def cover(port, path, log):
    """Requests for path, held open, until every worker took PER_WORKER."""
    held = []
    taken = {}
    while len(taken) < WORKERS or min(taken.values()) < PER_WORKER:
        if len(held) == MOST_REQUESTS:
            fail("%d requests reached only %s" % (MOST_REQUESTS, taken), log)
        h = Hot(port, path)
        held.append(h)
        taken[h.worker] = taken.get(h.worker, 0) + 1
    return held, taken


def stampede(port, log):
    hot, taken = cover(port, "/hot", log)
    print("stampede: %d requests for one key over workers %s" % (len(hot), taken))

    answered = set()
    pings = 0
    while answered != set(taken):
        if pings == MOST_PINGS:
            fail("only workers %s answered /ping of %s" % (sorted(answered), sorted(taken)), log)
        status, body = request(port, "/ping")
        pings += 1
        if status != 200:
            fail("/ping: status %d" % status, log)
        answered.add(worker_of(body))
    print("every worker answered /ping while its followers waited (%d pings)" % pings)

    status, _ = request(port, "/go?n=%d" % len(hot))
    if status != 200:
        fail("/go: status %d" % status, log)
    results = [h.finish() for h in hot]
    return hot, results, counters(port)


def dead_leader(port, log):
    """Returns the pid of the worker killed."""
    before = int(counters(port)["followers"])
    held, taken = cover(port, "/doomed", log)
    deadline = time.monotonic() + IO_SECONDS
    while True:
        counts = counters(port)
        if int(counts["followers"]) >= before + len(held) - 1 and counts["doomed_leader"] != "0":
            break
        if time.monotonic() > deadline:
            fail("the /doomed requests never all joined: %s" % counts, log)
        time.sleep(0.01)  # between reads of a condition, bounded above
    leader = int(counts["doomed_leader"])
    killed = time.monotonic()
    os.kill(leader, signal.SIGKILL)
    waits = []
    for h in held:
        if h.worker == leader:
            h.sock.close()  # died with its worker
            continue
        r = h.finish()
        waits.append(time.monotonic() - killed)
        if r.get("error") != "SF_EGOEXIT" or r["led"] != "false":
            fail("a follower in worker %d of the killed leader got %s" % (h.worker, r), log)
    fresh = Hot(port, "/doomed").finish()
    if fresh.get("value") != "flight 2" or fresh["led"] != "true":
        fail("after the killed leader, the next request got %s" % fresh, log)
    waits.sort()
    print("leader worker %d killed inside fn: %d followers in the other workers got SF_EGOEXIT "
          "(all answered within %.1f ms of the SIGKILL, median %.1f ms); the next request led flight 2"
          % (leader, len(waits), waits[-1] * 1e3, waits[len(waits) // 2] * 1e3))
    return leader


def check(hot, results, counts, log):
    bad = [r for r in results if r["status"] != "200" or "value" not in r]
    if bad:
        fail("failed requests: %s" % bad[:3], log)
    values = {r["value"] for r in results}
    if len(values) != 1:
        fail("different values: %s" % sorted(values), log)
    if counts["executions"] != "1":
        fail("fn ran %s times for %d requests" % (counts["executions"], len(results)), log)
    leaders = [r for r in results if r["led"] == "true"]
    if len(leaders) != 1:
        fail("%d requests led" % len(leaders), log)
    leader_worker = hot[results.index(leaders[0])].worker
    followers = [(h, r) for h, r in zip(hot, results) if r["led"] != "true"]
    for h, r in followers:
        if r["shared"] != "true" or int(r["sockets"]) < 1 or r["sleeps"] != "0":
            fail("a follower in worker %d waited otherwise: %s" % (h.worker, r), log)
    same = sum(1 for h, _ in followers if h.worker == leader_worker)
    if same < 1 or len({h.worker for h, _ in followers} - {leader_worker}) < WORKERS - 1:
        fail("followers did not cover the workers", log)
    if counts["followers"] != str(len(results) - 1) or counts["leaders"] != "1":
        fail("the group's counters: %s" % counts, log)
    print("fn ran once for %d requests in %d workers: %s; %d followers in the leader's worker, "
          "%d in the others, each knocked on its doorbell and never slept"
          % (len(results), WORKERS, values.pop(), same, len(followers) - same))


def check_log(log, killed):
    expected = re.compile(r"worker process %d exited on signal 9" % killed)
    with open(log, errors="replace") as f:
        bad = [line for line in f
               if re.search(r"\[(error|crit|alert|emerg)\]", line) and not expected.search(line)]
    if bad:
        fail("the error log has errors:\n" + "".join(bad[:20]))


def main():
    # A timeout's SIGTERM unwinds through the finally blocks, which stop
    # nginx and remove the prefix.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("nginx test: terminated"))
    if len(sys.argv) != 2 or not os.path.exists(sys.argv[1]):
        fail("usage: test.py /path/to/libsingleflight.so.1")
    library = os.path.abspath(sys.argv[1])
    group = "sf-nginx-test-%d" % os.getpid()
    segment = "/dev/shm/libsingleflight." + group
    prefix = tempfile.mkdtemp(prefix="sf-nginx-")
    try:
        # A port found free may be taken before nginx binds it: then nginx
        # exits at once, and another port is tried.
        for _ in range(5):
            port = free_port()
            nginx, log = start(prefix, port, group, library)
            if wait_ready(nginx, port, log):
                break
        else:
            fail("nginx did not start", log)
        try:
            hot, results, counts = stampede(port, log)
            check(hot, results, counts, log)
            killed = dead_leader(port, log)
        finally:
            stop(nginx, log)
        check_log(log, killed)
        if os.path.exists(segment):
            fail("the shared group's segment outlived the workers: " + segment, log)
        print("nginx stopped; no error logged; the segment is gone")
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


if __name__ == "__main__":
    main()
