package engine

// What a C caller of a Go group does, through the C API and nothing else,
// for the tests that check that C and Go callers of one key share one
// flight.  Not used by the binding itself.

/*
#include "sfgo_capi.h"
*/
import "C"

import (
	"runtime"
	"time"
)

// cBegin is sf_group_begin on g's C group, as a C caller would call it.
func cBegin(g *Group, key string) (call *cCall, leader bool) {
	return g.c().begin(key)
}

// cFinish completes a C leader's two-phase flight with an error code and
// no value, then releases the call.
func cFinish(g *Group, call *cCall, code int) int {
	rc := int(C.sf_call_finish(call, C.int(code)))
	C.sf_call_release(call)
	runtime.KeepAlive(g)
	return rc
}

// cWait is a C follower's bounded sf_call_wait; it drops the result
// reference at once.
func cWait(g *Group, call *cCall, timeout time.Duration) (status int, shared bool) {
	var r *C.sf_result
	var sh C.int
	status = int(C.sf_call_wait(call, C.sf_i64(timeout.Nanoseconds()), &r, &sh))
	C.sf_result_release(r)
	runtime.KeepAlive(g)
	return status, sh != 0
}

// cCancel is a C caller giving up (sf_call_cancel's return value).
func cCancel(g *Group, call *cCall) int {
	rc := int(C.sf_call_cancel(call))
	runtime.KeepAlive(g)
	return rc
}

// cRelease drops a C caller's handle.
func cRelease(g *Group, call *cCall) {
	g.c().release(call)
}

// cStats is the C library's own counters for g: what crossed into C,
// without the followers that joined in Go.
func cStats(g *Group) Stats {
	return g.c().cStats()
}
