package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/ring"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
)

// TestShutdownShedsToNewOwner: a node that shuts down leaves the ring
// first, so its MQTT 5 clients are sent to the new owner, and it
// unregisters their sessions.
func TestShutdownShedsToNewOwner(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b, members := e.twoNodes()
	id := identitiesOwnedBy(members, a.NodeID(), "dev-bye", 1)[0]
	c, _, err := connectV5(t, a.Addr(), id, id, token(t, id, auth.RoleDevice, time.Hour))
	require.NoError(t, err)
	c.subscribe(t, protocol.DeviceCommandsTopic(id), 1)
	eventually(t, 5*time.Second, func() bool {
		node, err := e.store.SessionNode(t.Context(), id)
		return err == nil && node == a.NodeID()
	}, "session registered")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, a.Shutdown(ctx))
	select {
	case d := <-c.disconnects:
		require.Equal(t, byte(0x9C), d.ReasonCode)
		require.Equal(t, b.URL(), d.Properties.ServerReference)
	case <-time.After(5 * time.Second):
		t.Fatal("no DISCONNECT at shutdown")
	}
	node, err := e.store.SessionNode(t.Context(), id)
	require.NoError(t, err)
	require.Empty(t, node)
	_, err = net.DialTimeout("tcp", a.Addr(), time.Second)
	require.Error(t, err, "still listening after shutdown")

	// The last node sends its clients away with "server shutting down".
	// b's own ring must have seen a leave, or b still names a as owner.
	require.Equal(t, []string{b.NodeID()}, nodeNames(e.converged(b)))
	c2, _, err := connectV5(t, b.Addr(), id, id, token(t, id, auth.RoleDevice, time.Hour))
	require.NoError(t, err)
	require.NoError(t, b.Shutdown(ctx))
	select {
	case d := <-c2.disconnects:
		require.Equal(t, byte(0x8B), d.ReasonCode)
	case <-time.After(5 * time.Second):
		t.Fatal("no DISCONNECT at shutdown")
	}
}

func nodeNames(ms []ring.Member) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.Node)
	}
	return out
}

func TestRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	vars := map[string]string{
		"GW_MQTT_ADDR":    "127.0.0.1:0",
		"GW_NAMESPACE":    e.ns,
		"GW_AUTH_SECRET":  testSecret,
		"GW_REDIS_URL":    testenv.RedisURL(),
		"GW_AMQP_URL":     testenv.AMQPURL(),
		"GW_METRICS_ADDR": "127.0.0.1:0",
		"GW_INFLIGHT":     "8",
	}
	getenv := func(k string) string { return vars[k] }

	t.Run("no secret", func(t *testing.T) {
		err := run(t.Context(), nil, func(string) string { return "" }, io.Discard)
		require.ErrorIs(t, err, ErrNoSecret)
	})
	t.Run("bad variable", func(t *testing.T) {
		bad := func(k string) string {
			if k == "GW_CONFIRM_TIMEOUT" {
				return "soon"
			}
			return getenv(k)
		}
		require.Error(t, run(t.Context(), nil, bad, io.Discard))
	})
	t.Run("bad address", func(t *testing.T) {
		require.Error(t, run(t.Context(), []string{"--mqtt-addr", "256.0.0.1:1"}, getenv, io.Discard))
	})

	t.Run("serves until cancelled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			done <- run(ctx, []string{"--node-id", "run-node"}, getenv, pw)
			_ = pw.Close()
		}()
		var mu sync.Mutex
		var msgs, lines []string
		listening := make(chan map[string]any, 1)
		metricsAt := make(chan string, 1)
		scanned := make(chan struct{})
		go func() {
			defer close(scanned)
			sc := bufio.NewScanner(pr)
			for sc.Scan() {
				var line map[string]any
				if json.Unmarshal(sc.Bytes(), &line) != nil {
					continue
				}
				msg, _ := line["msg"].(string)
				mu.Lock()
				msgs = append(msgs, msg)
				lines = append(lines, sc.Text())
				mu.Unlock()
				if a, _ := line["addr"].(string); msg == "metrics listening" {
					metricsAt <- a
				}
				if msg == "push server listening" {
					listening <- line
				}
			}
		}()
		var line map[string]any
		select {
		case line = <-listening:
		case err := <-done:
			t.Fatalf("run returned early: %v", err)
		case <-time.After(20 * time.Second):
			t.Fatal("not listening")
		}
		addr, _ := line["addr"].(string)
		require.Equal(t, "run-node", line["node"])
		require.Equal(t, "mqtt://"+addr, line["url"])
		require.Equal(t, float64(8), line["inflight"])
		_, code, err := connectV3(t, addr, "dev-run", "dev-run", token(t, "dev-run", auth.RoleDevice, time.Hour))
		require.NoError(t, err, "code %d", code)

		// The metrics listener serves the running build (internal/buildinfo).
		var maddr string
		select {
		case maddr = <-metricsAt:
		case <-time.After(20 * time.Second):
			t.Fatal("metrics address never logged")
		}
		resp, err := http.Get("http://" + maddr + "/metrics")
		require.NoError(t, err)
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		require.NoError(t, err)
		require.Contains(t, string(body), `gw_build_info{commit="`)
		require.Contains(t, string(body), `go_version="`+runtime.Version()+`",version="`)

		cancel()
		select {
		case err := <-done:
			require.NoError(t, err)
		case <-time.After(20 * time.Second):
			t.Fatal("run did not return after cancel")
		}
		<-scanned
		mu.Lock()
		defer mu.Unlock()
		joined := strings.Join(msgs, "\n")
		require.Contains(t, joined, "metrics listening")
		require.Contains(t, joined, "push server stopped")
		testenv.RequireLogSchema(t, "pushserver", lines)
	})
}

