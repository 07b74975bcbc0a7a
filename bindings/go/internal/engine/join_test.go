package engine

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// The tests of the Go-side join (join.go): Go callers after a flight's
// first Go follower join it without crossing into C, and the C library
// sees one follower for all of them.  cStats reads what crossed into C.

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

func listed(g *Group) int32 { return atomic.LoadInt32(&g.c().nListed) }

func newRand(seed int64) *rand.Rand { return rand.New(rand.NewSource(seed)) }

// blocked is a fn that reports its context once running and returns "v"
// when released, or ctx.Err() when its context ends first.
type blocked struct {
	running chan context.Context
	release chan struct{}
	ended   chan error // nil: released; else what fn's ctx said
	runs    int32
}

func newBlocked() *blocked {
	return &blocked{running: make(chan context.Context, 1), release: make(chan struct{}), ended: make(chan error, 1)}
}

func (b *blocked) fn(ctx context.Context) (string, error) {
	atomic.AddInt32(&b.runs, 1)
	b.running <- ctx
	select {
	case <-b.release:
		b.ended <- nil
		return "v", nil
	case <-ctx.Done():
		b.ended <- ctx.Err()
		return "", ctx.Err()
	}
}

func (b *blocked) plain() (string, error) { return b.fn(context.Background()) }

// result is what one caller got.
type result struct {
	v      string
	err    error
	shared bool
}

// caller is one Do, DoContext or DoChan caller on a goroutine of its own.
type caller struct {
	cancel context.CancelFunc
	done   chan result
}

func notRun() (string, error) { return "a follower ran fn", nil }

func notRunCtx(context.Context) (string, error) { return notRun() }

func startDo(g *Group, key string, fn func() (string, error)) *caller {
	c := &caller{cancel: func() {}, done: make(chan result, 1)}
	go func() {
		v, err, shared := Do(g, key, fn)
		c.done <- result{v, err, shared}
	}()
	return c
}

// startDoContext calls DoContext with a ctx of its own; cancellable false
// gives it context.Background() (a caller that cannot give up).
func startDoContext(g *Group, key string, cancellable bool, fn func(context.Context) (string, error)) *caller {
	ctx, cancel := context.Background(), context.CancelFunc(func() {})
	if cancellable {
		ctx, cancel = context.WithCancel(ctx)
	}
	c := &caller{cancel: cancel, done: make(chan result, 1)}
	go func() {
		v, err, shared := DoContext(g, ctx, key, fn)
		c.done <- result{v, err, shared}
	}()
	return c
}

func startDoChan(g *Group, key string, fn func() (string, error)) *caller {
	c := &caller{cancel: func() {}, done: make(chan result, 1)}
	DoChan(g, key, fn, func(v string, err error, shared bool) { c.done <- result{v, err, shared} })
	return c
}

// firstFollower starts a Do follower of key's running flight and waits
// until it has listed the flight for Go callers: every later Go caller
// then joins in Go, deterministically.
func firstFollower(t *testing.T, g *Group, key string, start func() *caller) *caller {
	t.Helper()
	before := listed(g)
	c := start()
	waitUntil(t, "the first follower listed the flight", func() bool { return listed(g) == before+1 })
	return c
}

func expectGaveUp(t *testing.T, who string, c *caller) {
	t.Helper()
	if r := <-c.done; r.v != "" || !errors.Is(r.err, context.Canceled) || r.shared {
		t.Fatalf("%s got %+v, want \"\", context.Canceled, false", who, r)
	}
}

