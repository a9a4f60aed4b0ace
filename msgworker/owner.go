package main

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/ring"
)

// partitionOwner is this worker's share of the state partitions (DESIGN §7
// "Partition owners"): a member of the workers' ring that knows which
// partitions it owns. Owned, Owns and Changes come from ring.Partitions:
//
//	for range owner.Changes() {
//		for _, p := range owner.Owned() { ... }
//	}
//
// A partition lost leaves Owned at once; one gained enters it at once when
// a worker left, and 1 s later when workers only joined (ring.Partitions).
type partitionOwner struct {
	*ring.Partitions
	cancel context.CancelFunc
	done   chan struct{} // closed when Run has returned
}

// startPartitionOwner joins the workers' ring of namespace ns as node and
// follows it over partitions partitions (GW_PARTITIONS) until Leave, or
// until ctx is done. When ctx is done without Leave, the heartbeat stops
// and the other workers take the partitions over once the member's key
// expires (3 s). It fails when Redis cannot be reached or another live
// worker has the node id.
func startPartitionOwner(ctx context.Context, rdb redis.UniversalClient, ns, node string, partitions int, log *slog.Logger) (*partitionOwner, error) {
	ps := ring.NewPartitions(rdb, ns, node, partitions, ring.PartitionOptions{Ring: ring.Options{Logger: log}})
	rctx, cancel := context.WithCancel(ctx)
	if err := ps.Join(rctx); err != nil {
		cancel()
		return nil, fmt.Errorf("cannot join the workers' ring: %w", err)
	}
	o := &partitionOwner{Partitions: ps, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(o.done)
		_ = ps.Run(rctx) // returns nil once rctx is done
	}()
	return o, nil
}

// Leave gives every partition away: Owned is empty when it returns, and
// the other workers take the partitions over at once. It then stops
// following the ring. Call it on shutdown, once the work on the owned
// partitions has stopped; it returns by ctx's deadline.
func (o *partitionOwner) Leave(ctx context.Context) error {
	err := o.Partitions.Leave(ctx)
	o.cancel()
	select {
	case <-o.done:
	case <-ctx.Done():
		if err == nil {
			err = fmt.Errorf("cannot stop following the workers' ring: %w", ctx.Err())
		}
	}
	return err
}
