"""A WSGI app for test_shared.py's gunicorn test: every request for /KEY
loads KEY through one SharedGroup shared by all the workers.

Environment (set by the test): SF_TEST_GROUP, the group's name;
SF_TEST_COUNTER, the file each execution of the loader appends a line to.
A request's ?followers=N makes the loader return only once the group has
counted N followers in all (the test's handshake: every request of a burst
has joined before the flight completes, so none can lead a second one).
The response is the loaded value; X-Worker names the worker process.
"""

import os
from urllib.parse import parse_qs

import libsingleflight
from shared_workers import count_execution, wait_until

# Each worker opens the group when gunicorn imports the app in it.
group = libsingleflight.SharedGroup(os.environ["SF_TEST_GROUP"])
COUNTER = os.environ["SF_TEST_COUNTER"]


def app(environ, start_response):
    key = environ["PATH_INFO"]
    followers = int(parse_qs(environ.get("QUERY_STRING", "")).get("followers", ["0"])[0])

    def load():
        count_execution(COUNTER)
        wait_until(lambda: group.stats().followers >= followers, "%d followers" % followers)
        return ("%s loaded by worker %d" % (key, os.getpid())).encode()

    try:
        value, shared = group.do(key, load)
        status = "200 OK"
    except Exception as exc:  # noqa: BLE001 - the test reads it in the body
        value, shared, status = ("%s: %s" % (type(exc).__name__, exc)).encode(), False, "500 Error"
    start_response(
        status,
        [
            ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(len(value))),
            ("X-Worker", str(os.getpid())),
            ("X-Shared", str(int(shared))),
        ],
    )
    return [value]
