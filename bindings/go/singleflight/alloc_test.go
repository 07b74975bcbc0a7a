package singleflight

import "testing"

// A value boxed once, so that fn itself allocates nothing.
var boxedValue interface{} = "v"

// The uncontended Do (a leader nobody joins) keeps fn's results in Go and
// crosses into C twice: it allocates nothing, where x/sync allocates its
// call record every time.  The key here lives in static data; see
// alloc_go122_test.go for one the caller builds on its stack.
func TestUncontendedDoAllocatesNothing(t *testing.T) {
	var g Group
	fn := func() (interface{}, error) { return boxedValue, nil }
	g.Do("key", fn) // the C group, and the library's per-thread caches
	allocs := testing.AllocsPerRun(1000, func() {
		if v, err, shared := g.Do("key", fn); v != boxedValue || err != nil || shared {
			t.Fatalf("Do = %v, %v, %v", v, err, shared)
		}
	})
	if allocs != 0 {
		t.Fatalf("an uncontended Do allocated %v times, want 0", allocs)
	}
}
