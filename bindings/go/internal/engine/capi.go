package engine

// This file is the only one that talks to libsingleflight directly.  Every
// C call made here is short and never blocks on another caller: leaders run
// fn in Go between two cgo calls, and followers wait on a Go channel that a
// completion callback fills, so no waiting goroutine holds an OS thread.

/*
#cgo pkg-config: singleflight
#include <stdint.h>
#include <stdlib.h>
#include <singleflight.h>

// Implemented in Go (exports.go).  Handles travel as uintptr_t so that Go
// never has to turn an integer back into an unsafe.Pointer.
extern void sfgoDone(int status, sf_result *result, int shared, uintptr_t waiter);
extern void sfgoDestroy(uintptr_t value);

static void sfgo_done(int status, sf_result *result, int shared, void *payload) {
	sfgoDone(status, result, shared, (uintptr_t)payload);
}

static void sfgo_destroy(void *value) {
	sfgoDestroy((uintptr_t)value);
}

// One cgo call per leader for everything that happens after fn: publishing
// the outcome handle, completing the flight (as panicked when panic_msg is
// set), learning whether anyone joined, and dropping the call handle.
// Returns the first failing status, or SF_OK.
static int sfgo_complete(sf_call *call, uintptr_t outcome,
                         const char *panic_msg, int *shared) {
	int rc;
	sf_call_set_value(call, (void *)outcome, sfgo_destroy);
	rc = panic_msg != NULL ? sf_call_panic(call, panic_msg)
	                       : sf_call_finish(call, 0);
	if (rc == SF_OK) {
		rc = sf_call_wait(call, 0, NULL, shared);
		if (rc == SF_EPANIC && panic_msg != NULL)
			rc = SF_OK;
	}
	sf_call_release(call);
	return rc;
}

// A follower hands its wake-up to the flight and lets go of the call handle
// at once: the callback runs even after release, and releasing here keeps
// the handle from outliving this cgo call.
static int sfgo_follow(sf_call *call, uintptr_t waiter) {
	int rc = sf_call_on_done(call, sfgo_done, (void *)waiter);
	sf_call_release(call);
	return rc;
}

static uintptr_t sfgo_result_value(const sf_result *r) {
	return (uintptr_t)sf_result_value(r);
}
*/
import "C"

import (
	"fmt"
	"runtime"
	"runtime/cgo"
	"sync/atomic"
	"unsafe"
)

// Status codes the binding reacts to, named once.
const (
	statusOK       = int(C.SF_OK)
	statusLeader   = int(C.SF_LEADER)
	statusFollower = int(C.SF_FOLLOWER)
	statusPanic    = int(C.SF_EPANIC)
	statusGoexit   = int(C.SF_EGOEXIT)
	statusBusy     = int(C.SF_EBUSY)
)

// coreError reports a status the binding never expects from the library.  It
// is raised as a Go panic in Go frames only, never inside a callback.
type coreError struct {
	op   string
	code int
}

func (e *coreError) Error() string {
	return fmt.Sprintf("singleflight: %s: %s (%s)", e.op,
		C.GoString(C.sf_strerror(C.int(e.code))), C.GoString(C.sf_err_name(C.int(e.code))))
}

// cCall lets the files that do not import "C" name a call handle.
type cCall = C.sf_call

// groupCore owns one C group.  It is shared by pointer so that a finalizer
// can free the C side once no Group, leader or follower refers to it.  Every
// method keeps the core reachable until its C calls have returned, because
// sf_group_free must not run concurrently with any other use of the group.
type groupCore struct {
	// forgetEpoch counts Forgets begun and forgetting those under way: a
	// leader's record of its flight (selfcall.go) is trusted only while no
	// Forget may have detached that flight.  First, so that 32-bit
	// platforms align it for atomic access.
	forgetEpoch uint64
	forgetting  int32
	g           *C.sf_group
}

// freedGroups counts C groups released by finalizers; tests read it to prove
// that an abandoned Group does not leak its C side.
var freedGroups int64

func newGroupCore() *groupCore {
	var g *C.sf_group
	if rc := int(C.sf_group_new(&g, nil)); rc != statusOK {
		panic(&coreError{"sf_group_new", rc})
	}
	c := &groupCore{g: g}
	runtime.SetFinalizer(c, (*groupCore).free)
	return c
}

// free runs as a finalizer.  A flight cannot be in progress once the core is
// unreachable (leaders keep it alive until they release), but if the library
// still reports the group busy, try again at a later collection rather than
// free memory that is in use.
func (c *groupCore) free() {
	if rc := int(C.sf_group_free(c.g)); rc == statusBusy {
		runtime.SetFinalizer(c, (*groupCore).free)
		return
	}
	atomic.AddInt64(&freedGroups, 1)
}

