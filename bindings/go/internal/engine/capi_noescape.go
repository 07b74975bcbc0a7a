//go:build go1.22

package engine

// Go 1.22 added these directives (older versions reject them, hence the
// build tag).  noescape keeps the key of a Do on the caller's stack where
// escape analysis put it, instead of moving it to the heap for the C call;
// it requires nocallback, which sfgo_begin honours even on the library's
// rare paths that would run Go code (see sfgo_destroy in capi.go).

/*
#cgo noescape sfgo_begin
#cgo nocallback sfgo_begin
#include <stddef.h>
*/
import "C"
