// Package singleflight is a drop-in replacement for
// golang.org/x/sync/singleflight built on libsingleflight, the C library that
// brings the same duplicate call suppression to every language on the
// machine.  Change the import path and nothing else.
//
// The exported API and its behaviour match x/sync: Group's zero value is
// ready to use; Do, DoChan and Forget behave the same, including a panic in
// fn re-panicking in every Do caller with the same value, runtime.Goexit in
// fn ending every waiting Do caller's goroutine, and a panic while a DoChan
// caller waits crashing the process.  Stats and ErrDeadlock are additions:
// where x/sync waits forever (fn calling Do on its own key), Do panics.
//
// fn always runs in Go, never under a C frame, so a panic or Goexit unwinds
// only Go code.  Waiting callers park on Go channels: ten thousand goroutines
// waiting on one key do not hold ten thousand OS threads.
//
// For a typed variant see the sibling package typed.
package singleflight

import (
	"context"

	"github.com/libsingleflight/libsingleflight/bindings/go/internal/engine"
)

// Group is a namespace of keys in which work is deduplicated.  The zero value
// is ready to use.  A Group must not be copied after first use.  All methods
// are safe for concurrent use.  The C group behind it is created on first use
// and freed by the garbage collector once the Group is unreachable.
type Group struct {
	g engine.Group
}

// Result holds the results of Do, so they can be passed on a channel.
type Result struct {
	Val    interface{}
	Err    error
	Shared bool
}

// Stats is a snapshot of a Group's counters: the C library's, with the
// followers that joined a flight in Go and the callers that gave up there.
type Stats = engine.Stats

// ErrDeadlock matches (errors.Is) what Do panics with when fn, on the
// goroutine running it, calls Do for its own key: that call could only
// return after fn returns.  (x/sync waits forever there.)  The panic leaves
// fn like any other, so the flight's callers re-panic with it.
var ErrDeadlock = engine.ErrDeadlock

// Do executes and returns the results of fn, making sure that only one
// execution is in flight for a given key at a time.  A duplicate caller waits
// for the original to complete and receives the same results; shared reports
// whether v was given to more than one caller.
//
// If fn panics, every Do caller of that flight panics with the same value, an
// error that wraps what fn panicked with.  If fn calls runtime.Goexit, the
// calling goroutine and every waiting Do caller's goroutine exit too.  The
// values are shared, not copied: callers must not mutate them.  Do for key
// from inside fn, on fn's goroutine, panics (see ErrDeadlock); other
// goroutines, those fn starts included, wait as usual.
func (g *Group) Do(key string, fn func() (interface{}, error)) (v interface{}, err error, shared bool) {
	return engine.Do(&g.g, key, fn)
}

// DoContext is Do for callers that may give up, an addition to x/sync.  A
// caller whose ctx ends before the flight does returns nil, ctx.Err() and
// false at once, while the flight goes on for the others; a caller whose
// ctx has already ended returns so without starting or joining anything.
//
// fn gets a context that carries the values of the ctx that started the
// flight but not its deadline or cancellation.  It runs on a goroutine of
// its own, so that its starter can leave, unless the starter's ctx can never
// end (ctx.Done() == nil): then it runs on the caller's goroutine, as in Do.
// fn's context is cancelled when every caller has gone before fn returned
// (Do and DoChan callers of the key count as callers that never go), so fn
// can stop its work; the next caller for key then starts a new flight.  It
// is also cancelled once fn has returned, as with context.WithCancel.
//
// Values, panics and runtime.Goexit reach the callers still waiting as in
// Do; a panic or Goexit that no caller waits for any more is dropped.
// DoContext for key from inside fn, on fn's goroutine, panics (see
// ErrDeadlock).
func (g *Group) DoContext(ctx context.Context, key string, fn func(ctx context.Context) (interface{}, error)) (v interface{}, err error, shared bool) {
	return engine.DoContext(&g.g, ctx, key, fn)
}

// DoChan is like Do but returns a channel that will receive the results when
// they are ready.  The channel is buffered and never closed.
//
// As in x/sync, a panic in fn while any DoChan caller waits crashes the
// process, and after a runtime.Goexit in fn the channel never receives.
func (g *Group) DoChan(key string, fn func() (interface{}, error)) <-chan Result {
	ch := make(chan Result, 1)
	engine.DoChan(&g.g, key, fn, func(v interface{}, err error, shared bool) {
		ch <- Result{Val: v, Err: err, Shared: shared}
	})
	return ch
}

// Forget tells the Group to forget about key.  Future calls to Do for this
// key will call fn rather than wait for an earlier call to complete; the
// earlier call still delivers its results to its own callers.
func (g *Group) Forget(key string) {
	g.g.Forget(key)
}

// Stats reads the Group's counters.  Safe to call at any time, from any
// goroutine.
func (g *Group) Stats() Stats {
	return g.g.Stats()
}
