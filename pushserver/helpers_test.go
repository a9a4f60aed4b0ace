package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	mqttv3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/ring"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

const testSecret = "pushserver-test-secret-of-32-bytes"

// env is one test's namespace with its Redis client, mailbox store and a
// ring view (not joined) for finding owners.
type env struct {
	t     testing.TB
	ns    string
	rdb   *redis.Client
	store *mailbox.Store
	ring  *ring.Ring
}

func newEnv(t testing.TB) *env {
	t.Helper()
	rdb := testenv.Redis(t)
	ns := testenv.Namespace(t)
	return &env{
		t:     t,
		ns:    ns,
		rdb:   rdb,
		store: mailbox.New(rdb, ns, mailbox.Options{}),
		ring:  ring.New(rdb, ns, ring.Options{}),
	}
}

// testConfig is the configuration of in-process test nodes: fast ring
// timing and sweeps.
func (e *env) config() Config {
	return Config{
		MQTTAddr:      "127.0.0.1:0",
		Common:        config.Common{RedisURL: testenv.RedisURL(), AMQPURL: testenv.AMQPURL(), Namespace: e.ns},
		AuthSecret:    testSecret,
		Logger:        testenv.Logger(e.t),
		SweepInterval: 300 * time.Millisecond,
		RingHeartbeat: 250 * time.Millisecond,
		RingTTL:       2 * time.Second,
		RingGrace:     300 * time.Millisecond,
		ShutdownShed:  time.Second,
	}
}

// startNode starts an in-process push server, shut down when the test
// ends.
func (e *env) startNode(mod ...func(*Config)) *Node {
	e.t.Helper()
	cfg := e.config()
	for _, f := range mod {
		f(&cfg)
	}
	n, err := NewNode(cfg)
	require.NoError(e.t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	require.NoError(e.t, n.Start(ctx))
	e.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		if err := n.Shutdown(ctx); err != nil {
			e.t.Logf("shutdown of %s: %v", n.NodeID(), err)
		}
	})
	return n
}

// members returns the current ring members.
func (e *env) members() []ring.Member {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	require.NoError(e.t, e.ring.Refresh(ctx))
	return e.ring.Members()
}

// converged waits until every node's own ring holds exactly the members
// Redis lists, and returns them. A node learns of another's joining or
// leaving from a notification or its next refresh, so right after a
// change a node may still compute the old owners.
func (e *env) converged(nodes ...*Node) []ring.Member {
	e.t.Helper()
	var want []string
	eventually(e.t, 10*time.Second, func() bool {
		want = nodeNames(e.members())
		for _, n := range nodes {
			if !slices.Equal(nodeNames(n.ring.Members()), want) {
				return false
			}
		}
		return true
	}, "rings converge on %v", want)
	return e.ring.Members()
}

// twoNodes starts two nodes and waits until both rings hold both; it
// returns them with the members.
func (e *env) twoNodes() (a, b *Node, members []ring.Member) {
	e.t.Helper()
	a, b = e.startNode(), e.startNode()
	members = e.converged(a, b)
	require.Len(e.t, members, 2)
	return a, b, members
}

// ownerAddr returns the MQTT address of identity's owner, "" when the
// ring is empty.
func (e *env) ownerAddr(identity string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.ring.Refresh(ctx); err != nil {
		return ""
	}
	m, ok := e.ring.Owner(identity)
	if !ok {
		return ""
	}
	return strings.TrimPrefix(strings.TrimPrefix(m.URL, "mqtt://"), "mqtts://")
}

// identitiesOwnedBy returns count identities "prefix-N" that node owns in
// the ring of members.
func identitiesOwnedBy(members []ring.Member, node, prefix string, count int) []string {
	var out []string
	for i := 0; len(out) < count && i < 100000; i++ {
		id := fmt.Sprintf("%s-%d", prefix, i)
		if m, ok := ring.OwnerOf(members, id); ok && m.Node == node {
			out = append(out, id)
		}
	}
	return out
}

// put appends a message to identity's mailbox, signalling owner.
func (e *env) put(identity, topic, payload, owner string) string {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	id, err := e.store.Put(ctx, identity, topic, []byte(payload), time.Now().Add(time.Hour), owner)
	require.NoError(e.t, err)
	return id
}

