// Package redis is fleet-wide duplicate call suppression on Redis, on
// libsingleflight-redis (redis/include/singleflight_redis.h): Do runs fn
// once for all concurrent callers of a key on every host (every process)
// that uses the same Redis and key prefix, and every caller gets its bytes.
//
// The callers of one Group coalesce first in the process (the library's
// front group); only that group's leader talks to Redis, where the hosts'
// leaders compete for one fenced lease per key.  The lease winner runs fn;
// the others are woken by one pub/sub push and read the same bytes, which
// stay in Redis as a read-through cache (Options.SoftTTL, HardTTL) unless
// Options.NoCache.  When Redis is down or slow, Do runs fn coalesced in the
// process only (Stats.Fallbacks), or with Options.FailWhenDown returns
// ErrUnavailable.
//
// fn runs on a goroutine of its own, started for it by the library's call
// back into Go and waited for there, so that nothing fn does unwinds C
// frames: a panic in fn is recovered on that goroutine, reaches the
// flight's other callers as a *FlightError and is raised again in Do's
// caller once the C call has returned; a runtime.Goexit in fn reaches the
// others as a *FlightError too, and Do's caller then calls runtime.Goexit
// itself, as Go's singleflight does.  fn calling Do on its own Group for its
// own key gets ErrDeadlock (it would wait for itself).
package redis

/*
#cgo pkg-config: singleflight-redis singleflight
#include <stdint.h>
#include <stdlib.h>
#include <singleflight_redis.h>

extern int sfgoRedisFn(sf_call *call, void *payload);

// The handle travels as an integer: cgo checks every pointer argument, and
// a cgo.Handle is no pointer.
static int sfgo_redis_do(sf_redis *r, const char *key, size_t len, uintptr_t h,
                         sf_result **res) {
    return sf_redis_do(r, key, len, sfgoRedisFn, (void *)h, res);
}
*/
import "C"

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/cgo"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"
)

// Options configure a Group; the zero value of a field means the library's
// default (sf_redis_options in singleflight_redis.h).
type Options struct {
	Addr      string // "host:port"; default "127.0.0.1:6379"
	UnixPath  string // a Unix socket instead of Addr
	Username  string // ACL user for AUTH
	Password  string // AUTH password
	DB        int    // SELECT db
	KeyPrefix string // default "sf"

	Lease    time.Duration // lease duration; default 3 s
	Renew    time.Duration // watchdog renewal period; default Lease / 3
	Wait     time.Duration // bound on waiting for another leader; default 10 s
	SoftTTL  time.Duration // values are fresh this long; default 60 s
	HardTTL  time.Duration // and served stale (one caller refreshing) until; default SoftTTL
	ErrorTTL time.Duration // fn's errors are kept this long; default 1 s
	NoCache  bool          // pure coalescing: no read-through cache

	MaxValueBytes  int           // default 1 MiB
	ConnectTimeout time.Duration // default 500 ms
	CommandTimeout time.Duration // every Redis round trip; default 500 ms
	FailWhenDown   bool          // ErrUnavailable instead of running fn locally
}

// Stats are one Group's counters in this process (sf_redis_stats).
type Stats struct {
	Calls, Executions, Hits, StaleHits, LeaseWins, Waits, Wakeups, Takeovers,
	Fallbacks, Unavailable, Fenced, Renewals, Timeouts, Reconnects uint64
}

// StatusError is a status of the library that is not fn's own outcome.
// errors.Is matches it against the sentinels below by code.
type StatusError struct {
	Code int
	Name string // "SF_REDIS_EUNAVAILABLE"
	Text string
}

func (e *StatusError) Error() string { return "singleflight/redis: " + e.Text + " (" + e.Name + ")" }

// Is reports whether target is a *StatusError with the same code.
func (e *StatusError) Is(target error) bool {
	t, ok := target.(*StatusError)
	return ok && t.Code == e.Code
}

