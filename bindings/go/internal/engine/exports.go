package engine

// The functions libsingleflight calls back into.  They live alone in this
// file because cgo forbids C definitions in the preamble of a file that has
// //export functions.  Neither lets a Go panic reach the C frames below it.

/*
#include <stdint.h>
#include "sfgo_capi.h"
*/
import "C"

import (
	"runtime/cgo"
	"sync/atomic"
)

// sfgoDone is the sf_done_fn of every follower.  It runs once, on the thread
// that completes the flight (inside that leader's cgo call) or on the
// follower's own thread inside sf_call_on_done.  result is borrowed, so the
// outcome is read here, before returning.
//
//export sfgoDone
func sfgoDone(status C.int, result *C.sf_result, shared C.int, payload C.uintptr_t) {
	defer escalate()
	h := cgo.Handle(payload)
	w := h.Value().(waiter)
	h.Delete()

	d := delivery{status: int(status), shared: shared != 0}
	if d.status == statusOK || d.status == statusPanic {
		d.value = resultValue(result)
		if d.value == nil && d.status == statusPanic {
			d.panicMsg = panicMessageOf(result)
		}
	}
	w.deliver(d)
}

// sfgoDestroy is the sf_destroy_fn of every outcome: the library calls it once
// the last reference to a result is gone, so the outcome may be collected.
//
//export sfgoDestroy
func sfgoDestroy(value C.uintptr_t) {
	defer escalate()
	cgo.Handle(value).Delete()
	atomic.AddInt64(&liveOutcomes, -1)
}

// escalate keeps a bug in a callback from unwinding into C: the panic is
// re-raised on a fresh goroutine, which crashes the process with the original
// value instead of corrupting the library's stack.
func escalate() {
	if r := recover(); r != nil {
		go panic(r)
	}
}

// sfgoAbandon is the sf_abandon_fn of every DoContext flight: the last
// caller has given up while fn runs, so fn's context is cancelled.  It runs
// on that caller's goroutine, inside its sf_call_cancel or sf_call_release.
//
//export sfgoAbandon
func sfgoAbandon(id C.uintptr_t) {
	defer escalate()
	abandoners.abandoned(uintptr(id))
}
