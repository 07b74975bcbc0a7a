package engine

import (
	"context"
	"sync"
)

// abandoners maps the ids that DoContext flights pass to the library as
// their abandon payload to the functions cancelling their fn's ctx.  An id
// is never reused, so the callback finding none (fn returned meanwhile, and
// took its entry out) is harmless, where a deleted cgo.Handle would panic.
var abandoners = abandonerTable{m: make(map[uintptr]context.CancelFunc)}

type abandonerTable struct {
	mu   sync.Mutex
	next uintptr
	m    map[uintptr]context.CancelFunc
}

func (t *abandonerTable) add(cancel context.CancelFunc) uintptr {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.next++
	t.m[t.next] = cancel
	return t.next
}

func (t *abandonerTable) remove(id uintptr) {
	t.mu.Lock()
	defer t.mu.Unlock()
	delete(t.m, id)
}

// abandoned runs in the library's abandon callback, on the goroutine of
// the caller whose leaving abandoned the flight.
func (t *abandonerTable) abandoned(id uintptr) {
	t.mu.Lock()
	cancel := t.m[id]
	t.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}
