"""A throwaway redis-server for the tests of the Redis tier: started on
127.0.0.1 on a free port with no persistence, stopped (and waited for) when
the test is done.  Not a test module itself; tests/check-stampede-redis.py
uses it too.

Readiness is a handshake, not a sleep: the server's log line "Ready to
accept connections" is read from its stdout.  A port taken between picking
it and the server binding it makes the server exit; then another port is
tried.
"""

import os
import shutil
import signal
import socket
import subprocess
import time

DEADLINE = 30.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """One redis-server process; ``url`` is ``redis://127.0.0.1:PORT/0``."""

    def __init__(self, password=None, port=None):
        exe = shutil.which("redis-server")
        if not exe:
            raise RuntimeError("redis-server is not installed (scripts/setup.sh installs it for the redis label)")
        self.password = password
        # A given port (a server restarted where the last one was) is tried
        # once; a free one, up to five times.
        for _ in range(1 if port else 5):
            self.port = port or free_port()
            args = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                    "--loglevel", "notice", "--logfile", ""]
            if password:
                args += ["--requirepass", password]
            self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            if self._ready():
                return
            self.stop()
        raise RuntimeError("redis-server did not start on a free port")

    def _ready(self):
        end = time.monotonic() + DEADLINE
        seen = []
        for line in self.proc.stdout:  # the server's log, until it is ready or exits
            seen.append(line)
            if b"Ready to accept connections" in line:
                # Its later log lines go nowhere: a full pipe would block it.
                self._drain()
                return True
            if time.monotonic() > end:
                break
        self.log = b"".join(seen)
        return False

    def _drain(self):
        import threading

        t = threading.Thread(target=lambda: self.proc.stdout.read(), daemon=True)
        t.start()

    @property
    def url(self):
        auth = ":%s@" % self.password if self.password else ""
        return "redis://%s127.0.0.1:%d/0" % (auth, self.port)

    def command(self, *args, db=0):
        """One command over a fresh connection (RESP) to database db, for the
        tests' checks: returns the reply as bytes, int, list or None."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=DEADLINE) as s:
            f = s.makefile("rb")
            if self.password:
                s.sendall(_encode(["AUTH", self.password]))
                _read(f)
            if db:
                s.sendall(_encode(["SELECT", db]))
                _read(f)
            s.sendall(_encode(args))
            return _read(f)

    def pause(self):
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self):
        self.proc.send_signal(signal.SIGCONT)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
        self.proc.wait(DEADLINE)
        if self.proc.stdout:
            self.proc.stdout.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def _encode(args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def _read(f):
    line = f.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise RuntimeError("redis: " + rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [_read(f) for _ in range(n)]
    raise RuntimeError("redis: unexpected reply %r" % line)


def unused_port_url():
    """A URL where nothing listens (for the Redis-down tests)."""
    return "redis://127.0.0.1:%d/0" % free_port()


if __name__ == "__main__":  # a quick self-check
    with RedisServer() as r:
        assert r.command("PING") == b"PONG"
        assert r.command("SET", "a", "1") == b"OK" and r.command("GET", "a") == b"1"
        print("ok", r.url, os.getpid())
