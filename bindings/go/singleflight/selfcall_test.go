package singleflight

import (
	"errors"
	"runtime"
	"strings"
	"testing"
	"time"
)

// A goroutine that calls Do on the key whose fn it is running would wait for
// itself.  x/sync hangs there; this package panics instead.  Which goroutine
// leads is what counts, not which OS thread: goroutines move between threads
// and share them.

// doWithin runs g.Do(key, fn) on a fresh goroutine and reports what it
// panicked with; the deadline turns a hang (the bug) into a failure.
func doWithin(t *testing.T, g *Group, key string, fn func() (interface{}, error)) (recovered interface{}) {
	t.Helper()
	done := make(chan interface{}, 1)
	go func() {
		defer func() { done <- recover() }()
		g.Do(key, fn)
	}()
	select {
	case r := <-done:
		return r
	case <-time.After(20 * time.Second):
		t.Fatalf("Do(%q) hung: fn's call on its own key was not detected", key)
		return nil
	}
}

// assertDeadlockPanic checks that the leader of the outer flight re-panicked
// with the error that fn's inner Do raised.
func assertDeadlockPanic(t *testing.T, recovered interface{}, key string) {
	t.Helper()
	err, ok := recovered.(error)
	if !ok {
		t.Fatalf("recovered %v (%T), want an error", recovered, recovered)
	}
	if !errors.Is(err, ErrDeadlock) {
		t.Fatalf("recovered %q, want one that errors.Is ErrDeadlock", firstLine(err))
	}
	if msg := firstLine(err); !strings.Contains(msg, `"`+key+`"`) || !strings.Contains(msg, "own key") {
		t.Fatalf("message %q does not name the key and say what happened", msg)
	}
}

func TestDoOnOwnKeyInsideFnPanicsInsteadOfHanging(t *testing.T) {
	var g Group
	innerRan := false
	r := doWithin(t, &g, "k", func() (interface{}, error) {
		g.Do("k", func() (interface{}, error) {
			innerRan = true
			return nil, nil
		})
		return "unreachable", nil
	})
	assertDeadlockPanic(t, r, "k")
	if innerRan {
		t.Fatal("the inner fn ran")
	}
	if s := g.Stats(); s.InFlight != 0 || s.Leaders != 1 || s.Panics != 1 {
		t.Fatalf("stats %+v: want one flight, panicked, none in flight", s)
	}
	if v, err, _ := g.Do("k", func() (interface{}, error) { return "again", nil }); v != "again" || err != nil {
		t.Fatalf("the key is not usable again: %v, %v", v, err)
	}
}

func TestDoOnOwnKeyThroughAnotherFlightPanics(t *testing.T) {
	var g Group
	r := doWithin(t, &g, "outer", func() (interface{}, error) {
		v, err, _ := g.Do("middle", func() (interface{}, error) {
			v, err, _ := g.Do("outer", func() (interface{}, error) { return nil, nil })
			return v, err
		})
		return v, err
	})
	assertDeadlockPanic(t, r, "outer")
}

func TestDoOnOwnKeyAfterFnBlockedAndResumedPanics(t *testing.T) {
	// The leader parks and resumes (possibly on another OS thread) before it
	// calls its own key: its identity is the goroutine's, not the thread's.
	var g Group
	r := doWithin(t, &g, "k", func() (interface{}, error) {
		pong := make(chan struct{})
		go func() { close(pong) }()
		<-pong
		runtime.Gosched()
		v, err, _ := g.Do("k", func() (interface{}, error) { return nil, nil })
		return v, err
	})
	assertDeadlockPanic(t, r, "k")
}

func TestOtherGoroutinesOnABlockedLeadersKeyWaitAsFollowers(t *testing.T) {
	// One P: every goroutine here runs on the thread the blocked leader ran
	// on, the case a thread-based check would get wrong.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	var g Group
	get := func(out chan<- Result) {
		v, err, shared := g.Do("k", func() (interface{}, error) { return "not the leader's", nil })
		out <- Result{v, err, shared}
	}
	entered, release := make(chan struct{}), make(chan struct{})
	leader, child, other := make(chan Result, 1), make(chan Result, 1), make(chan Result, 1)
	go func() {
		v, err, shared := g.Do("k", func() (interface{}, error) {
			go get(child) // a goroutine the leader's fn starts
			close(entered)
			<-release
			return "v", nil
		})
		leader <- Result{v, err, shared}
	}()
	<-entered
	go get(other) // and an unrelated one
	waitUntil(t, "both followers joined", func() bool { return g.Stats().Followers == 2 })
	close(release)
	for _, ch := range []chan Result{leader, child, other} {
		if r := <-ch; r.Val != "v" || r.Err != nil || !r.Shared {
			t.Fatalf("got %+v, want the leader's value, shared", r)
		}
	}
}

func TestForgottenOwnKeyInsideFnStartsANewFlight(t *testing.T) {
	// After Forget the key belongs to a new flight: calling it from inside
	// fn is no longer a wait for oneself (x/sync agrees, see xsync_test.go).
	var g Group
	v, err, _ := g.Do("k", func() (interface{}, error) {
		g.Forget("k")
		v, _, shared := g.Do("k", func() (interface{}, error) { return "inner", nil })
		if shared {
			t.Error("the new flight was shared")
		}
		return v, nil
	})
	if v != "inner" || err != nil {
		t.Fatalf("Do = %v, %v; want inner, <nil>", v, err)
	}
}
