package main

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// TestFollowResize: an apiserver started for a resize of GW_QUEUES from 2
// to 4 publishes to the old count's queues until the namespace has
// switched (the key a worker sets once every worker consumes the new
// queues), and to the new count's from then on.
func TestFollowResize(t *testing.T) {
	t.Parallel()
	g := newGW(t, func(c *Config, _ *Deps) { c.Queues, c.QueuesFrom = 4, 2 })
	old, resized := g.topo.WithQueues(2), g.topo.WithQueues(4)
	device := ""
	for i := 0; device == ""; i++ {
		if d := fmt.Sprintf("dev-%d", i); old.CommandQueueOf(d, old.PartitionCount) != resized.CommandQueueOf(d, resized.PartitionCount) {
			device = d
		}
	}
	tok := token(t, "app-1", auth.RoleClient, "dev-*")
	ch, err := g.conn.Channel()
	require.NoError(t, err)
	t.Cleanup(func() { _ = ch.Close() })
	// inQueue reports whether the command with id is the next message in
	// device's queue among topo's.
	inQueue := func(topo protocol.Topology, id string) bool {
		t.Helper()
		q := topo.CommandQueue(topo.CommandQueueOf(device, topo.PartitionCount))
		d, ok, err := ch.Get(q, true)
		require.NoError(t, err)
		if !ok {
			return false
		}
		env, err := protocol.DecodeEnvelope(d.Body)
		require.NoError(t, err)
		return env.MsgID.Key() == id
	}

	r := g.post(tok, device, cmd("before", "m", nil))
	require.Equal(t, http.StatusAccepted, r.Status, "POST before the switch: %s", r.Body)
	require.True(t, inQueue(old, "before"), "the command before the switch is not in the old count's queue")

	go g.srv.followResize(t.Context())
	require.NoError(t, g.rdb.Set(t.Context(), g.store.Keys().Queues(), "4", 0).Err())
	require.Eventually(t, func() bool { return g.srv.pubTopo.Load().QueueCount == 4 }, 5*time.Second, 10*time.Millisecond,
		"the apiserver never switched to 4 queues")
	r = g.post(tok, device, cmd("after", "m", nil))
	require.Equal(t, http.StatusAccepted, r.Status, "POST after the switch: %s", r.Body)
	require.True(t, inQueue(resized, "after"), "the command after the switch is not in the new count's queue")
}
