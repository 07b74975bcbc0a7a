// Package typed is singleflight with a type parameter: Group[V] hands out
// values of type V instead of interface{}, with the same semantics as the
// singleflight package (which see) and the same C library underneath.
package typed

import (
	"context"

	"github.com/libsingleflight/libsingleflight/bindings/go/internal/engine"
)

// Group is a namespace of keys whose flights produce values of type V.  The
// zero value is ready to use.  A Group must not be copied after first use.
// All methods are safe for concurrent use.  The C group behind it is freed by
// the garbage collector once the Group is unreachable.
type Group[V any] struct {
	g engine.Group
}

// Result holds the results of Do, so they can be passed on a channel.
type Result[V any] struct {
	Val    V
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

// Do runs fn once for all concurrent callers of key and returns its results
// to each of them; shared reports whether v went to more than one caller.  A
// panic in fn re-panics in every caller with the same value; runtime.Goexit
// in fn ends every caller's goroutine.  v is shared, not copied.  Do for key
// from inside fn, on fn's goroutine, panics (see ErrDeadlock).
func (g *Group[V]) Do(key string, fn func() (V, error)) (v V, err error, shared bool) {
	return engine.Do(&g.g, key, fn)
}

// DoContext is Do for callers that may give up.  A caller whose ctx ends
// before the flight does returns the zero V, ctx.Err() and false at once,
// and the flight goes on for the others; a caller whose ctx has already
// ended returns so without starting or joining anything.  fn runs on a
// goroutine of its own (on the caller's, as in Do, when the starter's ctx
// can never end: ctx.Done() == nil) with a context that carries the values
// of the ctx that started the flight but not its deadline or cancellation: it is
// cancelled only when every caller has gone before fn returned (Do and
// DoChan callers never go), so fn can stop its work, and the next caller
// for key starts a new flight meanwhile.  Values, panics and Goexit reach
// the callers still waiting as in Do; one nobody waits for is dropped.
// fn's context is also cancelled once fn returns, as with
// context.WithCancel.  DoContext for key from inside fn, on fn's
// goroutine, panics (see ErrDeadlock).
func (g *Group[V]) DoContext(ctx context.Context, key string, fn func(ctx context.Context) (V, error)) (v V, err error, shared bool) {
	return engine.DoContext(&g.g, ctx, key, fn)
}

// DoChan is like Do but returns a buffered channel that receives the results
// once; it is never closed.  A panic in fn while a DoChan caller waits
// crashes the process, and after a runtime.Goexit in fn the channel never
// receives, as in x/sync.
func (g *Group[V]) DoChan(key string, fn func() (V, error)) <-chan Result[V] {
	ch := make(chan Result[V], 1)
	engine.DoChan(&g.g, key, fn, func(v V, err error, shared bool) {
		ch <- Result[V]{Val: v, Err: err, Shared: shared}
	})
	return ch
}

// Forget makes the next call for key start a new flight; a flight already
// running still delivers to its own callers.
func (g *Group[V]) Forget(key string) {
	g.g.Forget(key)
}

// Stats reads the Group's counters.  Safe to call at any time.
func (g *Group[V]) Stats() Stats {
	return g.g.Stats()
}
