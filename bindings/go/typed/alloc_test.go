package typed

import "testing"

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
