package engine

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"
)

// DoContext is Do for callers that may give up.  Every caller waits for the
// flight or for its own ctx, whichever ends first; one whose ctx ends gives
// up its interest (sf_call_cancel) and returns ctx.Err() at once, the
// others are unaffected.  fn gets a context that carries the starting
// caller's values but none of its deadline or cancellation: it is
// cancelled when the flight is abandoned, i.e. when every caller, Do and
// DoChan callers included, has gone before fn returned (and also, to free
// it, once fn has returned).  Values, panics and Goexit reach the callers
// still waiting as in Do; a panic or Goexit that no caller waits for any
// more goes nowhere.  A caller whose ctx has already ended returns
// ctx.Err() without starting or joining a flight.
//
// What it costs is what the caller's ctx needs.  A leader whose ctx can
// never end (ctx.Done() == nil) cannot leave, so fn runs on its goroutine
// as in Do: two cgo calls and fn's context.  Otherwise fn runs on a
// goroutine of its own, so that the caller can leave while fn goes on for
// the others, and nothing more is set up until the caller does leave: the
// flight cannot be abandoned while its starting caller still holds its
// interest, so the abandon callback is registered only then.
func DoContext[V any](g *Group, ctx context.Context, key string, fn func(context.Context) (V, error)) (V, error, bool) {
	// A receive that cannot block is cheaper than ctx.Err(), which locks.
	cancel := ctx.Done()
	if cancel != nil {
		select {
		case <-cancel:
			var zero V
			return zero, ctx.Err(), false
		default:
		}
	}
	core := g.c()
	f := core.joinListedToWait(key)
	if f == nil {
		epoch := core.beginEpoch()
		call, leader := core.begin(key)
		if leader {
			if cancel == nil {
				return leadInline(core, ctx, call, key, epoch, fn)
			}
			return leadContext(core, ctx, call, key, epoch, fn)
		}
		f = core.follow(call, key, epoch)
	}
	// The wait is here rather than in a helper, as in Do: a shallow stack
	// at the park.
	if cancel == nil {
		<-f.done
		d := f.d
		f.leave(false)
		return deliveredOrExit[V](d)
	}
	select {
	case <-f.done:
		d := f.d
		f.leave(false)
		return deliveredOrExit[V](d)
	case <-cancel:
		// If the flight completes meanwhile its outcome is dropped: the
		// caller asked to leave.
		f.leave(true)
		var zero V
		return zero, ctx.Err(), false
	}
}

// leadInline runs fn on the caller's goroutine for a caller whose ctx can
// never end.  Such a caller never gives up its interest, so the flight is
// never abandoned and fn's context only ends once fn has returned.
func leadInline[V any](core *groupCore, ctx context.Context, call *cCall, key string, epoch beginMark,
	fn func(context.Context) (V, error)) (V, error, bool) {
	fc := &fnContext{parent: ctx}
	// Deferred, so that it also runs after a panic or Goexit in fn.
	defer fc.cancel()
	return lead(core, call, key, epoch, func() (V, error) { return fn(fc) })
}

// ctxFlight is a DoContext flight whose caller may give up: fn runs on a
// goroutine of its own, and the leader's call is shared between the caller
// that began it (which may give up its interest with it) and fn's
// goroutine (which completes the flight with it).  The library lets those
// overlap but not a release with either, so every use of call is under
// mu, and whichever of the two is last releases it (fn's goroutine
// releases it at once when nobody joined, and on Goexit).  A caller that
// got its results back puts f in its group's pool: nothing else refers to
// it then.
type ctxFlight[V any] struct {
	fc    *fnContext
	core  *groupCore
	fn    func(context.Context) (V, error)
	epoch beginMark

	// The key, copied: a DoContext key the caller built on its stack
	// stays there.  Keys up to the library's inline size are copied in
	// place.
	keyLen  int
	keyBuf  [leadInlineKey]byte
	longKey string

	mu         sync.Mutex
	call       *cCall // nil once released
	callerLeft bool
	fnDone     bool
	abandonID  uintptr // the abandoners entry, once the caller gave up

	// fn's goroutine writes these, then sends on done (buffered: it never
	// blocks, and the caller that receives leaves it empty for reuse).
	val    V
	err    error
	shared bool
	how    fnOutcome
	done   chan struct{}
}

// leadContext starts fn on its own goroutine for the flight call leads and
// waits for it or for ctx.
func leadContext[V any](core *groupCore, ctx context.Context, call *cCall, key string, epoch beginMark,
	fn func(context.Context) (V, error)) (V, error, bool) {
	// A group's flights all have one V (typed.Group[V], or interface{}),
	// so its pool holds one type; the check costs nothing.
	f, _ := core.ctxPool.Get().(*ctxFlight[V])
	if f == nil {
		f = &ctxFlight[V]{done: make(chan struct{}, 1)}
	}
	f.core, f.fn, f.epoch, f.call = core, fn, epoch, call
	// fn may keep its context after it returns, so that is never reused.
	f.fc = &fnContext{parent: ctx}
	f.keyLen = len(key)
	if len(key) <= leadInlineKey {
		copy(f.keyBuf[:], key)
	} else {
		f.longKey = string([]byte(key))
	}
	go f.run()

	select {
	case <-f.done:
		// fn's goroutine is done with f (sending on done was its last
		// act), and this caller never gives up now: no lock needed.  A
		// call it left is this caller's to release.
		if f.call != nil {
			f.releaseLocked()
		}
		switch f.how {
		case fnPanicked:
			panic(f.err)
		case fnExited:
			runtime.Goexit()
		}
		val, err, shared := f.val, f.err, f.shared
		// Nobody else refers to f now (fn's context is not part of it),
		// and done is empty again: f serves the group's next flight.
		*f = ctxFlight[V]{done: f.done}
		core.ctxPool.Put(f)
		return val, err, shared
	case <-ctx.Done():
		f.giveUp()
		var zero V
		return zero, ctx.Err(), false
	}
}

