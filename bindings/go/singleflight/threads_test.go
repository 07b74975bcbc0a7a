// The race detector's runtime caps live goroutines at 8128 in the Go versions
// this module supports, so this test runs only in the plain pass.

//go:build !race

package singleflight

import (
	"context"
	"os"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// osThreads reads the process's current thread count from the kernel.
func osThreads(t *testing.T) int {
	t.Helper()
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatalf("reading thread count: %v", err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "Threads:") {
			n, err := strconv.Atoi(strings.TrimSpace(strings.TrimPrefix(line, "Threads:")))
			if err != nil {
				t.Fatalf("parsing %q: %v", line, err)
			}
			return n
		}
	}
	t.Fatal("no Threads: line in /proc/self/status")
	return 0
}

// The point of waiting on Go channels instead of sf_call_wait: a goroutine
// blocked in C pins an OS thread, so 10,000 waiters would need 10,000 threads.
func TestTenThousandWaitersDoNotPinThreads(t *testing.T) {
	testWaitersDoNotPinThreads(t, func(g *Group, key string, fn func() (interface{}, error)) (interface{}, error, bool) {
		return g.Do(key, fn)
	})
}

// DoContext followers wait on a channel and their ctx: no thread either.
func TestTenThousandDoContextWaitersDoNotPinThreads(t *testing.T) {
	ctx := context.Background()
	testWaitersDoNotPinThreads(t, func(g *Group, key string, fn func() (interface{}, error)) (interface{}, error, bool) {
		return g.DoContext(ctx, key, func(context.Context) (interface{}, error) { return fn() })
	})
}

func testWaitersDoNotPinThreads(t *testing.T, do func(g *Group, key string, fn func() (interface{}, error)) (interface{}, error, bool)) {
	const waiters = 10000
	// Generous for the runtime's own threads and brief cgo calls in
	// progress, tiny next to one thread per waiter.
	const maxThreads = 64

	var g Group
	before := osThreads(t)
	createdBefore := pprof.Lookup("threadcreate").Count()
	release, leaderDone := startBlockedLeader(t, &g, "hot", "payload", nil)

	var wg sync.WaitGroup
	results := make([]interface{}, waiters)
	for i := 0; i < waiters; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			v, _, shared := do(&g, "hot", func() (interface{}, error) { return "follower ran fn", nil })
			if !shared {
				v = "not shared"
			}
			results[i] = v
		}(i)
	}
	waitUntil(t, "all waiters joined", func() bool { return g.Stats().Followers == waiters })
	during := osThreads(t)
	created := pprof.Lookup("threadcreate").Count() - createdBefore
	t.Logf("%d goroutines waiting: %d OS threads (%d before), %d threads created meanwhile",
		waiters, during, before, created)
	if during > maxThreads {
		t.Errorf("%d OS threads with %d waiters; want at most %d", during, waiters, maxThreads)
	}

	close(release)
	wg.Wait()
	if r := <-leaderDone; r.Val != "payload" || !r.Shared {
		t.Errorf("leader got %+v", r)
	}
	for i, v := range results {
		if v != "payload" {
			t.Fatalf("waiter %d got %v, want payload", i, v)
		}
	}
}
