// gobench runs one cell of the benchmark matrix (or the wake experiment)
// against Go's golang.org/x/sync/singleflight, and, when built with the
// sfbinding tag, against libsingleflight's Go binding.  It prints the same JSON
// line as bench/sfbench.cpp so bench/run.py can set them side by side.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"runtime"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sync/singleflight"
)

// doer is the one method every Go contender shares: the binding is a drop-in
// for x/sync, so both satisfy it with no adapter on the hot path.
type doer interface {
	Do(key string, fn func() (interface{}, error)) (interface{}, error, bool)
}

// contenders maps a -contender name to a constructor.  The binding registers
// itself from binding.go when built with -tags sfbinding.
var contenders = map[string]func() doer{
	"xsync": func() doer { return &singleflight.Group{} },
}

// experiments maps a -experiment name to a run that needs more than Do; the
// binding registers its own (binding.go) when built with -tags sfbinding.
var experiments = map[string]func(rounds, callers int){}

var base = time.Now()

// Flags of the experiments in peers.go.
var (
	sleepMs  = flag.Int("sleep-ms", 10, "herd: how long fn sleeps")
	repsFlag = flag.Int("reps", 9, "herd, ctxcost: repeats (rows interleaved within each)")
	onlyFlag = flag.String("only", "", "herd, ctxcost, semantics: comma-separated rows (default all)")
	caseFlag = flag.String("case", "", "semchild: panic or goexit")
)

// monotonic nanoseconds since start: every goroutine reads the same clock.
func now() int64 { return int64(time.Since(base)) }

// A constant boxed once, so returning it from fn allocates nothing.
var boxedOne interface{} = 1

const uniquePerThread = 4096

type workerState struct {
	execs int64
	// Leaders publish their finish time through a slot of their own; the
	// pointer travels as the flight's value without boxing an integer.
	slots [1024]int64
	next  int
	wake  []uint32
}

func makeKeys(n int, prefix string, keylen int) []string {
	keys := make([]string, n)
	for i := range keys {
		k := prefix + fmt.Sprintf("%04d", i)
		if keylen > 0 {
			if len(k) > keylen {
				k = k[len(k)-keylen:]
			}
			for len(k) < keylen {
				k += "x"
			}
		}
		keys[i] = k
	}
	return keys
}

func pct(s []uint32, p float64) float64 {
	if len(s) == 0 {
		return -1
	}
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return float64(s[int(p*float64(len(s)-1))])
}

// cpuNs is the process's CPU time (all threads, user + system), runtime and
// GC included: on a shared machine it is steadier than wall time.
func cpuNs() int64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}

func emit(v map[string]interface{}) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	fmt.Println(string(b))
}

func runCell(name string, g doer, threads int, keys int, fnName string, durMs, warmMs, keylen int) {
	var shared []string
	own := make([][]string, threads)
	if keys > 0 {
		shared = makeKeys(keys, "key:", keylen)
	} else {
		for t := range own {
			own[t] = makeKeys(uniquePerThread, "u:"+strconv.Itoa(t)+":", keylen)
		}
	}
	timed := fnName != "trivial"

	var phase atomic.Int32 // 0 warmup, 1 ready, 2 measure, 3 stop
	var ready atomic.Int32
	type result struct {
		ops, execs int64
		wake       []uint32
	}
	results := make([]result, threads)
	var wg sync.WaitGroup
	for t := 0; t < threads; t++ {
		wg.Add(1)
		go func(t int) {
			defer wg.Done()
			ks := shared
			if keys == 0 {
				ks = own[t]
			}
			n := len(ks)
			idx := t * n / threads
			st := &workerState{}
			if timed {
				st.wake = make([]uint32, 0, 1<<16)
			}
			// Built once per worker: a closure made per call would escape
			// through the interface and cost an allocation the C side does not pay.
			var fn func() (interface{}, error)
			switch fnName {
			case "trivial":
				fn = func() (interface{}, error) { st.execs++; return boxedOne, nil }
			case "spin":
				fn = func() (interface{}, error) {
					st.execs++
					t0 := now()
					t := now()
					for t-t0 < 1000 {
						t = now()
					}
					s := &st.slots[st.next%len(st.slots)]
					st.next++
					*s = t
					return s, nil
				}
			case "sleep":
				fn = func() (interface{}, error) {
					st.execs++
					time.Sleep(time.Millisecond)
					s := &st.slots[st.next%len(st.slots)]
					st.next++
					*s = now()
					return s, nil
				}
			}
			one := func(record bool) {
				k := ks[idx]
				idx++
				if idx == n {
					idx = 0
				}
				e0 := st.execs
				v, _, _ := g.Do(k, fn)
				if record && timed && st.execs == e0 && len(st.wake) < cap(st.wake) {
					d := now() - *(v.(*int64))
					if d > 0xffffffff {
						d = 0xffffffff
					}
					st.wake = append(st.wake, uint32(d))
				}
			}
			for phase.Load() == 0 {
				one(false)
			}
			ready.Add(1)
			for phase.Load() < 2 {
				runtime.Gosched()
			}
			e0 := st.execs
			var ops int64
			for phase.Load() == 2 {
				one(true)
				ops++
			}
			results[t] = result{ops: ops, execs: st.execs - e0, wake: st.wake}
		}(t)
	}
	time.Sleep(time.Duration(warmMs) * time.Millisecond)
	phase.Store(1)
	for ready.Load() < int32(threads) {
		runtime.Gosched()
	}
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	c0 := cpuNs()
	t0 := time.Now()
	phase.Store(2)
	time.Sleep(time.Duration(durMs) * time.Millisecond)
	phase.Store(3)
	wg.Wait()
	wall := time.Since(t0)
	cpu := cpuNs() - c0
	runtime.ReadMemStats(&m1)

	var ops, execs int64
	var wake []uint32
	for _, r := range results {
		ops += r.ops
		execs += r.execs
		wake = append(wake, r.wake...)
	}
	keyName := "unique"
	if keys > 0 {
		keyName = strconv.Itoa(keys)
	}
	div := func(a, b float64) float64 {
		if b == 0 {
			return 0
		}
		return a / b
	}
	emit(map[string]interface{}{
		"kind": "cell", "contender": name, "threads": threads, "keys": keyName, "fn": fnName,
		"keylen": keylen, "ops": ops, "wall_ns": wall.Nanoseconds(),
		"ns_per_op":       div(float64(wall.Nanoseconds()), float64(ops)),
		"cpu_ns_per_op":   div(float64(cpu), float64(ops)),
		"execs_per_call":  div(float64(execs), float64(ops)),
		"allocs_per_call": div(float64(m1.Mallocs-m0.Mallocs), float64(ops)),
		"wake_n":          len(wake), "wake_p50_ns": pct(wake, 0.5), "wake_p99_ns": pct(wake, 0.99),
		"gomaxprocs": runtime.GOMAXPROCS(0),
	})
}

