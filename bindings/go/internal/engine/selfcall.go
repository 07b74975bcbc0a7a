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

// deadlock is the panic value for key; the key is copied so that the
// caller's string does not escape on Do's every path for this one.
func deadlock(key string) error {
	return &deadlockError{key: string([]byte(key))}
}

// leadRecord is one flight a goroutine is leading: between sf_group_begin
// and the end of fn.  It holds a copy of the key, not the key: a record
// outlives no lead, but storing the caller's string in a global would move
// every Do's key to the heap, where Go 1.22's noescape leaves one the
// caller built on its stack.  Keys up to the library's own inline size
// are copied in place; longer ones, which the library allocates for too,
// into a string of their own.
type leadRecord struct {
	core   *groupCore
	epoch  uint64 // core.forgetEpoch when the flight began
	n      int
	inline [leadInlineKey]byte
	long   string // the copy of a key longer than inline
}

const leadInlineKey = 48

// set fills r in place: the record is written on every Do, and building
// it elsewhere first would copy it twice.
func (r *leadRecord) set(c *groupCore, key string, epoch uint64) {
	r.core, r.epoch, r.n = c, epoch, len(key)
	if len(key) <= leadInlineKey {
		copy(r.inline[:], key)
	} else {
		r.long = string([]byte(key))
	}
}

func (r *leadRecord) is(c *groupCore, key string, epoch uint64) bool {
	if r.core != c || r.epoch != epoch || r.n != len(key) {
		return false
	}
	if r.n <= leadInlineKey {
		return string(r.inline[:r.n]) == key
	}
	return r.long == key
}

// Every Do records its lead, so the record costs two atomic operations
// and no lock: a goroutine claims an entry of its shard (by goroutine) by
// writing its ID into the entry's owner word, fills the record, and frees
// the entry with a store.  Owner words are the only thing other goroutines
// read; a record is read and written only by the goroutine that owns its
// entry (IDs of live goroutines are unique), and the claim's and the free's
// ordering carry it from one owner to the next.  Leads that find their
// shard's entries all taken (more than leadWays goroutines of one shard
// leading at once, or deep nesting) go to the shard's locked overflow
// list.
const (
	leadShards = 64
	leadWays   = 4
)

type leadShard struct {
	owner    [leadWays]uintptr // goroutine.ID, or 0: free (atomic)
	records  [leadWays]leadRecord
	mu       sync.Mutex
	overflow []overflowRecord
	// nOverflow is len(overflow), read without mu: a goroutine looking
	// for its own records sees its own pushes, so when it reads 0 it has
	// none there and need not lock.
	nOverflow int32
}

type overflowRecord struct {
	id goroutine.ID
	leadRecord
}

var leading [leadShards]leadShard

func leadingShard(id goroutine.ID) *leadShard {
	// IDs are addresses (or counters): mix the bits before taking six.
	return &leading[(uint64(id)*0x9E3779B97F4A7C15)>>58]
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

// leadTicket says where pushLead put a record, for popLead.
type leadTicket struct {
	s    *leadShard
	slot int // an entry of s, or -1: s.overflow
	id   goroutine.ID
}

// pushLead records that the calling goroutine leads key's flight on c, begun
// at epoch; popLead removes that record.  Called by the goroutine that runs
// fn.
func pushLead(c *groupCore, key string, epoch uint64) leadTicket {
	id := goroutine.Current()
	s := leadingShard(id)
	for i := range s.owner {
		if atomic.LoadUintptr(&s.owner[i]) == 0 && atomic.CompareAndSwapUintptr(&s.owner[i], 0, uintptr(id)) {
			s.records[i].set(c, key, epoch)
			return leadTicket{s, i, id}
		}
	}
	s.mu.Lock()
	s.overflow = append(s.overflow, overflowRecord{id: id})
	s.overflow[len(s.overflow)-1].set(c, key, epoch)
	atomic.StoreInt32(&s.nOverflow, int32(len(s.overflow)))
	s.mu.Unlock()
	return leadTicket{s, -1, id}
}

func popLead(t leadTicket) {
	s := t.s
	if t.slot >= 0 {
		s.records[t.slot].core = nil // let the core go
		s.records[t.slot].long = ""
		atomic.StoreUintptr(&s.owner[t.slot], 0)
		return
	}
	s.mu.Lock()
	// A goroutine's leads nest: its last overflow record is its innermost.
	for i := len(s.overflow) - 1; i >= 0; i-- {
		if s.overflow[i].id == t.id {
			copy(s.overflow[i:], s.overflow[i+1:])
			s.overflow[len(s.overflow)-1] = overflowRecord{}
			s.overflow = s.overflow[:len(s.overflow)-1]
			atomic.StoreInt32(&s.nOverflow, int32(len(s.overflow)))
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
	s := leadingShard(id)
	for i := range s.owner {
		if atomic.LoadUintptr(&s.owner[i]) == uintptr(id) && s.records[i].is(c, key, epoch) {
			return true
		}
	}
	if atomic.LoadInt32(&s.nOverflow) == 0 {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.overflow {
		if s.overflow[i].id == id && s.overflow[i].is(c, key, epoch) {
			return true
		}
	}
	return false
}
