package singleflight_test

import (
	"context"
	"fmt"
	"time"

	"github.com/libsingleflight/libsingleflight/bindings/go/singleflight"
)

func ExampleGroup_Do() {
	var g singleflight.Group
	v, err, shared := g.Do("user:42", func() (interface{}, error) {
		return "Ada", nil
	})
	fmt.Println(v, err, shared)
	// Output: Ada <nil> false
}

func ExampleGroup_DoChan() {
	var g singleflight.Group
	r := <-g.DoChan("user:42", func() (interface{}, error) {
		return "Ada", nil
	})
	fmt.Println(r.Val, r.Err, r.Shared)
	// Output: Ada <nil> false
}

func ExampleGroup_DoContext() {
	var g singleflight.Group
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	// fn's ctx ends only if every caller of the flight gives up.
	v, err, _ := g.DoContext(ctx, "user:42", func(ctx context.Context) (interface{}, error) {
		return "Ada", ctx.Err()
	})
	fmt.Println(v, err)
	// Output: Ada <nil>
}