// runWake: n followers park on one key; the leader's fn waits until they have
// all arrived, lets them settle, stamps the time and returns.
func runWake(name string, g doer, n, rounds int) {
	var arrived atomic.Int32
	var leaderIn atomic.Bool
	var late atomic.Int32
	var mu sync.Mutex
	samples := make([]uint32, 0, n*rounds)
	var stamp int64
	start := make([]chan struct{}, rounds)
	for i := range start {
		start[i] = make(chan struct{})
	}
	var done sync.WaitGroup
	for i := 0; i < n; i++ {
		go func() {
			for r := 0; r < rounds; r++ {
				<-start[r]
				for !leaderIn.Load() {
					runtime.Gosched()
				}
				arrived.Add(1)
				ran := false
				v, _, _ := g.Do("wake", func() (interface{}, error) { ran = true; return boxedOne, nil })
				t := now()
				mu.Lock()
				if ran {
					late.Add(1)
				} else if p, ok := v.(*int64); ok {
					d := t - *p
					if d > 0xffffffff {
						d = 0xffffffff
					}
					samples = append(samples, uint32(d))
				}
				mu.Unlock()
				done.Done()
			}
		}()
	}
	for r := 0; r < rounds; r++ {
		arrived.Store(0)
		leaderIn.Store(false)
		done.Add(n)
		close(start[r])
		g.Do("wake", func() (interface{}, error) {
			leaderIn.Store(true)
			deadline := now() + 2e9
			for arrived.Load() < int32(n) && now() < deadline {
				time.Sleep(50 * time.Microsecond)
			}
			// x/sync cannot say who has joined: give stragglers time to
			// reach Do and park (the same settle time the C side uses).
			time.Sleep(3 * time.Millisecond)
			stamp = now()
			return &stamp, nil
		})
		done.Wait()
	}
	mx := pct(samples, 1.0)
	emit(map[string]interface{}{
		"kind": "wake", "contender": name, "followers": n, "rounds": rounds,
		"samples": len(samples), "late": late.Load(),
		"wake_p50_ns": pct(samples, 0.5), "wake_p99_ns": pct(samples, 0.99), "wake_max_ns": mx,
		"gomaxprocs": runtime.GOMAXPROCS(0),
	})
}

func main() {
	contender := flag.String("contender", "xsync", "xsync, or gobinding when built with -tags sfbinding")
	threads := flag.Int("threads", 1, "worker goroutines")
	keysFlag := flag.String("keys", "1", "number of shared keys, or unique")
	fnName := flag.String("fn", "trivial", "trivial, spin or sleep")
	dur := flag.Int("duration-ms", 200, "measured time")
	warm := flag.Int("warmup-ms", 50, "unmeasured warm-up time")
	keylen := flag.Int("keylen", 0, "pad or cut keys to this length (0: natural)")
	wake := flag.Int("wake", 0, "run the wake experiment with this many followers")
	rounds := flag.Int("rounds", 20, "wake experiment rounds")
	experiment := flag.String("experiment", "", "run a registered experiment: cancel (DoContext cancellation latency, -rounds, -callers), "+
		"herd (-callers goroutines on one key, fn sleeping -sleep-ms, -reps), ctxcost (uncontended calls that can give up, -rounds, -reps), "+
		"semantics (the cancellation cases of every Go singleflight); -only picks rows")
	callers := flag.Int("callers", 1, "callers per round of an experiment")
	flag.Parse()

	if *experiment != "" {
		run, ok := experiments[*experiment]
		if !ok {
			fmt.Fprintf(os.Stderr, "gobench: experiment %q not built in\n", *experiment)
			os.Exit(3)
		}
		run(*rounds, *callers)
		return
	}

	mk, ok := contenders[*contender]
	if !ok {
		fmt.Fprintf(os.Stderr, "gobench: contender %q not built in\n", *contender)
		os.Exit(3)
	}
	if *wake > 0 {
		runWake(*contender, mk(), *wake, *rounds)
		return
	}
	keys := 0
	if *keysFlag != "unique" {
		k, err := strconv.Atoi(*keysFlag)
		if err != nil || k < 1 {
			fmt.Fprintln(os.Stderr, "gobench: bad -keys")
			os.Exit(2)
		}
		keys = k
	}
	switch *fnName {
	case "trivial", "spin", "sleep":
	default:
		fmt.Fprintln(os.Stderr, "gobench: bad -fn")
		os.Exit(2)
	}
	runCell(*contender, mk(), *threads, keys, *fnName, *dur, *warm, *keylen)
}
