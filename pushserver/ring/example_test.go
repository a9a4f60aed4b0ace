package ring_test

import (
	"fmt"

	"github.com/iotgw/gateway/pushserver/ring"
)

// OwnerOf gives the owner every process computes from the same members,
// whatever their order. The output also pins the fixed settings: if it
// changes, processes of different versions disagree about owners.
func ExampleOwnerOf() {
	members := []ring.Member{
		{Node: "push-2", URL: "mqtt://127.0.0.1:1886"},
		{Node: "push-1", URL: "mqtt://127.0.0.1:1885"},
		{Node: "push-3", URL: "mqtt://127.0.0.1:1887"},
	}
	for _, id := range []string{"dev-1", "dev-2", "app-7"} {
		m, _ := ring.OwnerOf(members, id)
		fmt.Println(id, m.Node, m.URL)
	}
	// Output:
	// dev-1 push-3 mqtt://127.0.0.1:1887
	// dev-2 push-2 mqtt://127.0.0.1:1886
	// app-7 push-1 mqtt://127.0.0.1:1885
}