// Many goroutines, of every kind of call, join one flight: one C
// registration for all of them.  (Before the Go-side join every follower
// crossed into C: cStats counted each.)
func TestManyGoroutinesJoinOneFlightThroughTheGoList(t *testing.T) {
	var g Group
	b := newBlocked()
	leader := startDo(&g, "k", b.plain)
	<-b.running
	callers := []*caller{firstFollower(t, &g, "k", func() *caller { return startDo(&g, "k", notRun) })}
	const each = 200
	for i := 0; i < each; i++ {
		callers = append(callers,
			startDo(&g, "k", notRun),
			startDoContext(&g, "k", false, notRunCtx),
			startDoContext(&g, "k", true, notRunCtx),
			startDoChan(&g, "k", notRun))
	}
	n := uint64(len(callers))
	waitUntil(t, "every caller joined", func() bool { return g.Stats().Followers == n })
	if s := cStats(&g); s.Followers != 1 || s.Calls != 2 {
		t.Fatalf("C saw %d followers and %d calls, want 1 and 2: the others should have joined in Go", s.Followers, s.Calls)
	}
	if s := g.Stats(); s.Calls != n+1 || s.Leaders != 1 {
		t.Fatalf("Stats %+v: want %d calls, 1 leader", s, n+1)
	}

	close(b.release)
	for i, c := range callers {
		if r := <-c.done; r != (result{"v", nil, true}) {
			t.Fatalf("caller %d got %+v, want {v <nil> true}", i, r)
		}
	}
	if r := <-leader.done; r != (result{"v", nil, true}) {
		t.Fatalf("the leader got %+v, want {v <nil> true}", r)
	}
	if runs := atomic.LoadInt32(&b.runs); runs != 1 {
		t.Fatalf("fn ran %d times, want 1", runs)
	}
	waitUntil(t, "the flight is out of the table and done", func() bool {
		return listed(&g) == 0 && g.Stats().InFlight == 0
	})
	// The next call starts a new flight: completion took the flight out of
	// the Go table before the leader's Do returned.
	if v, _, shared := Do(&g, "k", func() (string, error) { return "fresh", nil }); v != "fresh" || shared {
		t.Fatalf("after the flight Do = %q, %v; want a fresh flight", v, shared)
	}
}

// Go callers giving up one by one leave alone: the C library sees nothing
// until the last one leaves; then the goFlight's handle gives up, and, with
// the leader's caller gone too, the flight is abandoned and fn's context
// ends before that last caller's DoContext returns.
func TestGivingUpOneByOneAbandonsWhenTheLastGoCallerLeaves(t *testing.T) {
	var g Group
	b := newBlocked()
	leader := startDoContext(&g, "k", true, b.fn)
	fnCtx := <-b.running
	callers := []*caller{firstFollower(t, &g, "k", func() *caller { return startDoContext(&g, "k", true, notRunCtx) })}
	for i := 0; i < 20; i++ {
		callers = append(callers, startDoContext(&g, "k", true, notRunCtx))
	}
	waitUntil(t, "every caller joined", func() bool { return g.Stats().Followers == uint64(len(callers)) })

	leader.cancel()
	expectGaveUp(t, "the leader's caller", leader)
	cBefore := cStats(&g)
	if cBefore.Cancels != 1 {
		t.Fatalf("C counted %d cancels after the leader's caller left, want 1", cBefore.Cancels)
	}
	for i, c := range callers {
		if err := fnCtx.Err(); err != nil {
			t.Fatalf("fn's context ended (%v) with %d callers still waiting", err, len(callers)-i)
		}
		c.cancel()
		expectGaveUp(t, fmt.Sprintf("caller %d", i), c)
		if last := i == len(callers)-1; !last {
			if s := cStats(&g); s.Cancels != cBefore.Cancels || s.Abandons != 0 {
				t.Fatalf("after %d of %d Go callers left, C counted %d cancels and %d abandons: want %d and 0",
					i+1, len(callers), s.Cancels, s.Abandons, cBefore.Cancels)
			}
			if s := g.Stats(); s.Cancels != uint64(i+2) {
				t.Fatalf("Stats counts %d cancels after %d callers gave up, want %d", s.Cancels, i+2, i+2)
			}
		}
	}
	// The last caller's leaving abandoned the flight before it returned.
	if !errors.Is(fnCtx.Err(), context.Canceled) {
		t.Fatalf("fn's context: %v after every caller left, want context.Canceled", fnCtx.Err())
	}
	if err := <-b.ended; !errors.Is(err, context.Canceled) {
		t.Fatalf("fn saw %v, want context.Canceled", err)
	}
	if s := cStats(&g); s.Abandons != 1 || s.Cancels != cBefore.Cancels+1 {
		t.Fatalf("C stats %+v: want 1 abandon, %d cancels (the goFlight's handle gave up once)", s, cBefore.Cancels+1)
	}
	if s := g.Stats(); s.Cancels != uint64(len(callers)+1) {
		t.Fatalf("Stats counts %d cancels, want %d (every caller)", s.Cancels, len(callers)+1)
	}
	if listed(&g) != 0 {
		t.Fatal("the abandoned flight is still listed for Go callers")
	}
	if v, _, shared := Do(&g, "k", func() (string, error) { return "fresh", nil }); v != "fresh" || shared {
		t.Fatalf("after abandonment Do = %q, %v; want a fresh flight", v, shared)
	}
}