// flakyListener fails its first Accept calls with EMFILE, as when the
// process runs out of file descriptors.
type flakyListener struct {
	net.Listener
	fails atomic.Int32
}

func (l *flakyListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return l.Listener.Accept()
}

func TestListenerKeepsAcceptingAfterErrors(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	flaky := &flakyListener{Listener: ln}
	flaky.fails.Store(5)
	accepted := make(chan net.Conn, 1)
	l := newListener("test", flaky, nil, time.Second, testenv.Logger(t), func(_ string, c net.Conn, ended func(net.Conn, error)) {
		accepted <- c
		_, err := c.Read(make([]byte, 1)) // until the deadline or close
		ended(c, err)
	})
	served := make(chan struct{})
	go func() {
		defer close(served)
		l.serve()
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer c.Close()
	select {
	case <-accepted:
	case <-time.After(5 * time.Second):
		t.Fatal("the listener stopped accepting after errors")
	}
	require.Less(t, flaky.fails.Load(), int32(0))

	l.stopAccepting()
	l.dropAll()
	select {
	case <-served:
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not return after stopAccepting")
	}
	// dropAll dropped the open connection.
	_ = c.SetReadDeadline(time.Now().Add(2 * time.Second))
	_, err = c.Read(make([]byte, 1))
	require.Error(t, err)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "connection still open")
}

// TestMaxClientsRefusesBeyond: with MaxClients connected, the next
// connection is refused (3.1.1: 0x03 server unavailable; 5: 0x89 server
// busy), and accepted again once one has gone.
func TestMaxClientsRefusesBeyond(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode(func(c *Config) { c.MaxClients = 2 })
	first := mustV3(t, n.Addr(), "dev-max-1")
	mustV3(t, n.Addr(), "dev-max-2")

	_, code, err := connectV3(t, n.Addr(), "dev-max-3", "dev-max-3", token(t, "dev-max-3", auth.RoleDevice, time.Hour))
	require.Error(t, err)
	require.Equal(t, byte(0x03), code, "3.1.1 refusal code")
	_, ca, err := connectV5(t, n.Addr(), "dev-max-3", "dev-max-3", token(t, "dev-max-3", auth.RoleDevice, time.Hour))
	require.Error(t, err)
	require.NotNil(t, ca)
	require.Equal(t, byte(0x89), ca.ReasonCode, "MQTT 5 refusal code")

	first.Disconnect(100)
	eventually(t, 5*time.Second, func() bool {
		_, _, err := connectV3(t, n.Addr(), "dev-max-3", "dev-max-3", token(t, "dev-max-3", auth.RoleDevice, time.Hour))
		return err == nil
	}, "a connection accepted after a client left")
}

func TestMaxClientsBelowFileLimit(t *testing.T) {
	limit := int64(fileLimit())
	got := maxClients(0)
	require.Less(t, got, limit)
	require.Positive(t, got)
	require.Equal(t, got, maxClients(int(limit)*2))
	require.Equal(t, int64(10), maxClients(10))
}
