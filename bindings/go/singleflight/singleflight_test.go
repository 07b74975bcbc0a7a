package singleflight

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// waitUntil polls cond until it holds.  It is used where the only observable
// signal is the C library's counters (a follower has joined once
// Stats().Followers says so); the deadline turns a bug into a failure
// instead of a hang.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(50 * time.Microsecond)
	}
}

// flight starts a leader for key whose fn blocks until release is closed, and
// returns once fn is running, so later callers are certain to join it.
func startBlockedLeader(t *testing.T, g *Group, key string, val interface{}, err error) (release chan struct{}, done chan Result) {
	t.Helper()
	release = make(chan struct{})
	done = make(chan Result, 1)
	entered := make(chan struct{})
	go func() {
		v, e, shared := g.Do(key, func() (interface{}, error) {
			close(entered)
			<-release
			return val, err
		})
		done <- Result{v, e, shared}
	}()
	<-entered
	return release, done
}

func TestZeroGroupDoReturnsValueUnshared(t *testing.T) {
	var g Group
	v, err, shared := g.Do("k", func() (interface{}, error) { return "v", nil })
	if v != "v" || err != nil || shared {
		t.Fatalf("Do = %v, %v, %v; want v, <nil>, false", v, err, shared)
	}
}

func TestDoReturnsError(t *testing.T) {
	var g Group
	sentinel := errors.New("sentinel")
	v, err, _ := g.Do("k", func() (interface{}, error) { return nil, sentinel })
	if v != nil || err != sentinel {
		t.Fatalf("Do = %v, %v; want <nil>, sentinel", v, err)
	}
}

func TestConcurrentCallersShareOneExecution(t *testing.T) {
	const n = 10
	var g Group
	var calls int32
	value := &struct{ x int }{42}
	release := make(chan struct{})
	results := make(chan Result, n)
	for i := 0; i < n; i++ {
		go func() {
			v, err, shared := g.Do("key", func() (interface{}, error) {
				atomic.AddInt32(&calls, 1)
				<-release
				return value, nil
			})
			results <- Result{v, err, shared}
		}()
	}
	waitUntil(t, "all callers joined one flight", func() bool {
		s := g.Stats()
		return s.Leaders == 1 && s.Followers == n-1
	})
	close(release)
	for i := 0; i < n; i++ {
		r := <-results
		if r.Val != value || r.Err != nil || !r.Shared {
			t.Errorf("caller got %v, %v, %v; want the leader's pointer, <nil>, true", r.Val, r.Err, r.Shared)
		}
	}
	if c := atomic.LoadInt32(&calls); c != 1 {
		t.Fatalf("fn ran %d times, want 1", c)
	}
	if s := g.Stats(); s.Calls != n || s.InFlight != 0 {
		t.Fatalf("stats %+v: want %d calls, nothing in flight", s, n)
	}
}

func TestErrorReachesEveryCaller(t *testing.T) {
	var g Group
	sentinel := errors.New("shared failure")
	release, leaderDone := startBlockedLeader(t, &g, "k", nil, sentinel)
	follower := make(chan error, 1)
	go func() {
		_, err, _ := g.Do("k", func() (interface{}, error) { return nil, errors.New("follower ran fn") })
		follower <- err
	}()
	waitUntil(t, "the follower joined", func() bool { return g.Stats().Followers == 1 })
	close(release)
	if err := <-follower; err != sentinel {
		t.Errorf("follower err = %v, want sentinel", err)
	}
	if r := <-leaderDone; r.Err != sentinel || !r.Shared {
		t.Errorf("leader got %v, shared %v; want sentinel, true", r.Err, r.Shared)
	}
}

// doRecover runs Do and returns what it panicked with, and whether Do
// returned normally.
func doRecover(g *Group, key string, fn func() (interface{}, error)) (recovered interface{}, returned bool) {
	defer func() { recovered = recover() }()
	g.Do(key, fn)
	return nil, true
}