// A caller that keeps waiting keeps the flight: the others giving up,
// the leader's caller included, leave fn running for it.
func TestOneGoCallerStayingKeepsTheFlight(t *testing.T) {
	var g Group
	b := newBlocked()
	leader := startDoContext(&g, "k", true, b.fn)
	fnCtx := <-b.running
	stays := firstFollower(t, &g, "k", func() *caller { return startDoContext(&g, "k", true, notRunCtx) })
	var leaving []*caller
	for i := 0; i < 5; i++ {
		leaving = append(leaving, startDoContext(&g, "k", true, notRunCtx))
	}
	waitUntil(t, "every caller joined", func() bool { return g.Stats().Followers == 6 })
	leader.cancel()
	expectGaveUp(t, "the leader's caller", leader)
	for i, c := range leaving {
		c.cancel()
		expectGaveUp(t, fmt.Sprintf("caller %d", i), c)
	}
	if err := fnCtx.Err(); err != nil {
		t.Fatalf("fn's context ended (%v) while a caller still waits", err)
	}
	close(b.release)
	if r := <-stays.done; r != (result{"v", nil, true}) {
		t.Fatalf("the caller that stayed got %+v, want {v <nil> true}", r)
	}
	if s := g.Stats(); s.Abandons != 0 || s.Cancels != 6 {
		t.Fatalf("stats %+v: want no abandon, 6 cancels", s)
	}
}

// A C caller leads; Go callers join its flight, one of them through C.
func TestGoCallersJoinACLeadersFlight(t *testing.T) {
	var g Group
	call, leader := cBegin(&g, "k")
	if !leader {
		t.Fatal("the C caller did not lead")
	}
	callers := []*caller{firstFollower(t, &g, "k", func() *caller { return startDo(&g, "k", notRun) })}
	for i := 0; i < 50; i++ {
		callers = append(callers, startDo(&g, "k", notRun), startDoContext(&g, "k", true, notRunCtx))
	}
	waitUntil(t, "every Go caller joined", func() bool { return g.Stats().Followers == uint64(len(callers)) })
	if s := cStats(&g); s.Followers != 1 {
		t.Fatalf("C saw %d followers, want 1", s.Followers)
	}
	if rc := cFinish(&g, call, 0); rc != statusOK {
		t.Fatalf("sf_call_finish = %d", rc)
	}
	for i, c := range callers {
		// The C leader's flight carries no Go value: the zero string.
		if r := <-c.done; r != (result{"", nil, true}) {
			t.Fatalf("Go caller %d got %+v, want the C flight's {\"\" <nil> true}", i, r)
		}
	}
}

