/* The C API, for every cgo preamble of this package: the copy compiled into
 * the package (sf_amalgam_singleflight.h, made from capi/include by
 * scripts/gen-go-amalgamation.sh), or, with the build tag
 * singleflight_system (which defines SFGO_SYSTEM_LIBRARY: cgo_system.go),
 * the installed library's header, found through pkg-config. */
#ifndef SFGO_CAPI_H
#define SFGO_CAPI_H
#if defined(SFGO_SYSTEM_LIBRARY)
#include <singleflight.h>
#else
#include "sf_amalgam_singleflight.h"
#endif
#endif