// keys are the keys of identity's partition in the test's store.
func (e *env) keys(identity string) protocol.PartKeys {
	return e.store.Keys().Part(e.store.PartitionOf(identity))
}

func (e *env) mailboxLen(identity string) int64 {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	n, err := e.store.Len(ctx, identity)
	require.NoError(e.t, err)
	return n
}

func token(t testing.TB, identity string, role auth.Role, ttl time.Duration) string {
	t.Helper()
	tok, err := auth.Mint([]byte(testSecret), identity, role, nil, ttl)
	require.NoError(t, err)
	return tok
}

// collector records the payloads a client receives, in order.
type collector struct {
	mu   sync.Mutex
	got  []string
	seen map[string]int
	ch   chan struct{}
}

func newCollector() *collector {
	return &collector{seen: map[string]int{}, ch: make(chan struct{}, 1)}
}

func (c *collector) add(payload string) {
	c.mu.Lock()
	c.got = append(c.got, payload)
	c.seen[payload]++
	c.mu.Unlock()
	select {
	case c.ch <- struct{}{}:
	default:
	}
}

func (c *collector) list() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.got...)
}

func (c *collector) has(payload string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.seen[payload] > 0
}

func (c *collector) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.seen)
}

// waitDistinct waits until n distinct payloads arrived.
func (c *collector) waitDistinct(t testing.TB, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for c.distinct() < n {
		if time.Now().After(deadline) {
			t.Fatalf("received %d distinct messages within %s, want %d", c.distinct(), timeout, n)
		}
		select {
		case <-c.ch:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// v3 is a paho.mqtt.golang (MQTT 3.1.1) client.
type v3 struct {
	mqttv3.Client
	lost chan error
}

// connectV3 connects identity to addr with a clean session and no
// automatic reconnect. The error is the connect token's error; code is
// the CONNACK return code.
func connectV3(t testing.TB, addr, clientID, username, password string, opts ...func(*mqttv3.ClientOptions)) (*v3, byte, error) {
	t.Helper()
	lost := make(chan error, 1)
	o := mqttv3.NewClientOptions().
		AddBroker("tcp://" + addr).
		SetClientID(clientID).
		SetUsername(username).
		SetPassword(password).
		SetProtocolVersion(4).
		SetCleanSession(true).
		SetAutoReconnect(false).
		SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second).
		SetKeepAlive(30 * time.Second).
		SetConnectionLostHandler(func(_ mqttv3.Client, err error) {
			select {
			case lost <- err:
			default:
			}
		})
	for _, f := range opts {
		f(o)
	}
	c := mqttv3.NewClient(o)
	tok := c.Connect()
	if !tok.WaitTimeout(10 * time.Second) {
		return nil, 0, fmt.Errorf("connect timed out")
	}
	code := tok.(*mqttv3.ConnectToken).ReturnCode()
	if err := tok.Error(); err != nil {
		return nil, code, err
	}
	cl := &v3{Client: c, lost: lost}
	t.Cleanup(func() { c.Disconnect(0) })
	return cl, code, nil
}

// mustV3 connects identity with a fresh device token.
func mustV3(t testing.TB, addr, identity string) *v3 {
	t.Helper()
	c, code, err := connectV3(t, addr, identity, identity, token(t, identity, auth.RoleDevice, time.Hour))
	require.NoError(t, err, "connect %s to %s: code %d", identity, addr, code)
	return c
}

// subscribe subscribes at QoS 1 and returns the SUBACK code.
func (c *v3) subscribe(t testing.TB, filter string, qos byte, col *collector) byte {
	t.Helper()
	tok := c.Subscribe(filter, qos, func(_ mqttv3.Client, m mqttv3.Message) {
		if col != nil {
			col.add(string(m.Payload()))
		}
	})
	require.True(t, tok.WaitTimeout(10*time.Second), "subscribe %s timed out", filter)
	require.NoError(t, tok.Error())
	return tok.(*mqttv3.SubscribeToken).Result()[filter]
}

// v5 is a paho.golang (MQTT 5) client.
type v5 struct {
	*paho.Client
	disconnects chan *paho.Disconnect
	col         *collector

	mu             sync.Mutex
	disconnectedAt time.Time // when the server's DISCONNECT arrived
}

func (c *v5) disconnectTime() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.disconnectedAt
}

// connectV5 connects with MQTT 5; the Connack is returned also on
// refusal.
func connectV5(t testing.TB, addr, clientID, username, password string, mod ...func(*paho.Connect)) (*v5, *paho.Connack, error) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	c := &v5{disconnects: make(chan *paho.Disconnect, 1), col: newCollector()}
	c.Client = paho.NewClient(paho.ClientConfig{
		ClientID: clientID,
		Conn:     conn,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			c.col.add(string(pr.Packet.Payload))
			return true, nil
		}},
		OnServerDisconnect: func(d *paho.Disconnect) {
			c.mu.Lock()
			c.disconnectedAt = time.Now()
			c.mu.Unlock()
			select {
			case c.disconnects <- d:
			default:
			}
		},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cp := &paho.Connect{
		ClientID: clientID, CleanStart: true, KeepAlive: 30,
		UsernameFlag: username != "", Username: username,
		PasswordFlag: password != "", Password: []byte(password),
	}
	for _, f := range mod {
		f(cp)
	}
	ca, err := c.Connect(ctx, cp)
	if err != nil {
		_ = conn.Close()
		return nil, ca, err
	}
	t.Cleanup(func() { _ = c.Disconnect(&paho.Disconnect{ReasonCode: 0}) })
	return c, ca, nil
}

