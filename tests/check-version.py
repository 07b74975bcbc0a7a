#!/usr/bin/env python3
"""The version has one source: SF_VERSION_MAJOR/MINOR/PATCH in
capi/include/singleflight.h.  CMake reads it with a regex, Meson through
scripts/version.py; the files that must state it again (the LuaJIT module,
every Rust crate and its dependency on the -sys crate, the Maven project)
are checked against it here, so a release that bumps the header and forgets
one of them fails the tests.

    check-version.py SOURCE_ROOT BUILD_VERSION

BUILD_VERSION is the version the calling build system read.
"""
import glob
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

root, build_version = sys.argv[1], sys.argv[2]
problems = []


def read(rel):
    with open(os.path.join(root, rel), encoding="utf-8") as f:
        return f.read()


def agree(what, found):
    if found != version:
        problems.append("%s says %r, the header %r" % (what, found, version))


header = read("capi/include/singleflight.h")
parts = [re.search(r"^#define SF_VERSION_%s (\d+)$" % p, header, re.M).group(1)
         for p in ("MAJOR", "MINOR", "PATCH")]
version = ".".join(parts)
agree("SF_VERSION_STRING", re.search(r'^#define SF_VERSION_STRING "([^"]*)"', header, re.M).group(1))
agree("the build (CMake or Meson)", build_version)
agree("scripts/version.py (Meson's reader)",
      subprocess.run([sys.executable, os.path.join(root, "scripts/version.py")],
                     check=True, capture_output=True, text=True).stdout.strip())

# LuaJIT: the module's _VERSION, and the ABI major it refuses to load against.
lua = read("bindings/luajit/singleflight.lua")
m = re.search(r'_VERSION\s*=\s*"([^"]*)"', lua)
agree("bindings/luajit/singleflight.lua _VERSION", m.group(1) if m else None)
m = re.search(r"^local ABI_MAJOR = (\d+)", lua, re.M)
if not m or m.group(1) != parts[0]:
    problems.append("bindings/luajit/singleflight.lua ABI_MAJOR is %s, the header's major %s"
                    % (m and m.group(1), parts[0]))

# Rust: every crate's [package] version, and every version requirement on a
# crate of this workspace (a path dependency that also names a version).
crates = sorted(glob.glob(os.path.join(root, "bindings/rust/*/Cargo.toml")))
if not crates:
    problems.append("no crate found under bindings/rust")
for path in crates:
    text = open(path, encoding="utf-8").read()
    pkg = re.search(r"^\[package\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S).group(1)
    agree(os.path.relpath(path, root) + " [package] version",
          re.search(r'^version\s*=\s*"([^"]*)"', pkg, re.M).group(1))
for path in crates:
    text = open(path, encoding="utf-8").read()
    for dep, spec in re.findall(r'^([A-Za-z0-9_-]+)\s*=\s*\{([^}]*)\}', text, re.M):
        m = re.search(r'version\s*=\s*"=?([^"]*)"', spec)
        if "path" in spec and m:
            agree("%s: dependency %s" % (os.path.relpath(path, root), dep), m.group(1))

# Java: the Maven project's own version.
ns = {"m": "http://maven.apache.org/POM/4.0.0"}
poms = sorted(glob.glob(os.path.join(root, "bindings/**/pom.xml"), recursive=True))
if not poms:
    problems.append("no pom.xml found under bindings/")
for pom in poms:
    v = ET.parse(pom).getroot().find("m:version", ns)
    agree(os.path.relpath(pom, root) + " <version>", v.text if v is not None else None)

# The rocks (Lua 5.4's and LuaJIT's): the rockspec's file name, its version
# (the part before the rockspec revision) and the tag it builds.
rocks = []
for d, package in (("bindings/swig/lua", "libsingleflight"), ("bindings/luajit", "libsingleflight-ffi")):
    found = sorted(glob.glob(os.path.join(root, d, "*.rockspec")))
    if len(found) != 1:
        problems.append("want one rockspec in %s, found %d" % (d, len(found)))
    rocks += [(path, package) for path in found]
for path, package in rocks:
    text = open(path, encoding="utf-8").read()
    name = os.path.basename(path)
    m = re.match(re.escape(package) + r"-(\d.*)-\d+\.rockspec$", name)
    agree(name + " (file name)", m.group(1) if m else None)
    m = re.search(r'^version\s*=\s*"([^"]*)-\d+"', text, re.M)
    agree(name + " version", m.group(1) if m else None)
    m = re.search(r'^\s*tag\s*=\s*"v([^"]*)"', text, re.M)
    agree(name + " source.tag", m.group(1) if m else None)

if problems:
    print("version %s (capi/include/singleflight.h) is not the version everywhere:" % version)
    for p in problems:
        print("  " + p)
    sys.exit(1)
print("version %s: the header, the build, LuaJIT, the rockspecs, %d Rust crate(s) and Maven agree"
      % (version, len(crates)))
