package singleflight

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// The shared group's tests run several processes: this test binary again,
// started with sharedRoleEnv naming what the child does (TestMain sends it
// there instead of the tests).  A child opens the group by name, as an
// unrelated worker would, and prints what it saw on lines starting with
// "REPORT ".  Every wait is on an observable condition (the segment's
// follower count); the deadline only turns a hang into a failure.

const (
	sharedRoleEnv  = "SF_GO_SHARED_ROLE"
	sharedNameEnv  = "SF_GO_SHARED_NAME"
	sharedChildren = 4
)

func TestMain(m *testing.M) {
	if role := os.Getenv(sharedRoleEnv); role != "" {
		os.Exit(sharedChild(role, os.Getenv(sharedNameEnv)))
	}
	os.Exit(m.Run())
}

// payload is bytes a mix-up would change: NULs, high bytes, and longer than
// the library's 64 inline bytes, so the value lives in the arena.
func payload(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte((i*131 + 7) % 256)
	}
	return b
}

// awaitFollowers returns once n callers, over every process, have joined.
func awaitFollowers(g *SharedGroup, n uint64) {
	deadline := time.Now().Add(20 * time.Second)
	for g.Stats().Followers < n {
		if time.Now().After(deadline) {
			panic("followers never joined")
		}
		runtime.Gosched()
	}
}

// sharedChild is a child process's work; its exit status is 0 unless the
// group could not even be opened.
func sharedChild(role, name string) int {
	g, err := OpenShared(name, SharedOptions{})
	if err != nil {
		fmt.Println("REPORT open:", err)
		return 2
	}
	defer g.Close()
	report := func(format string, args ...interface{}) {
		fmt.Printf("REPORT "+format+"\n", args...)
	}
	switch role {
	case "cold":
		v, err, shared := g.Do("cold", func() ([]byte, error) {
			report("ran")
			awaitFollowers(g, sharedChildren-1)
			return payload(5000), nil
		})
		report("value %v %v %x", err, shared, v)
	case "error":
		_, err, _ := g.Do("k", func() ([]byte, error) {
			awaitFollowers(g, sharedChildren-1)
			return nil, errDBDown
		})
		var se *SharedError
		switch {
		case err == errDBDown:
			report("leader %v", err)
		case errors.As(err, &se):
			report("follower %s", se.Text)
		default:
			report("unexpected %v", err)
		}
	case "panic":
		func() {
			defer func() {
				r := recover()
				err, _ := r.(error)
				report("recovered %v %s", errors.Is(err, errBoom), firstLine(r))
			}()
			g.Do("k", func() ([]byte, error) {
				awaitFollowers(g, sharedChildren-1)
				panic(errBoom)
			})
		}()
	case "kill":
		_, err, _ := g.Do("k", func() ([]byte, error) {
			awaitFollowers(g, sharedChildren-1)
			syscall.Kill(os.Getpid(), syscall.SIGKILL)
			select {} // SIGKILL cannot be caught: never reached
		})
		report("%v", errors.Is(err, ErrLeaderExited))
	default:
		report("unknown role %q", role)
	}
	return 0
}

var (
	errDBDown = errors.New("db down")
	errBoom   = errors.New("boom")
)

type childResult struct {
	reports []string
	err     error // from Wait: nil, or how the child ended
	output  string
}

// runChildren starts n children in role on the group called name, all at
// once, and waits for them.
func runChildren(t *testing.T, role, name string, n int) []childResult {
	t.Helper()
	cmds := make([]*exec.Cmd, n)
	outs := make([]*bytes.Buffer, n)
	for i := range cmds {
		cmds[i] = exec.Command(os.Args[0])
		cmds[i].Env = append(os.Environ(), sharedRoleEnv+"="+role, sharedNameEnv+"="+name)
		outs[i] = new(bytes.Buffer)
		cmds[i].Stdout, cmds[i].Stderr = outs[i], outs[i]
		if err := cmds[i].Start(); err != nil {
			t.Fatal(err)
		}
	}
	res := make([]childResult, n)
	for i, c := range cmds {
		res[i].err = c.Wait()
		res[i].output = outs[i].String()
		for _, l := range strings.Split(res[i].output, "\n") {
			if strings.HasPrefix(l, "REPORT ") {
				res[i].reports = append(res[i].reports, strings.TrimPrefix(l, "REPORT "))
			}
		}
	}
	return res
}

// sharedName is a group name no other run on the host uses at once.
func sharedName(what string) string {
	return fmt.Sprintf("sfgo-%d-%s", os.Getpid(), what)
}

