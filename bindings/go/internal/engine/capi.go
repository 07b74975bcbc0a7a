package engine

// This file is the only one that talks to libsingleflight directly.  Every
// C call made here is short and never blocks on another caller: leaders run
// fn in Go between two cgo calls, and followers wait on a Go channel that a
// completion callback fills, so no waiting goroutine holds an OS thread.

/*
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include "sfgo_capi.h"

// Implemented in Go (exports.go).  Handles travel as uintptr_t so that Go
// never has to turn an integer back into an unsafe.Pointer.
extern void sfgoDone(int status, sf_result *result, int shared, uintptr_t waiter);
extern void sfgoDestroy(uintptr_t value);
extern void sfgoAbandon(uintptr_t id);

static void sfgo_done(int status, sf_result *result, int shared, void *payload) {
	sfgoDone(status, result, shared, (uintptr_t)payload);
}

static void sfgo_abandon(sf_call *call, void *payload) {
	(void)call;
	sfgoAbandon((uintptr_t)payload);
}

// Calls into the library that Go 1.22+ marks nocallback (capi_noescape.go)
// must not reach Go, or the runtime aborts; and since they are also
// noescape, a callback could move the goroutine stack that the key lives
// on.  The one Go callback they can reach is an outcome's destroy, on
// rare paths (sf_group_begin dropping the last reference to a flight it
// met on a hash collision).  While such a call runs, destroy parks the
// handle here instead; the Go side hands the parked ones to sfgoDestroy
// right after (sfgo_begun.parked).
static __thread int sfgo_no_callback;
static __thread int sfgo_parked_here;
static pthread_mutex_t sfgo_parked_mu = PTHREAD_MUTEX_INITIALIZER;
static uintptr_t *sfgo_parked;
static size_t sfgo_parked_len, sfgo_parked_cap;

static void sfgo_destroy(void *value) {
	if (!sfgo_no_callback) {
		sfgoDestroy((uintptr_t)value);
		return;
	}
	pthread_mutex_lock(&sfgo_parked_mu);
	if (sfgo_parked_len == sfgo_parked_cap) {
		size_t cap = sfgo_parked_cap ? 2 * sfgo_parked_cap : 16;
		uintptr_t *p = realloc(sfgo_parked, cap * sizeof *p);
		if (p != NULL) {
			sfgo_parked = p;
			sfgo_parked_cap = cap;
		}
	}
	// Out of memory: the handle stays in Go's table, a leak of one value
	// rather than a crash.
	if (sfgo_parked_len < sfgo_parked_cap)
		sfgo_parked[sfgo_parked_len++] = (uintptr_t)value;
	pthread_mutex_unlock(&sfgo_parked_mu);
	sfgo_parked_here = 1;
}

// Runs the parked destroys; an ordinary cgo call, so callbacks are fine.
static void sfgo_destroy_parked(void) {
	for (;;) {
		uintptr_t v = 0;
		pthread_mutex_lock(&sfgo_parked_mu);
		if (sfgo_parked_len > 0)
			v = sfgo_parked[--sfgo_parked_len];
		pthread_mutex_unlock(&sfgo_parked_mu);
		if (v == 0)
			return;
		sfgoDestroy(v);
	}
}

// What sfgo_begin does with a destroy the library runs inside it, for the
// test of the parking (the real case needs a hash collision).
static int sfgo_destroy_as_in_begin(uintptr_t value) {
	int parked;
	sfgo_no_callback = 1;
	sfgo_destroy((void *)value);
	sfgo_no_callback = 0;
	parked = sfgo_parked_here;
	sfgo_parked_here = 0;
	return parked;
}

// sf_group_begin's results by value: an out-parameter would make Go move
// the handle variable to the heap on every call.
typedef struct {
	sf_call *call;
	int      rc;
	int      parked; // a destroy was parked during the call
} sfgo_begun;

// The hot calls take handles as uintptr_t: cgo checks every argument of a
// pointer type it cannot see into (an opaque struct) for Go pointers, at a
// cost comparable to the library's own work, and these point to C memory.
static sfgo_begun sfgo_begin(uintptr_t g, const char *key, size_t len) {
	sfgo_begun b;
	sfgo_no_callback = 1;
	b.rc = sf_group_begin((sf_group *)g, key, len, &b.call);
	sfgo_no_callback = 0;
	b.parked = sfgo_parked_here;
	sfgo_parked_here = 0;
	return b;
}

static int sfgo_finish_unshared(uintptr_t call) {
	return sf_call_finish_unshared((sf_call *)call, 0);
}

// Publishes a leader's outcome handle and completes the flight (as
// panicked when panic_msg is set), then drops the call if release is set:
// one cgo call for a leader whose flight someone joined.  Returns whether
// anyone joined (0 or 1), or a negative status.  A leader's caller that
// gave up (DoContext) cannot read the flight back (SF_ECANCELED): it has
// gone, so whether anyone shared with it does not matter.
static int sfgo_publish(sf_call *call, uintptr_t outcome, const char *panic_msg, int release) {
	int rc, shared = 0;
	sf_call_set_value(call, (void *)outcome, sfgo_destroy);
	rc = panic_msg != NULL ? sf_call_panic(call, panic_msg)
	                       : sf_call_finish(call, 0);
	if (rc == SF_OK) {
		rc = sf_call_wait(call, 0, NULL, &shared);
		if (rc == SF_OK || rc == SF_ECANCELED || (rc == SF_EPANIC && panic_msg != NULL))
			rc = shared != 0;
	}
	if (release)
		sf_call_release(call);
	return rc;
}

static int sfgo_on_done(sf_call *call, uintptr_t waiter) {
	return sf_call_on_done(call, sfgo_done, (void *)waiter);
}

static int sfgo_on_abandon(sf_call *call, uintptr_t id) {
	return sf_call_on_abandon(call, sfgo_abandon, (void *)id);
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
	"sync"
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
	statusState    = int(C.SF_ESTATE)
	statusCanceled = int(C.SF_ECANCELED)
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
	// goFollowers counts the followers that joined a flight in Go
	// (join.go), which the C library never sees; striped by goroutine so
	// that a herd joining one flight does not queue on one cache line.
	// First, so that 32-bit platforms align the counters.
	goFollowers [followerStripes]stripe

	// forgetEpoch counts Forgets begun and forgetting those under way: a
	// leader's record of its flight (selfcall.go) is trusted only while no
	// Forget may have detached that flight.  First, so that 32-bit
	// platforms align it for atomic access.
	forgetEpoch uint64
	// Callers that gave up in Go (join.go): the C library never sees
	// them, so Stats adds them.
	goCancels  uint64
	forgetting int32
	g          *C.sf_group

	// The goFlights Go callers can join, by key (join.go).  nListed is
	// len(flights), read without the lock so that a group with no Go
	// followers pays one atomic load per call for the table; hot is the
	// flight listed last, which a herd on one key finds without the lock.
	nListed   int32
	flightsMu sync.RWMutex
	flights   map[string]*goFlight
	hot       atomic.Pointer[goFlight]

	// DoContext's flight records, reused (context.go).
	ctxPool sync.Pool
}

// freedGroups counts C groups released by finalizers; tests read it to prove
// that an abandoned Group does not leak its C side.
var freedGroups int64

func newGroupCore() *groupCore {
	var g *C.sf_group
	if rc := int(C.sf_group_new(&g, nil)); rc != statusOK {
		panic(&coreError{"sf_group_new", rc})
	}
	c := &groupCore{g: g, flights: make(map[string]*goFlight)}
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
// library copies the key before the call returns.  As a *C.char the key is
// no Go pointer cgo needs to check: string bytes hold no pointers.
func keyPtr(key string) (*C.char, C.size_t) {
	if len(key) == 0 {
		return nil, 0
	}
	return (*C.char)(*(*unsafe.Pointer)(unsafe.Pointer(&key))), C.size_t(len(key))
}

// begin starts or joins the flight for key.  The returned call belongs to
// the caller, who must finish (finishUnshared, complete, publish) or
// release it exactly once.  One cgo call, no allocation.
func (c *groupCore) begin(key string) (call *C.sf_call, leader bool) {
	p, n := keyPtr(key)
	b := C.sfgo_begin(C.uintptr_t(uintptr(unsafe.Pointer(c.g))), p, n)
	runtime.KeepAlive(key)
	runtime.KeepAlive(c)
	if b.parked != 0 {
		C.sfgo_destroy_parked()
	}
	switch int(b.rc) {
	case statusLeader:
		return b.call, true
	case statusFollower:
		return b.call, false
	}
	panic(&coreError{"sf_group_begin", int(b.rc)})
}

// finishUnshared completes a leader's flight and releases its call in one
// step if nobody joined it, and reports whether it did; otherwise it
// changes nothing and the caller completes the flight with an outcome.
// The uncontended Do's second and last cgo call: fn's results never leave
// Go.  Not for DoContext's flights: it releases the call, which the caller
// that began such a flight may be cancelling at the same time.
func (c *groupCore) finishUnshared(call *C.sf_call) bool {
	rc := int(C.sfgo_finish_unshared(C.uintptr_t(uintptr(unsafe.Pointer(call)))))
	runtime.KeepAlive(c)
	switch rc {
	case 0:
		return true
	case 1:
		return false
	}
	panic(&coreError{"sf_call_finish_unshared", rc})
}

// complete publishes a leader's outcome to every follower and drops the
// call.  When panicked the flight completes as panicked with panicMsg.  It
// reports whether any follower joined the flight before it completed.
func (c *groupCore) complete(call *C.sf_call, o interface{}, panicked bool, panicMsg string) bool {
	return c.publishOutcome(call, o, panicked, panicMsg, true)
}

// publish is complete without the release, for a call that another
// goroutine may still use (DoContext's leader).
func (c *groupCore) publish(call *C.sf_call, o interface{}, panicked bool, panicMsg string) bool {
	return c.publishOutcome(call, o, panicked, panicMsg, false)
}

func (c *groupCore) publishOutcome(call *C.sf_call, o interface{}, panicked bool, panicMsg string, release bool) bool {
	var msg *C.char
	if panicked {
		msg = C.CString(panicMsg)
		defer C.free(unsafe.Pointer(msg))
	}
	rel := C.int(0)
	if release {
		rel = 1
	}
	// The library destroys the handle (sfgoDestroy) once the last
	// reference to the flight's result is gone.
	atomic.AddInt64(&liveOutcomes, 1)
	rc := int(C.sfgo_publish(call, C.uintptr_t(cgo.NewHandle(o)), msg, rel))
	runtime.KeepAlive(c)
	if rc < 0 {
		panic(&coreError{"completing a flight", rc})
	}
	return rc == 1
}

// release drops a call.  A leader's without an outcome makes the library
// complete the flight as SF_EGOEXIT (how a Goexit in fn reaches the
// followers); a follower's before the flight completes is leaving it (and
// may abandon it, see cancel).
func (c *groupCore) release(call *C.sf_call) {
	C.sf_call_release(call)
	runtime.KeepAlive(c)
}

// onDone registers w to be told the outcome of the flight that call
// joined.  w.deliver runs exactly once, possibly before onDone returns,
// possibly (after cancel) with statusCanceled.  The caller keeps call, and
// with it its interest in the flight, until it releases it.
func (c *groupCore) onDone(call *C.sf_call, w waiter) {
	h := cgo.NewHandle(w)
	rc := int(C.sfgo_on_done(call, C.uintptr_t(h)))
	runtime.KeepAlive(c)
	if rc != statusOK {
		h.Delete()
		panic(&coreError{"sf_call_on_done", rc})
	}
}

// cancel gives up call's interest in its flight: a waiter registered with
// onDone is told statusCanceled now, unless the flight completed first.
// When this was the last interest the flight is abandoned and its abandon
// callback has run on this goroutine.  The call must still be released.
func (c *groupCore) cancel(call *C.sf_call) {
	rc := int(C.sf_call_cancel(call))
	runtime.KeepAlive(c)
	// SF_ESTATE: the flight completed first; the outcome stands.
	if rc < 0 && rc != statusState {
		panic(&coreError{"sf_call_cancel", rc})
	}
}

// onAbandon makes the library call abandoners.abandoned(id) (through
// sfgoAbandon, exports.go) once the flight that call leads is abandoned.
// Leader's call only.
func (c *groupCore) onAbandon(call *C.sf_call, id uintptr) {
	rc := int(C.sfgo_on_abandon(call, C.uintptr_t(id)))
	runtime.KeepAlive(c)
	if rc != statusOK {
		panic(&coreError{"sf_call_on_abandon", rc})
	}
}

func (c *groupCore) forget(key string) {
	// The epoch moves before the library forgets, and forgetting brackets
	// both, so that no leader record outlives its flight's place (see
	// beginEpoch).
	atomic.AddInt32(&c.forgetting, 1)
	atomic.AddUint64(&c.forgetEpoch, 1)
	p, n := keyPtr(key)
	C.sf_group_forget(c.g, unsafe.Pointer(p), n)
	runtime.KeepAlive(key)
	runtime.KeepAlive(c)
	// The key's goFlight goes after the C flight: a Go caller arriving in
	// between may still join the forgotten flight, as a call concurrent
	// with Forget may.  A goFlight its first follower lists meanwhile is
	// refused (list checks forgetting and the epoch).
	c.delistKey(key)
	atomic.AddInt32(&c.forgetting, -1)
}

// stats is the C library's counters plus what only Go saw: followers that
// joined in Go, and callers that gave up there.
func (c *groupCore) stats() Stats {
	s := c.cStats()
	var goFollowers uint64
	for i := range c.goFollowers {
		goFollowers += atomic.LoadUint64(&c.goFollowers[i].n)
	}
	s.Calls += goFollowers
	s.Followers += goFollowers
	s.Cancels += atomic.LoadUint64(&c.goCancels)
	return s
}

// cStats is the C library's own counters: what crossed into C.
func (c *groupCore) cStats() Stats {
	s := statsOf(c.g)
	runtime.KeepAlive(c)
	return s
}

// statsOf reads the library's counters of a live group.
func statsOf(g *C.sf_group) Stats {
	var s C.sf_group_stats
	s.version = C.SF_GROUP_STATS_VERSION
	if rc := int(C.sf_group_stats_get(g, &s)); rc != statusOK {
		panic(&coreError{"sf_group_stats_get", rc})
	}
	return Stats{
		Calls:     uint64(s.calls),
		Leaders:   uint64(s.leaders),
		Followers: uint64(s.followers),
		Panics:    uint64(s.panics),
		Goexits:   uint64(s.goexits),
		Forgets:   uint64(s.forgets),
		InFlight:  uint64(s.in_flight),
		Abandons:  uint64(s.abandons),
		Cancels:   uint64(s.cancels),
		Processes: uint64(s.processes),
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

// destroyAsInBegin runs the outcomes' destroys the way they run when the
// library drops a flight inside sfgo_begin (parked, Go not called), then
// hands the parked destroys to Go as begin does.  It reports how many were
// parked.  For tests.
func destroyAsInBegin(os []interface{}) int {
	parked := 0
	for _, o := range os {
		atomic.AddInt64(&liveOutcomes, 1)
		if C.sfgo_destroy_as_in_begin(C.uintptr_t(cgo.NewHandle(o))) != 0 {
			parked++
		}
	}
	C.sfgo_destroy_parked()
	return parked
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
