package main

import (
	"bufio"
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"runtime"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
)

// TestIdleMemory connects PUSHSERVER_IDLE_SESSIONS raw MQTT 3.1.1
// clients that subscribe and stay idle, and reports the node's memory per
// session (heap and goroutine stacks); over TLS when PUSHSERVER_IDLE_TLS
// is set. Diagnostic: skipped unless the variable is set. The figures
// include the clients' side of the connections (same process).
func TestIdleMemory(t *testing.T) {
	count, _ := strconv.Atoi(os.Getenv("PUSHSERVER_IDLE_SESSIONS"))
	if testing.Short() || count <= 0 {
		t.Skip("set PUSHSERVER_IDLE_SESSIONS to run")
	}
	e := newEnv(t)
	var clientTLS *tls.Config
	n := e.startNode(func(c *Config) {
		c.SweepInterval = time.Hour
		if os.Getenv("PUSHSERVER_IDLE_TLS") != "" {
			var pool *x509.CertPool
			c.TLSCert, c.TLSKey, pool = testenv.SelfSignedCert(t)
			clientTLS = &tls.Config{RootCAs: pool, ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12}
		}
	})
	ids := identitiesOwnedBy(e.members(), n.NodeID(), "idle", count)
	snap := func() runtime.MemStats {
		for range 6 {
			runtime.GC()
		}
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m
	}
	time.Sleep(500 * time.Millisecond)
	m0, g0, rss0 := snap(), runtime.NumGoroutine(), rssBytes(t)
	conns := make([]net.Conn, len(ids))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 64)
	for i, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			tok, err := auth.Mint([]byte(testSecret), id, auth.RoleDevice, nil, time.Hour)
			require.NoError(t, err)
			c := &raw{t: t, v: 4}
			c.conn, err = net.DialTimeout("tcp", n.Addr(), 5*time.Second)
			require.NoError(t, err)
			if clientTLS != nil {
				c.conn = tls.Client(c.conn, clientTLS)
			}
			c.r = bufio.NewReaderSize(c.conn, 64)
			require.NoError(t, c.send(packets.Packet{
				FixedHeader: packets.FixedHeader{Type: packets.Connect},
				Connect: packets.ConnectParams{
					ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 600,
					ClientIdentifier: id, UsernameFlag: true, Username: []byte(id),
					PasswordFlag: true, Password: []byte(tok),
				},
			}))
			pk, err := c.recv(5 * time.Second)
			require.NoError(t, err)
			require.Equal(t, packets.Connack, pk.FixedHeader.Type)
			pk = c.subscribe(protocol.DeviceCommandsTopic(id), 1)
			require.Equal(t, packets.Suback, pk.FixedHeader.Type)
			_ = c.conn.SetReadDeadline(time.Time{})
			conns[i] = c.conn
		}()
	}
	wg.Wait()
	// Let the sessions' goroutines (registration in Redis) finish.
	time.Sleep(2 * time.Second)
	for deadline := time.Now().Add(10 * time.Second); runtime.NumGoroutine()-g0 > len(ids) && time.Now().Before(deadline); {
		time.Sleep(200 * time.Millisecond)
	}
	m1, g1, rss1 := snap(), runtime.NumGoroutine(), rssBytes(t)
	k := float64(len(ids))
	t.Logf("%d sessions: goroutines/session %.2f", len(ids), float64(g1-g0)/k)
	t.Logf("HeapInuse/session %.0f B, HeapAlloc/session %.0f B, StackInuse/session %.0f B, Sys/session %.0f B",
		float64(m1.HeapInuse-m0.HeapInuse)/k, float64(m1.HeapAlloc-m0.HeapAlloc)/k,
		float64(m1.StackInuse-m0.StackInuse)/k, float64(m1.Sys-m0.Sys)/k)
	t.Logf("RSS/session %.0f B (both ends of the connections)", float64(rss1-rss0)/k)
	if dir := os.Getenv("PUSHSERVER_IDLE_PROFILE"); dir != "" {
		f, err := os.Create(dir + "/heap.pprof")
		require.NoError(t, err)
		require.NoError(t, pprof.Lookup("heap").WriteTo(f, 0))
		_ = f.Close()
		f, err = os.Create(dir + "/goroutine.txt")
		require.NoError(t, err)
		require.NoError(t, pprof.Lookup("goroutine").WriteTo(f, 1))
		_ = f.Close()
	}
	for _, c := range conns {
		if c != nil {
			_ = c.Close()
		}
	}
}

// rssBytes is the process's resident set size (VmRSS of
// /proc/self/status); 0 where there is none.
func rssBytes(t *testing.T) int64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			require.NoError(t, err, "VmRSS %q", rest)
			return kb << 10
		}
	}
	return 0
}