// A Go caller leads; a C caller and Go callers follow, and all get the
// leader's outcome.
func TestACFollowerAndGoFollowersShareAGoLeadersFlight(t *testing.T) {
	var g Group
	b := newBlocked()
	leader := startDo(&g, "k", b.plain)
	<-b.running
	gos := []*caller{firstFollower(t, &g, "k", func() *caller { return startDo(&g, "k", notRun) })}
	call, cLeads := cBegin(&g, "k")
	if cLeads {
		t.Fatal("the C caller led instead of joining the Go leader's flight")
	}
	for i := 0; i < 20; i++ {
		gos = append(gos, startDo(&g, "k", notRun))
	}
	waitUntil(t, "every caller joined", func() bool { return g.Stats().Followers == uint64(len(gos)+1) })
	if s := cStats(&g); s.Followers != 2 {
		t.Fatalf("C saw %d followers, want 2 (the C caller, the first Go follower)", s.Followers)
	}
	close(b.release)
	status, shared := cWait(&g, call, 20*time.Second)
	cRelease(&g, call)
	if status != statusOK || !shared {
		t.Fatalf("the C follower's wait = %d, shared %v; want SF_OK, shared", status, shared)
	}
	for i, c := range append(gos, leader) {
		if r := <-c.done; r != (result{"v", nil, true}) {
			t.Fatalf("Go caller %d got %+v, want {v <nil> true}", i, r)
		}
	}
}

// Giving up counts callers in every language: with every Go caller gone, a
// C caller still waiting keeps fn's context alive; its leaving abandons the
// flight.
func TestACFollowerKeepsTheFlightWhenEveryGoCallerHasGone(t *testing.T) {
	var g Group
	b := newBlocked()
	leader := startDoContext(&g, "k", true, b.fn)
	fnCtx := <-b.running
	gos := []*caller{firstFollower(t, &g, "k", func() *caller { return startDoContext(&g, "k", true, notRunCtx) })}
	for i := 0; i < 10; i++ {
		gos = append(gos, startDoContext(&g, "k", true, notRunCtx))
	}
	call, cLeads := cBegin(&g, "k")
	if cLeads {
		t.Fatal("the C caller led instead of joining")
	}
	waitUntil(t, "every caller joined", func() bool { return g.Stats().Followers == uint64(len(gos)+1) })
	for i, c := range append(gos, leader) {
		c.cancel()
		expectGaveUp(t, fmt.Sprintf("Go caller %d", i), c)
	}
	if err := fnCtx.Err(); err != nil {
		t.Fatalf("fn's context ended (%v) while the C caller still waits", err)
	}
	if s := g.Stats(); s.Abandons != 0 {
		t.Fatalf("stats %+v: abandoned while the C caller waits", s)
	}
	if rc := cCancel(&g, call); rc != 1 {
		t.Fatalf("the C caller's sf_call_cancel = %d, want 1 (it was the last interest)", rc)
	}
	cRelease(&g, call)
	if !errors.Is(fnCtx.Err(), context.Canceled) {
		t.Fatalf("fn's context: %v after the C caller left, want context.Canceled", fnCtx.Err())
	}
	if err := <-b.ended; !errors.Is(err, context.Canceled) {
		t.Fatalf("fn saw %v, want context.Canceled", err)
	}
}

// runRecover runs do on a goroutine and reports what it panicked with,
// whether it returned, and whether its goroutine exited (Goexit) instead.
type ending struct {
	recovered interface{}
	returned  bool
}

func startRecover(do func()) chan ending {
	ch := make(chan ending, 1)
	go func() {
		e := ending{}
		// Runs on return, panic and Goexit alike; the other two fields
		// say which.
		defer func() { ch <- e }()
		defer func() { e.recovered = recover() }()
		do()
		e.returned = true
	}()
	return ch
}

