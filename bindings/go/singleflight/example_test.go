package singleflight_test

import (
	"fmt"

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
