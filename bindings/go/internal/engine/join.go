package engine

import (
	"sync"
	"sync/atomic"

	"github.com/libsingleflight/libsingleflight/bindings/go/internal/goroutine"
)

// Followers in this process join in Go.  The first Go follower of a flight
// crosses into C as before (sf_group_begin says it follows, sf_call_on_done
// registers one completion callback) and lists a goFlight for the key; the
// Go callers that come after it while the flight runs find that goFlight
// and join it with one compare-and-swap, without a cgo call, a handle or a
// channel of their own.  The one C callback closes one channel, which wakes
// them all.  The C library stays the only judge of who leads: a Go caller
// joins only a flight that a Go follower joined in C, so C, Go and other
// languages' callers of one key in one process still share one flight.
//
// The goFlight's C handle is this process's Go callers' one interest in
// the flight: it is given up (sf_call_cancel) only when the last of them
// has given up, so the flight is abandoned only when every caller, in
// every language, has gone.

// flightDone marks a goFlight whose flight has completed (or whose handle
// gave up): nobody joins it any more.  The bits below it count the Go
// callers holding the handle's interest.
const flightDone = int64(1) << 62

// goFlight is the Go callers of one flight that share one C follower
// handle.
type goFlight struct {
	core *groupCore
	key  string // a copy of the key, to take the goFlight out of the table
	call *cCall // the C follower handle; released by whoever leaves last

	// state is flightDone | the number of Go callers still interested
	// (goroutines waiting in Do or DoContext, DoChan sends not yet made).
	// The count only grows from a non-zero value without flightDone, so
	// once it reaches zero or the flight completes nobody can join.
	state int64

	// done is closed once d holds the flight's outcome.
	done chan struct{}
	d    delivery

	mu        sync.Mutex
	delivered bool             // d is set: a send added now runs at once
	sends     []func(delivery) // DoChan callers waiting, run on completion

	listed bool // in core.flights; guarded by core.flightsMu
}

// join adds a caller to f, unless the flight already completed or every
// Go caller already left it.
func (f *goFlight) join() bool {
	for {
		s := atomic.LoadInt64(&f.state)
		if s == 0 || s&flightDone != 0 {
			return false
		}
		if atomic.CompareAndSwapInt64(&f.state, s, s+1) {
			return true
		}
	}
}

// leave is a caller of f done with it: gaveUp when its ctx ended before
// the outcome reached it.  The last caller to leave releases the C handle,
// after giving up its interest (sf_call_cancel, which may abandon the
// flight) if the flight has not completed.  Never called inside a C
// callback (see deliver).
func (f *goFlight) leave(gaveUp bool) {
	s := atomic.AddInt64(&f.state, -1)
	if s&^flightDone != 0 {
		// Others still hold the interest; the C library never sees this
		// caller leave, so it is counted here (not after completion,
		// where sf_call_cancel would have been SF_ESTATE, uncounted).
		if gaveUp && s&flightDone == 0 {
			atomic.AddUint64(&f.core.goCancels, 1)
		}
		return
	}
	if s&flightDone == 0 {
		// Only a caller that gave up can be last before completion:
		// the others wake after it.  Nobody can join f now (its count
		// is zero), so it leaves the table after the cancel, which is
		// what ends fn's context if this was the flight's last interest.
		f.core.cancel(f.call)
		f.core.release(f.call)
		f.core.delist(f)
		return
	}
	f.core.release(f.call)
}

// deliver is the C follower handle's completion callback (sfgoDone): it
// runs once, on the thread completing the flight, or on the last leaver's
// goroutine inside its sf_call_cancel (statusCanceled, nobody waiting).
// It must not block on other callers and must not release the handle,
// which the library may still be using around the callback.
func (f *goFlight) deliver(d delivery) {
	if d.status == statusCanceled {
		// The last Go caller gave up (leave, on this goroutine, inside
		// its sf_call_cancel): nobody waits, nobody can join, and the
		// leaver takes f out of the table.
		for {
			s := atomic.LoadInt64(&f.state)
			if atomic.CompareAndSwapInt64(&f.state, s, s|flightDone) {
				return
			}
		}
	}
	f.d = d
	for {
		s := atomic.LoadInt64(&f.state)
		if atomic.CompareAndSwapInt64(&f.state, s, s|flightDone) {
			break
		}
	}
	// Out of the table before this callback returns, hence before the
	// completing caller's finish returns: a caller that starts after
	// that begins a new flight, as with x/sync.
	f.core.delist(f)
	close(f.done)

	f.mu.Lock()
	f.delivered = true
	sends := f.sends
	f.sends = nil
	f.mu.Unlock()
	for _, send := range sends {
		send(d)
	}
	if n := int64(len(sends)); n > 0 && atomic.AddInt64(&f.state, -n)&^flightDone == 0 {
		// The DoChan callers were the last: the handle is released off
		// this callback.
		go f.core.release(f.call)
	}
}

