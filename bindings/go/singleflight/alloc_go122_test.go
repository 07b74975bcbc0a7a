//go:build go1.22

package singleflight

import (
	"strconv"
	"testing"
)

// From Go 1.22 on, the C call that begins a flight is marked noescape, so
// a key the caller builds on its stack stays there.  (With Go 1.19-1.21
// cgo moves such a key to the heap: one allocation.)
func TestUncontendedDoWithAStackKeyAllocatesNothing(t *testing.T) {
	var g Group
	fn := func() (interface{}, error) { return boxedValue, nil }
	var buf [16]byte
	i := 0
	g.Do("user:0", fn)
	allocs := testing.AllocsPerRun(1000, func() {
		key := string(strconv.AppendInt(append(buf[:0], "user:"...), int64(i%10), 10))
		i++
		if v, err, shared := g.Do(key, fn); v != boxedValue || err != nil || shared {
			t.Fatalf("Do = %v, %v, %v", v, err, shared) // key would escape here
		}
	})
	if allocs != 0 {
		t.Fatalf("an uncontended Do with a stack-built key allocated %v times, want 0", allocs)
	}
}