// The statuses a caller may want to tell apart.
var (
	ErrUnavailable = &StatusError{Code: int(C.SF_REDIS_EUNAVAILABLE), Name: "SF_REDIS_EUNAVAILABLE"}
	ErrAuth        = &StatusError{Code: int(C.SF_REDIS_EAUTH), Name: "SF_REDIS_EAUTH"}
	ErrProto       = &StatusError{Code: int(C.SF_REDIS_EPROTO), Name: "SF_REDIS_EPROTO"}
	ErrTooBig      = &StatusError{Code: int(C.SF_REDIS_ETOOBIG), Name: "SF_REDIS_ETOOBIG"}
	ErrTimeout     = &StatusError{Code: int(C.SF_ETIMEDOUT), Name: "SF_ETIMEDOUT"}
	ErrInvalid     = &StatusError{Code: int(C.SF_EINVAL), Name: "SF_EINVAL"}
	// ErrDeadlock: fn called Do for its own key on its own Group.
	ErrDeadlock = &StatusError{Code: int(C.SF_EDEADLK), Name: "SF_EDEADLK"}
	// ErrClosed: the Group was closed.
	ErrClosed = errors.New("singleflight/redis: the Group is closed")
)

func statusError(rc C.int) error {
	return &StatusError{Code: int(rc), Name: C.GoString(C.sf_redis_err_name(rc)),
		Text: C.GoString(C.sf_redis_strerror(rc))}
}

// FlightError is what the other callers of a flight get when its fn
// returned an error or panicked, in this process or on another host: that
// outcome's text.  fn's own caller gets fn's error (or panic) itself.
type FlightError struct{ Message string }

func (e *FlightError) Error() string { return "singleflight/redis: the flight failed: " + e.Message }

// Group is one process's handle on the Redis tier.  Safe for concurrent
// use; Close frees it once the calls in progress have returned.
type Group struct {
	mu     sync.RWMutex // read-held by every call, write-held by Close
	r      *C.sf_redis
	closed bool

	// The OS threads running an fn of this Group (each locked to fn's
	// goroutine while it runs), and the key each runs for: Do on such a
	// thread for that key is fn calling back in for itself.
	leadMu  sync.Mutex
	leading map[int]string
	nLead   atomic.Int32
}

func ms(d time.Duration) C.uint {
	if d <= 0 {
		return 0
	}
	if d < time.Millisecond {
		return 1
	}
	return C.uint(d / time.Millisecond)
}

// New connects to Redis (one attempt: a server that cannot be reached is no
// error, the Group reconnects on its own) and returns a Group the caller
// owns (Close).  ErrAuth for a refused password or database, ErrProto for a
// server that does not speak Redis, ErrInvalid for bad options.
func New(o Options) (*Group, error) {
	var c C.sf_redis_options
	if rc := C.sf_redis_options_init(&c, C.SF_REDIS_OPTIONS_VERSION); rc != C.SF_OK {
		return nil, statusError(rc)
	}
	var frees []unsafe.Pointer
	defer func() {
		for _, p := range frees {
			C.free(p)
		}
	}()
	str := func(s string) *C.char {
		if s == "" {
			return nil
		}
		p := C.CString(s) // copied again by sf_redis_new
		frees = append(frees, unsafe.Pointer(p))
		return p
	}
	if o.Addr != "" {
		host, port, err := splitAddr(o.Addr)
		if err != nil {
			return nil, err
		}
		c.host, c.port = str(host), C.int(port)
	}
	c.unix_path, c.username, c.password, c.key_prefix = str(o.UnixPath), str(o.Username), str(o.Password), str(o.KeyPrefix)
	c.db = C.int(o.DB)
	setMs := func(dst *C.uint, d time.Duration) {
		if d > 0 {
			*dst = ms(d)
		}
	}
	setMs(&c.lease_ms, o.Lease)
	setMs(&c.renew_ms, o.Renew)
	setMs(&c.wait_ms, o.Wait)
	setMs(&c.soft_ttl_ms, o.SoftTTL)
	setMs(&c.hard_ttl_ms, o.HardTTL)
	setMs(&c.error_ttl_ms, o.ErrorTTL)
	setMs(&c.connect_timeout_ms, o.ConnectTimeout)
	setMs(&c.command_timeout_ms, o.CommandTimeout)
	if o.NoCache {
		c.cache = 0
	}
	if o.MaxValueBytes > 0 {
		c.max_value_bytes = C.size_t(o.MaxValueBytes)
	}
	if o.FailWhenDown {
		c.on_down = C.SF_REDIS_FAIL
	}
	g := &Group{}
	if rc := C.sf_redis_new(&g.r, &c); rc != C.SF_OK {
		return nil, statusError(rc)
	}
	return g, nil
}

