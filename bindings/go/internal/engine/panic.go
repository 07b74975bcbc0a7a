package engine

import (
	"bytes"
	"fmt"
	"runtime/debug"
)

// panicError carries a value recovered from fn together with the stack of the
// goroutine that panicked.  Every caller of the flight re-panics with the very
// same *panicError, so callers can compare what they recovered.
type panicError struct {
	value interface{}
	stack []byte
}

// Error prints the panic value first, then the leader's stack, so a crash
// report shows where fn actually panicked.
func (p *panicError) Error() string {
	return fmt.Sprintf("%v\n\n%s", p.value, p.stack)
}

// Unwrap exposes the panic value to errors.Is and errors.As when it is itself
// an error.
func (p *panicError) Unwrap() error {
	if err, ok := p.value.(error); ok {
		return err
	}
	return nil
}

// newPanicError must run in the deferred function that recovered, while the
// panicking frames are still on the stack.
func newPanicError(v interface{}) *panicError {
	stack := debug.Stack()
	// The header line names the leader's goroutine and its state at capture
	// time, which is stale by the time a follower reads it.
	if i := bytes.IndexByte(stack, '\n'); i >= 0 {
		stack = stack[i+1:]
	}
	return &panicError{value: v, stack: stack}
}

// message is the text the C library keeps for callers outside Go.  fmt
// recovers from a panicking String or Error method, so this cannot panic.
func (p *panicError) message() string {
	return fmt.Sprint(p.value)
}
