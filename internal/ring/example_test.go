package ring_test

import (
	"fmt"

	"github.com/iotgw/gateway/internal/ring"
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

// OwnerOfPartition gives the owner of a state partition that every worker
// computes from the same members. The output pins the assignment: if it
// changes, workers of different versions disagree about owners.
func ExampleOwnerOfPartition() {
	members := []ring.Member{
		{Node: "worker-b", URL: "worker://worker-b"},
		{Node: "worker-a", URL: "worker://worker-a"},
		{Node: "worker-c", URL: "worker://worker-c"},
	}
	share := map[string]int{}
	for p := range 256 {
		m, _ := ring.OwnerOfPartition(members, 256, p)
		share[m.Node]++
		if p < 8 {
			fmt.Println(p, m.Node)
		}
	}
	fmt.Println(share)
	// Output:
	// 0 worker-b
	// 1 worker-b
	// 2 worker-b
	// 3 worker-a
	// 4 worker-b
	// 5 worker-a
	// 6 worker-b
	// 7 worker-c
	// map[worker-a:90 worker-b:94 worker-c:72]
}