// key is the flight's key, pointing into f (no copy).
func (f *ctxFlight[V]) key() string {
	if f.keyLen > leadInlineKey {
		return f.longKey
	}
	if f.keyLen == 0 {
		return ""
	}
	// The bytes never change after leadContext; f outlives every use of
	// the string (runFn's record copies it).
	return *(*string)(unsafe.Pointer(&stringHeader{unsafe.Pointer(&f.keyBuf[0]), f.keyLen}))
}

// stringHeader is a string's layout (unsafe.String needs Go 1.20).
type stringHeader struct {
	data unsafe.Pointer
	len  int
}

// giveUp is the starting caller leaving before fn's outcome reached it.
func (f *ctxFlight[V]) giveUp() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.call != nil && !f.fnDone {
		// While this caller held its interest the flight could not be
		// abandoned; from now on the last caller to leave, in any
		// language, abandons it, and fn's context must end then.  The
		// flight cannot complete meanwhile (fn's goroutine completes it
		// under mu), so the registration cannot come too late.
		f.abandonID = abandoners.add(f.fc.cancel)
		f.core.onAbandon(f.call, f.abandonID)
		// If nobody else is interested this abandons the flight and
		// cancels fn's context before returning.
		f.core.cancel(f.call)
	}
	f.callerLeft = true
	if f.fnDone && f.call != nil {
		f.releaseLocked()
	}
}

// run is fn's goroutine.
func (f *ctxFlight[V]) run() {
	val, err, how := runFn(f.core, f.key(), f.epoch, func() (V, error) { return f.fn(f.fc) }, f.exited)
	pe, panicked := err.(*panicError)
	if panicked {
		how = fnPanicked
	}
	shared := false
	f.mu.Lock()
	if !panicked && !f.callerLeft && f.core.finishUnshared(f.call) {
		// Nobody joined, and the caller still holds the call: the
		// flight is complete and the call released, without a handle.
		f.call = nil
	} else {
		msg := ""
		if panicked {
			msg = pe.message()
		}
		// Released now if the caller has gone; else the caller
		// releases it once it has the results.
		shared = f.core.publishOutcome(f.call, &outcome[V]{val: val, err: err}, panicked, msg, f.callerLeft)
		if f.callerLeft {
			f.call = nil
		}
	}
	f.fnDone = true
	id := f.abandonID
	f.mu.Unlock()
	f.finish(id)
	f.val, f.err, f.shared, f.how = val, err, shared, how
	f.done <- struct{}{}
}

// exited runs when fn called runtime.Goexit: the flight is released
// unfinished, so the followers Goexit too, and so does the caller if it
// still waits.
func (f *ctxFlight[V]) exited() {
	f.mu.Lock()
	f.releaseLocked()
	f.fnDone = true
	id := f.abandonID
	f.mu.Unlock()
	f.finish(id)
	f.how = fnExited
	f.done <- struct{}{}
}

// finish ends fn's context now that fn has returned, and takes out its
// abandoners entry, if the caller made one.
func (f *ctxFlight[V]) finish(abandonID uintptr) {
	if abandonID != 0 {
		abandoners.remove(abandonID)
	}
	f.fc.cancel()
}

func (f *ctxFlight[V]) releaseLocked() {
	f.core.release(f.call)
	f.call = nil
}

// fnContext is the context fn gets: its parent's values, no deadline, and
// a cancellation of its own (abandonment, or fn having returned).  The
// context.WithCancel behind Done is made only when fn asks for Done, so a
// fn that never does costs nothing more than this struct; once made, it is
// what Done, Err and Value answer from, so contexts derived from this one
// attach to it as to any cancelCtx (no goroutine per child).
type fnContext struct {
	parent context.Context

	mu    sync.Mutex // one maker of real
	ended uint32     // atomic: 1 once cancelled
	real  atomic.Pointer[cancelPair]
}

type cancelPair struct {
	ctx    context.Context
	cancel context.CancelFunc
}

func (c *fnContext) Deadline() (time.Time, bool) { return time.Time{}, false }

func (c *fnContext) Done() <-chan struct{} {
	return c.made().ctx.Done()
}

func (c *fnContext) Err() error {
	if p := c.real.Load(); p != nil {
		return p.ctx.Err()
	}
	if atomic.LoadUint32(&c.ended) != 0 {
		return context.Canceled
	}
	return nil
}

func (c *fnContext) Value(key interface{}) interface{} {
	if p := c.real.Load(); p != nil {
		return p.ctx.Value(key)
	}
	return c.parent.Value(key)
}

func (c *fnContext) String() string { return "singleflight fn context" }

// made returns the cancelCtx behind Done, making it on first use
// (cancelled at once if fn's context already ended).
func (c *fnContext) made() *cancelPair {
	if p := c.real.Load(); p != nil {
		return p
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.real.Load(); p != nil {
		return p
	}
	ctx, cancel := context.WithCancel(detached{c.parent})
	p := &cancelPair{ctx, cancel}
	c.real.Store(p)
	// After the store: a cancel that missed p has set ended before this
	// load (both are sequentially consistent), so one of the two cancels.
	if atomic.LoadUint32(&c.ended) != 0 {
		cancel()
	}
	return p
}

// cancel ends fn's context; safe to call more than once, from any
// goroutine, and from the library's abandon callback.  Two atomic
// operations when fn never asked for Done.
func (c *fnContext) cancel() {
	atomic.StoreUint32(&c.ended, 1)
	if p := c.real.Load(); p != nil {
		p.cancel()
	}
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