func splitAddr(addr string) (string, int, error) {
	i := len(addr) - 1
	for i >= 0 && addr[i] != ':' {
		i--
	}
	port := 0
	if i > 0 {
		if _, err := fmt.Sscanf(addr[i+1:], "%d", &port); err == nil && port > 0 && port < 65536 {
			return addr[:i], port, nil
		}
	}
	return "", 0, fmt.Errorf("singleflight/redis: Addr %q is not host:port", addr)
}

// Close frees the connections and the watchdog, waiting for the calls in
// progress.  Later calls return ErrClosed.  Idempotent.
func (g *Group) Close() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if !g.closed {
		g.closed = true
		C.sf_redis_free(g.r)
		g.r = nil
	}
	return nil
}

// One Do call's fn and what it left for its caller.
type flight struct {
	g        *Group
	key      string
	fn       func() ([]byte, error)
	value    []byte      // fn's value
	err      error       // fn's error, for its own caller
	panicked bool        // fn panicked with panicVal
	panicVal interface{} //
	goexited bool        // fn called runtime.Goexit
}

// run runs fn on the current goroutine, locked to its thread (see
// Group.leading), and records how it ended: returned, panicked, or
// runtime.Goexit (neither of the others, told apart by the deferred call).
func (f *flight) run(done chan<- struct{}) {
	runtime.LockOSThread()
	tid := syscall.Gettid()
	f.g.setLeading(tid, f.key, true)
	returned := false
	defer func() {
		if !returned {
			if v := recover(); v != nil {
				f.panicked, f.panicVal = true, v
			} else {
				f.goexited = true
			}
		}
		f.g.setLeading(tid, f.key, false)
		runtime.UnlockOSThread()
		close(done)
	}()
	f.value, f.err = f.fn()
	returned = true
}

func (g *Group) setLeading(tid int, key string, on bool) {
	g.leadMu.Lock()
	defer g.leadMu.Unlock()
	if on {
		if g.leading == nil {
			g.leading = make(map[int]string)
		}
		g.leading[tid] = key
		g.nLead.Add(1)
	} else {
		delete(g.leading, tid)
		g.nLead.Add(-1)
	}
}

// leadsHere reports whether the calling goroutine is an fn of g running for
// key: only fn's goroutine runs on its locked thread.
func (g *Group) leadsHere(key string) bool {
	if g.nLead.Load() == 0 {
		return false
	}
	tid := syscall.Gettid()
	g.leadMu.Lock()
	defer g.leadMu.Unlock()
	k, ok := g.leading[tid]
	return ok && k == key
}

