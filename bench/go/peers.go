package main

// Go's singleflights side by side where Do alone is not enough: callers
// that may give up (a ctx), a herd of goroutines on one key, and the
// cancellation cases each one gets right or wrong.  The peers are pinned
// in go.mod; the binding registers its own rows (binding.go, -tags
// sfbinding).  Experiments: herd, ctxcost, semantics (see main's flags).

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	resenje "resenje.org/singleflight"
	tailscale "tailscale.com/util/singleflight"

	"golang.org/x/sync/singleflight"
)

// caller is one way for a Go caller to wait for a key's flight.  fn gets
// the context the library hands it; x/sync has none, so there it gets the
// ctx of the caller whose closure runs (what a closure over the request's
// ctx does), or that ctx without its cancellation.
type caller interface {
	Call(ctx context.Context, key string, fn func(context.Context) (interface{}, error)) (interface{}, error)
}

type callerRow struct {
	name   string
	label  string
	mk     func() caller
	ctxful bool // its callers can give up (they get a cancellable ctx)
}

// callerRows in the order the tables print them.
var callerRows []callerRow

func registerCaller(name, label string, ctxful bool, mk func() caller) {
	callerRows = append(callerRows, callerRow{name, label, mk, ctxful})
}

func init() {
	registerCaller("xsync-do", "x/sync `Do`", false, func() caller { return &xsyncDo{} })
	registerCaller("xsync-dochan", "x/sync `DoChan` + select, fn uses the starter's ctx", true,
		func() caller { return &xsyncChan{} })
	registerCaller("xsync-dochan-detached", "x/sync `DoChan` + select, fn uses `context.WithoutCancel`", true,
		func() caller { return &xsyncChan{detach: true} })
	registerCaller("resenje", "resenje.org/singleflight `Do(ctx)`", true,
		func() caller { return &resenjeDo{} })
	registerCaller("tailscale", "tailscale.com/util/singleflight `DoChanContext`", true,
		func() caller { return &tailscaleCtx{} })

	experiments["herd"] = runHerd
	experiments["ctxcost"] = runCtxCost
	experiments["semantics"] = runSemantics
	experiments["semchild"] = runSemChild
}

type xsyncDo struct{ g singleflight.Group }

func (x *xsyncDo) Call(ctx context.Context, key string, fn func(context.Context) (interface{}, error)) (interface{}, error) {
	v, err, _ := x.g.Do(key, func() (interface{}, error) { return fn(ctx) })
	return v, err
}

type xsyncChan struct {
	g      singleflight.Group
	detach bool
}

