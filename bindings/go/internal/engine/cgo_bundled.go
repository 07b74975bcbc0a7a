//go:build !singleflight_system

package engine

// By default the C library is compiled into the package: cgo builds the
// sf_amalgam_*.cpp files of this directory, which
// scripts/gen-go-amalgamation.sh generates from core/ and capi/ (a ctest,
// go.amalgamation, fails when they fall behind).  So `go build` needs a C++17
// compiler and nothing installed.  The build tag singleflight_system links
// the installed library instead (cgo_system.go).
//
// SF_STATIC: the API is linked in, not imported from a DLL.  libstdc++ for
// the C++ core; -pthread for its helper thread.

/*
#cgo CPPFLAGS: -DSF_STATIC
#cgo CXXFLAGS: -std=c++17
#cgo LDFLAGS: -lstdc++ -pthread
*/
import "C"
