//go:build singleflight_system

package engine

// With the build tag singleflight_system, the package links the installed
// libsingleflight found by pkg-config (as every version before 1.2 did), and
// the sf_amalgam_*.cpp files are left out by their build constraint.

/*
#cgo pkg-config: singleflight
#cgo CPPFLAGS: -DSFGO_SYSTEM_LIBRARY
*/
import "C"
