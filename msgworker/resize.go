package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/amqpx"
)

// Resizing GW_QUEUES (DESIGN §7a "Fixed counts, fenced twice"; the
// operator's procedure is in the README's "Running at scale"). A worker
// started with GW_QUEUES=N and GW_QUEUES_FROM=M consumes the union of the
// old and the new queues and accepts a namespace that records either
// count. Every worker tells the others the count it consumes in its
// member URL in the workers' ring ("worker://{node}?queues=N"). Once
// every live worker consumes N, the worker that owns partition 0
// switches the namespace: every partition's meta records N, the AMQP
// fence holds N, and the key Keys.Queues says N, which apiservers taking
// part in the resize read every second and then publish to the N queues.
// Commands already in the old queues are still consumed: the workers
// keep consuming the union until they are restarted without
// GW_QUEUES_FROM, which the operator does once the queues that leave
// (when N < M: N … M−1) have stayed empty for the longest expires_in.
// Order between commands of one device does not come from the queues
// but from the lanes' sequence numbers given at reserve, so a device
// whose commands straddle the switch keeps its lane order.

// workerURL is a worker's member URL in the workers' ring: its node and
// the count of command queues it consumes.
func workerURL(node string, queues int) string {
	return "worker://" + node + "?queues=" + strconv.Itoa(queues)
}

// queuesOf is the queue count a worker's member URL names, or 0.
func queuesOf(memberURL string) int {
	u, err := url.Parse(memberURL)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(u.Query().Get("queues"))
	return n
}

// resizeInterval is how often a resizing worker looks whether it can
// switch the namespace.
const resizeInterval = time.Second

// resize runs this worker's part of a resize until the namespace has
// switched to the new count or ctx is done.
func (w *Worker) resize(ctx context.Context) {
	t := time.NewTicker(resizeInterval)
	defer t.Stop()
	warned := false
	for {
		done, err := w.trySwitch(ctx)
		switch {
		case done:
			return
		case err != nil && ctx.Err() == nil && !warned:
			warned = true
			w.log.Warn("cannot switch the command queues yet; retrying", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// trySwitch switches the namespace to the new queue count when every
// live worker consumes it and this worker owns partition 0 (so that one
// worker does it; a second would change nothing). It reports whether the
// namespace has switched.
func (w *Worker) trySwitch(ctx context.Context) (bool, error) {
	from, to := w.topo.ResizeFrom, w.topo.QueueCount
	key := w.store.Keys().Queues()
	cur, err := w.rdb.Get(ctx, key).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return false, fmt.Errorf("cannot read the namespace's queue count: %w", err)
	}
	if cur == strconv.Itoa(to) {
		w.log.Info("the namespace publishes to the new command queues", "queues", to, "from", from)
		return true, nil
	}
	members := w.parts.Members()
	if len(members) == 0 || !w.parts.Owns(0) {
		return false, nil
	}
	for _, m := range members {
		if queuesOf(m.URL) != to {
			return false, nil
		}
	}
	if err := w.store.MoveQueues(ctx, from, to); err != nil {
		return false, err
	}
	if err := amqpx.MoveFence(ctx, w.aopts, w.topo.WithQueues(to)); err != nil {
		return false, err
	}
	if err := w.rdb.Set(ctx, key, strconv.Itoa(to), 0).Err(); err != nil {
		return false, fmt.Errorf("cannot record the namespace's queue count: %w", err)
	}
	w.log.Info("every worker consumes the new command queues: switched the namespace", "queues", to, "from", from,
		"workers", len(members))
	return true, nil
}