// addSend makes send receive f's outcome: when the flight completes, or at
// once if it already has.  The caller has joined f; its interest lasts
// until send has run.
func (f *goFlight) addSend(send func(delivery)) {
	f.mu.Lock()
	if !f.delivered {
		f.sends = append(f.sends, send)
		f.mu.Unlock()
		return
	}
	d := f.d
	f.mu.Unlock()
	send(d)
	f.leave(false)
}

// joinListed joins the goFlight listed for key, if there is one that can
// still be joined, without crossing into C.  The check of c.nListed keeps
// this to one atomic load when no flight of the group has a Go follower.
func (c *groupCore) joinListed(key string) *goFlight {
	if atomic.LoadInt32(&c.nListed) == 0 {
		return nil
	}
	f := c.hot.Load()
	if f == nil || f.key != key {
		c.flightsMu.RLock()
		f = c.flights[key]
		c.flightsMu.RUnlock()
	}
	if f == nil || !f.join() {
		return nil
	}
	atomic.AddUint64(&c.goFollowers[stripeOf(goroutine.Current())].n, 1)
	return f
}

// followerStripes counters for goFollowers, each on a cache line of its own.
const followerStripes = 16

type stripe struct {
	n uint64
	_ [56]byte
}

func stripeOf(id goroutine.ID) int {
	return int((uint64(id) * 0x9E3779B97F4A7C15) >> 60)
}

// joinListedToWait is joinListed for a caller that will wait on the flight
// (Do, DoContext): a goroutine leading key's flight would wait for itself,
// so it panics with ErrDeadlock instead, as it does on joining in C.
func (c *groupCore) joinListedToWait(key string) *goFlight {
	if atomic.LoadInt32(&c.nListed) == 0 {
		return nil
	}
	if c.leadsItself(key) {
		panic(deadlock(key))
	}
	return c.joinListed(key)
}

// followInGo makes the C follower handle call, just returned by begin for
// key, a goFlight with this caller as its first member, and lists it for
// the Go callers that come next.  mark is what the caller read before
// begin: a flight begun while a Forget of the group may have been under
// way is not listed (its callers still share it; only later callers go
// through C).
func (c *groupCore) followInGo(call *cCall, key string, mark beginMark) *goFlight {
	f := &goFlight{
		core:  c,
		key:   string([]byte(key)), // a copy: the caller's key may live on its stack
		call:  call,
		state: 1,
		done:  make(chan struct{}),
	}
	// Completion may run deliver before this returns.
	c.onDone(call, f)
	c.list(f, mark)
	return f
}

func (c *groupCore) list(f *goFlight, mark beginMark) {
	if !mark.ok {
		return
	}
	c.flightsMu.Lock()
	defer c.flightsMu.Unlock()
	// Under flightsMu, which deliver and Forget take to take flights out:
	// a completed flight is never listed, and a flight listed now is
	// taken out by them later.  A Forget that began after mark was read
	// may have detached the flight joined.
	if atomic.LoadInt64(&f.state)&flightDone != 0 ||
		atomic.LoadUint64(&c.forgetEpoch) != mark.epoch || atomic.LoadInt32(&c.forgetting) != 0 {
		return
	}
	if old := c.flights[f.key]; old != nil {
		if s := atomic.LoadInt64(&old.state); s != 0 && s&flightDone == 0 {
			// Another first follower raced this one: the listed goFlight
			// may belong to another flight (C cannot say), so this one
			// stays unlisted with its own handle.
			return
		}
		old.listed = false // and hot becomes f below
	} else {
		atomic.AddInt32(&c.nListed, 1)
	}
	c.flights[f.key] = f
	f.listed = true
	c.hot.Store(f)
}

func (c *groupCore) delist(f *goFlight) {
	c.flightsMu.Lock()
	if f.listed {
		c.unlistLocked(f)
	}
	c.flightsMu.Unlock()
}

// unlistLocked takes a listed f out of the table; under flightsMu.
func (c *groupCore) unlistLocked(f *goFlight) {
	f.listed = false
	delete(c.flights, f.key)
	atomic.AddInt32(&c.nListed, -1)
	if c.hot.Load() == f {
		c.hot.Store(nil)
	}
}

// delistKey takes key's goFlight out of the table, for Forget.
func (c *groupCore) delistKey(key string) {
	c.flightsMu.Lock()
	if f := c.flights[key]; f != nil {
		c.unlistLocked(f)
	}
	c.flightsMu.Unlock()
}
