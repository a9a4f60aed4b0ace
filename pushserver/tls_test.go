package main

import (
	"crypto/tls"
	"strings"
	"testing"
	"time"

	mqttv3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
)

func TestTLS(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	certFile, keyFile, pool := testenv.SelfSignedCert(t)
	n := e.startNode(func(c *Config) { c.TLSCert, c.TLSKey = certFile, keyFile })
	require.True(t, strings.HasPrefix(n.URL(), "mqtts://"), n.URL())

	const id = "dev-tls"
	o := mqttv3.NewClientOptions().AddBroker("ssl://" + n.Addr()).SetClientID(id).SetUsername(id).
		SetPassword(token(t, id, auth.RoleDevice, time.Hour)).SetProtocolVersion(4).SetAutoReconnect(false).
		SetTLSConfig(&tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12})
	c := mqttv3.NewClient(o)
	tok := c.Connect()
	require.True(t, tok.WaitTimeout(10*time.Second))
	require.NoError(t, tok.Error())
	defer c.Disconnect(0)
	col := newCollector()
	st := c.Subscribe(protocol.DeviceCommandsTopic(id), 1, func(_ mqttv3.Client, m mqttv3.Message) { col.add(string(m.Payload())) })
	require.True(t, st.WaitTimeout(10*time.Second))
	e.put(id, protocol.DeviceCommandsTopic(id), "over-tls", n.NodeID())
	col.waitDistinct(t, 1, 5*time.Second)

	// Plain MQTT is not spoken on the TLS port.
	_, _, err := connectV3(t, n.Addr(), id, id, token(t, id, auth.RoleDevice, time.Hour))
	require.Error(t, err)
}

func TestMaxPacketSize(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode(func(c *Config) { c.MaxPacketSize = 1024 })
	const id = "dev-big"
	c := dialRaw(t, n.Addr(), 5)
	ack := c.connect(id, token(t, id, auth.RoleDevice, time.Hour))
	require.Equal(t, byte(0), ack.ReasonCode)
	require.Equal(t, uint32(1024), ack.Properties.MaximumPacketSize)
	require.NoError(t, c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   protocol.DeviceResponsesTopic(id), PacketID: 1,
		Payload: make([]byte, 2048),
	}))
	for {
		pk, err := c.recv(5 * time.Second)
		if err != nil {
			break
		}
		require.NotEqual(t, packets.Puback, pk.FixedHeader.Type)
	}
	require.Zero(t, value(t, n.m.responses))
}
