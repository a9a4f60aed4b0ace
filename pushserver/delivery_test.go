package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

func seq(prefix string, from, to int) []string {
	var out []string
	for i := from; i < to; i++ {
		out = append(out, fmt.Sprintf("%s-%03d", prefix, i))
	}
	return out
}

// fillAndSubscribe puts payloads into device id's mailbox on its
// commands topic, then connects an MQTT 3.1.1 device and subscribes it
// to that topic.
func fillAndSubscribe(t *testing.T, e *env, n *Node, id string, payloads []string) *raw {
	t.Helper()
	topic := protocol.DeviceCommandsTopic(id)
	for _, p := range payloads {
		e.put(id, topic, p, n.NodeID())
	}
	c := dialRaw(t, n.Addr(), 4)
	require.Equal(t, byte(0), c.connect(id, token(t, id, auth.RoleDevice, time.Hour)).ReasonCode)
	require.Equal(t, []byte{1}, c.subscribe(topic, 1).ReasonCodes, "SUBACK reason codes")
	return c
}

// TestDrainInOrder: what waited while the device was offline is streamed
// in order once it subscribes, then removed; new entries follow through
// the wake signal.
func TestDrainInOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	const id = "dev-drain"
	topic := protocol.DeviceCommandsTopic(id)
	offline := seq("m", 0, 100)
	for _, p := range offline {
		e.put(id, topic, p, n.NodeID())
	}

	c := mustV3(t, n.Addr(), id)
	// Connected but not subscribed: nothing is streamed or removed, once
	// the session's first run is over (it registers the session, then
	// takes its first step, and leaves nothing pending).
	eventually(t, 5*time.Second, func() bool {
		node, err := e.store.SessionNode(t.Context(), id)
		return err == nil && node == n.NodeID()
	}, "session registered")
	s := n.current(id)
	require.NotNil(t, s)
	eventually(t, 5*time.Second, func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.run == runIdle && s.state != sessionNew
	}, "the session's first run over")
	require.Equal(t, int64(len(offline)), e.mailboxLen(id))
	require.Zero(t, value(t, n.m.delivers))

	col := newCollector()
	require.Equal(t, byte(1), c.subscribe(t, topic, 1, col))
	col.waitDistinct(t, len(offline), 10*time.Second)
	require.Equal(t, offline, col.list())
	eventually(t, 5*time.Second, func() bool { return e.mailboxLen(id) == 0 }, "mailbox empty")

	online := seq("n", 0, 50)
	for _, p := range online {
		e.put(id, topic, p, n.NodeID())
	}
	col.waitDistinct(t, len(offline)+len(online), 10*time.Second)
	require.Equal(t, append(offline, online...), col.list())
	eventually(t, 5*time.Second, func() bool { return e.mailboxLen(id) == 0 && value(t, n.m.acks) == 150 }, "mailbox empty")
	require.Equal(t, float64(150), value(t, n.m.delivers))
	require.Equal(t, float64(1), value(t, n.m.sessions))
}

// TestSkippedEntries: entries that no subscription matches are skipped,
// not blocking, and stay in the mailbox until a subscription matches.
func TestSkippedEntries(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	const id = "cli-skip"
	var fromA, fromB []string
	for i := range 10 {
		a, b := fmt.Sprintf("a-%d", i), fmt.Sprintf("b-%d", i)
		fromA, fromB = append(fromA, a), append(fromB, b)
		e.put(id, protocol.ClientResultsTopic(id, "dev-a"), a, n.NodeID())
		e.put(id, protocol.ClientResultsTopic(id, "dev-b"), b, n.NodeID())
	}
	c, _, err := connectV3(t, n.Addr(), id, id, token(t, id, auth.RoleClient, time.Hour))
	require.NoError(t, err)
	col := newCollector()
	require.Equal(t, byte(1), c.subscribe(t, protocol.ClientResultsTopic(id, "dev-a"), 1, col))
	col.waitDistinct(t, 10, 10*time.Second)
	require.Equal(t, fromA, col.list())
	eventually(t, 5*time.Second, func() bool { return e.mailboxLen(id) == 10 }, "dev-b entries stay")

	require.Equal(t, byte(1), c.subscribe(t, protocol.ClientResultsFilter(id), 1, col))
	col.waitDistinct(t, 20, 10*time.Second)
	require.Equal(t, append(fromA, fromB...), col.list())
	eventually(t, 5*time.Second, func() bool { return e.mailboxLen(id) == 0 }, "mailbox empty")
}

