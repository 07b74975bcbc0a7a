package singleflight

import (
	"runtime"
	"testing"

	"github.com/libsingleflight/libsingleflight/bindings/go/internal/engine"
)

func useAndDrop() {
	g := new(Group)
	g.Do("k", func() (interface{}, error) { return nil, nil })
}

func TestUnreachableGroupFreesItsCGroup(t *testing.T) {
	before := engine.FreedGroups()
	useAndDrop()
	// Finalizers run on their own goroutine after a collection; a few
	// rounds give it the chance to, without relying on timing.
	for i := 0; i < 100 && engine.FreedGroups() == before; i++ {
		runtime.GC()
		runtime.Gosched()
	}
	if engine.FreedGroups() == before {
		t.Fatal("the C group of an unreachable Group was never freed")
	}
}

// Every outcome is handed to the C library with a destroy callback; once all
// callers have their results, the library must have run it, or the Go value
// would stay pinned in the handle table forever.
func TestOutcomesAreDestroyedOnceEveryCallerHasThem(t *testing.T) {
	var g Group
	before := engine.LiveOutcomes()
	release, done := startBlockedLeader(t, &g, "k", "v", nil)
	followers := make(chan interface{}, 3)
	for i := 0; i < 3; i++ {
		go func() {
			v, _, _ := g.Do("k", func() (interface{}, error) { return nil, nil })
			followers <- v
		}()
	}
	waitUntil(t, "three followers joined", func() bool { return g.Stats().Followers == 3 })
	close(release)
	<-done
	for i := 0; i < 3; i++ {
		<-followers
	}
	doRecover(&g, "p", func() (interface{}, error) { panic("x") })
	if live := engine.LiveOutcomes(); live != before {
		t.Fatalf("%d outcomes still held by the library, want %d", live, before)
	}
}
