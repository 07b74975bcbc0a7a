package singleflight

import (
	"context"
	"errors"
	"testing"
)

// The interface{} form of DoContext: the full behaviour is tested in the
// typed package, which shares the implementation.

func TestDoContextGivesTheValueToCallersThatWait(t *testing.T) {
	var g Group
	release, entered := make(chan struct{}), make(chan struct{})
	leader := make(chan Result, 1)
	go func() {
		v, err, shared := g.DoContext(context.Background(), "k", func(ctx context.Context) (interface{}, error) {
			close(entered)
			<-release
			return "v", nil
		})
		leader <- Result{v, err, shared}
	}()
	<-entered
	ctx, cancel := context.WithCancel(context.Background())
	gaveUp := make(chan Result, 1)
	go func() {
		v, err, shared := g.DoContext(ctx, "k", func(context.Context) (interface{}, error) { return "follower ran fn", nil })
		gaveUp <- Result{v, err, shared}
	}()
	waitUntil(t, "the follower joined", func() bool { return g.Stats().Followers == 1 })
	cancel()
	if r := <-gaveUp; r.Val != nil || !errors.Is(r.Err, context.Canceled) || r.Shared {
		t.Fatalf("the caller that gave up got %+v, want {<nil> context.Canceled false}", r)
	}
	close(release)
	if r := <-leader; r.Val != "v" || r.Err != nil || !r.Shared {
		t.Fatalf("the leader's caller got %+v, want {v <nil> true}", r)
	}
}

func TestDoContextCancelsFnOnceItsOnlyCallerLeaves(t *testing.T) {
	var g Group
	ctx, cancel := context.WithCancel(context.Background())
	fnErr := make(chan error, 1)
	running := make(chan struct{})
	go func() {
		<-running
		cancel()
	}()
	_, err, _ := g.DoContext(ctx, "k", func(ctx context.Context) (interface{}, error) {
		close(running)
		<-ctx.Done()
		fnErr <- ctx.Err()
		return nil, ctx.Err()
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("DoContext err = %v, want context.Canceled", err)
	}
	if err := <-fnErr; !errors.Is(err, context.Canceled) {
		t.Fatalf("fn's ctx ended with %v, want context.Canceled", err)
	}
}
