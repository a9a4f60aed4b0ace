package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// queueCommand creates a command of client to device the way the
// apiserver would (reserve, queued), and returns its record.
func (e *env) queueCommand(client, device, rawID string) *mailbox.Command {
	e.t.Helper()
	ctx := e.t.Context()
	id, err := protocol.ParseID(json.RawMessage(rawID))
	require.NoError(e.t, err)
	const timeout, expiresIn = 30 * time.Second, time.Hour
	c := &mailbox.Command{
		Client: client, Device: device, ID: id, Method: "reboot",
		Timeout: timeout, ExpiresIn: expiresIn,
		Fingerprint: protocol.Fingerprint(device, "reboot", nil, timeout, expiresIn),
	}
	out, rec, err := e.store.Reserve(ctx, c)
	require.NoError(e.t, err)
	require.Equal(e.t, mailbox.Reserved, out)
	require.NoError(e.t, e.store.MarkQueued(ctx, device, client, id.Key()))
	return rec
}

// sendCommand creates a command of client to device the way the apiserver
// and a worker would (reserve, queued, dispatch into the device's
// mailbox), signalling node.
func (e *env) sendCommand(client, device, rawID, node string) *mailbox.Command {
	e.t.Helper()
	ctx := e.t.Context()
	rec := e.queueCommand(client, device, rawID)
	id := rec.ID
	timeout := rec.Timeout
	env := &protocol.Envelope{
		V: protocol.EnvelopeVersion, Kind: protocol.KindCommand, Client: client, Device: device,
		MsgID: id, Payload: json.RawMessage(fmt.Sprintf(`{"jsonrpc":"2.0","method":"reboot","id":%s}`, rawID)),
		AcceptedAt: rec.CreatedAt, DeliverBy: rec.DeliverBy, AnswerWithinMS: timeout.Milliseconds(), Attempt: 1,
	}
	outcome, err := e.store.Dispatch(ctx, env, node, node)
	require.NoError(e.t, err)
	require.Equal(e.t, mailbox.OutcomeSent, outcome)
	got, err := e.store.Get(ctx, client, id.Key())
	require.NoError(e.t, err)
	return got
}

// commandStatus reads the status of a command of client.
func (e *env) commandStatus(client, idKey string) *mailbox.Command {
	e.t.Helper()
	got, err := e.store.Get(e.t.Context(), client, idKey)
	require.NoError(e.t, err)
	return got
}

// redisOutage is a go-redis hook that fails every command while down is
// set, as if Redis could not be reached.
type redisOutage struct{ down atomic.Bool }

var errOutage = errors.New("test: redis unreachable")

func (h *redisOutage) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *redisOutage) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if h.down.Load() {
			cmd.SetErr(errOutage)
			return errOutage
		}
		return next(ctx, cmd)
	}
}
func (h *redisOutage) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		if h.down.Load() {
			for _, c := range cmds {
				c.SetErr(errOutage)
			}
			return errOutage
		}
		return next(ctx, cmds)
	}
}

