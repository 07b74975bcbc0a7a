package singleflight

import (
	"github.com/libsingleflight/libsingleflight/bindings/go/internal/engine"
)

// SharedGroup is a group in shared memory: every process on the host that
// opens the same name shares its flights, so a key runs once across them
// all (worker processes of one server, say).  Values cross processes as
// bytes.  All methods are safe for concurrent use, except Close.
//
// Differences from Group, all because only bytes cross a process:
//   - fn returns []byte; followers get a copy of the same bytes;
//   - fn's error reaches the leader as is and the followers, in every
//     process, as a *SharedError holding its text (the flight's error code
//     is 1 and its bytes are the text, for processes in other languages);
//   - a panic in fn re-panics in the leader with its usual value, and in
//     every follower with an error whose text is the panic's;
//   - a leader that goes away without finishing (its process killed inside
//     fn, or runtime.Goexit there) gives the followers ErrLeaderExited
//     instead of ending their goroutines; the next caller leads afresh.
type SharedGroup struct {
	g *engine.SharedGroup
}

// SharedOptions sizes and places a shared group; the zero value takes the
// library's defaults (and, for a process opening an existing group, its
// sizes).
type SharedOptions = engine.SharedOptions

// SharedError is fn's error as a shared group's followers receive it.
type SharedError = engine.SharedError

// StatusError is a status of the C library, such as OpenShared's refusal
// of a bad name (Code -1, SF_EINVAL) or of another user's segment (SF_EPERM).
type StatusError = engine.StatusError

// ErrLeaderExited is what a shared group's followers get when the flight's
// leader went away without finishing.
var ErrLeaderExited = engine.ErrLeaderExited

// ErrClosed is what a SharedGroup returns after Close.
var ErrClosed = engine.ErrClosed

// OpenShared opens the shared group called name (1 to 200 bytes of
// [A-Za-z0-9._-], not starting with '.'), creating it if no process has it
// open; or, with name "", the file opts.Path.  The error is a *StatusError:
// SF_EINVAL (a bad name or option), SF_EPERM (another user's segment, or
// wider permissions than opts.Mode), SF_EINCOMPAT (another layout, or
// other sizes than asked for), SF_EBUSY (MaxProcesses attached), SF_ENOMEM.
// Close the group when done; the garbage collector closes a lost one.
func OpenShared(name string, opts SharedOptions) (*SharedGroup, error) {
	g, err := engine.OpenShared(name, opts)
	if err != nil {
		return nil, err
	}
	return &SharedGroup{g: g}, nil
}

// Do executes fn once for all concurrent callers of key in every process
// attached to the group and returns its results, and whether they were
// given to more than one caller.  See SharedGroup for how errors, panics
// and a dead leader reach the followers.  The leader gets a *StatusError
// (SF_EINVAL) when its value is larger than the group's MaxValueBytes (its
// followers panic with a message saying so), and any caller one
// (SF_ENOMEM) when the group's table or arena is full.  Do for key from
// inside fn, on fn's goroutine, panics (see ErrDeadlock).
func (g *SharedGroup) Do(key string, fn func() ([]byte, error)) (v []byte, err error, shared bool) {
	return g.g.Do(key, fn)
}

// Forget tells every process's callers to start a new flight for key; the
// current one still delivers to its own callers.
func (g *SharedGroup) Forget(key string) {
	g.g.Forget(key)
}

// Stats reads the group's counters, summed over every process attached
// (Processes: how many are attached now).
func (g *SharedGroup) Stats() Stats {
	return g.g.Stats()
}

// Close detaches this process from the group; the last process to detach
// removes the group's segment.  It must not run concurrently with the
// group's other methods, and fails (a *StatusError, SF_EBUSY) while a
// flight of this process is running.
func (g *SharedGroup) Close() error {
	return g.g.Close()
}
