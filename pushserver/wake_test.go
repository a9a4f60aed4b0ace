package main

import (
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/redis/go-redis/v9"
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

// TestCarriedWake: a session that has read its mailbox sends each new
// entry from the wake-up that carries it, in order, without reading the
// mailbox; when an entry's wake-up is lost (here: appended behind the
// gateway's back), the next carried entry does not follow the cursor,
// and the session reads the mailbox instead, which sends both in order.
func TestCarriedWake(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode(func(c *Config) { c.SweepInterval = time.Minute }) // no sweep reads meanwhile
	const id = "dev-carried"
	topic := protocol.DeviceCommandsTopic(id)
	c := fillAndSubscribe(t, e, n, id, nil)
	eventually(t, 5*time.Second, func() bool { return value(t, n.m.reads) >= 1 }, "the subscription's first read did not happen")
	reads := value(t, n.m.reads)
	recv := func(want string) {
		t.Helper()
		pk, err := c.recv(5 * time.Second)
		require.NoError(t, err)
		require.Equal(t, packets.Publish, pk.FixedHeader.Type)
		require.Equal(t, want, string(pk.Payload))
		require.NoError(t, c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}))
	}
	for i := range 5 {
		p := fmt.Sprintf("live-%d", i)
		e.put(id, topic, p, n.NodeID())
		recv(p)
	}
	require.Equal(t, 5.0, value(t, n.m.carried), "entries sent as carried")
	require.Equal(t, reads, value(t, n.m.reads), "mailbox reads")

	x := strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10)
	require.NoError(t, e.rdb.XAdd(t.Context(), &redis.XAddArgs{Stream: e.keys(id).Mailbox(id),
		Values: []any{"t", topic, "p", "lost", "x", x}}).Err())
	e.put(id, topic, "after", n.NodeID())
	recv("lost")
	recv("after")
	require.Equal(t, 5.0, value(t, n.m.carried), "entries sent as carried")
	require.Greater(t, value(t, n.m.reads), reads, "mailbox reads")
	eventually(t, 5*time.Second, func() bool { return e.mailboxLen(id) == 0 }, "the PUBACKed entries were not removed")
}

// TestSweepReadsOnlyNew: the sweep of the node's pending set reads a
// session's mailbox only when the mailbox holds something after what the
// session has read (session.nudge): an identity pending with nothing new
// costs no read, while an entry whose wake-up was lost is read and sent.
func TestSweepReadsOnlyNew(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// The full sweep (every fifth sweep) reads every listed mailbox: at
	// most once over the rounds below.
	n := e.startNode(func(c *Config) { c.SweepInterval = time.Second })
	const id = "dev-sweep-new"
	topic := protocol.DeviceCommandsTopic(id)
	c := fillAndSubscribe(t, e, n, id, nil)
	e.put(id, topic, "held", n.NodeID())
	pk, err := c.recv(5 * time.Second)
	require.NoError(t, err)
	require.Equal(t, "held", string(pk.Payload)) // no PUBACK: it stays, read and in flight

	pending := func() {
		t.Helper()
		require.NoError(t, e.store.Repend(t.Context(), n.NodeID(), id))
		eventually(t, 5*time.Second, func() bool {
			ids, err := e.rdb.SMembers(t.Context(), e.store.Keys().NodePending(n.NodeID())).Result()
			return err == nil && len(ids) == 0
		}, "the sweep did not take the pending identity")
	}
	pending() // the Put's own pending mark is gone too
	reads := value(t, n.m.reads)
	for range 3 {
		pending()
	}
	require.LessOrEqual(t, value(t, n.m.reads), reads+1, "mailbox reads for pending identities with nothing new")

	x := strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10)
	require.NoError(t, e.rdb.XAdd(t.Context(), &redis.XAddArgs{Stream: e.keys(id).Mailbox(id),
		Values: []any{"t", topic, "p", "lost", "x", x}}).Err())
	pending()
	pk, err = c.recv(5 * time.Second)
	require.NoError(t, err)
	require.Equal(t, "lost", string(pk.Payload))
}
