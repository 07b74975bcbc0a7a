package engine

// The shared group: one flight per key across the processes of a host, in
// shared memory (sf_group_open_shared).  Values cross processes as bytes;
// fn runs in Go between two cgo calls, as for Group.  Followers wait in
// sf_call_wait, a blocking cgo call that holds an OS thread while it waits,
// not on a Go channel filled by sf_call_on_done as Group's do.  That choice
// was made while the library could free a group under its own helper
// thread when a done callback's goroutine closed the group (fixed in the
// library, test SharedClose.FreedWhileADoneCallbackRunsOnTheHelper);
// moving the followers to channels is left for later.

/*
#include <stdint.h>
#include <stdlib.h>
#include "sfgo_capi.h"

static int sfgo_open_shared(const char *name, const char *path, unsigned int flags,
                            unsigned int table_slots, unsigned int max_processes,
                            sf_u64 arena_bytes, sf_u64 max_value_bytes, unsigned int mode,
                            sf_group **out) {
	sf_shared_options o;
	int rc = sf_shared_options_init(&o, SF_SHARED_OPTIONS_VERSION);
	if (rc != SF_OK)
		return rc;
	o.flags = flags;
	o.path = path;
	o.table_slots = table_slots;
	o.max_processes = max_processes;
	o.arena_bytes = arena_bytes;
	o.max_value_bytes = max_value_bytes;
	o.mode = mode;
	return sf_group_open_shared(name, &o, out);
}

// Completes a shared leader's flight and drops its call, in one cgo call:
// as panicked with panic_msg when it is set, else with len bytes at data
// and fn's code (0: a value; sharedErrorCode: data is an error's text).
// Returns whether anyone joined (0 or 1), or a negative status; when the
// bytes cannot be stored (SF_EINVAL: above max_value_bytes; SF_ENOMEM) the
// followers get a panic saying so and the status is returned.
static int sfgo_shared_complete(sf_call *call, const void *data, size_t len, int code,
                                const char *panic_msg) {
	int rc, shared = 0;
	if (panic_msg != NULL) {
		rc = sf_call_panic(call, panic_msg);
	} else {
		rc = sf_call_set_bytes(call, data, len);
		if (rc != SF_OK) {
			sf_call_panic(call, rc == SF_EINVAL
			                        ? "singleflight: the value is larger than the group's max_value_bytes"
			                        : "singleflight: no room for the value in the shared group");
			sf_call_release(call);
			return rc;
		}
		rc = sf_call_finish(call, code);
	}
	if (rc == SF_OK) {
		rc = sf_call_wait(call, 0, NULL, &shared);
		if (rc == SF_OK || (rc == SF_EPANIC && panic_msg != NULL))
			rc = shared != 0;
	}
	sf_call_release(call);
	return rc;
}
*/
import "C"

import (
	"errors"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/libsingleflight/libsingleflight/bindings/go/internal/goroutine"
)

// sharedErrorCode is the flight's error code when fn returned an error:
// the flight's bytes are then the error's text.  Documented in the
// package, for processes in other languages that share the group.
const sharedErrorCode = 1

// ErrLeaderExited is what a shared group's followers get when the flight's
// leader went away without finishing: its process died inside fn (SIGKILL
// included), or fn called runtime.Goexit.
var ErrLeaderExited = errors.New("singleflight: the flight's leader exited without finishing " +
	"(its process died, or fn called runtime.Goexit)")

// ErrClosed is what a shared group's methods return after Close.
var ErrClosed = errors.New("singleflight: the shared group is closed")

// SharedError is fn's error as a shared group's followers receive it: its
// text, the one thing that crosses a process.
type SharedError struct {
	Text string
}

func (e *SharedError) Error() string { return e.Text }

// StatusError is a status of the C library: Code is an SF_E* value (such
// as -1 for SF_EINVAL), Name its symbolic name.
type StatusError struct {
	Op   string
	Code int
	Name string
}

func (e *StatusError) Error() string {
	return "singleflight: " + e.Op + ": " + C.GoString(C.sf_strerror(C.int(e.Code))) + " (" + e.Name + ")"
}

func statusError(op string, code int) *StatusError {
	return &StatusError{Op: op, Code: code, Name: C.GoString(C.sf_err_name(C.int(code)))}
}

