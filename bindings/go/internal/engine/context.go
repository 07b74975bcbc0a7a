package engine

import (
	"context"
	"runtime"
	"sync"
	"time"
)

// DoContext is Do for callers that may give up.  Every caller waits for the
// flight or for its own ctx, whichever ends first; one whose ctx ends gives
// up its interest (sf_call_cancel) and returns ctx.Err() at once, the
// others are unaffected.  fn runs on a goroutine of its own, so that the
// caller that started it can leave while fn goes on for the others, with a
// context that carries the starting caller's values but none of its
// deadline or cancellation: it is cancelled when the flight is abandoned,
// i.e. when every caller, Do and DoChan callers included, has gone before
// fn returned (and also, to free it, once fn has returned).  Values,
// panics and Goexit reach the callers still waiting as in Do; a panic or
// Goexit that no caller waits for any more goes nowhere.  A caller whose
// ctx has already ended returns ctx.Err() without starting or joining a
// flight.
func DoContext[V any](g *Group, ctx context.Context, key string, fn func(context.Context) (V, error)) (V, error, bool) {
	if err := ctx.Err(); err != nil {
		var zero V
		return zero, err, false
	}
	core := g.c()
	epoch := core.beginEpoch()
	call, leader := core.begin(key)
	if leader {
		return leadContext(core, ctx, call, key, epoch, fn)
	}
	if d, ok := core.follow(call, key, ctx.Done()); ok {
		return deliveredOrExit[V](d)
	}
	var zero V
	return zero, ctx.Err(), false
}

// ctxResult is what DoContext's fn goroutine tells the caller that started
// it.
type ctxResult[V any] struct {
	val    V
	err    error
	shared bool
	how    fnOutcome
}

// leadContext starts fn on its own goroutine for the flight call leads and
// waits for it or for ctx.
func leadContext[V any](core *groupCore, ctx context.Context, call *cCall, key string, epoch beginMark,
	fn func(context.Context) (V, error)) (V, error, bool) {
	fnCtx, cancelFn := context.WithCancel(detached{ctx})
	id := abandoners.add(cancelFn)
	// The caller still holds its interest, so the flight cannot have been
	// abandoned yet: the callback is in place before anyone can leave.
	core.onAbandon(call, id)
	l := &ctxLeader{core: core, call: call}
	results := make(chan ctxResult[V], 1)

	go func() {
		val, err, how := runFn(core, key, epoch, func() (V, error) { return fn(fnCtx) }, func() {
			abandoners.remove(id)
			cancelFn()
			l.release() // unfinished: the followers Goexit
			results <- ctxResult[V]{how: fnExited}
		})
		abandoners.remove(id)
		cancelFn()
		pe, panicked := err.(*panicError)
		if panicked {
			how = fnPanicked
		}
		msg := ""
		if panicked {
			msg = pe.message()
		}
		shared := core.publish(call, &outcome[V]{val: val, err: err}, panicked, msg)
		l.fnFinished()
		results <- ctxResult[V]{val: val, err: err, shared: shared, how: how}
	}()

	select {
	case r := <-results:
		l.callerLeaves(false)
		switch r.how {
		case fnPanicked:
			panic(r.err)
		case fnExited:
			runtime.Goexit()
		}
		return r.val, r.err, r.shared
	case <-ctx.Done():
		l.callerLeaves(true)
		var zero V
		return zero, ctx.Err(), false
	}
}

// ctxLeader shares a DoContext leader's call between the caller that began
// it (which may give up its interest with it) and the goroutine running fn
// (which completes the flight with it).  The library lets those overlap
// but not a release with either, so the call is released under mu by
// whichever of the two is last, or at once by a Goexit in fn, which must
// release the flight unfinished.
type ctxLeader struct {
	core       *groupCore
	mu         sync.Mutex
	call       *cCall // nil once released
	callerLeft bool
	fnDone     bool
}

// callerLeaves is the starting caller done with the call; giveUp when its
// ctx ended first, which gives up its interest (and may abandon the flight:
// then fn's ctx is cancelled before this returns).
func (l *ctxLeader) callerLeaves(giveUp bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.call == nil {
		return
	}
	if giveUp {
		l.core.cancel(l.call)
	}
	l.callerLeft = true
	if l.fnDone {
		l.releaseLocked()
	}
}

// fnFinished is fn's goroutine done with the call, the flight complete.
func (l *ctxLeader) fnFinished() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.fnDone = true
	if l.callerLeft && l.call != nil {
		l.releaseLocked()
	}
}

func (l *ctxLeader) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.call != nil {
		l.releaseLocked()
	}
}

func (l *ctxLeader) releaseLocked() {
	l.core.release(l.call)
	l.call = nil
}

// detached is a context with its parent's values and nothing else: fn's
// context must not end with the caller that happened to start the flight.
// (context.WithoutCancel does this from Go 1.21 on; the module supports
// 1.19.)
type detached struct{ parent context.Context }

func (detached) Deadline() (time.Time, bool)         { return time.Time{}, false }
func (detached) Done() <-chan struct{}               { return nil }
func (detached) Err() error                          { return nil }
func (d detached) Value(key interface{}) interface{} { return d.parent.Value(key) }
