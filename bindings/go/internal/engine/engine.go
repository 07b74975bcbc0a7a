// Package engine is the one implementation behind the singleflight and typed
// packages: a Group backed by a C group, and generic Do and DoChan whose fn
// runs in Go while the C library keeps the table of flights.
package engine

import (
	"runtime"
	"sync"
)

// Group is a namespace of keys.  The zero value is ready to use; it must not
// be copied after first use.  Safe for concurrent use.  The C group is
// created on first use and freed by a finalizer once unreachable.
type Group struct {
	once sync.Once
	core *groupCore
}

// Stats is a snapshot of a Group's counters: the C library's, plus the
// followers that joined a flight in Go and the callers that gave up there
// (join.go), which the C library never sees.
type Stats struct {
	Calls     uint64 // Leaders + Followers
	Leaders   uint64 // calls that ran fn
	Followers uint64 // calls that joined a flight in progress
	Panics    uint64 // flights whose fn panicked
	Goexits   uint64 // flights whose fn called runtime.Goexit
	Forgets   uint64 // flights that Forget detached from their key
	InFlight  uint64 // flights not yet complete
	Abandons  uint64 // DoContext flights every caller gave up while fn ran
	Cancels   uint64 // DoContext callers whose ctx ended before the flight
	Processes uint64 // processes attached to a shared group; 0 for Group
}

func (g *Group) c() *groupCore {
	g.once.Do(func() { g.core = newGroupCore() })
	return g.core
}

// Forget detaches the key's current flight, if any: the next call starts a
// new flight while the old one still delivers to its own callers.
// Thread-safe.
func (g *Group) Forget(key string) {
	g.c().forget(key)
}

// Stats reads the Group's counters.  Thread-safe.  Each counter is exact when
// no call runs at the same time, and otherwise a value it had during the
// read (the C library sums per-thread stripes; see its header).
func (g *Group) Stats() Stats {
	return g.c().stats()
}

// FreedGroups is how many C groups finalizers have released so far.  It lets
// tests show that an abandoned Group does not leak its C side.
func FreedGroups() int64 {
	return loadFreed()
}

// LiveOutcomes is how many flight outcomes the C library still holds, i.e.
// whose destroy callback has not run yet.
func LiveOutcomes() int64 {
	return loadLiveOutcomes()
}

// Do runs fn once for all concurrent callers of key and gives each of them
// fn's results and whether they were shared.  fn runs on the calling
// goroutine of the leader.  A panic in fn re-panics in every caller with the
// same *panicError; runtime.Goexit in fn ends every caller's goroutine.
// Followers wait on a Go channel, holding no OS thread.  A call from inside
// fn, on the goroutine running it, for fn's own key panics with an error
// matching ErrDeadlock instead of waiting forever.
//
// A leader nobody joined crosses into C twice (sf_group_begin,
// sf_call_finish_unshared) and allocates nothing: fn's results stay in Go,
// and the outcome handle exists only once someone joined.  The first Go
// follower of a flight joins it in C; the Go callers after it join that
// follower's goFlight without crossing into C (join.go).
func Do[V any](g *Group, key string, fn func() (V, error)) (V, error, bool) {
	core := g.c()
	f := core.joinListedToWait(key)
	if f == nil {
		epoch := core.beginEpoch()
		call, leader := core.begin(key)
		if leader {
			return lead(core, call, key, epoch, fn)
		}
		f = core.follow(call, key, epoch)
	}
	// Parked here, not in a helper: a follower's stack at the park is as
	// shallow as can be, so that a fresh goroutine (a herd of them) need
	// not grow its stack to wait.
	<-f.done
	d := f.d
	f.leave(false)
	return deliveredOrExit[V](d)
}

// follow turns the follower's call that begin just returned into a
// goFlight the caller has joined, after checking that the caller is not
// the flight's own leader (then it panics with ErrDeadlock, and the call
// is dropped).
func (c *groupCore) follow(call *cCall, key string, mark beginMark) *goFlight {
	if c.leadsItself(key) {
		c.release(call)
		panic(deadlock(key))
	}
	return c.followInGo(call, key, mark)
}

// deliveredOrExit turns a completed flight into a follower's results, or
// re-panics with the flight's panic, or ends the goroutine after a Goexit.
func deliveredOrExit[V any](d delivery) (V, error, bool) {
	switch d.status {
	case statusOK:
		o := outcomeFrom[V](d)
		return o.val, o.err, true
	case statusPanic:
		panic(outcomeFrom[V](d).err)
	case statusGoexit:
		runtime.Goexit()
	}
	panic(&coreError{"waiting for a flight", d.status})
}