func (c *v5) subscribe(t testing.TB, filter string, qos byte) byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	sa, err := c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: filter, QoS: qos}}})
	require.NotNil(t, sa, "subscribe %s: %v", filter, err)
	return sa.Reasons[0]
}

// raw is a minimal MQTT client over mochi's packet codec, for what the
// libraries hide: withholding PUBACKs, watching the exact packets.
type raw struct {
	t    testing.TB
	conn net.Conn
	r    *bufio.Reader
	v    byte
}

func dialRaw(t testing.TB, addr string, version byte) *raw {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return &raw{t: t, conn: conn, r: bufio.NewReader(conn), v: version}
}

func (c *raw) send(pk packets.Packet) error {
	pk.ProtocolVersion = c.v
	b, err := encodePacket(pk)
	if err != nil {
		return err
	}
	_, err = c.conn.Write(b)
	return err
}

// recv reads one packet; io.EOF (or a reset) when the server closed the
// connection.
func (c *raw) recv(timeout time.Duration) (packets.Packet, error) {
	_ = c.conn.SetReadDeadline(time.Now().Add(timeout))
	return decodeFrom(c.r, c.v)
}

// answer publishes a device's answer (QoS 1, packet ID pid) on its
// responses topic.
func (c *raw) answer(device string, pid uint16, payload string) error {
	return c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   protocol.DeviceResponsesTopic(device),
		PacketID:    pid,
		Payload:     []byte(payload),
	})
}

// connect sends a CONNECT for identity and returns the CONNACK.
func (c *raw) connect(identity, password string) packets.Packet {
	c.t.Helper()
	require.NoError(c.t, c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Connect},
		Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), Clean: true, Keepalive: 30,
			ClientIdentifier: identity,
			UsernameFlag:     true, Username: []byte(identity),
			PasswordFlag: true, Password: []byte(password),
		},
	}))
	pk, err := c.recv(5 * time.Second)
	require.NoError(c.t, err)
	require.Equal(c.t, packets.Connack, pk.FixedHeader.Type)
	return pk
}

func (c *raw) subscribe(filter string, qos byte) packets.Packet {
	c.t.Helper()
	require.NoError(c.t, c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Subscribe, Qos: 1},
		PacketID:    1,
		Filters:     packets.Subscriptions{{Filter: filter, Qos: qos}},
	}))
	pk, err := c.recv(5 * time.Second)
	require.NoError(c.t, err)
	require.Equal(c.t, packets.Suback, pk.FixedHeader.Type)
	return pk
}

// value reads a counter or gauge.
func value(t testing.TB, c prometheus.Collector) float64 {
	t.Helper()
	ch := make(chan prometheus.Metric, 1)
	c.Collect(ch)
	var m dto.Metric
	require.NoError(t, (<-ch).Write(&m))
	switch {
	case m.Counter != nil:
		return m.Counter.GetValue()
	case m.Gauge != nil:
		return m.Gauge.GetValue()
	}
	t.Fatalf("not a counter or gauge")
	return 0
}

// eventually polls cond every 20ms for up to timeout.
func eventually(t testing.TB, timeout time.Duration, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s: "+format, append([]any{timeout}, args...)...)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