// TestRedeliveryWithoutPuback: an entry is removed only by the PUBACK of
// its PUBLISH; what was not acknowledged when the client died is sent
// again on the next connection.
func TestRedeliveryWithoutPuback(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	const id = "dev-noack"
	topic := protocol.DeviceCommandsTopic(id)
	all := seq("m", 0, 10)
	c := fillAndSubscribe(t, e, n, id, all)
	var pubs []packets.Packet
	ids := map[uint16]bool{}
	for range all {
		pk, err := c.recv(5 * time.Second)
		require.NoError(t, err)
		require.Equal(t, packets.Publish, pk.FixedHeader.Type)
		require.Equal(t, byte(1), pk.FixedHeader.Qos)
		require.Equal(t, topic, pk.TopicName)
		require.False(t, ids[pk.PacketID], "packet ID %d used twice", pk.PacketID)
		ids[pk.PacketID] = true
		pubs = append(pubs, pk)
	}
	for i, pk := range pubs {
		require.Equal(t, all[i], string(pk.Payload))
	}
	// Acknowledge the first four, then die without a word.
	for _, pk := range pubs[:4] {
		require.NoError(t, c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}))
	}
	eventually(t, 5*time.Second, func() bool { return e.mailboxLen(id) == 6 }, "4 entries acked")
	_ = c.conn.Close()
	eventually(t, 5*time.Second, func() bool { return n.current(id) == nil }, "session gone")
	require.Equal(t, int64(6), e.mailboxLen(id))

	again := mustV3(t, n.Addr(), id)
	col := newCollector()
	again.subscribe(t, topic, 1, col)
	col.waitDistinct(t, 6, 10*time.Second)
	// Every entry acknowledged and removed (paho acknowledges after the
	// handler that records it): nothing is left to send again, so the
	// list is final.
	eventually(t, 5*time.Second, func() bool { return e.mailboxLen(id) == 0 }, "mailbox empty")
	require.Equal(t, all[4:], col.list())
}

// TestInflightWindow: at most Inflight PUBLISHes (or the MQTT 5 client's
// smaller Receive Maximum) are unacknowledged at a time.
func TestInflightWindow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode(func(c *Config) { c.Inflight = 5 })
	for _, tc := range []struct {
		version byte
		recvMax uint16
		want    int
	}{{4, 0, 5}, {5, 2, 2}} {
		id := fmt.Sprintf("dev-win%d", tc.version)
		topic := protocol.DeviceCommandsTopic(id)
		for _, p := range seq("m", 0, 12) {
			e.put(id, topic, p, n.NodeID())
		}
		c := dialRaw(t, n.Addr(), tc.version)
		require.NoError(t, c.send(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Connect},
			Connect: packets.ConnectParams{
				ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id,
				UsernameFlag: true, Username: []byte(id),
				PasswordFlag: true, Password: []byte(token(t, id, auth.RoleDevice, time.Hour)),
			},
			Properties: packets.Properties{ReceiveMaximum: tc.recvMax},
		}))
		ack, err := c.recv(5 * time.Second)
		require.NoError(t, err)
		require.Equal(t, byte(0), ack.ReasonCode)
		c.subscribe(topic, 1)
		var got []packets.Packet
		for {
			pk, err := c.recv(700 * time.Millisecond)
			if err != nil {
				break
			}
			got = append(got, pk)
		}
		require.Len(t, got, tc.want, "MQTT %d: unacknowledged PUBLISHes", tc.version)
		// One PUBACK opens the window by one.
		require.NoError(t, c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: got[0].PacketID}))
		pk, err := c.recv(3 * time.Second)
		require.NoError(t, err)
		require.Equal(t, fmt.Sprintf("m-%03d", tc.want), string(pk.Payload))
		_, err = c.recv(500 * time.Millisecond)
		require.Error(t, err, "more than one PUBLISH after one PUBACK")
	}
}

