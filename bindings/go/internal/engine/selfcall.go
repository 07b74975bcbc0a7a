package engine

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/libsingleflight/libsingleflight/bindings/go/internal/goroutine"
)

// A Do inside fn, on fn's own key and on the goroutine running fn, would wait
// for itself forever.  The C library's check is per OS thread, which means
// nothing for goroutines (they move between threads, and others run on a
// parked one's thread), so the engine keeps its own record: for every
// goroutine, the flights it is leading right now.  A follower whose own
// record holds the flight it just joined is that flight's leader.

// ErrDeadlock is what a Do on its own key from inside fn panics with (via
// errors.Is): the call could only return after fn returns.
var ErrDeadlock = errors.New("singleflight: Do called for its own key from inside fn")

// deadlockError names the key; it is the panic value, matched by errors.Is
// against ErrDeadlock.
type deadlockError struct{ key string }

func (e *deadlockError) Error() string {
	return fmt.Sprintf("singleflight: Do(%q) was called from inside the fn of its own key's flight, "+
		"on the goroutine running that fn: it would wait for itself forever", e.key)
}

func (e *deadlockError) Is(target error) bool { return target == ErrDeadlock }

// leadRecord is one flight a goroutine is leading: between sf_group_begin
// and the end of fn.
type leadRecord struct {
	id    goroutine.ID
	core  *groupCore
	key   string
	epoch uint64 // core.forgetEpoch when the flight began
}

// leading holds every goroutine's records, in shards by goroutine so that
// goroutines rarely share a lock.  A shard holds only the leads under way on
// its goroutines (a handful), so a slice beats a map: no hashing, and no
// allocation once it has grown.  Only a goroutine adds, removes or looks for
// its own records; the lock is for the slice.
var leading [64]struct {
	mu      sync.Mutex
	records []leadRecord
	_       [32]byte // one shard per cache line
}

func leadingShard(id goroutine.ID) int {
	// IDs are addresses (or counters): mix the bits before taking six.
	return int((uint64(id) * 0x9E3779B97F4A7C15) >> 58)
}

// beginMark is read before sf_group_begin by every caller, since any of them
// may lead: when ok (no Forget of the core was under way), the flight it
// begins stays key's flight for as long as the core's epoch is still epoch.
// When not ok the leader is not recorded, which can only miss a deadlock.
type beginMark struct {
	epoch uint64
	ok    bool
}

func (c *groupCore) beginEpoch() beginMark {
	// Epoch first: a Forget whose epoch step this sees is still counted in
	// forgetting unless it finished before the flight began.
	epoch := atomic.LoadUint64(&c.forgetEpoch)
	return beginMark{epoch: epoch, ok: atomic.LoadInt32(&c.forgetting) == 0}
}

// pushLead records that the calling goroutine leads key's flight on c, begun
// at epoch; popLead removes the goroutine's innermost record.  Called by the
// goroutine that runs fn, whose leads nest: the innermost ends first.
func pushLead(c *groupCore, key string, epoch uint64) {
	id := goroutine.Current()
	s := &leading[leadingShard(id)]
	s.mu.Lock()
	s.records = append(s.records, leadRecord{id: id, core: c, key: key, epoch: epoch})
	s.mu.Unlock()
}

func popLead() {
	id := goroutine.Current()
	s := &leading[leadingShard(id)]
	s.mu.Lock()
	for i := len(s.records) - 1; i >= 0; i-- {
		if s.records[i].id == id {
			// Keep the order, so that the last record of a goroutine is
			// always its innermost.
			copy(s.records[i:], s.records[i+1:])
			s.records[len(s.records)-1] = leadRecord{} // let the core and key go
			s.records = s.records[:len(s.records)-1]
			break
		}
	}
	s.mu.Unlock()
}

// leadsItself reports whether the calling goroutine, having just joined
// key's flight on c as a follower, is that flight's leader.  A record counts
// only if no Forget of c has begun since its flight began: a forgotten
// flight is no longer key's, and the one joined belongs to someone else.
func (c *groupCore) leadsItself(key string) bool {
	epoch := atomic.LoadUint64(&c.forgetEpoch)
	id := goroutine.Current()
	s := &leading[leadingShard(id)]
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.records {
		r := &s.records[i]
		if r.id == id && r.core == c && r.key == key && r.epoch == epoch {
			return true
		}
	}
	return false
}
