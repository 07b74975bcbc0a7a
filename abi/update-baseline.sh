#!/usr/bin/env bash
# abi/update-baseline.sh LIBRARY.so HEADERS_DIR
# Rewrites abi/libsingleflight.so.1.abi from a built library (RelWithDebInfo,
# so that types are described).  The baseline is the first release of this
# SONAME (1.0): every 1.x must stay compatible with it, so rewrite it only
# for a new SONAME, and say why in the commit.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
lib=$1 inc=$2
abidw --headers-dir "$inc" --drop-private-types --drop-undefined-syms \
      --no-corpus-path --no-show-locs --no-comp-dir-path \
      --out-file "$here/libsingleflight.so.1.abi" "$lib"
# Translation-unit paths are only labels (abidiff matches by symbol); drop
# the machine-specific source root so the baseline does not depend on it.
root=$(cd "$here/.." && pwd)
sed -i "s|path='$root/|path='|g" "$here/libsingleflight.so.1.abi"
echo "wrote $here/libsingleflight.so.1.abi"
