package main

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
)

// logBuffer is an io.Writer for a test's log, safe for concurrent use.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestNoPacketLogged: neither a second CONNECT on a connection with a
// 65,000-byte username (which mochi's logger would log whole, password
// included; the node logs a packet's type and packet ID only, packetSummary)
// nor a refused first one with a 12,000-byte username puts the password, the token or more than a few
// hundred bytes of the username into the log, at any level.
func TestNoPacketLogged(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	var buf logBuffer
	n := e.startNode(func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	})
	const id, password = "dev-logs", "sekret-PASSWORD-4f1c"
	huge := strings.Repeat("u", 65000)
	good := token(t, id, auth.RoleDevice, time.Hour)
	connect := func(username, pass string) packets.Packet {
		return packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Connect},
			Connect: packets.ConnectParams{
				ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30, ClientIdentifier: id,
				UsernameFlag: true, Username: []byte(username), PasswordFlag: true, Password: []byte(pass),
			},
		}
	}
	for _, v := range []byte{4, 5} {
		// A second CONNECT: a protocol violation that ends the connection.
		c := dialRaw(t, n.Addr(), v)
		require.Equal(t, byte(0), c.connect(id, good).ReasonCode)
		require.NoError(t, c.send(connect(huge, password)))
		for {
			pk, err := c.recv(5 * time.Second)
			if err != nil {
				var ne interface{ Timeout() bool }
				require.False(t, errors.As(err, &ne) && ne.Timeout(), "v%d: connection still open after a second CONNECT", v)
				break
			}
			require.Equal(t, packets.Disconnect, pk.FixedHeader.Type, "v%d", v)
		}
		// A first CONNECT refused for its credentials (with a username
		// of 12,000 bytes: a first CONNECT is at most maxConnectSize).
		c = dialRaw(t, n.Addr(), v)
		require.NoError(t, c.send(connect(huge[:12000], password)))
		pk, err := c.recv(5 * time.Second)
		require.NoError(t, err)
		require.Equal(t, packets.Connack, pk.FixedHeader.Type)
		require.NotZero(t, pk.ReasonCode)
	}
	eventually(t, 5*time.Second, func() bool {
		return strings.Count(buf.String(), "error processing packet") == 2 &&
			strings.Count(buf.String(), "connection refused: bad credentials") == 2
	}, "both second CONNECTs and both refusals logged:\n%s", &buf)

	log := buf.String()
	for _, secret := range []string{password, good, fmt.Sprint([]byte(password)), fmt.Sprint([]byte(good))[:40]} {
		require.NotContains(t, log, secret, "the log holds a password or token")
	}
	for _, run := range []string{strings.Repeat("u", 300), strings.Repeat("117 ", 100)} {
		require.NotContains(t, log, run, "the log holds more than a few hundred bytes of the username")
	}
	require.Less(t, len(log), 32<<10, "log size")
}
