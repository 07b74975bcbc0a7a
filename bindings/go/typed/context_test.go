package typed

import (
	"context"
	"errors"
	"math/rand"
	"os"
	"runtime"
	"strconv"
	"sync"
	"testing"
	"time"
)

// ctxCall is one DoContext caller running on its own goroutine.
type ctxCall struct {
	cancel context.CancelFunc
	done   chan Result[string]
}

// startCtxCall starts DoContext(key, fn) with a ctx of its own.
func startCtxCall(g *Group[string], key string, fn func(context.Context) (string, error)) *ctxCall {
	ctx, cancel := context.WithCancel(context.Background())
	c := &ctxCall{cancel: cancel, done: make(chan Result[string], 1)}
	go func() {
		v, err, shared := g.DoContext(ctx, key, fn)
		c.done <- Result[string]{v, err, shared}
	}()
	return c
}

// blockingFn is a DoContext fn that reports its context once it runs, then
// waits for release (returning "v") or for its context to end (returning
// what the context says), and reports which.
type blockingFn struct {
	running chan context.Context
	release chan struct{}
	ended   chan error // ctx.Err() if fn saw its context end, nil if released
	calls   int32
}

func newBlockingFn() *blockingFn {
	return &blockingFn{running: make(chan context.Context, 1), release: make(chan struct{}), ended: make(chan error, 1)}
}