func TestPanicRepanicsInEveryCallerWithTheSameValue(t *testing.T) {
	const n = 5
	var g Group
	sentinel := errors.New("boom")
	release := make(chan struct{})
	got := make(chan interface{}, n)
	for i := 0; i < n; i++ {
		go func() {
			r, returned := doRecover(&g, "k", func() (interface{}, error) {
				<-release
				panic(sentinel)
			})
			if returned {
				got <- "Do returned instead of panicking"
				return
			}
			got <- r
		}()
	}
	waitUntil(t, "all callers joined", func() bool { return g.Stats().Followers == n-1 })
	close(release)
	first := <-got
	for i := 1; i < n; i++ {
		if r := <-got; r != first {
			t.Errorf("caller %d recovered %#v, caller 0 recovered %#v: not the same value", i, r, first)
		}
	}
	err, ok := first.(error)
	if !ok {
		t.Fatalf("recovered a %T, want an error", first)
	}
	if !errors.Is(err, sentinel) {
		t.Errorf("errors.Is(recovered, sentinel) is false")
	}
	if !strings.HasPrefix(err.Error(), "boom\n\n") {
		t.Errorf("message %q should start with the panic value and a blank line", err.Error())
	}
	if s := g.Stats(); s.Panics != 1 || s.InFlight != 0 {
		t.Errorf("stats %+v: want one panic, nothing in flight", s)
	}
}

func TestPanicCarriesTheLeadersStack(t *testing.T) {
	var g Group
	r, _ := doRecover(&g, "k", func() (interface{}, error) { panicFromHere(); return nil, nil })
	err, _ := r.(error)
	if err == nil || !strings.Contains(err.Error(), "panicFromHere") {
		t.Fatalf("recovered %v: the stack should name the panicking function", r)
	}
}

func panicFromHere() { panic("deep") }

func TestGoexitEndsEveryCallersGoroutine(t *testing.T) {
	const n = 4
	var g Group
	release := make(chan struct{})
	var wg sync.WaitGroup
	var returned, ran int32
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			g.Do("k", func() (interface{}, error) {
				atomic.AddInt32(&ran, 1)
				<-release
				runtime.Goexit()
				return nil, nil
			})
			atomic.AddInt32(&returned, 1)
		}()
	}
	waitUntil(t, "all callers joined", func() bool { return g.Stats().Followers == n-1 })
	close(release)
	wg.Wait()
	if r := atomic.LoadInt32(&returned); r != 0 {
		t.Errorf("Do returned in %d goroutines; Goexit should have ended all of them", r)
	}
	if r := atomic.LoadInt32(&ran); r != 1 {
		t.Errorf("fn ran %d times, want 1", r)
	}
	if s := g.Stats(); s.Goexits != 1 || s.InFlight != 0 {
		t.Errorf("stats %+v: want one goexit, nothing in flight", s)
	}
	v, _, _ := g.Do("k", func() (interface{}, error) { return "fresh", nil })
	if v != "fresh" {
		t.Errorf("after Goexit the key should be free; Do returned %v", v)
	}
}

func TestDoChanDeliversToLeaderAndFollowers(t *testing.T) {
	var g Group
	release := make(chan struct{})
	leader := g.DoChan("k", func() (interface{}, error) {
		<-release
		return 7, nil
	})
	follower := g.DoChan("k", func() (interface{}, error) { return -1, nil })
	doResult := make(chan Result, 1)
	go func() {
		v, err, shared := g.Do("k", func() (interface{}, error) { return -1, nil })
		doResult <- Result{v, err, shared}
	}()
	waitUntil(t, "two followers joined", func() bool { return g.Stats().Followers == 2 })
	close(release)
	for name, ch := range map[string]<-chan Result{"leader": leader, "follower": follower, "Do": doResult} {
		if r := <-ch; r.Val != 7 || r.Err != nil || !r.Shared {
			t.Errorf("%s got %+v, want {7 <nil> true}", name, r)
		}
	}
}

func TestDoChanAloneIsNotShared(t *testing.T) {
	var g Group
	r := <-g.DoChan("k", func() (interface{}, error) { return "v", nil })
	if r.Val != "v" || r.Err != nil || r.Shared {
		t.Fatalf("DoChan gave %+v, want {v <nil> false}", r)
	}
}

