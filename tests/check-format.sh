#!/bin/sh
# The C and C++ sources are formatted as .clang-format says
# (scripts/format.sh fixes them).
#   check-format.sh SOURCE_ROOT
set -e
exec bash "$1/scripts/format.sh" --check