// TestRefillByQuarterWindow: once the window is full, a PUBACK that
// frees less than a quarter of it (while others are in flight) reads
// nothing; the PUBACK that frees a quarter reads that many with one
// Fetch; and the refills go on until the mailbox is drained, in order.
// No sweep runs: the PUBACKs alone refill the window.
func TestRefillByQuarterWindow(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode(func(c *Config) { c.Inflight, c.SweepInterval = 8, time.Hour })
	all := seq("q", 0, 20)
	c := fillAndSubscribe(t, e, n, "dev-quarter", all)
	var got []string
	recvPublish := func() packets.Packet {
		t.Helper()
		pk, err := c.recv(5 * time.Second)
		require.NoError(t, err, "PUBLISH %d", len(got))
		require.Equal(t, packets.Publish, pk.FixedHeader.Type, "packet %d", len(got))
		got = append(got, string(pk.Payload))
		return pk
	}
	puback := func(pk packets.Packet) {
		t.Helper()
		require.NoError(t, c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}))
	}
	var window []packets.Packet
	for range 8 {
		window = append(window, recvPublish())
	}
	reads := value(t, n.m.reads)
	puback(window[0]) // frees 1 of 8: less than a quarter
	puback(window[1]) // frees 2: a quarter
	window = append(window[2:], recvPublish(), recvPublish())
	require.Equal(t, reads+1, value(t, n.m.reads), "Fetches for the two PUBACKs: got %v, want one", value(t, n.m.reads)-reads)
	for len(got) < len(all) { // a quarter at a time
		puback(window[0])
		puback(window[1])
		window = window[2:]
		for range min(2, len(all)-len(got)) {
			window = append(window, recvPublish())
		}
	}
	require.Equal(t, all, got)
}

// TestLargePage: the PUBLISHes of a page larger than a write buffer
// (64 KiB) go out in several writes, whole and in order.
func TestLargePage(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	const id = "dev-large-page"
	var want []string
	for i := range 6 {
		want = append(want, fmt.Sprintf("%d-%s", i, strings.Repeat("x", 30000)))
	}
	c := fillAndSubscribe(t, e, n, id, want)
	for i, w := range want {
		pk, err := c.recv(5 * time.Second)
		require.NoError(t, err, "PUBLISH %d", i)
		require.Equal(t, packets.Publish, pk.FixedHeader.Type, "packet %d", i)
		require.Equal(t, w, string(pk.Payload), "payload %d", i)
		require.NoError(t, c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID}))
	}
	eventually(t, 5*time.Second, func() bool { return e.mailboxLen(id) == 0 }, "mailbox drained")
}

// TestSweepCatchesLostSignal: an entry appended without any wake signal
// is delivered by the sweep.
func TestSweepCatchesLostSignal(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	const id = "dev-lost"
	topic := protocol.DeviceCommandsTopic(id)
	c := mustV3(t, n.Addr(), id)
	col := newCollector()
	c.subscribe(t, topic, 1, col)
	time.Sleep(100 * time.Millisecond)
	// Append behind the mailbox's back: no pending set, no pub/sub. Only
	// the set of non-empty mailboxes lists it, as every append does (the
	// full sweep reads only those).
	err := e.rdb.XAdd(t.Context(), &redis.XAddArgs{
		Stream: e.keys(id).Mailbox(id),
		Values: []any{"t", topic, "p", "silent", "x", time.Now().Add(time.Hour).UnixMilli()},
	}).Err()
	require.NoError(t, err)
	require.NoError(t, e.rdb.SAdd(t.Context(), e.keys(id).Mailboxes(), id).Err())
	col.waitDistinct(t, 1, 5*time.Second)
	require.Equal(t, []string{"silent"}, col.list())
}

// TestPacketIDsOfBothDirections: the packet IDs a device uses for its own
// PUBLISHes are independent of the ones the server uses (a server that
// kept both in one in-flight map, as mochi's Client does, would forget an
// outbound message when an inbound one reuses its ID); a device answering with the same packet ID
// still completes the delivery with its PUBACK.
func TestPacketIDsOfBothDirections(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	const id = "dev-pid"
	topic := protocol.DeviceCommandsTopic(id)
	e.put(id, topic, "cmd", n.NodeID())
	c := dialRaw(t, n.Addr(), 4)
	require.Equal(t, byte(0), c.connect(id, token(t, id, auth.RoleDevice, time.Hour)).ReasonCode)
	c.subscribe(topic, 1)
	pub, err := c.recv(5 * time.Second)
	require.NoError(t, err)
	require.Equal(t, packets.Publish, pub.FixedHeader.Type)

	// The device publishes with the very packet ID of the PUBLISH it has
	// not acknowledged yet.
	require.NoError(t, c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   protocol.DeviceResponsesTopic(id), PacketID: pub.PacketID,
		Payload: []byte(`{"not":"a response"}`),
	}))
	ack, err := c.recv(5 * time.Second)
	require.NoError(t, err)
	require.Equal(t, packets.Puback, ack.FixedHeader.Type)
	require.Equal(t, pub.PacketID, ack.PacketID)

	require.NoError(t, c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pub.PacketID}))
	eventually(t, 5*time.Second, func() bool { return e.mailboxLen(id) == 0 && value(t, n.m.acks) == 1 }, "entry acked")
}
