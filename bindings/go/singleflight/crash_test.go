package singleflight

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// x/sync crashes the process when fn panics while a DoChan caller waits, since
// no one could recover the panic for the channel's reader.  These tests run
// the scenario in a child copy of the test binary and check how it died.

const childEnv = "SINGLEFLIGHT_CRASH_CHILD"

// runChild re-runs this test binary with only the named test, in child mode,
// and returns its combined output and exit error.
func runChild(t *testing.T, name string) (string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^"+name+"$", "-test.count=1")
	cmd.Env = append(os.Environ(), childEnv+"=1")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func assertCrashedWith(t *testing.T, out string, err error, value string) {
	t.Helper()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() == 0 {
		t.Fatalf("child did not crash (err %v); output:\n%s", err, out)
	}
	if strings.Contains(out, "child survived") {
		t.Fatalf("child survived the panic; output:\n%s", out)
	}
	if !strings.Contains(out, "panic: "+value) {
		t.Fatalf("crash output does not show the panic value %q:\n%s", value, out)
	}
}

// survive is the child's last line: reaching it means no crash happened.  The
// wait bounds the child's life; the crash it waits for is already under way.
func survive() {
	time.Sleep(10 * time.Second)
	println("child survived")
	os.Exit(0)
}

func TestDoChanPanicCrashesTheProcess(t *testing.T) {
	if os.Getenv(childEnv) == "1" {
		var g Group
		<-g.DoChan("k", func() (interface{}, error) { panic("dochan-boom") })
		survive()
		return
	}
	out, err := runChild(t, t.Name())
	assertCrashedWith(t, out, err, "dochan-boom")
}

func TestDoPanicWithADoChanFollowerCrashesEvenIfRecovered(t *testing.T) {
	if os.Getenv(childEnv) == "1" {
		var g Group
		release, entered := make(chan struct{}), make(chan struct{})
		go func() {
			defer func() { recover() }()
			g.Do("k", func() (interface{}, error) {
				close(entered)
				<-release
				panic("shared-boom")
			})
		}()
		<-entered
		g.DoChan("k", func() (interface{}, error) { return nil, nil })
		close(release)
		survive()
		return
	}
	out, err := runChild(t, t.Name())
	assertCrashedWith(t, out, err, "shared-boom")
}