// SharedOptions are sf_shared_options; zero fields take the library's
// defaults, or, for a process opening an existing group, the segment's.
type SharedOptions struct {
	Path          string // a file to map instead of POSIX shm; name must be ""
	TableSlots    uint32 // flights in flight at once; 0: 4096
	MaxProcesses  uint32 // processes attached at once; 0: 64
	ArenaBytes    uint64 // 0: 16 MiB
	MaxValueBytes uint64 // the largest value; 0: 1 MiB
	Mode          uint32 // the segment's permissions; 0: 0600
	RunUnshared   bool   // a full table or arena: coalesce within the process
}

// SharedGroup is this process's attachment to a shared group.  Safe for
// concurrent use, except Close.
type SharedGroup struct {
	g      *C.sf_group
	closed int32

	// The keys each goroutine leads right now, so that a Do on its own key
	// from inside fn panics instead of waiting for itself (see lead).
	leadsMu sync.Mutex
	leads   map[leadOf]int
}

type leadOf struct {
	key string
	g   goroutine.ID
}

// sharedDelivery is what a follower learns when its flight completes.
type sharedDelivery struct {
	status   int
	code     int
	bytes    []byte
	hasBytes bool
	panicMsg string
	shared   bool
}

// OpenShared opens (creating if no process has it open) the group called
// name, or the file opts.Path when name is "".  The attachment is freed by
// Close, or by the garbage collector once unreachable.
func OpenShared(name string, opts SharedOptions) (*SharedGroup, error) {
	var cname, cpath *C.char
	if name != "" {
		cname = C.CString(name)
		defer C.free(unsafe.Pointer(cname))
	}
	if opts.Path != "" {
		cpath = C.CString(opts.Path)
		defer C.free(unsafe.Pointer(cpath))
	}
	flags := C.uint(0)
	if opts.RunUnshared {
		flags = C.SF_SHARED_RUN_UNSHARED
	}
	var g *C.sf_group
	rc := int(C.sfgo_open_shared(cname, cpath, flags, C.uint(opts.TableSlots),
		C.uint(opts.MaxProcesses), C.sf_u64(opts.ArenaBytes), C.sf_u64(opts.MaxValueBytes),
		C.uint(opts.Mode), &g))
	if rc != statusOK {
		return nil, statusError("sf_group_open_shared", rc)
	}
	s := &SharedGroup{g: g, leads: make(map[leadOf]int)}
	runtime.SetFinalizer(s, (*SharedGroup).Close)
	return s, nil
}

// Close detaches this process from the group; the last process to detach
// removes the segment.  No other method may run concurrently with it, and
// none may be called after it (they return ErrClosed).  A StatusError
// (SF_EBUSY) while a flight of this attachment is still running.
func (s *SharedGroup) Close() error {
	if !atomic.CompareAndSwapInt32(&s.closed, 0, 1) {
		return nil
	}
	if rc := int(C.sf_group_free(s.g)); rc != statusOK {
		atomic.StoreInt32(&s.closed, 0)
		return statusError("sf_group_free", rc)
	}
	runtime.SetFinalizer(s, nil)
	return nil
}

func (s *SharedGroup) isClosed() bool { return atomic.LoadInt32(&s.closed) != 0 }

// Do runs fn once for all concurrent callers of key in every process
// attached.  The leader gets fn's own results; followers get a copy of
// fn's bytes, or fn's error as a *SharedError.  A panic in fn re-panics in
// the leader with its *panicError and in every follower with a *panicError
// carrying its text.  Followers get ErrLeaderExited when the leader went
// away without finishing.  Do for key from inside fn, on fn's goroutine,
// panics with ErrDeadlock.
func (s *SharedGroup) Do(key string, fn func() ([]byte, error)) ([]byte, error, bool) {
	if s.isClosed() {
		return nil, ErrClosed, false
	}
	p, n := keyPtr(key)
	var call *C.sf_call
	rc := int(C.sf_group_begin(s.g, unsafe.Pointer(p), n, &call))
	runtime.KeepAlive(key)
	switch rc {
	case statusLeader:
		return s.lead(call, key, fn)
	case statusFollower:
	default:
		runtime.KeepAlive(s)
		return nil, statusError("sf_group_begin", rc), false
	}
	if s.leading(key) {
		C.sf_call_release(call)
		runtime.KeepAlive(s)
		panic(deadlock(key))
	}
	var r *C.sf_result
	var shared C.int
	status := C.sf_call_wait(call, -1, &r, &shared)
	d := deliveryOf(status, r, shared)
	C.sf_result_release(r)
	C.sf_call_release(call)
	runtime.KeepAlive(s)
	return d.outcome()
}

