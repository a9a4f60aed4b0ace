package main

import (
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// TestSubscriptionCap: a session holds at most MaxSubscriptions filters.
// The filters of a SUBSCRIBE beyond it get a SUBACK failure (MQTT 5:
// 0x97 quota exceeded, 3.1.1: 0x80) and receive nothing; the others are
// granted. Subscribing again to a filter the session has does not count,
// and an UNSUBSCRIBE makes room.
func TestSubscriptionCap(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode(func(c *Config) { c.MaxSubscriptions = 2 })
	for _, tt := range []struct {
		v    byte
		fail byte
	}{{5, packets.ErrQuotaExceeded.Code}, {4, packets.ErrUnspecifiedError.Code}} {
		client := "cli-subcap-" + string('0'+rune(tt.v))
		topic := func(d string) string { return protocol.ClientResultsTopic(client, d) }
		c := dialRaw(t, n.Addr(), tt.v)
		require.Equal(t, byte(0), c.connect(client, token(t, client, auth.RoleClient, time.Hour)).ReasonCode)
		pid := uint16(0)
		subscribe := func(filters ...string) []byte {
			t.Helper()
			pid++
			var subs packets.Subscriptions
			for _, f := range filters {
				subs = append(subs, packets.Subscription{Filter: f, Qos: 1})
			}
			require.NoError(t, c.send(packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1}, PacketID: pid, Filters: subs,
			}))
			pk, err := c.recv(5 * time.Second)
			require.NoError(t, err)
			require.Equal(t, packets.Suback, pk.FixedHeader.Type)
			return pk.ReasonCodes
		}
		require.Equal(t, []byte{1, 1, tt.fail}, subscribe(topic("d1"), topic("d2"), topic("d3")), "v%d: the third filter is over the cap", tt.v)
		require.Equal(t, []byte{1}, subscribe(topic("d1")), "v%d: a filter the session has does not count", tt.v)
		require.Equal(t, []byte{tt.fail}, subscribe(topic("+")), "v%d: a new filter is over the cap", tt.v)

		// Nothing is delivered on the refused filter: an entry for d3 is
		// skipped, the entry for d1 behind it arrives.
		e.put(client, topic("d3"), `{"for":"d3"}`, n.NodeID())
		e.put(client, topic("d1"), `{"for":"d1"}`, n.NodeID())
		pub, err := c.recv(5 * time.Second)
		require.NoError(t, err)
		require.Equal(t, packets.Publish, pub.FixedHeader.Type)
		require.Equal(t, topic("d1"), pub.TopicName, "v%d: published %s", tt.v, pub.Payload)
		require.NoError(t, c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pub.PacketID}))

		// An UNSUBSCRIBE makes room.
		pid++
		require.NoError(t, c.send(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Unsubscribe, Qos: 1}, PacketID: pid,
			Filters: packets.Subscriptions{{Filter: topic("d2")}},
		}))
		pk, err := c.recv(5 * time.Second)
		require.NoError(t, err)
		require.Equal(t, packets.Unsuback, pk.FixedHeader.Type)
		require.Equal(t, []byte{1}, subscribe(topic("d3")), "v%d: room after an unsubscribe", tt.v)
		pub, err = c.recv(5 * time.Second)
		require.NoError(t, err)
		require.Equal(t, topic("d3"), pub.TopicName, "v%d: the d3 entry once subscribed", tt.v)
	}
}
