package typed_test

import (
	"fmt"

	"github.com/libsingleflight/libsingleflight/bindings/go/typed"
)

func ExampleGroup_Do() {
	var g typed.Group[int]
	n, err, _ := g.Do("answer", func() (int, error) { return 42, nil })
	fmt.Println(n+1, err)
	// Output: 43 <nil>
}
