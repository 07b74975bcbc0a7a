package typed

import (
	"errors"
	"sync"
	"testing"
	"time"
)

type user struct{ name string }

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(50 * time.Microsecond)
	}
}

func TestZeroGroupReturnsTypedValue(t *testing.T) {
	var g Group[int]
	v, err, shared := g.Do("k", func() (int, error) { return 5, nil })
	if v != 5 || err != nil || shared {
		t.Fatalf("Do = %d, %v, %v; want 5, <nil>, false", v, err, shared)
	}
}

func TestFollowersGetTheLeadersPointer(t *testing.T) {
	const n = 6
	var g Group[*user]
	want := &user{"ada"}
	release := make(chan struct{})
	got := make([]*user, n)
	shared := make([]bool, n)
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			got[i], _, shared[i] = g.Do("id", func() (*user, error) {
				<-release
				return want, nil
			})
		}(i)
	}
	waitUntil(t, "all callers joined", func() bool { return g.Stats().Followers == n-1 })
	close(release)
	wg.Wait()
	for i := range got {
		if got[i] != want || !shared[i] {
			t.Errorf("caller %d got %p shared=%v, want %p shared=true", i, got[i], shared[i], want)
		}
	}
}

func TestErrorWithZeroValue(t *testing.T) {
	var g Group[string]
	sentinel := errors.New("missing")
	v, err, _ := g.Do("k", func() (string, error) { return "", sentinel })
	if v != "" || err != sentinel {
		t.Fatalf("Do = %q, %v; want \"\", sentinel", v, err)
	}
}

func TestPanicReachesEveryTypedCaller(t *testing.T) {
	var g Group[int]
	sentinel := errors.New("typed boom")
	release := make(chan struct{})
	recovered := make(chan interface{}, 2)
	for i := 0; i < 2; i++ {
		go func() {
			defer func() { recovered <- recover() }()
			g.Do("k", func() (int, error) {
				<-release
				panic(sentinel)
			})
		}()
	}
	waitUntil(t, "the follower joined", func() bool { return g.Stats().Followers == 1 })
	close(release)
	assertSamePanic(t, <-recovered, <-recovered, sentinel)
}

// assertSamePanic checks what two callers of one flight recovered: the very
// same error, wrapping what fn panicked with.
func assertSamePanic(t *testing.T, a, b interface{}, sentinel error) {
	t.Helper()
	if a == nil || a != b {
		t.Fatalf("recovered %v and %v: want the same non-nil value", a, b)
	}
	if err, ok := a.(error); !ok || !errors.Is(err, sentinel) {
		t.Fatalf("recovered %#v: want an error wrapping the panic value", a)
	}
}

func TestDoChanTyped(t *testing.T) {
	var g Group[[]byte]
	release := make(chan struct{})
	leader := g.DoChan("k", func() ([]byte, error) {
		<-release
		return []byte("bytes"), nil
	})
	follower := g.DoChan("k", func() ([]byte, error) { return nil, errors.New("follower ran fn") })
	waitUntil(t, "the follower joined", func() bool { return g.Stats().Followers == 1 })
	close(release)
	for name, ch := range map[string]<-chan Result[[]byte]{"leader": leader, "follower": follower} {
		r := <-ch
		if string(r.Val) != "bytes" || r.Err != nil || !r.Shared {
			t.Errorf("%s got %q, %v, %v; want bytes, <nil>, true", name, r.Val, r.Err, r.Shared)
		}
	}
}

func TestForgetTyped(t *testing.T) {
	var g Group[int]
	release := make(chan struct{})
	entered := make(chan struct{})
	first := make(chan int, 1)
	go func() {
		v, _, _ := g.Do("k", func() (int, error) {
			close(entered)
			<-release
			return 1, nil
		})
		first <- v
	}()
	<-entered
	g.Forget("k")
	if v, _, shared := g.Do("k", func() (int, error) { return 2, nil }); v != 2 || shared {
		t.Errorf("after Forget got %d, shared %v; want a fresh 2, false", v, shared)
	}
	close(release)
	if v := <-first; v != 1 {
		t.Errorf("forgotten flight delivered %d, want 1", v)
	}
}

func TestDoOnOwnKeyInsideFnPanicsWithErrDeadlock(t *testing.T) {
	var g Group[int]
	done := make(chan interface{}, 1)
	go func() {
		defer func() { done <- recover() }()
		g.Do("k", func() (int, error) {
			v, err, _ := g.Do("k", func() (int, error) { return 1, nil })
			return v, err
		})
	}()
	select {
	case r := <-done:
		if err, ok := r.(error); !ok || !errors.Is(err, ErrDeadlock) {
			t.Fatalf("recovered %v, want an error that errors.Is ErrDeadlock", r)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Do on its own key inside fn hung")
	}
}