// TestDeviceResponse: the push server completes a device's answer in the
// mailbox before the device gets its PUBACK (the command is final when
// the PUBACK arrives; answers do not cross RabbitMQ); responses
// that can never succeed are dropped, counted and still acknowledged.
func TestDeviceResponse(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	const device, client = "dev-resp", "cli-resp"
	cmd := e.sendCommand(client, device, "42", n.NodeID())
	other := e.sendCommand(client, "dev-other", `"x-1"`, n.NodeID())
	pending := e.queueCommand(client, device, "43") // accepted, not yet sent

	c := mustV3(t, n.Addr(), device)
	col := newCollector()
	c.subscribe(t, protocol.DeviceCommandsTopic(device), 1, col)
	col.waitDistinct(t, 1, 5*time.Second)
	var req struct {
		Method string `json:"method"`
		ID     string `json:"id"`
	}
	require.NoError(t, json.Unmarshal([]byte(col.list()[0]), &req))
	require.Equal(t, "reboot", req.Method)
	require.Equal(t, client+":42", req.ID)
	eventually(t, 5*time.Second, func() bool {
		got, err := e.store.Get(t.Context(), client, "42")
		return err == nil && got.Status == protocol.StatusDelivered
	}, "command delivered after PUBACK")

	publish := func(payload string) {
		t.Helper()
		tok := c.Publish(protocol.DeviceResponsesTopic(device), 1, false, payload)
		require.True(t, tok.WaitTimeout(10*time.Second), "no PUBACK for %s", payload)
		require.NoError(t, tok.Error())
	}

	resp := fmt.Sprintf(`{"jsonrpc":"2.0","result":{"ok":true},"id":%q}`, req.ID)
	publish(resp)
	// The PUBACK came: the command is complete already.
	got := e.commandStatus(client, cmd.ID.Key())
	require.Equal(t, protocol.StatusSucceeded, got.Status, "command not complete when the PUBACK arrived")
	require.Contains(t, string(got.Response), `"ok":true`)
	require.Equal(t, int64(0), e.mailboxLen(device), "the answered command's entry left in the mailbox")
	require.Equal(t, float64(1), value(t, n.m.responses))

	dropped := []struct{ payload, reason string }{
		{`not json`, dropMalformed},
		{`{"jsonrpc":"2.0","id":"cli-resp:42"}`, dropMalformed},
		{`{"jsonrpc":"2.0","result":1,"id":42}`, dropID},
		{`{"jsonrpc":"2.0","result":1,"id":"no-colon"}`, dropID},
		{`{"jsonrpc":"2.0","result":1,"id":"cli-resp:999"}`, dropUnknown},
		{`{"jsonrpc":"2.0","result":1,"id":"cli-resp:x-1"}`, dropDevice},
		{`{"jsonrpc":"2.0","result":1,"id":"cli-resp:43"}`, dropNotSent},
	}
	for _, d := range dropped {
		before := value(t, n.m.dropped.WithLabelValues(d.reason))
		publish(d.payload)
		require.Equal(t, before+1, value(t, n.m.dropped.WithLabelValues(d.reason)), "%s", d.payload)
	}
	// The dropped answers changed nothing.
	require.Equal(t, protocol.StatusSent, e.commandStatus(client, other.ID.Key()).Status)
	require.Equal(t, protocol.StatusQueued, e.commandStatus(client, pending.ID.Key()).Status)
	require.Equal(t, protocol.StatusSucceeded, e.commandStatus(client, cmd.ID.Key()).Status)
	require.Equal(t, float64(1), value(t, n.m.responses))
	require.True(t, c.IsConnectionOpen())
}

// TestResponseHeldWhileRedisDown: while Redis briefly cannot take the
// completion step, the device gets no PUBACK yet and its connection stays
// open (it is not made to resend); once Redis answers again the step
// runs, and only then does the PUBACK go.
func TestResponseHeldWhileRedisDown(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// The outage (1.5 s) outlasts the answer grace: the PUBACK is still
	// held, never replaced by a closed connection.
	n := e.startNode(func(c *Config) { c.AnswerGrace = 300 * time.Millisecond })
	const device, client = "dev-dur", "cli-dur"
	e.sendCommand(client, device, "7", n.NodeID())
	outage := &redisOutage{}
	n.rdb.AddHook(outage)

	response := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   protocol.DeviceResponsesTopic(device),
		PacketID:    9,
		Payload:     []byte(`{"jsonrpc":"2.0","result":"done","id":"cli-dur:7"}`),
	}
	for _, version := range []byte{4, 5} {
		c := dialRaw(t, n.Addr(), version)
		require.Equal(t, byte(0), c.connect(device, token(t, device, auth.RoleDevice, time.Hour)).ReasonCode)
		if version == 5 {
			// The answer of the first round is complete: a new command.
			e.sendCommand(client, device, "8", n.NodeID())
			response.Payload = []byte(`{"jsonrpc":"2.0","result":"done","id":"cli-dur:8"}`)
		}
		outage.down.Store(true)
		require.NoError(t, c.send(response))
		const down = 1500 * time.Millisecond
		deadline := time.Now().Add(down)
		for time.Now().Before(deadline) {
			pk, err := c.recv(time.Until(deadline))
			if err != nil {
				var ne net.Error
				require.True(t, errors.As(err, &ne) && ne.Timeout(), "MQTT %d: connection closed while Redis was down: %v", version, err)
				break
			}
			require.NotEqual(t, packets.Puback, pk.FixedHeader.Type, "MQTT %d: PUBACK before the answer was completed", version)
			require.NotEqual(t, packets.Disconnect, pk.FixedHeader.Type, "MQTT %d: DISCONNECT while Redis was down", version)
		}
		outage.down.Store(false)
		for {
			pk, err := c.recv(10 * time.Second)
			require.NoError(t, err, "MQTT %d: no PUBACK after Redis came back", version)
			if pk.FixedHeader.Type == packets.Publish {
				continue // a command for the device (acknowledged or not, it does not matter here)
			}
			require.Equal(t, packets.Puback, pk.FixedHeader.Type, "MQTT %d", version)
			require.Equal(t, uint16(9), pk.PacketID)
			break
		}
		idKey := "7"
		if version == 5 {
			idKey = "8"
		}
		got := e.commandStatus(client, idKey)
		require.Equal(t, protocol.StatusSucceeded, got.Status, "MQTT %d: PUBACK before the command was complete", version)
		require.Contains(t, string(got.Response), `"done"`)
		_ = c.conn.Close()
		eventually(t, 5*time.Second, func() bool { return n.current(device) == nil }, "session gone")
	}
}

