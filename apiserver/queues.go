package main

import (
	"context"
	"time"
)

// During a resize of GW_QUEUES (GW_QUEUES_FROM set; README "Resizing
// GW_QUEUES"), the apiserver declares the old and the new queues but
// publishes to the old count until every worker consumes the new one:
// the worker that sees so sets Keys.Queues to the new count, which
// followResize reads every second. Before that, and when the read fails,
// commands go to the old queues, which every resizing worker consumes.

// resizePoll is how often a resizing apiserver reads the namespace's
// queue count.
const resizePoll = time.Second

// initRoute sets where commands are published at start: the configured
// topology, or during a resize the old count.
func (s *Server) initRoute() {
	t := s.topo
	if t.Resizing() {
		t = t.WithQueues(t.ResizeFrom)
	}
	s.pubTopo.Store(&t)
}

// deviceRoute is the exchange and routing key of device's command queue
// among the queues the apiserver publishes to now.
func (s *Server) deviceRoute(device string) (exchange, key string) {
	return s.pubTopo.Load().DeviceRoute(device)
}

// followResize switches publishing to the new queue count once the
// namespace has switched, reading Keys.Queues every resizePoll until then
// or until ctx is done.
func (s *Server) followResize(ctx context.Context) {
	t := time.NewTicker(resizePoll)
	defer t.Stop()
	for !s.resizeSwitched(ctx) {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// resizeSwitched reads the namespace's queue count and, when it is the
// new one, publishes to it from now on. It reports whether it is.
func (s *Server) resizeSwitched(ctx context.Context) bool {
	n, err := s.rdb.Get(ctx, s.store.Keys().Queues()).Int()
	if err != nil || n != s.topo.QueueCount {
		return false
	}
	pt := s.topo.WithQueues(n)
	s.pubTopo.Store(&pt)
	s.log.Info("every worker consumes the new command queues: publishing to them", "queues", n,
		"from", s.topo.ResizeFrom)
	return true
}
