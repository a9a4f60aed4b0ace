package main

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/protocol"
)

// TestWakeResubscribed: when the node's wake subscription loses its Redis
// connection, go-redis subscribes again and the node re-reads every
// session's mailbox (wake-ups sent meanwhile are lost, DESIGN §7a); wake-
// ups work again afterwards.
func TestWakeResubscribed(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	require.Equal(t, 1.0, value(t, n.m.wakeResubscribes), "subscriptions at start")
	const device, client = "dev-wake", "cli-wake"
	c := mustV3(t, n.Addr(), device)
	col := newCollector()
	c.subscribe(t, protocol.DeviceCommandsTopic(device), 1, col)

	// Kill the node's pub/sub connections (named gw-push-<node>: its
	// wake channel and its ring's changes).
	list, err := e.rdb.ClientList(t.Context()).Result()
	require.NoError(t, err)
	killed := 0
	for _, line := range strings.Split(list, "\n") {
		if !strings.Contains(line, " name=gw-push-"+n.NodeID()+" ") || !strings.Contains(line, "sub=1") && !strings.Contains(line, "ssub=1") {
			continue
		}
		id := strings.TrimPrefix(strings.Fields(line)[0], "id=")
		require.NoError(t, e.rdb.Do(t.Context(), "CLIENT", "KILL", "ID", id).Err())
		killed++
	}
	require.NotZero(t, killed, "no pub/sub connection of the node in CLIENT LIST:\n%s", list)
	eventually(t, 10*time.Second, func() bool { return value(t, n.m.wakeResubscribes) == 2 }, "the wake channel was not subscribed again")

	// A command appended now reaches the device through its wake-up.
	e.sendCommand(client, device, "1", n.NodeID())
	col.waitDistinct(t, 1, 5*time.Second)
}
