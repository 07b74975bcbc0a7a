package goroutine

import (
	"bytes"
	"runtime"
	"strconv"
)

// fromStackTrace parses the goroutine number out of the first line of a
// stack trace ("goroutine 18 [running]:").  Correct on every architecture,
// but it costs microseconds: the fallback where there is no assembly getg.
func fromStackTrace() ID {
	var buf [64]byte
	b := bytes.TrimPrefix(buf[:runtime.Stack(buf[:], false)], []byte("goroutine "))
	if i := bytes.IndexByte(b, ' '); i > 0 {
		b = b[:i]
	}
	id, err := strconv.ParseUint(string(b), 10, 64)
	if err != nil {
		panic("goroutine: no goroutine number in " + strconv.Quote(string(buf[:])))
	}
	return ID(id)
}
