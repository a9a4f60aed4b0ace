package main

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/testenv"
)

// TestPartitionOwners shows the wiring: two workers share the partitions,
// and when one leaves the other owns them all at once. The timing of joins,
// leaves and silent members is tested in internal/ring.
func TestPartitionOwners(t *testing.T) {
	t.Parallel()
	ns := testenv.Namespace(t)
	const partitions = 16
	log := testenv.Logger(t)
	start := func(node string) *partitionOwner {
		o, err := startPartitionOwner(t.Context(), testenv.Redis(t), ns, node, partitions, log)
		if err != nil {
			t.Fatalf("startPartitionOwner(%s) = %v", node, err)
		}
		t.Cleanup(func() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := o.Leave(ctx); err != nil {
				t.Errorf("Leave(%s) = %v", node, err)
			}
		})
		return o
	}
	a, b := start("worker-a"), start("worker-b")

	// Each change notice is followed by reading Owned, as the worker will.
	deadline := time.After(5 * time.Second)
	for {
		union := append(a.Owned(), b.Owned()...)
		slices.Sort(union)
		if len(union) == partitions && len(slices.Compact(union)) == partitions && len(a.Owned()) > 0 && len(b.Owned()) > 0 {
			break
		}
		select {
		case <-a.Changes():
		case <-b.Changes():
		case <-deadline:
			t.Fatalf("owned: worker-a %v, worker-b %v; want the %d partitions shared, each once", a.Owned(), b.Owned(), partitions)
		}
	}

	left := time.Now()
	if err := a.Leave(t.Context()); err != nil {
		t.Fatalf("Leave() = %v", err)
	}
	if got := a.Owned(); len(got) != 0 {
		t.Errorf("after Leave, worker-a owns %v", got)
	}
	for len(b.Owned()) != partitions {
		select {
		case <-b.Changes():
		case <-time.After(time.Second):
			t.Fatalf("worker-b owns %v %v after worker-a left, want all %d", b.Owned(), time.Since(left), partitions)
		}
	}
	t.Logf("worker-b owns all %d partitions %v after worker-a left", partitions, time.Since(left))
	for p := range partitions {
		if !b.Owns(p) {
			t.Fatalf("worker-b: Owns(%d) = false", p)
		}
	}
}
