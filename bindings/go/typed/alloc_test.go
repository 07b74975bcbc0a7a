package typed

import (
	"context"
	"testing"
)

// Typed values come back without boxing: an uncontended Do allocates
// nothing, for a V that is not a pointer too.
func TestUncontendedDoAllocatesNothing(t *testing.T) {
	var g Group[int]
	fn := func() (int, error) { return 42, nil }
	g.Do("key", fn)
	allocs := testing.AllocsPerRun(1000, func() {
		if v, err, shared := g.Do("key", fn); v != 42 || err != nil || shared {
			t.Fatalf("Do = %v, %v, %v", v, err, shared)
		}
	})
	if allocs != 0 {
		t.Fatalf("an uncontended Do allocated %v times, want 0", allocs)
	}
}

// An uncontended DoContext whose ctx cannot end runs fn inline as Do does:
// the one allocation is fn's context.  With a ctx that can end, fn runs on
// a goroutine of its own (one allocation for the goroutine's closure) and
// nothing else is set up unless the caller gives up: no outcome handle, no
// abandon registration, and the flight record comes from the group's pool.
func TestUncontendedDoContextAllocatesOnlyFnsContextAndGoroutine(t *testing.T) {
	var g Group[int]
	fn := func(context.Context) (int, error) { return 42, nil }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, c := range []struct {
		name string
		ctx  context.Context
		max  float64
	}{{"context.Background()", context.Background(), 1}, {"a ctx that can end", ctx, 2}} {
		if raceEnabled && c.ctx == ctx {
			continue // the pool the count relies on drops records
		}
		g.DoContext(c.ctx, "key", fn)
		allocs := testing.AllocsPerRun(1000, func() {
			if v, err, shared := g.DoContext(c.ctx, "key", fn); v != 42 || err != nil || shared {
				t.Fatalf("DoContext = %v, %v, %v", v, err, shared)
			}
		})
		if allocs > c.max {
			t.Errorf("an uncontended DoContext with %s allocated %v times, want at most %v", c.name, allocs, c.max)
		}
	}
}
