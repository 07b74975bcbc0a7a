// Completion and notifications: publishing a flight's outcome and waking
// everyone who waits for it (futex waiters, eventfds, done callbacks), and
// the callers of a flight that want a done callback or an eventfd instead
// of (or besides) waiting.  Each is a Follower record linked
// on the flight's notify list under the flight's lock; completion takes the
// list, writes the eventfds under the lock (so sf_call_release, which
// closes an fd under it, never races a write to a reused fd number), then
// runs the done callbacks outside it.  Everything here that reaches a
// cancellation point or user code runs with cancellation disabled.
#pragma once

#include "core/flight.hpp"
#include "core/types.hpp"

namespace sf {

// A record for a follower (a two-phase handle, or a do_async caller's
// pending callback) of f, owning a reference to f that the caller hands
// over.  nullptr when out of memory.
Follower *follower_new(Flight *f, uint8_t role) noexcept;
void follower_unref(Follower *c) noexcept;

// Registers cb to run once when c's flight completes, or runs it now on
// this thread if it already has, or with kCanceled and no result if c's
// caller gave up.  kBadState for a second registration.
Status notify_on_done(Follower *c, DoneCallback cb) noexcept;

// The record's eventfd (made on first use), readable once the flight is
// done or c's caller gave up.  A negative Status when no descriptor could
// be had.
int notify_fd(Follower *c) noexcept;

// The record's owner lets go: its eventfd is closed now, and a record
// linked only for its eventfd is unlinked; a registered done callback
// still runs.
void notify_drop(Follower *c) noexcept;

// The leader's own registration on its flight (the two-phase leader handle
// may use on_done and fd too), created on first use (already given up when
// the leader's caller gave up before).  nullptr when out of memory.
Follower *leader_registration(Flight *f) noexcept;

// Completion's part: called once kDone is set, when kNotify was.
void notify_completion(Flight *f) noexcept;

// The record's caller gives up (sf_call_cancel).  Caller holds the
// flight's lock and has checked that the flight is not done: marks c
// kCancelled (seq_cst: waiters read it), makes its eventfd readable, and
// takes its done callback off the list.  Returns true when that callback
// is now the caller's to run, with notify_run_cancelled, after the lock
// and after it has finished with the flight: the callback may release the
// very handle it is told about.
bool notify_cancel_locked(Flight *f, Follower *c) noexcept;
// Runs c's done callback with kCanceled and no result, then drops the
// notification's reference to c (which kept c alive through the callback).
void notify_run_cancelled(Follower *c) noexcept;

}  // namespace sf