// A panic in fn reaches every Go waiter of the goFlight, with the same
// value; for every kind of leader.
func TestPanicReachesEveryGoWaiterOfTheGoFlight(t *testing.T) {
	sentinel := errors.New("joined boom")
	for _, name := range []string{"Do", "DoContext inline", "DoContext goroutine"} {
		t.Run(name, func(t *testing.T) {
			var g Group
			release, running := make(chan struct{}), make(chan struct{})
			fn := func(context.Context) (string, error) {
				close(running)
				<-release
				panic(sentinel)
			}
			var ends []chan ending
			ends = append(ends, startRecover(func() {
				switch name {
				case "Do":
					Do(&g, "k", func() (string, error) { return fn(nil) })
				case "DoContext inline":
					DoContext(&g, context.Background(), "k", fn)
				default:
					ctx, cancel := context.WithCancel(context.Background())
					defer cancel()
					DoContext(&g, ctx, "k", fn)
				}
			}))
			<-running
			firstFollower(t, &g, "k", func() *caller {
				ends = append(ends, startRecover(func() { Do(&g, "k", notRun) }))
				return nil
			})
			for i := 0; i < 30; i++ {
				ends = append(ends, startRecover(func() { Do(&g, "k", notRun) }))
				ctx, cancel := context.WithCancel(context.Background())
				ends = append(ends, startRecover(func() { defer cancel(); DoContext(&g, ctx, "k", notRunCtx) }))
			}
			waitUntil(t, "every caller joined", func() bool { return g.Stats().Followers == uint64(len(ends)-1) })
			close(release)
			first := <-ends[0]
			pe, ok := first.recovered.(*panicError)
			if !ok || !errors.Is(pe, sentinel) {
				t.Fatalf("the leader's caller recovered %v, want a *panicError wrapping the sentinel", first.recovered)
			}
			for i, ch := range ends[1:] {
				if e := <-ch; e.recovered != pe {
					t.Fatalf("waiter %d recovered %v (returned: %v), want the leader's *panicError", i, e.recovered, e.returned)
				}
			}
			if s := g.Stats(); s.Panics != 1 || s.InFlight != 0 {
				t.Fatalf("stats %+v: want one panic, nothing in flight", s)
			}
		})
	}
}

// runtime.Goexit in fn ends every Go waiter's goroutine.
func TestGoexitReachesEveryGoWaiterOfTheGoFlight(t *testing.T) {
	for _, name := range []string{"Do", "DoContext goroutine"} {
		t.Run(name, func(t *testing.T) {
			var g Group
			release, running := make(chan struct{}), make(chan struct{})
			fn := func(context.Context) (string, error) {
				close(running)
				<-release
				runtime.Goexit()
				return "", nil
			}
			var ends []chan ending
			ends = append(ends, startRecover(func() {
				if name == "Do" {
					Do(&g, "k", func() (string, error) { return fn(nil) })
					return
				}
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				DoContext(&g, ctx, "k", fn)
			}))
			<-running
			firstFollower(t, &g, "k", func() *caller {
				ends = append(ends, startRecover(func() { Do(&g, "k", notRun) }))
				return nil
			})
			for i := 0; i < 30; i++ {
				ends = append(ends, startRecover(func() { Do(&g, "k", notRun) }))
				ctx, cancel := context.WithCancel(context.Background())
				ends = append(ends, startRecover(func() { defer cancel(); DoContext(&g, ctx, "k", notRunCtx) }))
			}
			waitUntil(t, "every caller joined", func() bool { return g.Stats().Followers == uint64(len(ends)-1) })
			close(release)
			for i, ch := range ends {
				if e := <-ch; e.returned || e.recovered != nil {
					t.Fatalf("caller %d: returned %v, recovered %v; want its goroutine ended by Goexit", i, e.returned, e.recovered)
				}
			}
			if s := g.Stats(); s.Goexits != 1 || s.InFlight != 0 {
				t.Fatalf("stats %+v: want one goexit, nothing in flight", s)
			}
		})
	}
}

// Forget takes the key's goFlight out with the C flight: the next caller
// starts a new flight, while the old one still delivers to the Go callers
// that joined it.
func TestForgetTakesTheGoFlightOut(t *testing.T) {
	var g Group
	b := newBlocked()
	leader := startDo(&g, "k", b.plain)
	<-b.running
	old := []*caller{firstFollower(t, &g, "k", func() *caller { return startDo(&g, "k", notRun) })}
	for i := 0; i < 10; i++ {
		old = append(old, startDo(&g, "k", notRun))
	}
	waitUntil(t, "every caller joined", func() bool { return g.Stats().Followers == uint64(len(old)) })
	g.Forget("k")
	if listed(&g) != 0 {
		t.Fatal("Forget left the key's goFlight listed")
	}
	if v, _, shared := Do(&g, "k", func() (string, error) { return "fresh", nil }); v != "fresh" || shared {
		t.Fatalf("after Forget Do = %q, %v; want a fresh flight", v, shared)
	}
	close(b.release)
	for i, c := range append(old, leader) {
		if r := <-c.done; r != (result{"v", nil, true}) {
			t.Fatalf("caller %d of the forgotten flight got %+v, want {v <nil> true}", i, r)
		}
	}
}