//export sfgoRedisFn
func sfgoRedisFn(call *C.sf_call, payload unsafe.Pointer) C.int {
	f := cgo.Handle(uintptr(payload)).Value().(*flight)
	// fn on a goroutine of its own, this one waiting under the C frames: a
	// panic or runtime.Goexit there cannot unwind them.
	done := make(chan struct{})
	go f.run(done)
	<-done
	var msg string
	switch {
	case f.panicked:
		msg = fmt.Sprintf("panic: %v", f.panicVal)
	case f.goexited:
		msg = "fn called runtime.Goexit"
	case f.err != nil:
		msg = f.err.Error()
	default:
		var p unsafe.Pointer
		if len(f.value) > 0 {
			p = unsafe.Pointer(&f.value[0]) // copied by the library before it returns
		}
		return C.int(C.sf_call_set_bytes(call, p, C.size_t(len(f.value))))
	}
	cmsg := C.CString(msg)
	C.sf_call_panic(call, cmsg)
	C.free(unsafe.Pointer(cmsg))
	return 0
}

// Do returns key's value: fn's bytes, run once for all concurrent callers
// fleet-wide, or the value already in Redis.  fn's own caller gets fn's
// error (or panic, or runtime.Goexit) itself; the flight's other callers
// get a *FlightError.  Otherwise the errors are *StatusError (ErrTimeout
// when the wait for another leader passed Options.Wait, ErrTooBig,
// ErrDeadlock when fn calls Do for its own key, and with FailWhenDown
// ErrUnavailable, ErrAuth, ErrProto) or ErrClosed.  The bytes are the
// caller's own copy.
func (g *Group) Do(key string, fn func() ([]byte, error)) ([]byte, error) {
	if g.leadsHere(key) {
		return nil, ErrDeadlock
	}
	g.mu.RLock()
	if g.closed {
		g.mu.RUnlock()
		return nil, ErrClosed
	}
	f := &flight{g: g, key: key, fn: fn}
	h := cgo.NewHandle(f)
	ckey := C.CString(key) // C memory: NULs in key are fine, the length is given
	var res *C.sf_result
	rc := C.sfgo_redis_do(g.r, ckey, C.size_t(len(key)), C.uintptr_t(h), &res)
	C.free(unsafe.Pointer(ckey))
	h.Delete()
	g.mu.RUnlock()
	if res != nil {
		defer C.sf_result_release(res)
	}
	switch {
	case f.panicked:
		panic(f.panicVal)
	case f.goexited:
		runtime.Goexit()
		return nil, nil // not reached
	case f.err != nil:
		return nil, f.err
	case rc == C.SF_OK && C.sf_result_error(res) == 0:
		var n C.size_t
		p := C.sf_result_bytes(res, &n)
		return C.GoBytes(p, C.int(n)), nil
	case rc == C.SF_OK:
		return nil, &FlightError{Message: fmt.Sprintf("fn failed with error %d", int(C.sf_result_error(res)))}
	case rc == C.SF_EPANIC:
		return nil, &FlightError{Message: C.GoString(C.sf_result_panic_message(res))}
	default:
		return nil, statusError(rc)
	}
}

// Forget deletes key's value from Redis: the next call runs fn.
func (g *Group) Forget(key string) error {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.closed {
		return ErrClosed
	}
	ckey := C.CString(key)
	defer C.free(unsafe.Pointer(ckey))
	if rc := C.sf_redis_forget(g.r, unsafe.Pointer(ckey), C.size_t(len(key))); rc != C.SF_OK {
		return statusError(rc)
	}
	return nil
}

// Stats returns this process's counters of g.
func (g *Group) Stats() Stats {
	g.mu.RLock()
	defer g.mu.RUnlock()
	if g.closed {
		return Stats{}
	}
	var s C.sf_redis_stats
	s.version = C.SF_REDIS_STATS_VERSION
	C.sf_redis_stats_get(g.r, &s)
	return Stats{uint64(s.calls), uint64(s.executions), uint64(s.hits), uint64(s.stale_hits),
		uint64(s.lease_wins), uint64(s.waits), uint64(s.wakeups), uint64(s.takeovers),
		uint64(s.fallbacks), uint64(s.unavailable), uint64(s.fenced), uint64(s.renewals),
		uint64(s.timeouts), uint64(s.reconnects)}
}