func openShared(t *testing.T, name string, opts SharedOptions) *SharedGroup {
	t.Helper()
	g, err := OpenShared(name, opts)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

func segmentExists(name string) bool {
	_, err := os.Stat("/dev/shm/libsingleflight." + name)
	return err == nil
}

func TestSharedProcessesOnOneColdKeyShareOneExecution(t *testing.T) {
	name := sharedName("cold")
	parent := openShared(t, name, SharedOptions{})
	res := runChildren(t, "cold", name, sharedChildren)
	want := fmt.Sprintf("value <nil> true %x", payload(5000))
	ran := 0
	for _, r := range res {
		if r.err != nil {
			t.Fatalf("child: %v\n%s", r.err, r.output)
		}
		for _, l := range r.reports {
			if l == "ran" {
				ran++
			} else if l != want {
				t.Errorf("child reported %.80q..., want %.80q...", l, want)
			}
		}
	}
	if ran != 1 {
		t.Errorf("fn ran %d times across the processes, want 1", ran)
	}
	if s := parent.Stats(); s.Leaders != 1 || s.Followers != sharedChildren-1 || s.InFlight != 0 {
		t.Errorf("stats %+v", s)
	}
	if !segmentExists(name) {
		t.Error("no segment while the group is open")
	}
	if err := parent.Close(); err != nil {
		t.Fatal(err)
	}
	if segmentExists(name) {
		t.Error("the last process to close left its segment behind")
	}
	if _, err, _ := parent.Do("k", nil); err != ErrClosed {
		t.Errorf("Do after Close: %v", err)
	}
}

// countReports tallies the children's reports; every child must have
// exited normally.
func countReports(t *testing.T, res []childResult) map[string]int {
	t.Helper()
	seen := map[string]int{}
	for _, r := range res {
		if r.err != nil {
			t.Fatalf("child: %v\n%s", r.err, r.output)
		}
		for _, l := range r.reports {
			seen[l]++
		}
	}
	return seen
}

func TestSharedErrorsCrossProcessesAsText(t *testing.T) {
	name := sharedName("error")
	parent := openShared(t, name, SharedOptions{})
	defer parent.Close()
	got := countReports(t, runChildren(t, "error", name, sharedChildren))
	want := map[string]int{"leader db down": 1, "follower db down": sharedChildren - 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("reports %v, want %v", got, want)
	}
}

func TestSharedPanicsRepanicInEveryProcess(t *testing.T) {
	name := sharedName("panic")
	parent := openShared(t, name, SharedOptions{})
	defer parent.Close()
	got := countReports(t, runChildren(t, "panic", name, sharedChildren))
	// The leader's panic value wraps fn's; the followers' carry its text.
	want := map[string]int{"recovered true boom": 1, "recovered false boom": sharedChildren - 1}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("reports %v, want %v", got, want)
	}
	if s := parent.Stats(); s.Panics != 1 {
		t.Errorf("stats %+v", s)
	}
}

func TestSharedKilledLeaderReleasesFollowersAndTheKeyLeadsAfresh(t *testing.T) {
	name := sharedName("kill")
	parent := openShared(t, name, SharedOptions{})
	defer parent.Close()
	killed, released := 0, 0
	for _, r := range runChildren(t, "kill", name, sharedChildren) {
		var exit *exec.ExitError
		if errors.As(r.err, &exit) {
			if ws, ok := exit.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL {
				killed++
				continue
			}
		}
		if r.err != nil || len(r.reports) != 1 || r.reports[0] != "true" {
			t.Fatalf("child: %v %q\n%s", r.err, r.reports, r.output)
		}
		released++
	}
	if killed != 1 || released != sharedChildren-1 {
		t.Errorf("%d killed, %d released with ErrLeaderExited", killed, released)
	}
	runs := 0
	v, err, shared := parent.Do("k", func() ([]byte, error) {
		runs++
		return []byte("fresh"), nil
	})
	if runs != 1 || string(v) != "fresh" || err != nil || shared {
		t.Errorf("after the kill: runs %d, %q %v %v", runs, v, err, shared)
	}
}

