#!/usr/bin/env python3
"""Prints MAJOR.MINOR.PATCH from the public header: the one place the version lives."""
import os
import re

header = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "capi", "include", "singleflight.h")
with open(header, encoding="utf-8") as f:
    text = f.read()
parts = [re.search(r"#define SF_VERSION_%s (\d+)" % p, text).group(1) for p in ("MAJOR", "MINOR", "PATCH")]
print(".".join(parts))