func (x *xsyncChan) Call(ctx context.Context, key string, fn func(context.Context) (interface{}, error)) (interface{}, error) {
	fctx := ctx
	if x.detach {
		fctx = context.WithoutCancel(ctx)
	}
	select {
	case r := <-x.g.DoChan(key, func() (interface{}, error) { return fn(fctx) }):
		return r.Val, r.Err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type resenjeDo struct {
	g resenje.Group[string, interface{}]
}

func (r *resenjeDo) Call(ctx context.Context, key string, fn func(context.Context) (interface{}, error)) (interface{}, error) {
	v, _, err := r.g.Do(ctx, key, fn)
	return v, err
}

type tailscaleCtx struct {
	g tailscale.Group[string, interface{}]
}

func (t *tailscaleCtx) Call(ctx context.Context, key string, fn func(context.Context) (interface{}, error)) (interface{}, error) {
	r := <-t.g.DoChanContext(ctx, key, fn)
	return r.Val, r.Err
}

// selected is the rows -only names, all of them without it, in order.
func selected() []callerRow {
	if *onlyFlag == "" {
		return callerRows
	}
	var rows []callerRow
	for _, name := range strings.Split(*onlyFlag, ",") {
		found := false
		for _, r := range callerRows {
			if r.name == name {
				rows, found = append(rows, r), true
			}
		}
		if !found {
			fmt.Fprintf(os.Stderr, "gobench: no caller row %q\n", name)
			os.Exit(3)
		}
	}
	return rows
}

func medianF(xs []float64) float64 {
	if len(xs) == 0 {
		return -1
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// ---- herd ------------------------------------------------------------------

// herdOnce releases n goroutines at once on one key whose fn sleeps, and
// reports how many times fn ran, when the last caller entered the call
// (goroutines run in turn, so that is the time the others took to join),
// and, over the sleep, when the median and the last caller got their
// result.
func herdOnce(row callerRow, n int, sleep time.Duration) (execs int32, lastEnter, medOver, lastOver, cpuPerCall float64) {
	c := row.mk()
	fn := func(context.Context) (interface{}, error) {
		atomic.AddInt32(&execs, 1)
		time.Sleep(sleep)
		return boxedOne, nil
	}
	start := make(chan struct{})
	var ready, done sync.WaitGroup
	ends := make([]int64, n)
	enters := make([]int64, n)
	for i := 0; i < n; i++ {
		ready.Add(1)
		done.Add(1)
		go func(i int) {
			defer done.Done()
			ctx := context.Background()
			if row.ctxful {
				var cancel context.CancelFunc
				ctx, cancel = context.WithCancel(ctx)
				defer cancel()
			}
			ready.Done()
			<-start
			enters[i] = now()
			if _, err := c.Call(ctx, "herd", fn); err != nil {
				panic(err)
			}
			ends[i] = now()
		}(i)
	}
	ready.Wait()
	runtime.GC()
	c0 := cpuNs()
	t0 := now()
	close(start)
	done.Wait()
	cpu := cpuNs() - c0
	over := make([]float64, n)
	for i, e := range ends {
		over[i] = float64(e-t0-sleep.Nanoseconds()) / 1e6
	}
	sort.Float64s(over)
	var last int64
	for _, e := range enters {
		if e > last {
			last = e
		}
	}
	return execs, float64(last-t0) / 1e6, over[n/2], over[n-1], float64(cpu) / float64(n)
}

// runHerd: -callers goroutines (10,000) on one key, fn sleeping -sleep-ms,
// every selected row once per repeat, the first row rotating.
func runHerd(_, callers int) {
	rows := selected()
	sleep := time.Duration(*sleepMs) * time.Millisecond
	type acc struct {
		execs      []float64
		enter      []float64
		cpu        []float64
		med, last  []float64
		lastByRep  []float64
		execsByRep []int32
	}
	res := make([]acc, len(rows))
	for rep := 0; rep < *repsFlag; rep++ {
		for j := range rows {
			i := (j + rep) % len(rows)
			e, enter, med, last, cpu := herdOnce(rows[i], callers, sleep)
			res[i].cpu = append(res[i].cpu, cpu)
			res[i].execs = append(res[i].execs, float64(e))
			res[i].enter = append(res[i].enter, enter)
			res[i].med = append(res[i].med, med)
			res[i].last = append(res[i].last, last)
			res[i].lastByRep = append(res[i].lastByRep, last)
			res[i].execsByRep = append(res[i].execsByRep, e)
		}
	}
	for i, r := range rows {
		emit(map[string]interface{}{
			"kind": "herd", "contender": r.name, "label": r.label, "callers": callers,
			"sleep_ms": *sleepMs, "reps": *repsFlag,
			"execs_median": medianF(res[i].execs), "execs_max": maxF(res[i].execs), "execs_by_rep": res[i].execsByRep,
			"last_enter_ms": medianF(res[i].enter),
			// Process CPU time from the release until every caller has its
			// result, per caller: the herd's cost, whatever else the
			// machine runs meanwhile.
			"cpu_per_caller_ns": medianF(res[i].cpu),
			"over_median_ms":    medianF(res[i].med), "over_last_ms": medianF(res[i].last),
			"over_last_by_rep_ms": res[i].lastByRep,
			"gomaxprocs":          runtime.GOMAXPROCS(0),
		})
	}
	// Ratios of the last caller's time over the sleep, per repeat (runs
	// seconds apart), then their median.
	for _, pair := range [][2]string{{"gobinding-do", "xsync-do"}, {"gobinding-ctx", "xsync-dochan"}} {
		a, b := -1, -1
		for i, r := range rows {
			if r.name == pair[0] {
				a = i
			}
			if r.name == pair[1] {
				b = i
			}
		}
		if a < 0 || b < 0 {
			continue
		}
		ratios := make([]float64, 0, *repsFlag)
		for k := range res[a].lastByRep {
			ratios = append(ratios, res[a].lastByRep[k]/res[b].lastByRep[k])
		}
		emit(map[string]interface{}{
			"kind": "herd-ratio", "contender": pair[0], "against": pair[1], "sleep_ms": *sleepMs,
			"last_over_ratio_median": medianF(ratios), "ratios": ratios,
		})
	}
}

func maxF(xs []float64) float64 {
	m := xs[0]
	for _, x := range xs {
		if x > m {
			m = x
		}
	}
	return m
}

// ---- ctxcost ---------------------------------------------------------------

// costRow is one contender of the uncontended-cost experiment: run makes n
// calls from one goroutine on 1024 rotating keys, with a trivial fn and a
// ctx that can end (but does not).
type costRow struct {
	name  string
	label string
	mk    func(keys []string) func(n int)
}

var costRows []costRow

func registerCost(name, label string, mk func(keys []string) func(n int)) {
	costRows = append(costRows, costRow{name, label, mk})
}

// cancels keeps the contexts liveCtx made (never cancelled: the calls
// measured pay for a ctx that can end, not for one ending).
var cancels []context.CancelFunc

// liveCtx is a context that can end, and does not.
func liveCtx() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancels = append(cancels, cancel)
	return ctx
}

func trivialCtx(context.Context) (interface{}, error) { return boxedOne, nil }
func trivial() (interface{}, error)                   { return boxedOne, nil }

func init() {
	registerCost("xsync-do", "x/sync `Do` (cannot give up)", func(keys []string) func(int) {
		var g singleflight.Group
		return func(n int) {
			for i := 0; i < n; i++ {
				g.Do(keys[i&1023], trivial)
			}
		}
	})
	registerCost("xsync-dochan", "x/sync `DoChan` + select on ctx.Done", func(keys []string) func(int) {
		var g singleflight.Group
		ctx := liveCtx()
		return func(n int) {
			for i := 0; i < n; i++ {
				select {
				case <-g.DoChan(keys[i&1023], trivial):
				case <-ctx.Done():
				}
			}
		}
	})
	registerCost("resenje", "resenje.org/singleflight `Do(ctx)`", func(keys []string) func(int) {
		var g resenje.Group[string, interface{}]
		ctx := liveCtx()
		return func(n int) {
			for i := 0; i < n; i++ {
				g.Do(ctx, keys[i&1023], trivialCtx)
			}
		}
	})
	registerCost("tailscale", "tailscale.com/util/singleflight `DoChanContext`", func(keys []string) func(int) {
		var g tailscale.Group[string, interface{}]
		ctx := liveCtx()
		return func(n int) {
			for i := 0; i < n; i++ {
				<-g.DoChanContext(ctx, keys[i&1023], trivialCtx)
			}
		}
	})
}

// runCtxCost: every cost row makes -rounds calls per repeat, interleaved
// with the others, first row rotating; ns/op and allocs/op per repeat,
// medians printed.
func runCtxCost(rounds, _ int) {
	rows := costRows
	if *onlyFlag != "" {
		rows = nil
		for _, name := range strings.Split(*onlyFlag, ",") {
			for _, r := range costRows {
				if r.name == name {
					rows = append(rows, r)
				}
			}
		}
	}
	keys := makeKeys(1024, "key:", 0)
	runs := make([]func(int), len(rows))
	for i, r := range rows {
		runs[i] = r.mk(keys)
		runs[i](rounds / 10) // warm-up: groups, maps, goroutine caches
	}
	ns := make([][]float64, len(rows))
	allocs := make([][]float64, len(rows))
	for rep := 0; rep < *repsFlag; rep++ {
		for j := range rows {
			i := (j + rep) % len(rows)
			runtime.GC()
			var m0, m1 runtime.MemStats
			runtime.ReadMemStats(&m0)
			t0 := time.Now()
			runs[i](rounds)
			d := time.Since(t0)
			runtime.ReadMemStats(&m1)
			ns[i] = append(ns[i], float64(d.Nanoseconds())/float64(rounds))
			allocs[i] = append(allocs[i], float64(m1.Mallocs-m0.Mallocs)/float64(rounds))
		}
	}
	for i, r := range rows {
		emit(map[string]interface{}{
			"kind": "ctxcost", "contender": r.name, "label": r.label, "rounds": rounds, "reps": *repsFlag,
			"ns_median": medianF(ns[i]), "ns_by_rep": ns[i], "allocs_median": medianF(allocs[i]),
			"gomaxprocs": runtime.GOMAXPROCS(0),
		})
	}
	// Per-repeat ratio of DoContext to x/sync's DoChan + select.
	a, b := -1, -1
	for i, r := range rows {
		switch r.name {
		case "gobinding-ctx":
			a = i
		case "xsync-dochan":
			b = i
		}
	}
	if a >= 0 && b >= 0 {
		ratios := make([]float64, len(ns[a]))
		for k := range ratios {
			ratios[k] = ns[a][k] / ns[b][k]
		}
		emit(map[string]interface{}{
			"kind": "ctxcost-ratio", "contender": "gobinding-ctx", "against": "xsync-dochan",
			"ns_ratio_median": medianF(ratios), "ratios": ratios,
		})
	}
}

// ---- semantics -------------------------------------------------------------

// settle is how long a check lets a second caller reach the library
// before acting: the peers cannot say who has joined.  A check, not a test.
const settle = 30 * time.Millisecond

type callResult struct {
	v   interface{}
	err error
	at  time.Time
}

func goCall(c caller, ctx context.Context, key string, fn func(context.Context) (interface{}, error)) chan callResult {
	ch := make(chan callResult, 1)
	go func() {
		v, err := c.Call(ctx, key, fn)
		ch <- callResult{v, err, time.Now()}
	}()
	return ch
}

func within(ch chan callResult, d time.Duration) (callResult, bool) {
	select {
	case r := <-ch:
		return r, true
	case <-time.After(d):
		return callResult{}, false
	}
}

func describe(r callResult) string {
	if r.err != nil {
		return r.err.Error()
	}
	return fmt.Sprintf("the value %v", r.v)
}

// told reports whether ctx ended within d.
func told(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return true
	case <-time.After(d):
		return false
	}
}

// checkAlone: one caller, whose fn ignores its ctx for 200 ms, gives up.
func checkAlone(row callerRow) string {
	if !row.ctxful {
		return "cannot give up"
	}
	c := row.mk()
	running := make(chan context.Context, 1)
	fn := func(ctx context.Context) (interface{}, error) {
		running <- ctx
		time.Sleep(200 * time.Millisecond)
		return "v", nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	res := goCall(c, ctx, "k", fn)
	fctx := <-running
	t0 := time.Now()
	cancel()
	r, ok := within(res, 2*time.Second)
	isTold := told(fctx, 50*time.Millisecond)
	switch {
	case !ok:
		return "hangs"
	case r.at.Sub(t0) > 100*time.Millisecond:
		return fmt.Sprintf("returns only when fn does (%d ms); fn %s", r.at.Sub(t0).Milliseconds(), toldWord(isTold))
	default:
		return fmt.Sprintf("returns at once (%s); fn %s", describe(r), toldWord(isTold))
	}
}

func toldWord(b bool) string {
	if b {
		return "told (ctx cancelled)"
	}
	return "**not told**"
}

// blockingFn returns "v" when release closes or its ctx's error when that
// ends, and hands its ctx over once running.
func blockingFn(running chan context.Context, release chan struct{}) func(context.Context) (interface{}, error) {
	return func(ctx context.Context) (interface{}, error) {
		running <- ctx
		select {
		case <-release:
			return "v", nil
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func otherFn(context.Context) (interface{}, error) { return "a second fn ran", nil }

// checkStarterLeaves: the caller that started the flight gives up while
// another waits.
func checkStarterLeaves(row callerRow) string {
	if !row.ctxful {
		return "cannot give up"
	}
	c := row.mk()
	running, release := make(chan context.Context, 1), make(chan struct{})
	ctxA, cancelA := context.WithCancel(context.Background())
	resA := goCall(c, ctxA, "k", blockingFn(running, release))
	fctx := <-running
	ctxB, cancelB := context.WithCancel(context.Background())
	defer cancelB()
	resB := goCall(c, ctxB, "k", otherFn)
	time.Sleep(settle)
	cancelA()
	if _, ok := within(resA, time.Second); !ok {
		return "the starter cannot leave"
	}
	isTold := told(fctx, settle)
	close(release)
	rB, ok := within(resB, 2*time.Second)
	if !ok {
		return "the other caller hangs"
	}
	if rB.err != nil {
		return fmt.Sprintf("**the other caller gets %s** (fn was told)", describe(rB))
	}
	if isTold {
		return fmt.Sprintf("the other gets %s, but fn was told", describe(rB))
	}
	return fmt.Sprintf("the other gets %s; fn not told", describe(rB))
}

// checkEveryoneLeaves: both callers give up (the other first); is fn told?
// Then a new caller arrives while the abandoned fn takes 150 ms to stop:
// does it start a new flight?
func checkEveryoneLeaves(row callerRow) (string, string) {
	if !row.ctxful {
		return "cannot give up", "cannot give up"
	}
	c := row.mk()
	running := make(chan context.Context, 1)
	release := make(chan struct{})
	stopped := make(chan struct{})
	fn := func(ctx context.Context) (interface{}, error) {
		running <- ctx
		defer close(stopped)
		select {
		case <-release:
			return "v", nil
		case <-ctx.Done():
			time.Sleep(150 * time.Millisecond) // an fn that takes a while to stop
			return nil, ctx.Err()
		}
	}
	ctxA, cancelA := context.WithCancel(context.Background())
	resA := goCall(c, ctxA, "k", fn)
	fctx := <-running
	ctxB, cancelB := context.WithCancel(context.Background())
	resB := goCall(c, ctxB, "k", otherFn)
	time.Sleep(settle)
	cancelB()
	within(resB, time.Second)
	cancelA()
	every := "fn **not told**"
	if told(fctx, 100*time.Millisecond) {
		every = "fn told (ctx cancelled)"
	}
	// At once, while the abandoned fn still stops (A's call may be
	// waiting for it: collected afterwards).
	fresh := func(context.Context) (interface{}, error) { return "fresh", nil }
	resC := goCall(c, context.Background(), "k", fresh)
	defer within(resA, 2*time.Second)
	var after string
	r, ok := within(resC, 100*time.Millisecond)
	switch {
	case ok && r.v == "fresh":
		after = "starts a new flight"
	case ok:
		after = fmt.Sprintf("**joins the abandoned flight: gets %s**", describe(r))
	default:
		close(release) // an fn not told still runs: let it finish
		r, ok = within(resC, 2*time.Second)
		if !ok {
			after = "hangs"
		} else if r.err != nil {
			after = fmt.Sprintf("**waits for the abandoned fn, then gets %s**", describe(r))
		} else {
			after = fmt.Sprintf("joins the flight still running (gets %s)", describe(r))
		}
	}
	select {
	case <-release:
	default:
		close(release)
	}
	<-stopped
	return every, after
}

// runSemChild runs one two-caller case (-case panic or goexit) against one
// row in this process, and prints what each caller saw; a crash is the
// parent's to see.
func runSemChild(_, _ int) {
	rows := selected()
	c := rows[0].mk()
	running, release := make(chan struct{}), make(chan struct{})
	fn := func(context.Context) (interface{}, error) {
		close(running)
		<-release
		if *caseFlag == "panic" {
			panic("semcheck-boom")
		}
		runtime.Goexit()
		return nil, nil
	}
	out := make(chan string, 2)
	call := func(fn func(context.Context) (interface{}, error)) {
		returned := false
		defer func() {
			if returned {
				return
			}
			if r := recover(); r != nil {
				out <- "panics"
			} else {
				out <- "goroutine exits"
			}
		}()
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		v, err := c.Call(ctx, "k", fn)
		returned = true
		out <- fmt.Sprintf("returns (%v, %v)", v, err)
	}
	go call(fn)
	<-running
	go call(otherFn)
	time.Sleep(settle)
	close(release)
	var seen []string
	for i := 0; i < 2; i++ {
		select {
		case s := <-out:
			seen = append(seen, s)
		case <-time.After(2 * time.Second):
			seen = append(seen, "still waits after 2 s")
		}
	}
	fmt.Printf("SEEN %s\n", strings.Join(seen, "; "))
	os.Exit(0)
}

// semChild runs runSemChild in a child process.
func semChild(row callerRow, which string) string {
	cmd := exec.Command(os.Args[0], "-experiment", "semchild", "-only", row.name, "-case", which)
	out, err := cmd.CombinedOutput()
	s := string(out)
	if err != nil {
		if strings.Contains(s, "semcheck-boom") {
			return "**the process crashes**"
		}
		return "**the process fails: " + strings.TrimSpace(s) + "**"
	}
	i := strings.Index(s, "SEEN ")
	if i < 0 {
		return "?"
	}
	seen := strings.Split(strings.TrimSpace(s[i+5:]), "; ")
	if len(seen) == 2 && seen[0] == seen[1] {
		return "both callers: " + seen[0]
	}
	return strings.Join(seen, "; ")
}

func runSemantics(_, _ int) {
	for _, row := range selected() {
		every, after := checkEveryoneLeaves(row)
		emit(map[string]interface{}{
			"kind": "semantics", "contender": row.name, "label": row.label,
			"alone":           checkAlone(row),
			"starter_leaves":  checkStarterLeaves(row),
			"everyone_leaves": every,
			"new_caller":      after,
			"panic":           semChild(row, "panic"),
			"goexit":          semChild(row, "goexit"),
		})
	}
}