// TestHeldAnswerOffReadLoop: an answer Redis cannot take yet is held off
// the connection's read loop. The connection keeps reading (a PINGREQ is
// answered while the answer is held, so a device's keepalive does not
// close it), the answer is completed once Redis is back even though its
// connection ended meanwhile (a clean-session device would never resend
// it: the command must not end as timeout), and an answer to a command
// that is final already is counted as late, by cause.
func TestHeldAnswerOffReadLoop(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode(func(c *Config) { c.AnswerGrace = 300 * time.Millisecond })
	const device, client = "dev-held", "cli-held"
	e.sendCommand(client, device, "3", n.NodeID())
	e.sendCommand(client, device, "4", n.NodeID())
	outage := &redisOutage{}
	n.rdb.AddHook(outage)

	c := dialRaw(t, n.Addr(), 4)
	require.Equal(t, byte(0), c.connect(device, token(t, device, auth.RoleDevice, time.Hour)).ReasonCode)
	outage.down.Store(true)
	require.NoError(t, c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   protocol.DeviceResponsesTopic(device),
		PacketID:    5,
		Payload:     []byte(`{"jsonrpc":"2.0","result":"ran","id":"cli-held:3"}`),
	}))
	eventually(t, 5*time.Second, func() bool { return value(t, n.m.held) == 1 }, "the answer is not held")
	// A second answer is read (and held behind the first) while Redis is
	// down, and a PINGREQ is answered.
	require.NoError(t, c.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   protocol.DeviceResponsesTopic(device),
		PacketID:    7,
		Payload:     []byte(`{"jsonrpc":"2.0","result":"ran","id":"cli-held:4"}`),
	}))
	require.NoError(t, c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}))
	for {
		pk, err := c.recv(5 * time.Second)
		require.NoError(t, err, "no PINGRESP while an answer was held: the read loop is blocked")
		require.NotEqual(t, packets.Puback, pk.FixedHeader.Type, "PUBACK before the answer was completed")
		if pk.FixedHeader.Type == packets.Pingresp {
			break
		}
	}
	// The device goes away before Redis is back.
	_ = c.conn.Close()
	eventually(t, 5*time.Second, func() bool { return n.current(device) == nil }, "session gone")
	require.Equal(t, 2.0, value(t, n.m.held), "held answers after the connection ended")
	outage.down.Store(false)
	eventually(t, 10*time.Second, func() bool { return value(t, n.m.held) == 0 }, "the held answer was not completed")
	for _, idKey := range []string{"3", "4"} {
		got := e.commandStatus(client, idKey)
		require.Equal(t, protocol.StatusSucceeded, got.Status, "status of command %s whose answer was held, got %s want succeeded", idKey, got.Status)
		require.Contains(t, string(got.Response), `"ran"`)
	}
	require.Equal(t, 0.0, value(t, n.m.abandoned.WithLabelValues("shutdown")))

	// Another answer to the final command: late, by the device.
	c2 := dialRaw(t, n.Addr(), 4)
	require.Equal(t, byte(0), c2.connect(device, token(t, device, auth.RoleDevice, time.Hour)).ReasonCode)
	require.NoError(t, c2.send(packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   protocol.DeviceResponsesTopic(device),
		PacketID:    6,
		Payload:     []byte(`{"jsonrpc":"2.0","result":"again","id":"cli-held:3"}`),
	}))
	pk, err := c2.recv(5 * time.Second)
	require.NoError(t, err)
	require.Equal(t, packets.Puback, pk.FixedHeader.Type)
	require.Equal(t, 1.0, value(t, n.m.late.WithLabelValues(lateDevice)), "gw_answers_late_total{cause=device}")
	require.Equal(t, 0.0, value(t, n.m.late.WithLabelValues(lateHeld)), "gw_answers_late_total{cause=held}")
}