// A leader calling Do on its own key from inside fn, once a follower has
// listed the flight, is refused on the Go join path as on the C one.
func TestOwnKeyInsideFnThroughTheGoListPanicsWithErrDeadlock(t *testing.T) {
	var g Group
	listedCh, inner := make(chan struct{}), make(chan interface{}, 1)
	leader := startRecover(func() {
		Do(&g, "k", func() (string, error) {
			<-listedCh
			func() {
				defer func() { inner <- recover() }()
				Do(&g, "k", notRun)
			}()
			return "returned", nil
		})
	})
	waitUntil(t, "the leader runs", func() bool { return g.Stats().InFlight == 1 })
	follower := firstFollower(t, &g, "k", func() *caller { return startDo(&g, "k", notRun) })
	close(listedCh)
	if err, ok := (<-inner).(error); !ok || !errors.Is(err, ErrDeadlock) {
		t.Fatalf("the inner Do panicked with %v, want ErrDeadlock", err)
	}
	if e := <-leader; !e.returned {
		t.Fatalf("the leader did not return (recovered %v)", e.recovered)
	}
	if r := <-follower.done; r != (result{"returned", nil, true}) {
		t.Fatalf("the follower got %+v", r)
	}
}

// Two first followers racing: the C library cannot say whether two
// follower handles are on one flight, so the second stays unlisted with
// its own handle, and both deliver.
func TestARacingFirstFollowerStaysUnlisted(t *testing.T) {
	var g Group
	b := newBlocked()
	leader := startDo(&g, "k", b.plain)
	<-b.running
	core := g.c()
	mark := core.beginEpoch()
	call1, lead1 := core.begin("k")
	call2, lead2 := core.begin("k")
	if lead1 || lead2 {
		t.Fatal("a follower led")
	}
	f1 := core.followInGo(call1, "k", mark)
	f2 := core.followInGo(call2, "k", mark)
	core.flightsMu.RLock()
	l1, l2 := f1.listed, f2.listed
	core.flightsMu.RUnlock()
	if !l1 || l2 {
		t.Fatalf("listed: first %v, second %v; want only the first", l1, l2)
	}
	if f := core.joinListed("k"); f != f1 {
		t.Fatal("a Go caller did not join the listed goFlight")
	} else {
		f.leave(false)
	}
	close(b.release)
	for i, f := range []*goFlight{f1, f2} {
		<-f.done
		d := f.d
		f.leave(false)
		if o, _ := d.value.(*outcome[string]); d.status != statusOK || o == nil || o.val != "v" {
			t.Fatalf("goFlight %d delivered %+v", i, d)
		}
	}
	if r := <-leader.done; r != (result{"v", nil, true}) {
		t.Fatalf("the leader got %+v", r)
	}
	waitUntil(t, "nothing in flight", func() bool { return g.Stats().InFlight == 0 && listed(&g) == 0 })
}

