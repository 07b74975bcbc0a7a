// inflight is bench/inflight.cpp's workload for Go: N distinct keys put in
// flight at once, then completed, in nanoseconds per key.  Two contenders:
//
//	xsync  golang.org/x/sync's DoChan with a fn that waits on a gate: the
//	       way to leave a key in flight with x/sync (a goroutine each)
//	map    a map from key to record under a mutex, insert then delete: what
//	       x/sync's table costs without the goroutines, Go's floor here
//
// Round 0 is reported apart (first_round); the median of the others is the
// result.  One JSON line, for bench/scale.py.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"sort"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sync/singleflight"
)

func cpuNs() int64 {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return ru.Utime.Nano() + ru.Stime.Nano()
}

type record struct{ n int }

func main() {
	keysN := flag.Int("keys", 1000, "keys in flight")
	rounds := flag.Int("rounds", 5, "measured rounds")
	keylen := flag.Int("keylen", 16, "key length")
	contender := flag.String("contender", "xsync", "xsync or map")
	flag.Parse()

	keys := make([]string, *keysN)
	for i := range keys {
		k := []byte(fmt.Sprintf("k%d", i))
		for len(k) < *keylen {
			k = append(k, 'x')
		}
		keys[i] = string(k)
	}
	var g singleflight.Group
	var mu sync.Mutex
	m := map[string]*record{}
	chans := make([]<-chan singleflight.Result, len(keys))

	var wall, cpu []float64
	var firstWall, firstCPU float64
	for r := 0; r <= *rounds; r++ {
		t0, c0 := time.Now(), cpuNs()
		switch *contender {
		case "xsync":
			gate := make(chan struct{})
			fn := func() (interface{}, error) { <-gate; return nil, nil }
			for i, k := range keys {
				chans[i] = g.DoChan(k, fn)
			}
			close(gate)
			for _, c := range chans {
				<-c
			}
		case "map":
			for _, k := range keys {
				mu.Lock()
				if m[k] != nil {
					panic("a distinct key was found")
				}
				m[k] = &record{1}
				mu.Unlock()
			}
			for _, k := range keys {
				mu.Lock()
				delete(m, k)
				mu.Unlock()
			}
		default:
			fmt.Fprintln(os.Stderr, "inflight: unknown -contender (xsync, map)")
			os.Exit(2)
		}
		w := float64(time.Since(t0).Nanoseconds()) / float64(len(keys))
		c := float64(cpuNs()-c0) / float64(len(keys))
		if r == 0 {
			firstWall, firstCPU = w, c
		} else {
			wall = append(wall, w)
			cpu = append(cpu, c)
		}
	}
	sort.Float64s(wall)
	sort.Float64s(cpu)
	out, _ := json.Marshal(map[string]interface{}{
		"kind": "inflight", "contender": *contender, "keys": *keysN, "shards": 0,
		"rounds": *rounds, "ns_per_key": wall[len(wall)/2], "min": wall[0],
		"max": wall[len(wall)-1], "first_round": firstWall,
		"cpu_ns_per_key": cpu[len(cpu)/2], "first_round_cpu": firstCPU,
	})
	fmt.Println(string(out))
}