// TestHeldAnswersAckedInOrder: answers read while Redis cannot take them,
// and an answer read after them once Redis is back, are PUBACKed on the
// open connection in the order they arrived (MQTT 4.6), each only once
// its command is complete.
func TestHeldAnswersAckedInOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode(func(c *Config) { c.AnswerGrace = 300 * time.Millisecond })
	const device, client = "dev-order", "cli-order"
	for _, id := range []string{"1", "2", "3"} {
		e.sendCommand(client, device, id, n.NodeID())
	}
	outage := &redisOutage{}
	n.rdb.AddHook(outage)
	c := dialRaw(t, n.Addr(), 5)
	require.Equal(t, byte(0), c.connect(device, token(t, device, auth.RoleDevice, time.Hour)).ReasonCode)
	answer := func(pid uint16, id string) {
		require.NoError(t, c.send(packets.Packet{
			FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
			TopicName:   protocol.DeviceResponsesTopic(device),
			PacketID:    pid,
			Payload:     []byte(`{"jsonrpc":"2.0","result":"ok","id":"cli-order:` + id + `"}`),
		}))
	}
	outage.down.Store(true)
	answer(11, "1")
	answer(12, "2")
	eventually(t, 5*time.Second, func() bool { return value(t, n.m.held) == 2 }, "the two answers are not held")
	outage.down.Store(false)
	answer(13, "3") // read after the held ones: waits behind them
	var got []uint16
	for len(got) < 3 {
		pk, err := c.recv(10 * time.Second)
		require.NoError(t, err, "PUBACKs so far %v, want 11, 12, 13", got)
		if pk.FixedHeader.Type != packets.Puback {
			continue // a command for the device
		}
		got = append(got, pk.PacketID)
	}
	require.Equal(t, []uint16{11, 12, 13}, got, "PUBACK order: got %v, want the arrival order", got)
	for _, id := range []string{"1", "2", "3"} {
		st := e.commandStatus(client, id).Status
		require.Equal(t, protocol.StatusSucceeded, st, "command %s: got %s, want succeeded", id, st)
	}
}

// TestHeldAnswersKeepConnectionOpen: a connection whose answers are held
// (Redis cannot take them) is not closed when the gateway ends it (here:
// its token expires; shedding and the lame duck go the same way,
// closeAnswered) until they are acknowledged: it keeps reading (a
// PINGREQ is answered), gets its PUBACK once Redis is back, and only then
// the DISCONNECT (0xA0). The wait is bounded by the answer grace G: past
// it the connection is closed all the same, and the held answer is still
// completed (DESIGN §7a).
func TestHeldAnswersKeepConnectionOpen(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		grace   time.Duration
		restore bool // Redis comes back within the grace
	}{
		{"acknowledged within the grace", 20 * time.Second, true},
		{"closed past the grace", time.Second, false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t)
			n := e.startNode(func(c *Config) { c.AnswerGrace = tt.grace })
			device, client := fmt.Sprintf("dev-keep-%d", i), fmt.Sprintf("cli-keep-%d", i)
			h := holdAnswer(t, e, n, device, client, 2*time.Second)
			eventually(t, 5*time.Second, func() bool { return h.s.current() >= sessionClosing }, "the token did not expire")
			c, outage := h.c, h.outage
			if tt.restore {
				h.ackedWhileOpen(t)
			}
			pk, err := c.recv(tt.grace + 5*time.Second)
			require.NoError(t, err, "no DISCONNECT")
			require.Equal(t, packets.Disconnect, pk.FixedHeader.Type, "got packet type %d, want DISCONNECT", pk.FixedHeader.Type)
			require.Equal(t, packets.ErrMaxConnectTime.Code, pk.ReasonCode)
			if !tt.restore {
				require.Equal(t, 1.0, value(t, n.m.held), "the held answer was given up with its connection")
				outage.down.Store(false)
			}
			eventually(t, 10*time.Second, func() bool { return e.commandStatus(client, "1").Status == protocol.StatusSucceeded },
				"the held answer was not completed")
		})
	}
}