// outcome turns a follower's delivery into Do's results, or its panic.
func (d *sharedDelivery) outcome() ([]byte, error, bool) {
	switch d.status {
	case statusOK:
		if d.code == 0 && d.hasBytes {
			return d.bytes, nil, d.shared
		}
		if d.code == sharedErrorCode && d.hasBytes {
			return nil, &SharedError{Text: string(d.bytes)}, d.shared
		}
		// A leader outside this binding (C, say) finished without bytes,
		// or with a code of its own.
		return nil, &SharedError{Text: "singleflight: the flight's leader finished with error code " +
			strconv.Itoa(d.code) + " and no value"}, d.shared
	case statusPanic:
		panic(&panicError{value: d.panicMsg})
	case statusGoexit:
		return nil, ErrLeaderExited, d.shared
	}
	return nil, statusError("waiting for a shared flight", d.status), d.shared
}

// lead runs fn as the leader of key's flight and completes it for every
// process.  On Goexit in fn the call is released unfinished, so the
// followers get ErrLeaderExited, and the Goexit carries on.
func (s *SharedGroup) lead(call *C.sf_call, key string, fn func() ([]byte, error)) ([]byte, error, bool) {
	me := leadOf{key: key, g: goroutine.Current()}
	s.pushLead(me)
	val, err, how := runFn(nil, key, beginMark{}, fn, func() {
		s.popLead(me)
		C.sf_call_release(call)
		runtime.KeepAlive(s)
	})
	s.popLead(me)
	if how == fnPanicked {
		pe := err.(*panicError)
		msg := C.CString(pe.message())
		// Whatever the status, the call is gone and the panic goes on.
		C.sfgo_shared_complete(call, nil, 0, 0, msg)
		C.free(unsafe.Pointer(msg))
		runtime.KeepAlive(s)
		panic(pe)
	}
	data, code := val, 0
	if err != nil {
		data, code = []byte(err.Error()), sharedErrorCode
	}
	var ptr unsafe.Pointer
	if len(data) > 0 {
		ptr = unsafe.Pointer(&data[0])
	}
	// The library copies the bytes before the call returns.
	rc := int(C.sfgo_shared_complete(call, ptr, C.size_t(len(data)), C.int(code), nil))
	runtime.KeepAlive(data)
	runtime.KeepAlive(s)
	if rc < 0 {
		return nil, statusError("storing the flight's value", rc), false
	}
	return val, err, rc == 1
}

func (s *SharedGroup) pushLead(l leadOf) {
	s.leadsMu.Lock()
	s.leads[l]++
	s.leadsMu.Unlock()
}

func (s *SharedGroup) popLead(l leadOf) {
	s.leadsMu.Lock()
	if s.leads[l]--; s.leads[l] <= 0 {
		delete(s.leads, l)
	}
	s.leadsMu.Unlock()
}

// leading reports whether the calling goroutine leads a flight of key in
// this attachment.  A flight of key it leads that was forgotten while
// another process started a new one counts too: then the panic is a
// false alarm, the price of knowing flights only by key.
func (s *SharedGroup) leading(key string) bool {
	s.leadsMu.Lock()
	defer s.leadsMu.Unlock()
	return s.leads[leadOf{key: key, g: goroutine.Current()}] > 0
}

// Forget makes the next Do for key, in any process, start a new flight;
// the current one still delivers to its own callers.
func (s *SharedGroup) Forget(key string) {
	if s.isClosed() {
		return
	}
	p, n := keyPtr(key)
	C.sf_group_forget(s.g, unsafe.Pointer(p), n)
	runtime.KeepAlive(key)
	runtime.KeepAlive(s)
}

// Stats reads the group's counters, summed over every process attached.
func (s *SharedGroup) Stats() Stats {
	if s.isClosed() {
		return Stats{}
	}
	st := statsOf(s.g)
	runtime.KeepAlive(s)
	return st
}

// deliveryOf copies what a completed flight's result holds (borrowed) into
// Go memory.
func deliveryOf(status C.int, result *C.sf_result, shared C.int) sharedDelivery {
	d := sharedDelivery{status: int(status), shared: shared != 0}
	switch d.status {
	case statusOK:
		d.code = int(C.sf_result_error(result))
		var n C.size_t
		if p := C.sf_result_bytes(result, &n); p != nil {
			// Copied: the bytes live only as long as the result reference.
			d.bytes, d.hasBytes = append([]byte(nil), unsafe.Slice((*byte)(p), int(n))...), true
		}
	case statusPanic:
		d.panicMsg = panicMessageOf(result)
	}
	return d
}
