package goroutine

import (
	"runtime"
	"sync"
	"testing"
)

// grow recurses deep enough for the runtime to move the goroutine's stack.
func grow(n int) int {
	var pad [128]byte
	if n == 0 {
		return int(pad[0])
	}
	return grow(n-1) + int(pad[n%128])
}

// checkIdentity runs the properties an ID must have for the engine, for one
// way of computing it: stable for a goroutine's life (across parking, other
// goroutines running on its thread, and its stack moving), and distinct
// among goroutines alive at the same time.
func checkIdentity(t *testing.T, id func() ID) {
	const n = 64
	ids := make([]ID, n)
	var started, wg sync.WaitGroup
	release := make(chan struct{})
	started.Add(n)
	wg.Add(n)
	for i := 0; i < n; i++ {
		go func(i int) {
			defer wg.Done()
			ids[i] = id()
			started.Done()
			<-release // parked while the others start and run
			runtime.Gosched()
			grow(4096)
			if again := id(); again != ids[i] {
				t.Errorf("goroutine %d: ID %#x became %#x", i, ids[i], again)
			}
		}(i)
	}
	started.Wait() // all n alive at once
	close(release)
	wg.Wait()
	seen := make(map[ID]int, n)
	for i, v := range ids {
		if j, dup := seen[v]; dup {
			t.Fatalf("goroutines %d and %d, alive together, share the ID %#x", j, i, v)
		}
		seen[v] = i
	}
	mine := id()
	if _, dup := seen[mine]; dup || mine == 0 {
		t.Fatalf("the test goroutine's ID %#x is zero or another's", mine)
	}
}

func TestCurrentNamesEachLiveGoroutineOnce(t *testing.T) { checkIdentity(t, Current) }

func TestStackTraceFallbackNamesEachLiveGoroutineOnce(t *testing.T) {
	checkIdentity(t, fromStackTrace)
}

func TestOneProcessorStillTellsGoroutinesApart(t *testing.T) {
	// All goroutines on one OS thread in turn: the ID is not the thread's.
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	checkIdentity(t, Current)
}
