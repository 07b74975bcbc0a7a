package redis

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// A redis-server of the test's own on 127.0.0.1 on a free port, ready when
// its log says so (a handshake, not a sleep), killed when the test ends.
func startRedis(t *testing.T) string {
	t.Helper()
	exe, err := exec.LookPath("redis-server")
	if err != nil {
		t.Fatal("redis-server is not installed (scripts/setup.sh installs it for the redis label)")
	}
	for attempt := 0; attempt < 5; attempt++ {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		cmd := exec.Command(exe, "--port", fmt.Sprint(port), "--bind", "127.0.0.1",
			"--save", "", "--appendonly", "no", "--logfile", "")
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		ready := make(chan bool, 1)
		go func() {
			sc := bufio.NewScanner(out)
			ok := false
			for sc.Scan() {
				if !ok && strings.Contains(sc.Text(), "Ready to accept connections") {
					ok = true
					ready <- true
				}
			}
			if !ok {
				ready <- false // exited (a port taken meanwhile) without being ready
			}
		}()
		select {
		case ok := <-ready:
			if ok {
				t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
				return fmt.Sprintf("127.0.0.1:%d", port)
			}
		case <-time.After(30 * time.Second):
		}
		cmd.Process.Kill()
		cmd.Wait()
	}
	t.Fatal("redis-server did not start")
	return ""
}

// Four Groups (standing in for four hosts) of eight goroutines each on one
// cold key: fn runs once and every caller gets its bytes.  fn returns only
// once every caller has called Do: each one either joins the flight or,
// arriving after it, reads the value from Redis.
func TestOneColdKeyAcrossGroupsRunsFnOnce(t *testing.T) {
	addr := startRedis(t)
	const hosts, per = 4, 8
	var runs, arrived int32
	var wg sync.WaitGroup
	values := make(chan []byte, hosts*per)
	errs := make(chan error, hosts*per)
	for h := 0; h < hosts; h++ {
		g, err := New(Options{Addr: addr})
		if err != nil {
			t.Fatal(err)
		}
		defer g.Close()
		for i := 0; i < per; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				atomic.AddInt32(&arrived, 1)
				v, err := g.Do("cold", func() ([]byte, error) {
					atomic.AddInt32(&runs, 1)
					deadline := time.Now().Add(20 * time.Second)
					for atomic.LoadInt32(&arrived) < hosts*per && time.Now().Before(deadline) {
						time.Sleep(time.Millisecond)
					}
					return []byte("cold value"), nil
				})
				if err != nil {
					errs <- err
					return
				}
				values <- v
			}()
		}
	}
	wg.Wait()
	close(values)
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	n := 0
	for v := range values {
		n++
		if string(v) != "cold value" {
			t.Errorf("got %q", v)
		}
	}
	if n != hosts*per || runs != 1 {
		t.Fatalf("%d values, fn ran %d times; want %d and 1", n, runs, hosts*per)
	}
}

// fn's error reaches its caller as itself and, kept for ErrorTTL, the next
// caller as a *FlightError with its text; a panic is raised again in Do.
func TestErrorsAndPanics(t *testing.T) {
	addr := startRedis(t)
	g, err := New(Options{Addr: addr, ErrorTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	bad := errors.New("bad row 7")
	runs := 0
	fn := func() ([]byte, error) { runs++; return nil, bad }
	if _, err := g.Do("k", fn); err != bad {
		t.Fatalf("leader got %v, want its own error", err)
	}
	var fe *FlightError
	if _, err := g.Do("k", fn); !errors.As(err, &fe) || !strings.Contains(fe.Message, "bad row 7") || runs != 1 {
		t.Fatalf("second caller got %v (fn ran %d times)", err, runs)
	}
	func() {
		defer func() {
			if v := recover(); v != "boom" {
				t.Fatalf("recovered %v, want boom", v)
			}
		}()
		g.Do("p", func() ([]byte, error) { panic("boom") })
	}()
	if v, err := g.Do("ok", func() ([]byte, error) { return []byte("fine"), nil }); err != nil || string(v) != "fine" {
		t.Fatalf("after a panic: %q, %v", v, err)
	}
}

// runtime.Goexit in fn ends Do's caller as it would have ended fn's
// goroutine (the library's C frames in between are not unwound: fn runs on
// a goroutine of its own), and the flight's others get a *FlightError; fn
// calling Do for its own key gets ErrDeadlock, for another key a value.
func TestGoexitAndCallingBackIn(t *testing.T) {
	addr := startRedis(t)
	g, err := New(Options{Addr: addr, ErrorTTL: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	returned := false
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.Do("x", func() ([]byte, error) { runtime.Goexit(); return nil, nil })
		returned = true
	}()
	<-done
	if returned {
		t.Fatal("Do returned after fn called runtime.Goexit")
	}
	var fe *FlightError
	if _, err := g.Do("x", func() ([]byte, error) { return []byte("late"), nil }); !errors.As(err, &fe) ||
		!strings.Contains(fe.Message, "Goexit") {
		t.Fatalf("the next caller (within ErrorTTL) got %v, want the Goexit as a *FlightError", err)
	}
	var same, other error
	var otherValue []byte
	v, err := g.Do("outer", func() ([]byte, error) {
		_, same = g.Do("outer", func() ([]byte, error) { return []byte("never"), nil })
		otherValue, other = g.Do("inner", func() ([]byte, error) { return []byte("inner"), nil })
		return []byte("outer value"), nil
	})
	if err != nil || string(v) != "outer value" {
		t.Fatalf("outer: %q, %v", v, err)
	}
	if !errors.Is(same, ErrDeadlock) || other != nil || string(otherValue) != "inner" {
		t.Fatalf("calling back in: same key %v, other key %q %v", same, otherValue, other)
	}
	if s := g.Stats(); s.Executions != 3 {
		t.Fatalf("fn ran %d times, want 3 (x, outer, inner)", s.Executions)
	}
}

// With Redis down, Do runs fn in the process (the default) or returns
// ErrUnavailable (FailWhenDown); nothing hangs.
func TestRedisDown(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	g, err := New(Options{Addr: addr, CommandTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if v, err := g.Do("k", func() ([]byte, error) { return []byte("local"), nil }); err != nil || string(v) != "local" {
		t.Fatalf("fallback: %q, %v", v, err)
	}
	if g.Stats().Fallbacks < 1 {
		t.Fatalf("stats: %+v", g.Stats())
	}
	f, err := New(Options{Addr: addr, CommandTimeout: 300 * time.Millisecond, FailWhenDown: true})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Do("k", func() ([]byte, error) { return []byte("never"), nil }); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("FailWhenDown: %v", err)
	}
	f.Close()
	if _, err := f.Do("k", nil); err != ErrClosed {
		t.Fatalf("after Close: %v", err)
	}
}