func (b *blockingFn) fn(ctx context.Context) (string, error) {
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

// leaderAndFollowers starts a leader running b.fn and n followers, and
// returns once all have joined, with fn's context.
func leaderAndFollowers(t *testing.T, g *Group[string], b *blockingFn, n int) ([]*ctxCall, context.Context) {
	t.Helper()
	before := g.Stats().Followers
	calls := []*ctxCall{startCtxCall(g, "k", b.fn)}
	fnCtx := <-b.running
	for i := 0; i < n; i++ {
		calls = append(calls, startCtxCall(g, "k", func(context.Context) (string, error) {
			return "a follower ran fn", nil
		}))
	}
	waitUntil(t, "the followers joined", func() bool { return g.Stats().Followers == before+uint64(n) })
	return calls, fnCtx
}

func expectCanceled(t *testing.T, who string, c *ctxCall) {
	t.Helper()
	r := <-c.done
	if r.Val != "" || !errors.Is(r.Err, context.Canceled) || r.Shared {
		t.Fatalf("%s got %+v, want \"\", context.Canceled, false", who, r)
	}
}

func TestDoContextReturnsTheValueToASingleCaller(t *testing.T) {
	var g Group[int]
	v, err, shared := g.DoContext(context.Background(), "k", func(ctx context.Context) (int, error) {
		if ctx.Err() != nil {
			t.Error("fn's context ended before fn returned")
		}
		return 7, nil
	})
	if v != 7 || err != nil || shared {
		t.Fatalf("DoContext = %v, %v, %v; want 7, <nil>, false", v, err, shared)
	}
}

func TestDoContextCallerGivingUpReturnsAtOnceAndLeavesTheOthers(t *testing.T) {
	var g Group[string]
	b := newBlockingFn()
	calls, fnCtx := leaderAndFollowers(t, &g, b, 2)

	// A follower and then the leader's caller give up, while fn runs.
	calls[1].cancel()
	expectCanceled(t, "the follower that gave up", calls[1])
	calls[0].cancel()
	expectCanceled(t, "the leader's caller that gave up", calls[0])
	// Giving up is synchronous: had it abandoned the flight, fn's context
	// would have ended before the callers returned.
	if err := fnCtx.Err(); err != nil {
		t.Fatalf("fn's context ended (%v) while a caller still waits", err)
	}

	close(b.release)
	if r := <-calls[2].done; r.Val != "v" || r.Err != nil || !r.Shared {
		t.Fatalf("the remaining follower got %+v, want {v <nil> true}", r)
	}
	if err := <-b.ended; err != nil {
		t.Fatalf("fn saw its context end: %v", err)
	}
	if s := g.Stats(); s.Cancels != 2 || s.Abandons != 0 || s.InFlight != 0 {
		t.Fatalf("stats %+v: want 2 cancels, no abandon, nothing in flight", s)
	}
}

func TestDoContextEveryCallerGivingUpCancelsFnAndFreesTheKey(t *testing.T) {
	var g Group[string]
	b := newBlockingFn()
	calls, fnCtx := leaderAndFollowers(t, &g, b, 2)
	for i, c := range calls {
		if err := fnCtx.Err(); err != nil {
			t.Fatalf("fn's context ended (%v) before caller %d gave up", err, i)
		}
		c.cancel()
		expectCanceled(t, "a caller that gave up", c)
	}
	// The last caller's leaving cancelled fn's context before it returned.
	if !errors.Is(fnCtx.Err(), context.Canceled) {
		t.Fatalf("fn's context: %v, want context.Canceled", fnCtx.Err())
	}
	if err := <-b.ended; !errors.Is(err, context.Canceled) {
		t.Fatalf("fn observed %v, want context.Canceled through ctx.Done", err)
	}
	if s := g.Stats(); s.Abandons != 1 || s.Cancels != 3 {
		t.Fatalf("stats %+v: want 1 abandon, 3 cancels", s)
	}

	// A caller arriving now starts a new flight.
	v, err, shared := g.DoContext(context.Background(), "k", func(context.Context) (string, error) { return "fresh", nil })
	if v != "fresh" || err != nil || shared {
		t.Fatalf("after abandonment DoContext = %q, %v, %v; want a fresh flight", v, err, shared)
	}
}

func TestDoContextNewCallerDuringAnAbandonedFnStartsAFreshFlight(t *testing.T) {
	var g Group[string]
	release := make(chan struct{})
	returned := make(chan struct{})
	running := make(chan struct{})
	c := startCtxCall(&g, "k", func(ctx context.Context) (string, error) {
		defer close(returned)
		close(running)
		<-ctx.Done()
		<-release // the abandoned fn goes on for a while
		return "stale", nil
	})
	<-running
	c.cancel()
	expectCanceled(t, "the only caller", c)
	v, err, shared := g.DoContext(context.Background(), "k", func(context.Context) (string, error) { return "fresh", nil })
	if v != "fresh" || err != nil || shared {
		t.Fatalf("DoContext = %q, %v, %v while the abandoned fn still runs; want fresh, <nil>, false", v, err, shared)
	}
	close(release)
	<-returned
}

// Do and DoChan callers cannot give up, so while one waits the flight is
// not abandoned, even when every DoContext caller has gone.
func TestDoContextPlainFollowersKeepFnRunning(t *testing.T) {
	joins := map[string]func(g *Group[string]) <-chan Result[string]{
		"Do": func(g *Group[string]) <-chan Result[string] {
			ch := make(chan Result[string], 1)
			go func() {
				v, err, shared := g.Do("k", func() (string, error) { return "a follower ran fn", nil })
				ch <- Result[string]{v, err, shared}
			}()
			return ch
		},
		"DoChan": func(g *Group[string]) <-chan Result[string] {
			return g.DoChan("k", func() (string, error) { return "a follower ran fn", nil })
		},
	}
	for name, join := range joins {
		t.Run(name, func(t *testing.T) {
			var g Group[string]
			b := newBlockingFn()
			leader := startCtxCall(&g, "k", b.fn)
			fnCtx := <-b.running
			follower := join(&g)
			waitUntil(t, "the follower joined", func() bool { return g.Stats().Followers == 1 })
			leader.cancel()
			expectCanceled(t, "the leader's caller", leader)
			if err := fnCtx.Err(); err != nil {
				t.Fatalf("fn's context ended (%v) while a %s caller waits", err, name)
			}
			close(b.release)
			if r := <-follower; r.Val != "v" || r.Err != nil || !r.Shared {
				t.Fatalf("the %s caller got %+v, want {v <nil> true}", name, r)
			}
		})
	}
}

func TestDoContextCallerWithAnEndedContextStartsNothing(t *testing.T) {
	var g Group[int]
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	v, err, shared := g.DoContext(ctx, "k", func(context.Context) (int, error) {
		t.Error("fn ran for a caller whose context had ended")
		return 1, nil
	})
	if v != 0 || !errors.Is(err, context.Canceled) || shared {
		t.Fatalf("DoContext = %v, %v, %v; want 0, context.Canceled, false", v, err, shared)
	}
	if s := g.Stats(); s.Calls != 0 {
		t.Fatalf("stats %+v: want no call", s)
	}
}

func TestDoContextDeadlineReturnsDeadlineExceeded(t *testing.T) {
	var g Group[string]
	b := newBlockingFn()
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	_, err, _ := g.DoContext(ctx, "k", b.fn)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	// fn's context has no deadline of its own: it ended because the only
	// caller left.
	fnCtx := <-b.running
	if _, ok := fnCtx.Deadline(); ok {
		t.Fatal("fn's context has the caller's deadline")
	}
	if err := <-b.ended; !errors.Is(err, context.Canceled) {
		t.Fatalf("fn observed %v, want context.Canceled", err)
	}
}

type ctxKey struct{}

func TestDoContextFnSeesTheStartingCallersValues(t *testing.T) {
	var g Group[string]
	ctx := context.WithValue(context.Background(), ctxKey{}, "trace-1")
	v, _, _ := g.DoContext(ctx, "k", func(ctx context.Context) (string, error) {
		s, _ := ctx.Value(ctxKey{}).(string)
		return s, nil
	})
	if v != "trace-1" {
		t.Fatalf("fn saw value %q, want trace-1", v)
	}
}

func TestDoContextPanicReachesEveryWaitingCaller(t *testing.T) {
	var g Group[string]
	sentinel := errors.New("ctx boom")
	release := make(chan struct{})
	running := make(chan struct{})
	recovered := make(chan interface{}, 2)
	call := func(fn func(context.Context) (string, error)) {
		defer func() { recovered <- recover() }()
		g.DoContext(context.Background(), "k", fn)
	}
	go call(func(context.Context) (string, error) {
		close(running)
		<-release
		panic(sentinel)
	})
	<-running
	go call(func(context.Context) (string, error) { return "a follower ran fn", nil })
	waitUntil(t, "the follower joined", func() bool { return g.Stats().Followers == 1 })
	close(release)
	assertSamePanic(t, <-recovered, <-recovered, sentinel)
}

func TestDoContextGoexitEndsEveryWaitingCaller(t *testing.T) {
	var g Group[string]
	release := make(chan struct{})
	running := make(chan struct{})
	var wg sync.WaitGroup
	returned := make(chan struct{}, 2)
	call := func(fn func(context.Context) (string, error)) {
		defer wg.Done()
		g.DoContext(context.Background(), "k", fn)
		returned <- struct{}{}
	}
	wg.Add(2)
	go call(func(context.Context) (string, error) {
		close(running)
		<-release
		runtime.Goexit()
		return "", nil
	})
	<-running
	go call(func(context.Context) (string, error) { return "a follower ran fn", nil })
	waitUntil(t, "the follower joined", func() bool { return g.Stats().Followers == 1 })
	close(release)
	wg.Wait()
	if len(returned) != 0 {
		t.Fatalf("DoContext returned in %d callers; Goexit should have ended them", len(returned))
	}
	if s := g.Stats(); s.Goexits != 1 || s.InFlight != 0 {
		t.Fatalf("stats %+v: want one goexit, nothing in flight", s)
	}
}

func TestDoContextOnOwnKeyInsideFnPanicsWithErrDeadlock(t *testing.T) {
	var g Group[int]
	var inner interface{}
	v, err, _ := g.DoContext(context.Background(), "k", func(ctx context.Context) (int, error) {
		defer func() { inner = recover() }()
		g.DoContext(ctx, "k", func(context.Context) (int, error) { return 1, nil })
		return 2, nil
	})
	if ierr, ok := inner.(error); !ok || !errors.Is(ierr, ErrDeadlock) {
		t.Fatalf("the inner DoContext panicked with %v, want ErrDeadlock", inner)
	}
	if v != 0 || err != nil {
		t.Fatalf("DoContext = %v, %v; want 0, <nil> (fn recovered)", v, err)
	}
}

// Every goroutine DoContext starts ends: the fn goroutines of flights that
// completed, were given up by some callers, or abandoned by all of them.
func TestDoContextLeavesNoGoroutineBehind(t *testing.T) {
	var g Group[string]
	baseline := runtime.NumGoroutine()

	// Completed, with one of three callers giving up.
	b := newBlockingFn()
	calls, _ := leaderAndFollowers(t, &g, b, 2)
	calls[1].cancel()
	expectCanceled(t, "the follower that gave up", calls[1])
	close(b.release)
	for _, i := range []int{0, 2} {
		if r := <-calls[i].done; r.Val != "v" {
			t.Fatalf("caller %d got %+v", i, r)
		}
	}
	// Abandoned by both callers.
	b = newBlockingFn()
	calls, _ = leaderAndFollowers(t, &g, b, 1)
	for _, c := range calls {
		c.cancel()
		expectCanceled(t, "a caller", c)
	}
	<-b.ended

	// fn has returned in both flights; its goroutine completes the flight
	// and ends right after.  Both are waited for: the baseline may count
	// a goroutine of an earlier test that was still ending, so the count
	// alone can come back before the abandoned flight's fn goroutine is
	// done.
	waitUntil(t, "the goroutine count is back to its baseline and nothing is in flight", func() bool {
		return runtime.NumGoroutine() <= baseline && g.Stats().InFlight == 0
	})
}

// Callers giving up at random moments while fn completes: a caller that
// keeps waiting always gets fn's value (its interest keeps fn's context
// alive), one that gives up gets its ctx.Err() or, if the value won the
// race, the value; nothing stays in flight and no goroutine stays behind.
// The schedule comes from a printed seed.
func TestDoContextCallersLeavingAsFnCompletes(t *testing.T) {
	seed := time.Now().UnixNano()
	if s := os.Getenv("SF_GO_SEED"); s != "" {
		var err error
		if seed, err = strconv.ParseInt(s, 10, 64); err != nil {
			t.Fatalf("SF_GO_SEED=%q: %v", s, err)
		}
	}
	t.Logf("seed %d (rerun with SF_GO_SEED=%d)", seed, seed)
	rng := rand.New(rand.NewSource(seed))
	var g Group[string]
	baseline := runtime.NumGoroutine()
	const rounds, callers = 300, 4
	for r := 0; r < rounds; r++ {
		fnSpins := rng.Intn(20)
		type plan struct {
			giveUp bool
			spins  int
		}
		plans := make([]plan, callers)
		for i := range plans {
			plans[i] = plan{giveUp: rng.Intn(2) == 0, spins: rng.Intn(20)}
		}
		fn := func(ctx context.Context) (string, error) {
			for i := 0; i < fnSpins; i++ {
				runtime.Gosched()
			}
			if err := ctx.Err(); err != nil {
				return "", err
			}
			return "v", nil
		}
		var wg sync.WaitGroup
		for i, p := range plans {
			wg.Add(1)
			go func(i int, p plan) {
				defer wg.Done()
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				if p.giveUp {
					go func() {
						for j := 0; j < p.spins; j++ {
							runtime.Gosched()
						}
						cancel()
					}()
				}
				v, err, _ := g.DoContext(ctx, "k", fn)
				switch {
				case v == "v" && err == nil:
				case p.giveUp && v == "" && errors.Is(err, context.Canceled):
				default:
					t.Errorf("round %d caller %d (gives up: %v) got %q, %v", r, i, p.giveUp, v, err)
				}
			}(i, p)
		}
		wg.Wait()
	}
	waitUntil(t, "nothing in flight", func() bool { return g.Stats().InFlight == 0 })
	waitUntil(t, "the goroutine count is back to its baseline", func() bool {
		return runtime.NumGoroutine() <= baseline
	})
	s := g.Stats()
	t.Logf("stats after %d rounds: %+v", rounds, s)
}
