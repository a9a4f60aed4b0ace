package main

import (
	"bytes"
	"errors"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"
)

// connectHeader is the fixed header of a CONNECT announcing remaining
// bytes of body.
func connectHeader(remaining int) []byte {
	var b bytes.Buffer
	fh := packets.FixedHeader{Type: packets.Connect, Remaining: remaining}
	fh.Encode(&b)
	return b.Bytes()
}

// TestUnauthenticatedMemory: 2,000 sockets that announce a CONNECT and
// send only a little of it cost the node little memory each (not the
// announced length, let alone GW_MAX_PACKET_SIZE, which mochi's reader
// would allocate at once); a CONNECT announced larger than
// maxConnectSize closes its connection at once.
func TestUnauthenticatedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("opens 2,000 sockets")
	}
	e := newEnv(t)
	n := e.startNode(func(c *Config) { c.ConnectTimeout = 2 * time.Minute })

	// Larger than maxConnectSize (but within the maximum packet size):
	// closed without reading the body.
	big, err := net.DialTimeout("tcp", n.Addr(), 5*time.Second)
	require.NoError(t, err)
	defer big.Close()
	_, err = big.Write(connectHeader(maxConnectSize + 1))
	require.NoError(t, err)
	_ = big.SetReadDeadline(time.Now().Add(5 * time.Second))
	_, err = big.Read(make([]byte, 1))
	var ne net.Error
	require.Error(t, err)
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "a CONNECT larger than maxConnectSize: connection still open")

	heap := func() int64 {
		for range 4 {
			runtime.GC()
		}
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	const count = 2000
	start := append(connectHeader(maxConnectSize), make([]byte, 100)...)
	h0 := heap()
	conns := make([]net.Conn, 0, count)
	defer func() {
		for _, c := range conns {
			_ = c.Close()
		}
	}()
	for range count {
		c, err := net.DialTimeout("tcp", n.Addr(), 5*time.Second)
		require.NoError(t, err)
		conns = append(conns, c)
		_, err = c.Write(start)
		require.NoError(t, err)
	}
	eventually(t, 30*time.Second, func() bool { return value(t, n.m.connecting) == count },
		"%d connections reading their CONNECT (%v)", count, value(t, n.m.connecting))
	per := (heap() - h0) / count
	t.Logf("heap per unauthenticated socket, both ends: %d bytes", per)
	// Mochi's reader held the announced 16 KiB each (and 256 KiB each
	// for a CONNECT announced at the maximum packet size).
	require.Less(t, per, int64(8<<10), "heap per unauthenticated socket")
	runtime.KeepAlive(conns)
}