func TestSharedGoroutinesShareOneExecution(t *testing.T) {
	const n = 8
	g := openShared(t, sharedName("goroutines"), SharedOptions{})
	defer g.Close()
	var runs int32
	var wg sync.WaitGroup
	results := make([]string, n)
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			v, err, shared := g.Do("k", func() ([]byte, error) {
				atomic.AddInt32(&runs, 1)
				awaitFollowers(g, n-1)
				return []byte("same"), nil
			})
			results[i] = fmt.Sprintf("%s %v %v", v, err, shared)
		}(i)
	}
	wg.Wait()
	if runs != 1 {
		t.Errorf("fn ran %d times", runs)
	}
	for _, r := range results {
		if r != "same <nil> true" {
			t.Errorf("result %q", r)
		}
	}
	if p := g.Stats().Processes; p != 1 {
		t.Errorf("%d processes attached, want 1", p)
	}
}

func TestSharedGoexitInFnGivesFollowersErrLeaderExited(t *testing.T) {
	g := openShared(t, sharedName("goexit"), SharedOptions{})
	defer g.Close()
	follower := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		g.Do("k", func() ([]byte, error) {
			go func() {
				_, err, _ := g.Do("k", func() ([]byte, error) { return nil, nil })
				follower <- err
			}()
			awaitFollowers(g, 1)
			runtime.Goexit()
			return nil, nil
		})
		t.Error("Do returned after a Goexit in fn")
	}()
	<-done
	if err := <-follower; !errors.Is(err, ErrLeaderExited) {
		t.Errorf("follower got %v", err)
	}
}

func TestSharedValueLimitEmptyValueAndDeadlock(t *testing.T) {
	g := openShared(t, sharedName("limits"), SharedOptions{ArenaBytes: 1 << 20, MaxValueBytes: 1024})
	defer g.Close()
	var se *StatusError
	if _, err, _ := g.Do("big", func() ([]byte, error) { return make([]byte, 2048), nil }); !errors.As(err, &se) || se.Name != "SF_EINVAL" {
		t.Errorf("a value above the limit: %v", err)
	}
	if v, err, _ := g.Do("small", func() ([]byte, error) { return make([]byte, 1024), nil }); len(v) != 1024 || err != nil {
		t.Errorf("a value at the limit: %d bytes, %v", len(v), err)
	}
	if v, err, _ := g.Do("empty", func() ([]byte, error) { return nil, nil }); len(v) != 0 || err != nil {
		t.Errorf("an empty value: %q, %v", v, err)
	}
	var inner interface{}
	g.Do("self", func() ([]byte, error) {
		defer func() { inner = recover() }()
		g.Do("self", func() ([]byte, error) { return nil, nil })
		return nil, nil
	})
	if err, _ := inner.(error); !errors.Is(err, ErrDeadlock) {
		t.Errorf("Do on its own key inside fn: %v", inner)
	}
}

func TestSharedBadNamesAndOptions(t *testing.T) {
	for _, bad := range []string{"a/b", ".hidden", strings.Repeat("x", 300)} {
		_, err := OpenShared(bad, SharedOptions{})
		var se *StatusError
		if !errors.As(err, &se) || se.Name != "SF_EINVAL" {
			t.Errorf("OpenShared(%.20q): %v", bad, err)
		}
	}
	_, err := OpenShared(sharedName("opts"), SharedOptions{ArenaBytes: 1 << 20, MaxValueBytes: 1 << 20})
	var se *StatusError
	if !errors.As(err, &se) || se.Name != "SF_EINVAL" {
		t.Errorf("MaxValueBytes above a quarter of the arena: %v", err)
	}
}

func TestSharedFilePathGroupIsSharedByTwoAttachments(t *testing.T) {
	path := fmt.Sprintf("%s/sfgo-%d-path.shm", t.TempDir(), os.Getpid())
	a := openShared(t, "", SharedOptions{Path: path})
	defer a.Close()
	b := openShared(t, "", SharedOptions{Path: path})
	defer b.Close()
	if p := a.Stats().Processes; p != 2 {
		t.Errorf("%d processes attached, want 2: each attachment counts as one", p)
	}
	// Whichever attachment begins first leads; the other joins through its
	// own attachment.
	do := func(g *SharedGroup, v string, out chan<- string) {
		got, err, shared := g.Do("k", func() ([]byte, error) {
			awaitFollowers(g, 1)
			return []byte(v), nil
		})
		out <- fmt.Sprintf("%s %v %v", got, err, shared)
	}
	ra, rb := make(chan string, 1), make(chan string, 1)
	go do(a, "from a", ra)
	go do(b, "from b", rb)
	x, y := <-ra, <-rb
	if x != y || !strings.HasSuffix(x, " <nil> true") {
		t.Errorf("the attachments got %q and %q, want one shared result", x, y)
	}
}
