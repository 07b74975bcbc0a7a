//go:build singleflight_system

package engine

// With the build tag singleflight_system, the package links the installed
// libsingleflight found by pkg-config (the only way before the module
// carried the sources), and the sf_amalgam_*.cpp files are left out by
// their build constraint.

/*
#cgo pkg-config: singleflight
#cgo CPPFLAGS: -DSFGO_SYSTEM_LIBRARY
*/
import "C"