// Many callers giving up at random moments while fn completes, with most
// of them in a goFlight: a caller that stays gets the value, one that gives
// up gets ctx.Err() or the value, and afterwards nothing is listed, in
// flight or alive.  Seeded by the round number: the schedule is the
// runtime's.
func TestGoFlightCallersLeavingAsFnCompletes(t *testing.T) {
	var g Group
	baseline := runtime.NumGoroutine()
	outcomes := LiveOutcomes()
	const rounds, callers = 200, 12
	for r := 0; r < rounds; r++ {
		fnSpins := r % 7 // an abandoned fn may outlive its round
		fn := func(ctx context.Context) (string, error) {
			for i := 0; i < fnSpins; i++ {
				runtime.Gosched()
			}
			return "v", nil
		}
		var wg sync.WaitGroup
		for i := 0; i < callers; i++ {
			giveUp := (r+i)%3 != 0
			spins := (r * (i + 1)) % 11
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				if giveUp {
					go func() {
						for j := 0; j < spins; j++ {
							runtime.Gosched()
						}
						cancel()
					}()
				}
				v, err, _ := DoContext(&g, ctx, "k", fn)
				if !(v == "v" && err == nil) && !(giveUp && v == "" && errors.Is(err, context.Canceled)) {
					t.Errorf("round %d caller %d (gives up: %v) got %q, %v", r, i, giveUp, v, err)
				}
			}(i)
		}
		wg.Wait()
	}
	waitUntil(t, "nothing listed or in flight, every goroutine gone, every outcome destroyed", func() bool {
		return listed(&g) == 0 && g.Stats().InFlight == 0 && runtime.NumGoroutine() <= baseline && LiveOutcomes() == outcomes
	})
	t.Logf("stats: %+v; C saw %+v", g.Stats(), cStats(&g))
}

// Do, DoContext and DoChan callers of a few keys, some giving up, with
// Forgets in between: every caller gets a value of its key's flights (or,
// when it gave up, ctx.Err()), and afterwards nothing is listed, in flight
// or alive.  The plan comes from a fixed seed; the schedule is the
// runtime's.
func TestMixedCallersGiveUpAndForgetAcrossKeys(t *testing.T) {
	var g Group
	baseline := runtime.NumGoroutine()
	outcomes := LiveOutcomes()
	rng := newRand(17)
	keys := []string{"a", "b", "c"}
	for round := 0; round < 150; round++ {
		var wg sync.WaitGroup
		for i := 0; i < 16; i++ {
			key := keys[rng.Intn(len(keys))]
			want := "v:" + key
			fn := func(ctx context.Context) (string, error) {
				runtime.Gosched()
				return want, nil
			}
			kind, spins := rng.Intn(4), rng.Intn(8)
			wg.Add(1)
			switch kind {
			case 0:
				go func() {
					defer wg.Done()
					if v, err, _ := Do(&g, key, func() (string, error) { return fn(nil) }); v != want || err != nil {
						t.Errorf("Do(%q) = %q, %v", key, v, err)
					}
				}()
			case 1:
				DoChan(&g, key, func() (string, error) { return fn(nil) }, func(v string, err error, _ bool) {
					if v != want || err != nil {
						t.Errorf("DoChan(%q) sent %q, %v", key, v, err)
					}
					wg.Done()
				})
			default:
				giveUp := kind == 3
				go func() {
					defer wg.Done()
					ctx, cancel := context.WithCancel(context.Background())
					defer cancel()
					if giveUp {
						go func() {
							for j := 0; j < spins; j++ {
								runtime.Gosched()
							}
							cancel()
						}()
					}
					v, err, _ := DoContext(&g, ctx, key, fn)
					if !(v == want && err == nil) && !(giveUp && v == "" && errors.Is(err, context.Canceled)) {
						t.Errorf("DoContext(%q) (gives up: %v) = %q, %v", key, giveUp, v, err)
					}
				}()
			}
			if rng.Intn(8) == 0 {
				g.Forget(keys[rng.Intn(len(keys))])
			}
		}
		wg.Wait()
	}
	waitUntil(t, "nothing listed or in flight, every goroutine gone, every outcome destroyed", func() bool {
		return listed(&g) == 0 && g.Stats().InFlight == 0 && runtime.NumGoroutine() <= baseline && LiveOutcomes() == outcomes
	})
	if g.c().hot.Load() != nil {
		t.Fatal("a flight is still the table's hot entry")
	}
	t.Logf("stats: %+v; C saw %+v", g.Stats(), cStats(&g))
}
