// Package goroutine names the calling goroutine, so that the engine can tell
// "the goroutine that leads this flight" from every other one.  An OS thread
// would not do: a goroutine moves between threads, and while it is parked
// other goroutines run on its thread.
package goroutine

// ID identifies a goroutine that is alive: two goroutines alive at the same
// time never share an ID, and a goroutine keeps its ID for its whole life.
// The ID of a goroutine that has exited may be given to a new one, so an ID
// means something only while its goroutine is known to be running (a leader
// inside its fn, say).
type ID uintptr

// Current returns the calling goroutine's ID.  It costs a couple of
// instructions on the architectures with an assembly getg (the address of
// the runtime's record of the goroutine, which is never freed) and a stack
// trace elsewhere.
func Current() ID {
	return current()
}