// keyPtr returns a pointer to the key's bytes without copying them; the
// library copies the key before the call returns.  String bytes hold no Go
// pointers, so cgo's pointer rules allow passing them.
func keyPtr(key string) (unsafe.Pointer, C.size_t) {
	if len(key) == 0 {
		return nil, 0
	}
	return *(*unsafe.Pointer)(unsafe.Pointer(&key)), C.size_t(len(key))
}

// begin starts or joins the flight for key.  The returned call belongs to
// the caller, who must pass it to complete, release or follow exactly once.
func (c *groupCore) begin(key string) (call *C.sf_call, leader bool) {
	p, n := keyPtr(key)
	rc := int(C.sf_group_begin(c.g, p, n, &call))
	runtime.KeepAlive(key)
	runtime.KeepAlive(c)
	switch rc {
	case statusLeader:
		return call, true
	case statusFollower:
		return call, false
	}
	panic(&coreError{"sf_group_begin", rc})
}

// complete publishes a leader's outcome to every follower and drops the call.
// When panicMsg is non-empty the flight completes as panicked.  It reports
// whether any follower joined the flight before it completed.
func (c *groupCore) complete(call *C.sf_call, o interface{}, panicked bool, panicMsg string) bool {
	h := cgo.NewHandle(o)
	atomic.AddInt64(&liveOutcomes, 1)
	var msg *C.char
	if panicked {
		msg = C.CString(panicMsg)
		defer C.free(unsafe.Pointer(msg))
	}
	var shared C.int
	rc := int(C.sfgo_complete(call, C.uintptr_t(h), msg, &shared))
	runtime.KeepAlive(c)
	if rc != statusOK {
		panic(&coreError{"completing a flight", rc})
	}
	return shared != 0
}

// release drops a call that will not be completed or followed: a leader's
// without an outcome, which the library completes as SF_EGOEXIT (how a
// Goexit in fn reaches the followers), or a follower's that will not wait.
func (c *groupCore) release(call *C.sf_call) {
	C.sf_call_release(call)
	runtime.KeepAlive(c)
}

// follow registers w to be told the outcome of the flight that call joined,
// and releases call.  w.deliver runs exactly once, possibly before follow
// returns.
func (c *groupCore) follow(call *C.sf_call, w waiter) {
	h := cgo.NewHandle(w)
	rc := int(C.sfgo_follow(call, C.uintptr_t(h)))
	runtime.KeepAlive(c)
	if rc != statusOK {
		h.Delete()
		panic(&coreError{"sf_call_on_done", rc})
	}
}

func (c *groupCore) forget(key string) {
	// The epoch moves before the library forgets, and forgetting brackets
	// both, so that no leader record outlives its flight's place (see
	// beginEpoch).
	atomic.AddInt32(&c.forgetting, 1)
	atomic.AddUint64(&c.forgetEpoch, 1)
	p, n := keyPtr(key)
	C.sf_group_forget(c.g, p, n)
	runtime.KeepAlive(key)
	runtime.KeepAlive(c)
	atomic.AddInt32(&c.forgetting, -1)
}

func (c *groupCore) stats() Stats {
	var s C.sf_group_stats
	s.version = C.SF_GROUP_STATS_VERSION
	if rc := int(C.sf_group_stats_get(c.g, &s)); rc != statusOK {
		panic(&coreError{"sf_group_stats_get", rc})
	}
	runtime.KeepAlive(c)
	return Stats{
		Calls:     uint64(s.calls),
		Leaders:   uint64(s.leaders),
		Followers: uint64(s.followers),
		Panics:    uint64(s.panics),
		Goexits:   uint64(s.goexits),
		Forgets:   uint64(s.forgets),
		InFlight:  uint64(s.in_flight),
	}
}

// resultValue returns the Go value a leader stored in r (an *outcome), or nil
// when the flight ended without one.  Only valid while r is referenced.
func resultValue(r *C.sf_result) interface{} {
	h := uintptr(C.sfgo_result_value(r))
	if h == 0 {
		return nil
	}
	return cgo.Handle(h).Value()
}

// panicMessageOf is the library's copy of a panic message, for the case where
// no Go outcome travelled with the panic.
func panicMessageOf(r *C.sf_result) string {
	if m := C.sf_result_panic_message(r); m != nil {
		return C.GoString(m)
	}
	return "panic"
}

func loadFreed() int64 {
	return atomic.LoadInt64(&freedGroups)
}

// liveOutcomes counts outcome handles the library has not destroyed yet, so
// tests can show that destroy runs once the last result reference is gone.
var liveOutcomes int64

func loadLiveOutcomes() int64 {
	return atomic.LoadInt64(&liveOutcomes)
}
