package main

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	mqttv3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/ring"
	"github.com/iotgw/gateway/protocol"
)

// TestWrongNodeRefused: an identity connecting to a node that does not
// own it is refused, with the owner as server reference in MQTT 5.
func TestWrongNodeRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a, b, members := e.twoNodes()
	id := identitiesOwnedBy(members, a.NodeID(), "dev-wrong", 1)[0]
	tok := token(t, id, auth.RoleDevice, time.Hour)

	_, code, err := connectV3(t, b.Addr(), id, id, tok)
	require.Error(t, err)
	require.Equal(t, byte(0x03), code) // server unavailable

	_, ca, err := connectV5(t, b.Addr(), id, id, tok)
	require.Error(t, err)
	require.NotNil(t, ca)
	require.Equal(t, byte(0x9C), ca.ReasonCode) // use another server
	require.NotNil(t, ca.Properties)
	require.Equal(t, a.URL(), ca.Properties.ServerReference)
	require.Equal(t, float64(2), value(t, b.m.redirects))

	// The owner accepts it.
	_, code, err = connectV3(t, a.Addr(), id, id, tok)
	require.NoError(t, err, "code %d", code)
}

// follower keeps one identity connected to its current owner (as a real
// client does: GET /v1/connect after every refusal or lost connection)
// and records what it receives.
type follower struct {
	e        *env
	identity string
	topic    string
	col      *collector
	mu       sync.Mutex
	addr     string // where it is connected now, "" when not
}

func (e *env) follow(ctx context.Context, identity string) *follower {
	f := &follower{e: e, identity: identity, topic: protocol.DeviceCommandsTopic(identity), col: newCollector()}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		f.run(ctx)
	}()
	e.t.Cleanup(wg.Wait)
	return f
}

func (f *follower) connectedTo() string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.addr
}

func (f *follower) run(ctx context.Context) {
	tok, err := auth.Mint([]byte(testSecret), f.identity, auth.RoleDevice, nil, time.Hour)
	if err != nil {
		panic(err)
	}
	for ctx.Err() == nil {
		addr := f.e.ownerAddr(f.identity)
		if addr == "" {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		lost := make(chan struct{})
		var once sync.Once
		o := mqttv3.NewClientOptions().AddBroker("tcp://" + addr).SetClientID(f.identity).
			SetUsername(f.identity).SetPassword(tok).SetProtocolVersion(4).SetCleanSession(true).
			SetAutoReconnect(false).SetConnectRetry(false).SetConnectTimeout(2 * time.Second).
			SetConnectionLostHandler(func(mqttv3.Client, error) { once.Do(func() { close(lost) }) })
		c := mqttv3.NewClient(o)
		if tk := c.Connect(); !tk.WaitTimeout(3*time.Second) || tk.Error() != nil {
			time.Sleep(50 * time.Millisecond)
			continue
		}
		tk := c.Subscribe(f.topic, 1, func(_ mqttv3.Client, m mqttv3.Message) { f.col.add(string(m.Payload())) })
		if !tk.WaitTimeout(3*time.Second) || tk.Error() != nil {
			c.Disconnect(0)
			continue
		}
		f.mu.Lock()
		f.addr = addr
		f.mu.Unlock()
		select {
		case <-ctx.Done():
		case <-lost:
		}
		f.mu.Lock()
		f.addr = ""
		f.mu.Unlock()
		c.Disconnect(0)
	}
}

// TestRingChangeMovesSessions: when a node joins, the sessions of the
// identities it now owns are shed from the old owner after the grace
// period (MQTT 5: DISCONNECT 0x9C with the new owner's URL); the clients
// reconnect to the new owner and keep receiving.
func TestRingChangeMovesSessions(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	a := e.startNode()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	var fs []*follower
	for i := range 16 {
		fs = append(fs, e.follow(ctx, fmt.Sprintf("dev-mv-%d", i)))
	}
	eventually(t, 10*time.Second, func() bool {
		for _, f := range fs {
			if f.connectedTo() != a.Addr() {
				return false
			}
		}
		return true
	}, "all followers on the first node")

	// An MQTT 5 client that the second node will own.
	bNode := "node-b"
	v5id := ""
	for i := 0; v5id == ""; i++ {
		id := fmt.Sprintf("dev-mv5-%d", i)
		if m, ok := ownerWith(a.NodeID(), bNode, id); ok && m == bNode {
			v5id = id
		}
	}
	c5, _, err := connectV5(t, a.Addr(), v5id, v5id, token(t, v5id, auth.RoleDevice, time.Hour))
	require.NoError(t, err)
	c5.subscribe(t, protocol.DeviceCommandsTopic(v5id), 1)

	b := e.startNode(func(c *Config) { c.NodeID = bNode })
	select {
	case d := <-c5.disconnects:
		require.Equal(t, byte(0x9C), d.ReasonCode)
		require.NotNil(t, d.Properties)
		require.Equal(t, b.URL(), d.Properties.ServerReference)
	case <-time.After(10 * time.Second):
		t.Fatal("MQTT 5 session not shed after the ring change")
	}

	moved := 0
	eventually(t, 15*time.Second, func() bool {
		moved = 0
		for _, f := range fs {
			want := e.ownerAddr(f.identity)
			if f.connectedTo() != want {
				return false
			}
			if want == b.Addr() {
				moved++
			}
		}
		return true
	}, "every follower on its owner")
	require.NotZero(t, moved, "no identity moved to the new node")
	require.GreaterOrEqual(t, value(t, a.m.sheds), float64(moved))

	for _, f := range fs {
		for i := range 3 {
			owner, _ := e.ring.Owner(f.identity)
			e.put(f.identity, f.topic, fmt.Sprintf("%s#%d", f.identity, i), owner.Node)
		}
	}
	for _, f := range fs {
		f.col.waitDistinct(t, 3, 10*time.Second)
	}
}

// ownerWith returns the owner of id in a ring of nodes a and b (placement
// depends on the node names only).
func ownerWith(a, b, id string) (string, bool) {
	m, ok := ring.OwnerOf([]ring.Member{{Node: a, URL: "mqtt://a"}, {Node: b, URL: "mqtt://b"}}, id)
	return m.Node, ok
}

// TestShedRate: sessions that moved are shed at most ShedRate per second.
func TestShedRate(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	const rate, count = 20, 8
	a := e.startNode(func(c *Config) { c.ShedRate = rate })
	var ids []string
	for i := 0; len(ids) < count; i++ {
		id := fmt.Sprintf("dev-rate-%d", i)
		if m, _ := ownerWith(a.NodeID(), "node-rate-b", id); m == "node-rate-b" {
			ids = append(ids, id)
		}
	}
	var clients []*v5
	for _, id := range ids {
		c, _, err := connectV5(t, a.Addr(), id, id, token(t, id, auth.RoleDevice, time.Hour))
		require.NoError(t, err)
		clients = append(clients, c)
	}
	e.startNode(func(c *Config) { c.NodeID = "node-rate-b" })
	var times []time.Time
	for _, c := range clients {
		select {
		case d := <-c.disconnects:
			require.Equal(t, byte(0x9C), d.ReasonCode)
			times = append(times, c.disconnectTime())
		case <-time.After(10 * time.Second):
			t.Fatal("session not shed")
		}
	}
	first, last := times[0], times[0]
	for _, tm := range times {
		if tm.Before(first) {
			first = tm
		}
		if tm.After(last) {
			last = tm
		}
	}
	min := time.Duration(count-1) * time.Second / rate
	require.GreaterOrEqual(t, last.Sub(first), min*8/10, "shed %d sessions in %s", count, last.Sub(first))
}
