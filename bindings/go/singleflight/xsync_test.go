package singleflight

import (
	"errors"
	"fmt"
	"runtime"
	"strings"
	"testing"

	xsync "golang.org/x/sync/singleflight"
)

// These tests put golang.org/x/sync/singleflight and this package through the
// same single-caller scenarios and compare what a caller observes.

type observed struct {
	val       interface{}
	err       error
	shared    bool
	returned  bool
	recovered interface{}
	exited    bool
}

// observe runs do on a fresh goroutine so that a Goexit can be seen.
func observe(do func(key string, fn func() (interface{}, error)) (interface{}, error, bool), fn func() (interface{}, error)) observed {
	var o observed
	done := make(chan struct{})
	go func() {
		defer close(done)
		o.exited = true
		defer func() { o.recovered = recover() }()
		o.val, o.err, o.shared = do("k", fn)
		o.returned = true
		o.exited = false
	}()
	<-done
	if o.recovered != nil {
		o.exited = false
	}
	return o
}

func firstLine(v interface{}) string {
	if err, ok := v.(error); ok {
		return strings.SplitN(err.Error(), "\n", 2)[0]
	}
	return "<not an error>"
}

func TestBehavesLikeXSync(t *testing.T) {
	sentinel := errors.New("sentinel")
	cases := []struct {
		name string
		fn   func() (interface{}, error)
	}{
		{"value", func() (interface{}, error) { return 42, nil }},
		{"error", func() (interface{}, error) { return nil, sentinel }},
		{"value and error", func() (interface{}, error) { return "partial", sentinel }},
		{"panic with string", func() (interface{}, error) { panic("text") }},
		{"panic with error", func() (interface{}, error) { panic(sentinel) }},
		{"panic with int", func() (interface{}, error) { panic(7) }},
		{"goexit", func() (interface{}, error) { runtime.Goexit(); return nil, nil }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var ref xsync.Group
			var ours Group
			want := observe(ref.Do, tc.fn)
			got := observe(ours.Do, tc.fn)
			if got.val != want.val || got.err != want.err || got.shared != want.shared ||
				got.returned != want.returned || got.exited != want.exited {
				t.Fatalf("ours %+v, x/sync %+v", got, want)
			}
			if (got.recovered == nil) != (want.recovered == nil) {
				t.Fatalf("recovered: ours %v, x/sync %v", got.recovered, want.recovered)
			}
			if want.recovered == nil {
				return
			}
			if firstLine(got.recovered) != firstLine(want.recovered) {
				t.Errorf("panic message: ours %q, x/sync %q", firstLine(got.recovered), firstLine(want.recovered))
			}
			gotErr, _ := got.recovered.(error)
			wantErr, _ := want.recovered.(error)
			if errors.Unwrap(gotErr) != errors.Unwrap(wantErr) {
				t.Errorf("Unwrap: ours %v, x/sync %v", errors.Unwrap(gotErr), errors.Unwrap(wantErr))
			}
		})
	}
}

func TestDoChanBehavesLikeXSync(t *testing.T) {
	var ref xsync.Group
	var ours Group
	fn := func() (interface{}, error) { return "v", errors.New("e") }
	want := <-ref.DoChan("k", fn)
	got := <-ours.DoChan("k", fn)
	if got.Val != want.Val || got.Err.Error() != want.Err.Error() || got.Shared != want.Shared {
		t.Fatalf("ours %+v, x/sync %+v", got, want)
	}
}

// Calls from inside fn that x/sync completes (of the calls on fn's own key
// only Do on the unforgotten key hangs there): the deadlock check must not
// change any of them.
func TestNestedCallsBehaveLikeXSync(t *testing.T) {
	type doer interface {
		Do(key string, fn func() (interface{}, error)) (interface{}, error, bool)
		Forget(key string)
	}
	// doChan starts a DoChan and returns how to read its result later.
	type doChan func(key string, fn func() (interface{}, error)) (receive func() []interface{})
	cases := []struct {
		name string
		run  func(g doer, doChan doChan) []interface{}
	}{
		{"Do on another key", func(g doer, _ doChan) []interface{} {
			v, err, shared := g.Do("outer", func() (interface{}, error) {
				v, _, shared := g.Do("inner", func() (interface{}, error) { return "in", nil })
				return fmt.Sprint(v, shared), nil
			})
			return []interface{}{v, err, shared}
		}},
		{"Do on the own key after Forget", func(g doer, _ doChan) []interface{} {
			v, err, shared := g.Do("k", func() (interface{}, error) {
				g.Forget("k")
				v, _, shared := g.Do("k", func() (interface{}, error) { return "new", nil })
				return fmt.Sprint(v, shared), nil
			})
			return []interface{}{v, err, shared}
		}},
		{"DoChan on the own key", func(g doer, doChan doChan) []interface{} {
			var receive func() []interface{}
			v, err, shared := g.Do("k", func() (interface{}, error) {
				receive = doChan("k", func() (interface{}, error) { return "never runs", nil })
				return "outer", nil
			})
			return append([]interface{}{v, err, shared}, receive()...)
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var ref xsync.Group
			var ours Group
			want := tc.run(&ref, func(k string, fn func() (interface{}, error)) func() []interface{} {
				ch := ref.DoChan(k, fn)
				return func() []interface{} { r := <-ch; return []interface{}{r.Val, r.Err, r.Shared} }
			})
			got := tc.run(&ours, func(k string, fn func() (interface{}, error)) func() []interface{} {
				ch := ours.DoChan(k, fn)
				return func() []interface{} { r := <-ch; return []interface{}{r.Val, r.Err, r.Shared} }
			})
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("ours %v, x/sync %v", got, want)
			}
		})
	}
}