func TestForgetStartsANewFlightWhileTheOldOneFinishes(t *testing.T) {
	var g Group
	release1, done1 := startBlockedLeader(t, &g, "k", 1, nil)
	g.Forget("k")
	release2, done2 := startBlockedLeader(t, &g, "k", 2, nil)
	joined := make(chan Result, 1)
	go func() {
		v, err, shared := g.Do("k", func() (interface{}, error) { return 3, nil })
		joined <- Result{v, err, shared}
	}()
	waitUntil(t, "a caller joined the second flight", func() bool { return g.Stats().Followers == 1 })
	close(release1)
	if r := <-done1; r.Val != 1 || r.Shared {
		t.Errorf("forgotten flight gave %+v, want {1 <nil> false}", r)
	}
	close(release2)
	if r := <-done2; r.Val != 2 || !r.Shared {
		t.Errorf("second flight's leader got %+v, want {2 <nil> true}", r)
	}
	if r := <-joined; r.Val != 2 || !r.Shared {
		t.Errorf("joiner got %+v, want {2 <nil> true}", r)
	}
	if s := g.Stats(); s.Leaders != 2 || s.Forgets != 1 {
		t.Errorf("stats %+v: want 2 leaders, 1 forget", s)
	}
}

func TestKeysAreBytesIncludingEmptyAndNUL(t *testing.T) {
	var g Group
	release, done := startBlockedLeader(t, &g, "a\x00b", "ab", nil)
	for _, key := range []string{"a\x00c", "a", ""} {
		v, _, shared := g.Do(key, func() (interface{}, error) { return "own:" + key, nil })
		if v != "own:"+key || shared {
			t.Errorf("key %q joined another flight: got %v, %v", key, v, shared)
		}
	}
	close(release)
	if r := <-done; r.Val != "ab" {
		t.Errorf("leader got %v", r.Val)
	}
}

func TestNestedDoOnAnotherKey(t *testing.T) {
	var g Group
	v, err, _ := g.Do("outer", func() (interface{}, error) {
		inner, err, _ := g.Do("inner", func() (interface{}, error) { return 20, nil })
		return inner.(int) + 1, err
	})
	if v != 21 || err != nil {
		t.Fatalf("nested Do gave %v, %v; want 21, <nil>", v, err)
	}
}

func TestManyKeysUnderContention(t *testing.T) {
	var g Group
	const workers, rounds = 8, 300
	var wg sync.WaitGroup
	var executions int64
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for i := 0; i < rounds; i++ {
				key := fmt.Sprintf("key-%d", (i+w)%5)
				v, err, _ := g.Do(key, func() (interface{}, error) {
					atomic.AddInt64(&executions, 1)
					runtime.Gosched()
					return key + "!", nil
				})
				if v != key+"!" || err != nil {
					t.Errorf("key %s got %v, %v", key, v, err)
					return
				}
			}
		}(w)
	}
	wg.Wait()
	s := g.Stats()
	if s.Calls != workers*rounds || s.Leaders != uint64(atomic.LoadInt64(&executions)) || s.InFlight != 0 {
		t.Fatalf("stats %+v, %d executions: want %d calls, leaders = executions, none in flight",
			s, executions, workers*rounds)
	}
}

// x/sync sends nothing to DoChan channels when fn calls runtime.Goexit; the
// waiting Do callers exit instead.
func TestDoChanAfterGoexitNeverReceives(t *testing.T) {
	var g Group
	release, entered := make(chan struct{}), make(chan struct{})
	var leader sync.WaitGroup
	leader.Add(1)
	go func() {
		// Deferred first, so it runs after lead has abandoned the flight and
		// the library has run every completion callback.
		defer leader.Done()
		g.Do("k", func() (interface{}, error) {
			close(entered)
			<-release
			runtime.Goexit()
			return nil, nil
		})
	}()
	<-entered
	ch := g.DoChan("k", func() (interface{}, error) { return "follower ran fn", nil })
	waitUntil(t, "the DoChan caller joined", func() bool { return g.Stats().Followers == 1 })
	close(release)
	leader.Wait()
	select {
	case r := <-ch:
		t.Fatalf("DoChan received %+v after a Goexit", r)
	default:
	}
	if s := g.Stats(); s.Goexits != 1 {
		t.Fatalf("stats %+v: want one goexit", s)
	}
}
