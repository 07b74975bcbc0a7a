#!/usr/bin/env python3
"""docblocks.py DOC NAME...: prints, as one bash script, the blocks of the
Markdown file DOC that are marked for the named tests, so a test runs exactly
what the documentation tells a user to run.

A marker is an HTML comment on the line before a fenced block (blank lines
between are allowed); readers of the rendered page do not see it:

    <!-- test: NAME -->                 a shell block, copied verbatim
    <!-- test: NAME file: PATH -->      a file the user creates: written to
                                        PATH (relative to the work directory)
    <!-- test: NAME,NAME2 ... -->       a block that belongs to several tests
                                        (one hello program, two ways to build it)

Blocks come out name by name in the order given, each name's blocks in
document order.  A name with no block is an error, so a renamed or deleted
section cannot turn a test into a no-op.
"""

import re
import shlex
import sys

MARKER = re.compile(r"^<!--\s*test:\s*(?P<names>[\w.-]+(?:,[\w.-]+)*)(?:\s+file:\s*(?P<file>\S+))?\s*-->\s*$")
FENCE = re.compile(r"^(?P<fence>```+|~~~+)")


def blocks(lines):
    """Yields (names, file or None, body, line number) for every marked block."""
    i = 0
    while i < len(lines):
        m = MARKER.match(lines[i])
        if not m:
            i += 1
            continue
        start = i + 1
        i += 1
        while i < len(lines) and not lines[i].strip():
            i += 1
        f = FENCE.match(lines[i]) if i < len(lines) else None
        if not f:
            sys.exit("%d: the test marker is not followed by a fenced block" % start)
        fence, body = f.group("fence"), []
        i += 1
        while i < len(lines) and not lines[i].startswith(fence):
            body.append(lines[i])
            i += 1
        if i == len(lines):
            sys.exit("%d: the fenced block never ends" % start)
        i += 1
        yield m.group("names").split(","), m.group("file"), body, start


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    doc, names = sys.argv[1], sys.argv[2:]
    with open(doc, encoding="utf-8") as fh:
        found = list(blocks(fh.read().splitlines()))
    out = []
    for name in names:
        mine = [b for b in found if name in b[0]]
        if not mine:
            sys.exit("%s: no block is marked <!-- test: %s -->" % (doc, name))
        for n, (_, path, body, line) in enumerate(mine):
            out.append("# ---- %s:%d (test: %s)" % (doc, line, name))
            if path is None:
                out.extend(body)
                continue
            delimiter = "SF_DOC_%s_%d" % (re.sub(r"\W", "_", name), n)
            if delimiter in body:
                sys.exit("%d: the block contains the line %s" % (line, delimiter))
            quoted = shlex.quote(path)
            out.append("mkdir -p \"$(dirname %s)\"" % quoted)
            out.append("cat >%s <<'%s'" % (quoted, delimiter))
            out.extend(body)
            out.append(delimiter)
    print("\n".join(out))


if __name__ == "__main__":
    main()
