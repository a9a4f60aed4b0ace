package main

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// command reads a command record.
func (e *env) command(client, rawID string) *mailbox.Command {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := e.store.Get(ctx, client, idKey(e.t, rawID))
	require.NoError(e.t, err)
	return c
}

// cancel cancels a command as the apiserver does.
func (e *env) cancel(client, rawID string) (*mailbox.Command, error) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return e.store.Cancel(ctx, client, idKey(e.t, rawID), "")
}

// idKey returns the message ID key of a raw JSON-RPC id.
func idKey(t testing.TB, rawID string) string {
	t.Helper()
	id, err := protocol.ParseID(json.RawMessage(rawID))
	require.NoError(t, err)
	return id.Key()
}

// TestTooLargeIsUnsent: a command entry that is fetched but too large for
// the client's Maximum Packet Size is not on the wire afterwards (Unsend):
// it can be cancelled. One that was published stays on the wire, also
// when a rewind reads it again while it is in flight.
func TestTooLargeIsUnsent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	const client, device = "cli-big", "dev-big-u"
	small, large := `"s"`, `"`+strings.Repeat("l", 120)+`"`
	e.sendCommand(client, device, small, n.NodeID())
	e.sendCommand(client, device, large, n.NodeID())

	c := dialRaw(t, n.Addr(), 5)
	require.NoError(t, c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: device,
			UsernameFlag: true, Username: []byte(device),
			PasswordFlag: true, Password: []byte(token(t, device, auth.RoleDevice, time.Hour)),
		},
		Properties: packets.Properties{MaximumPacketSize: 150},
	}))
	ack, err := c.recv(5 * time.Second)
	require.NoError(t, err)
	require.Equal(t, byte(0), ack.ReasonCode)
	topic := protocol.DeviceCommandsTopic(device)
	c.subscribe(topic, 1)

	pub, err := c.recv(5 * time.Second)
	require.NoError(t, err)
	require.Equal(t, packets.Publish, pub.FixedHeader.Type)
	require.Contains(t, string(pub.Payload), client+`:s"`)
	eventually(t, 5*time.Second, func() bool { return value(t, n.m.unsent) == 1 }, "the large entry unsent")

	// The large command was fetched, never published: not on the wire.
	got := e.command(client, large)
	require.Equal(t, protocol.StatusSent, got.Status)
	require.True(t, got.SendingAt.IsZero(), "sending_at %v", got.SendingAt)
	require.Zero(t, got.Attempts)
	cancelled, err := e.cancel(client, large)
	require.NoError(t, err)
	require.Equal(t, protocol.StatusCancelled, cancelled.Status)

	// The small one is on the wire: 409.
	got = e.command(client, small)
	require.False(t, got.SendingAt.IsZero())
	require.Equal(t, 1, got.Attempts)
	_, err = e.cancel(client, small)
	require.ErrorIs(t, err, mailbox.ErrState)

	// A new subscription re-reads the mailbox (an entry was skipped): the
	// entry in flight is read again, not sent again, and keeps one
	// attempt.
	c.subscribe(topic, 1)
	eventually(t, 5*time.Second, func() bool { return value(t, n.m.unsent) == 2 }, "the in-flight entry read again")
	_, err = c.recv(300 * time.Millisecond)
	require.Error(t, err, "a second PUBLISH of the entry in flight")
	got = e.command(client, small)
	require.False(t, got.SendingAt.IsZero())
	require.Equal(t, 1, got.Attempts)

	require.NoError(t, c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pub.PacketID}))
	eventually(t, 5*time.Second, func() bool {
		// Delivered, its entry stays until it is final (a re-offer to the
		// next connection); the large one was cancelled.
		return e.command(client, small).Status == protocol.StatusDelivered && e.mailboxLen(device) == 1
	}, "small command delivered")
	require.Equal(t, float64(1), value(t, n.m.delivers))

}

// TestBrokenConnectionIsUnsent: when the connection ends between the
// Fetch and the PUBLISH, none of the fetched commands is on the wire
// (Unsend): each can be cancelled.
func TestBrokenConnectionIsUnsent(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	const client, device = "cli-brk", "dev-brk"
	var ids []string
	for i := range 3 {
		id := fmt.Sprintf(`"c%d"`, i)
		ids = append(ids, id)
		e.sendCommand(client, device, id, n.NodeID())
	}
	kill := func(s *session) {
		if s.identity == device {
			s.cl.stop()
		}
	}
	n.beforePublish.Store(&kill)

	c := dialRaw(t, n.Addr(), 4)
	require.Equal(t, byte(0), c.connect(device, token(t, device, auth.RoleDevice, time.Hour)).ReasonCode)
	require.NoError(t, c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: 1,
		Filters: packets.Subscriptions{{Filter: protocol.DeviceCommandsTopic(device), Qos: 1}},
	}))
	eventually(t, 5*time.Second, func() bool { return value(t, n.m.unsent) == 3 }, "all three unsent")
	require.Zero(t, value(t, n.m.delivers))
	for {
		pk, err := c.recv(5 * time.Second)
		if err != nil {
			break // closed
		}
		require.NotEqual(t, packets.Publish, pk.FixedHeader.Type)
	}
	for _, id := range ids {
		got := e.command(client, id)
		require.True(t, got.SendingAt.IsZero(), "%s: sending_at %v", id, got.SendingAt)
		require.Zero(t, got.Attempts, id)
		cancelled, err := e.cancel(client, id)
		require.NoError(t, err, id)
		require.Equal(t, protocol.StatusCancelled, cancelled.Status)
	}
	require.Zero(t, e.mailboxLen(device))
}

// TestTakeoverKeepsRegistration: when a second connection of an identity
// takes the session over, the registry names this node with the new
// connection after the old connection's end has been handled, and a
// ClearSessionConn of the old connection that reaches Redis late changes
// nothing. The new connection's end clears it.
func TestTakeoverKeepsRegistration(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	const id = "dev-takeover"
	connKey := e.keys(id).SessionConn(id)
	registered := func(s *session) func() bool {
		return func() bool {
			node, err := e.store.SessionNode(t.Context(), id)
			require.NoError(t, err)
			conn, _ := e.rdb.Get(t.Context(), connKey).Result()
			return node == n.NodeID() && conn == s.conn
		}
	}

	mustV3(t, n.Addr(), id)
	var first *session
	eventually(t, 5*time.Second, func() bool { first = n.current(id); return first != nil }, "first session")
	eventually(t, 5*time.Second, registered(first), "first connection registered")

	second := mustV3(t, n.Addr(), id)
	select {
	case <-first.finished: // its end is handled, unregister included
	case <-time.After(5 * time.Second):
		t.Fatal("first session did not end")
	}
	latest := n.current(id)
	require.NotNil(t, latest)
	require.NotSame(t, first, latest)
	require.NotEqual(t, first.conn, latest.conn)
	eventually(t, 5*time.Second, registered(latest), "second connection registered")

	// The old connection's clear, landing after the new registration.
	require.NoError(t, first.clearRegistration())
	require.True(t, registered(latest)(), "the old connection cleared the new one's registration")

	// The new connection still receives through the registry's signal.
	col := newCollector()
	second.subscribe(t, protocol.DeviceCommandsTopic(id), 1, col)
	e.put(id, protocol.DeviceCommandsTopic(id), "after-takeover", n.NodeID())
	col.waitDistinct(t, 1, 5*time.Second)

	second.Disconnect(0)
	eventually(t, 5*time.Second, func() bool {
		node, err := e.store.SessionNode(t.Context(), id)
		require.NoError(t, err)
		return node == ""
	}, "registration cleared by the last connection's end")
}
