package typed

import (
	"strconv"
	"testing"
)

// BenchmarkDoUncontended is the binding's fast path: one goroutine, 1024
// rotating keys, a trivial fn, so every call leads a flight nobody joins.
// bench/run.sh compares it with x/sync side by side; this is for profiling
// (go test -bench DoUncontended -cpuprofile cpu.out ./typed).
func BenchmarkDoUncontended(b *testing.B) {
	var g Group[int]
	keys := make([]string, 1024)
	for i := range keys {
		keys[i] = "key:" + strconv.Itoa(i)
	}
	fn := func() (int, error) { return 1, nil }
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if v, _, _ := g.Do(keys[i&1023], fn); v != 1 {
			b.Fatal("wrong value")
		}
	}
}