// TestShutdownWaitsForHeldAnswers: a push server shutting down (lame
// duck) closes a connection that holds answers only once they are
// acknowledged: the PUBACK comes first, then the DISCONNECT (0x8B: no
// other push server to send the device to), within the answer grace.
func TestShutdownWaitsForHeldAnswers(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode(func(c *Config) { c.AnswerGrace = 20 * time.Second })
	const device, client = "dev-lame", "cli-lame"
	h := holdAnswer(t, e, n, device, client, time.Hour)

	stopped := make(chan error, 1)
	go func() { stopped <- n.Shutdown(context.Background()) }()
	eventually(t, 10*time.Second, func() bool { return h.s.current() >= sessionClosing }, "the session was not shed")
	h.ackedWhileOpen(t)
	pk, err := h.c.recv(10 * time.Second)
	require.NoError(t, err, "no DISCONNECT")
	require.Equal(t, packets.Disconnect, pk.FixedHeader.Type, "got packet type %d, want DISCONNECT", pk.FixedHeader.Type)
	require.Equal(t, packets.ErrServerShuttingDown.Code, pk.ReasonCode)
	select {
	case err := <-stopped:
		if err != nil { // leaving the ring during the outage failed: Shutdown goes on
			require.ErrorIs(t, err, errOutage)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("Shutdown did not return")
	}
	require.Equal(t, protocol.StatusSucceeded, e.commandStatus(client, "1").Status)
}

// heldAnswer is an MQTT 5 connection of a device whose answer (packet ID
// 9, to command "1" of client) is held: Redis is down for the node.
type heldAnswer struct {
	c      *raw
	s      *session
	outage *redisOutage
}

// holdAnswer sends command "1" of client to device, connects the device
// (token valid for ttl), takes Redis away from the node and has the
// device answer, until the node holds the answer.
func holdAnswer(t *testing.T, e *env, n *Node, device, client string, ttl time.Duration) heldAnswer {
	t.Helper()
	e.sendCommand(client, device, "1", n.NodeID())
	h := heldAnswer{c: dialRaw(t, n.Addr(), 5), outage: &redisOutage{}}
	n.rdb.AddHook(h.outage)
	require.Equal(t, byte(0), h.c.connect(device, token(t, device, auth.RoleDevice, ttl)).ReasonCode)
	eventually(t, 5*time.Second, func() bool { h.s = n.current(device); return h.s != nil }, "no session")
	h.outage.down.Store(true)
	require.NoError(t, h.c.answer(device, 9, `{"jsonrpc":"2.0","result":"held","id":"`+client+`:1"}`))
	eventually(t, 5*time.Second, func() bool { return value(t, n.m.held) == 1 }, "the answer is not held")
	return h
}

// ackedWhileOpen checks that the connection is still open and read (a
// PINGREQ is answered), brings Redis back, and checks that the held
// answer's PUBACK is the next packet.
func (h heldAnswer) ackedWhileOpen(t *testing.T) {
	t.Helper()
	require.NoError(t, h.c.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Pingreq}}))
	pk, err := h.c.recv(5 * time.Second)
	require.NoError(t, err, "connection closed while it held an answer")
	require.Equal(t, packets.Pingresp, pk.FixedHeader.Type, "got packet type %d, want PINGRESP", pk.FixedHeader.Type)
	h.outage.down.Store(false)
	pk, err = h.c.recv(10 * time.Second)
	require.NoError(t, err, "no PUBACK once Redis was back")
	require.Equal(t, packets.Puback, pk.FixedHeader.Type, "got packet type %d, want the held PUBACK first", pk.FixedHeader.Type)
	require.Equal(t, uint16(9), pk.PacketID)
}
