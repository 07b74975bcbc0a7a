//go:build 386 || amd64 || arm || arm64 || loong64 || mips || mipsle || mips64 || mips64le || ppc64 || ppc64le || riscv64 || s390x

package goroutine

// getg returns the runtime's g pointer, which the ABI keeps in a register (or
// thread-local slot) at all times.  Implemented in getg_$GOARCH.s.
func getg() uintptr

func current() ID { return ID(getg()) }