// DoChan starts or joins key's flight without waiting.  When the flight
// returns normally, send runs exactly once with its results; send must not
// block (it may run inside a C callback).  When fn panics the process crashes
// with the panic, and when fn calls runtime.Goexit send never runs: both as
// x/sync does for DoChan.  The leader's fn runs on a new goroutine.
func DoChan[V any](g *Group, key string, fn func() (V, error), send func(V, error, bool)) {
	core := g.c()
	if f := core.joinListed(key); f != nil {
		f.addSend(func(d delivery) { sendDelivery(d, send) })
		return
	}
	epoch := core.beginEpoch()
	call, leader := core.begin(key)
	if leader {
		go func() {
			// Nothing recovers a panic that lead re-raises here, so it
			// crashes the process.
			v, err, shared := lead(core, call, key, epoch, fn)
			send(v, err, shared)
		}()
		return
	}
	// A DoChan caller does not wait, so it cannot wait for itself: no
	// deadlock check.
	core.followInGo(call, key, epoch).addSend(func(d delivery) { sendDelivery(d, send) })
}

// sendDelivery hands a DoChan follower its flight's outcome.  It may run
// inside a C callback, so it never blocks.
func sendDelivery[V any](d delivery, send func(V, error, bool)) {
	switch d.status {
	case statusOK:
		o := outcomeFrom[V](d)
		send(o.val, o.err, d.shared)
	case statusPanic:
		// A fresh goroutine has no recover, so this crashes the process
		// with the shared panic value, as x/sync does.
		go panic(outcomeFrom[V](d).err)
	}
}

// outcome is what a leader's fn produced.  The leader writes it before it
// publishes it through a cgo.Handle; followers only read it afterwards.
type outcome[V any] struct {
	val V
	err error
}

// delivery is what a follower learns when its flight completes.
type delivery struct {
	status   int
	value    interface{} // the leader's *outcome[V], nil after Goexit
	panicMsg string      // the C library's message when value is missing
	shared   bool
}

// outcomeFrom recovers the typed outcome.  value is missing only if a leader
// outside this package completed the flight; its panic message still reaches
// the caller.
func outcomeFrom[V any](d delivery) *outcome[V] {
	if o, ok := d.value.(*outcome[V]); ok {
		return o
	}
	if d.status == statusPanic {
		return &outcome[V]{err: &panicError{value: d.panicMsg}}
	}
	return &outcome[V]{}
}

// waiter receives a follower's delivery (goFlight is the one).  deliver
// runs inside a cgo callback, so it must neither block on other callers
// nor panic.
type waiter interface {
	deliver(d delivery)
}

// fnOutcome is what running fn came to.
type fnOutcome int

const (
	fnReturned fnOutcome = iota // including a *panicError returned (see lead)
	fnPanicked                  // err holds the *panicError
	fnExited                    // runtime.Goexit: nothing ran after fn
)

// runFn calls fn on this goroutine as the leader of key's flight, recording
// it as such meanwhile (epoch: see beginEpoch), and recovers a panic into a
// *panicError.  On Goexit it does not return: onExit runs, then the
// goroutine goes on exiting.
func runFn[V any](core *groupCore, key string, epoch beginMark, fn func() (V, error), onExit func()) (val V, err error, how fnOutcome) {
	normalReturn, recovered := false, false
	// Goexit is told apart from a panic by what recover can do: a panic is
	// stopped by the inner deferred recover, so execution reaches the line
	// after the inner function; Goexit cannot be stopped, only deferred calls
	// run.
	defer func() {
		if !normalReturn && !recovered {
			onExit()
		}
	}()
	if epoch.ok {
		defer popLead(pushLead(core, key, epoch.epoch))
	}
	func() {
		defer func() {
			if !normalReturn {
				if r := recover(); r != nil {
					err = newPanicError(r)
				}
			}
		}()
		val, err = fn()
		normalReturn = true
	}()
	if !normalReturn {
		recovered = true
		return val, err, fnPanicked
	}
	return val, err, fnReturned
}

// lead runs fn as the flight's leader and completes the flight.  It returns
// fn's results and whether any follower shared them.  If fn panicked it
// re-panics with the shared *panicError once the followers are released; if
// fn called runtime.Goexit it releases the call unfinished so the followers
// exit too, and the Goexit carries on.
func lead[V any](core *groupCore, call *cCall, key string, epoch beginMark, fn func() (V, error)) (V, error, bool) {
	val, err, _ := runFn(core, key, epoch, fn, func() { core.release(call) })
	// x/sync treats any *panicError result as a panic, including one that fn
	// recovered from a nested Do and returned; so does this binding.
	pe, panicked := err.(*panicError)
	if !panicked && core.finishUnshared(call) {
		return val, err, false
	}
	msg := ""
	if panicked {
		msg = pe.message()
	}
	shared := core.complete(call, &outcome[V]{val: val, err: err}, panicked, msg)
	if panicked {
		panic(pe)
	}
	return val, err, shared
}
