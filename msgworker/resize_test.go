package main

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

func TestQueuesOf(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		url  string
		want int
	}{
		{workerURL("worker-a", 4), 4},
		{"worker://worker-a", 0}, // a worker of an earlier version
		{"worker://w?queues=x", 0},
		{"::", 0},
	} {
		if got := queuesOf(tt.url); got != tt.want {
			t.Errorf("queuesOf(%q) = %d, want %d", tt.url, got, tt.want)
		}
	}
}

// TestResizeQueues: a namespace started with GW_QUEUES=2 is resized to 4
// (and one started with 4 to 2) while commands flow (DESIGN §7a "Fixed
// counts, fenced twice"). A worker started with the new GW_QUEUES and
// GW_QUEUES_FROM set to the old count consumes the old and the new
// queues; the namespace switches only once every worker does (the old
// worker stopped), and then records the new count in Redis and in the
// AMQP fence. Commands published before, during and after the switch, to
// the old count's queues and to the new count's, are all delivered and
// answered, none lost, each with one result; two commands of one ordered
// lane whose AMQP messages arrive in the wrong order, on different
// queues, still go to the device in lane order.
func TestResizeQueues(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ from, to int }{{2, 4}, {4, 2}} {
		t.Run(fmt.Sprintf("%d to %d", tt.from, tt.to), func(t *testing.T) {
			t.Parallel()
			testResize(t, tt.from, tt.to)
		})
	}
}

func testResize(t *testing.T, from, to int) {
	h := newHarnessQueues(t, from)
	ctx := t.Context()
	old, resized := h.topo, protocol.NewTopology(h.ns, to, protocol.DefaultPartitions)
	_, stopOld := h.stoppableWorker(func(c *Config) { c.Queues = from })

	var sent []*protocol.Envelope
	send := func(topo protocol.Topology, batch string, n int) {
		t.Helper()
		for i := range n {
			_, env, err := h.reserve(spec{client: "app-1", device: fmt.Sprintf("dev-%d", i), id: fmt.Sprintf(`"%s-%d"`, batch, i)})
			require.NoError(t, err)
			require.NoError(t, h.tryPublishTo(topo, env))
			sent = append(sent, env)
		}
	}
	send(old, "before", 12)

	w, _ := h.stoppableWorker(func(c *Config) { c.Queues, c.QueuesFrom = to, from })
	require.Eventually(t, func() bool { return len(w.parts.Members()) == 2 }, 10*time.Second, 10*time.Millisecond,
		"the resizing worker never joined the ring")
	send(old, "during", 12)
	// The old worker still consumes the old queues only: no switch.
	n, err := h.rdb.Exists(ctx, h.keys.Queues()).Result()
	require.NoError(t, err)
	require.Zero(t, n, "the namespace switched while a worker consumed the old count only")

	// A lane device whose queue differs between the two counts.
	lane := ""
	for i := 0; lane == ""; i++ {
		if d := fmt.Sprintf("lamp-%d", i); old.CommandQueueOf(d, protocol.DefaultPartitions) != resized.CommandQueueOf(d, protocol.DefaultPartitions) {
			lane = d
		}
	}
	_, first, err := h.reserve(spec{client: "app-1", device: lane, id: `"lane-1"`, lane: "L"})
	require.NoError(t, err)

	stopOld()
	require.Eventually(t, func() bool { return h.rdb.Get(ctx, h.keys.Queues()).Val() == fmt.Sprint(to) }, 15*time.Second, 20*time.Millisecond,
		"the namespace never switched to %d queues after the old worker left", to)
	// Both fences hold the new count now: a process with the old count is
	// refused.
	require.ErrorIs(t, h.store.CheckCounts(ctx, from, false), mailbox.ErrCounts, "Redis fence with the old GW_QUEUES")
	require.NoError(t, h.store.CheckCounts(ctx, to, false), "Redis fence with the new GW_QUEUES")
	for _, tt := range []struct {
		queues  int
		refused bool
	}{{from, true}, {to, false}} {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		p, err := amqpx.NewPublisher(pctx, amqpx.Options{URL: testenv.AMQPURL(), Name: "resize-test", Logger: testenv.Logger(t)},
			protocol.NewTopology(h.ns, tt.queues, protocol.DefaultPartitions))
		cancel()
		if got := errors.Is(err, amqpx.ErrCounts); got != tt.refused {
			t.Errorf("NewPublisher with GW_QUEUES=%d: %v; want refused %v", tt.queues, err, tt.refused)
		}
		if p != nil {
			_ = p.Close()
		}
	}

	send(resized, "after", 12)
	send(old, "straggler", 4) // an apiserver that has not switched yet

	// The lane's second command is published first, to the new queue; the
	// first comes later, to the old one.
	_, second, err := h.reserve(spec{client: "app-1", device: lane, id: `"lane-2"`, lane: "L"})
	require.NoError(t, err)
	require.NoError(t, h.tryPublishTo(resized, second))
	require.Eventually(t, func() bool { return h.get(second).LaneWait }, 10*time.Second, 10*time.Millisecond,
		"the lane's second command did not wait for the first")
	require.NoError(t, h.tryPublishTo(old, first))

	devices := map[string]bool{}
	for _, env := range sent {
		h.waitStatus(env, protocol.StatusSent, 15*time.Second)
		devices[env.Device] = true
	}
	for d := range devices {
		h.deliver(d)
	}
	for _, env := range sent {
		require.Equal(t, mailbox.OutcomeSucceeded, h.answer(env, 0), "answer to %s", env.MsgID.Key())
	}
	h.waitStatus(first, protocol.StatusSent, 15*time.Second)
	require.Equal(t, protocol.StatusQueued, h.get(second).Status, "the lane's second command went out before the first ended")
	h.deliver(lane)
	require.Equal(t, mailbox.OutcomeSucceeded, h.answer(first, 0))
	h.waitStatus(second, protocol.StatusSent, 15*time.Second)
	h.deliver(lane)
	require.Equal(t, mailbox.OutcomeSucceeded, h.answer(second, 0))

	for _, env := range append(sent, first, second) {
		r := h.oneResult(env)
		require.Nil(t, r.Error, "result of %s", env.MsgID.Key())
	}
}
