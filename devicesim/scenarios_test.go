package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	mqtt "github.com/eclipse/paho.mqtt.golang"
	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/gwproc"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
)

// scenarioEnv is a running gateway (real binaries: apiserver, one worker,
// one push server) with MQTT clients that record every result they get.
type scenarioEnv struct {
	t    *testing.T
	gw   *gwproc.Gateway
	api  *API
	addr string // the push server's MQTT address
	tok  func(role, sub string, devices ...string) string
	// rdb and keys read the gateway's state in Redis, where the tests
	// look for evidence that a step has passed.
	rdb        redis.UniversalClient
	keys       protocol.Keys
	partitions int

	mu      sync.Mutex
	results map[string][]*protocol.Response // by client, then the result's id
}

func newScenarioEnv(t *testing.T, redisURL string, extraEnv ...string) *scenarioEnv {
	g := startGatewayOn(t, redisURL, 1, 1, extraEnv...)
	e := &scenarioEnv{t: t, gw: g, api: NewAPI(g.APIURL), addr: g.PushAddrs[0], results: map[string][]*protocol.Response{},
		keys: protocol.NewKeys(g.Opts.Namespace), partitions: protocol.DefaultPartitions}
	c := config.Common{RedisURL: redisURL}
	rdb, err := c.NewRedis(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	e.rdb = rdb
	e.tok = func(role, sub string, devices ...string) string {
		tok, err := g.Token(role, sub, devices)
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	return e
}

// connect opens an MQTT session for identity with the token of role.
func (e *scenarioEnv) connect(identity, role string, manualAck bool, devices ...string) mqtt.Client {
	e.t.Helper()
	opts := mqtt.NewClientOptions().AddBroker("tcp://" + e.addr).
		SetClientID(identity).SetUsername(identity).SetPassword(e.tok(role, identity, devices...)).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(5 * time.Second).SetAutoAckDisabled(manualAck)
	c := mqtt.NewClient(opts)
	tok := c.Connect()
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		e.t.Fatalf("connect %s: %v", identity, tok.Error())
	}
	e.t.Cleanup(func() { c.Disconnect(100) })
	return c
}

func (e *scenarioEnv) subscribe(c mqtt.Client, filter string, h mqtt.MessageHandler) {
	e.t.Helper()
	tok := c.Subscribe(filter, 1, h)
	if !tok.WaitTimeout(5*time.Second) || tok.Error() != nil {
		e.t.Fatalf("subscribe %s: %v", filter, tok.Error())
	}
}

// client connects a client that may command devices and records the
// results it receives.
func (e *scenarioEnv) client(name string, devices ...string) string {
	c := e.connect(name, "client", false, devices...)
	e.subscribe(c, protocol.ClientResultsFilter(name), func(_ mqtt.Client, m mqtt.Message) {
		r, err := protocol.ParseResponse(m.Payload())
		if err != nil {
			e.t.Errorf("client %s got a malformed result %s: %v", name, m.Payload(), err)
			return
		}
		e.mu.Lock()
		e.results[name+"|"+string(r.ID)] = append(e.results[name+"|"+string(r.ID)], r)
		e.mu.Unlock()
	})
	return e.tok("client", name, devices...)
}

// device connects a device whose handler gets each command.
func (e *scenarioEnv) device(name string, manualAck bool, h mqtt.MessageHandler) mqtt.Client {
	c := e.connect(name, "device", manualAck)
	e.subscribe(c, protocol.DeviceCommandsTopic(name), h)
	return c
}

// publishAnswer publishes a device's response and waits for its PUBACK.
func publishAnswer(t *testing.T, c mqtt.Client, device, payload string) {
	tok := c.Publish(protocol.DeviceResponsesTopic(device), 1, false, payload)
	if !tok.WaitTimeout(10*time.Second) || tok.Error() != nil {
		t.Errorf("device %s: response not acknowledged: %v", device, tok.Error())
	}
}

// send posts one command with a string id and wants 202.
func (e *scenarioEnv) send(token, device, id, method string, timeout, expiresIn time.Duration) {
	e.t.Helper()
	req := fmt.Sprintf(`{"jsonrpc":"2.0","method":%q,"id":%q}`, method, id)
	_, status, err := e.api.SendCommand(e.t.Context(), token, device, []byte(req), timeout, expiresIn)
	if err != nil || status != http.StatusAccepted {
		e.t.Fatalf("POST %s to %s: status %d, %v; want 202", id, device, status, err)
	}
}

// result waits for the client's result for id and for the evidence that
// nothing more for id is on its way to the client (settled), and returns
// it (at least once: copies of the same result are allowed, two different
// ones are not).
func (e *scenarioEnv) result(client, id string) *protocol.Response {
	e.t.Helper()
	key := client + "|" + fmt.Sprintf("%q", id)
	deadline := time.Now().Add(30 * time.Second)
	for {
		e.mu.Lock()
		got := e.results[key]
		e.mu.Unlock()
		if len(got) > 0 {
			e.settled(client, id)
			e.mu.Lock()
			got = e.results[key]
			e.mu.Unlock()
			for _, r := range got[1:] {
				a, _ := json.Marshal(got[0])
				b, _ := json.Marshal(r)
				if string(a) != string(b) {
					e.t.Errorf("%s got two different results for %s: %s and %s", client, id, a, b)
				}
			}
			return got[0]
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s got no result for %s within 30s", client, id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// settled waits until the relay of the client's result for id is done
// (the id's claim in the client's partition is final, which the relay
// writes) and the client has acknowledged every result sent to it (its
// mailbox is empty: a PUBACK removes a result's entry, and paho sends it
// after the handler that records the result returned). Then every result
// for id that the gateway sent has been recorded. It fails t after 30 s.
func (e *scenarioEnv) settled(client, id string) {
	e.t.Helper()
	pk := e.keys.Part(protocol.Partition(client, e.partitions))
	var state string
	var waiting int64
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var err error
		state, err = e.rdb.HGet(e.t.Context(), pk.Claim(client, id), "state").Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			e.t.Fatalf("cannot read the claim of %s's %s: %v", client, id, err)
		}
		waiting, err = e.rdb.XLen(e.t.Context(), pk.Mailbox(client)).Result()
		if err != nil {
			e.t.Fatalf("cannot read %s's mailbox: %v", client, err)
		}
		if state == "final" && waiting == 0 {
			return
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("%s's %s not settled within 30s: claim state %q, want final; %d results in the mailbox, want 0", client, id, state, waiting)
		}
	}
}

// late is the late answer recorded in the command record of client's id
// to device ("" when none).
func (e *scenarioEnv) late(client, device, id string) string {
	e.t.Helper()
	pk := e.keys.Part(protocol.Partition(device, e.partitions))
	v, err := e.rdb.HGet(e.t.Context(), pk.Command(client, id), "late").Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		e.t.Fatalf("cannot read the record of %s's %s: %v", client, id, err)
	}
	return v
}

// copies is how many results for id client has received so far.
func (e *scenarioEnv) copies(client, id string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.results[client+"|"+fmt.Sprintf("%q", id)])
}

// status reads a command's record through the API.
func (e *scenarioEnv) status(token, id string) (st protocol.Status, delivered bool) {
	e.t.Helper()
	var v struct {
		Status      protocol.Status `json:"status"`
		DeliveredAt time.Time       `json:"delivered_at"`
	}
	if _, err := e.api.Do(e.t.Context(), http.MethodGet, "/v1/commands/"+id, token, nil, &v); err != nil {
		e.t.Fatalf("GET %s: %v", id, err)
	}
	return v.Status, !v.DeliveredAt.IsZero()
}

// waitStatus polls the command's status until it is want; false when it
// is not within timeout.
func (e *scenarioEnv) waitStatus(token, id string, want protocol.Status, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); ; time.Sleep(20 * time.Millisecond) {
		if st, _ := e.status(token, id); st == want {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
	}
}

// nothingWaits connects device and fails t if the first command it gets
// is not a marker sent after it connected: what ended before delivery
// must not reach it, and the mailbox streams in order, so anything left
// would come before the marker.
func (e *scenarioEnv) nothingWaits(t *testing.T, token, device string) {
	got := make(chan string, 4)
	e.device(device, false, func(_ mqtt.Client, m mqtt.Message) { got <- string(m.Payload()) })
	marker := "marker-" + device
	e.send(token, device, marker, "ping", 0, 0)
	select {
	case p := <-got:
		if !strings.Contains(p, ":"+marker+`"`) {
			t.Errorf("%s got a command that had ended: %s", device, p)
		}
	case <-time.After(30 * time.Second):
		t.Errorf("%s got nothing, not even the marker sent after it connected", device)
	}
}

// gatewayCode is the JSON-RPC error code of a result, 0 for a success.
func gatewayCode(r *protocol.Response) int {
	if r.Error == nil {
		return 0
	}
	return r.Error.Code
}

// TestScenarios drives each outcome of a command through the real
// binaries, from the POST to the client's MQTT subscription: success,
// device error, a one-way command, a scheduled one, no answer, offline past expires_in, cancel before
// delivery, a late answer after the timeout, a full device mailbox, the
// same id from two clients, and an answer that overtakes its PUBACK.
//
// It runs them with the state in the shared Redis server and in the local
// Redis Cluster (GW_REDIS_URL in the Cluster form), and the first two
// (success, device error) with it behind Sentinel: each form of
// GW_REDIS_URL carries a command from the POST to its one result.
func TestScenarios(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		url  func(testing.TB) string
		all  bool
	}{
		{"server", func(testing.TB) string { return testenv.RedisURL() }, true},
		{"cluster", testenv.RedisClusterURL, true},
		{"sentinel", testenv.RedisSentinelURL, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			runScenarios(t, tt.url(t), tt.all)
		})
	}
}

// runScenarios runs the scenarios of TestScenarios against a gateway whose
// state is in the Redis of redisURL; only the first two unless all.
func runScenarios(t *testing.T, redisURL string, all bool) {
	e := newScenarioEnv(t, redisURL, "GW_MAILBOX_CAP=2")
	app := e.client("app-sc", "sc-*")
	other := e.client("app-sc2", "sc-*")
	respond := func(c mqtt.Client, device string, m mqtt.Message, body string) {
		var req protocol.Request
		if err := json.Unmarshal(m.Payload(), &req); err != nil {
			t.Errorf("%s got a bad request %s: %v", device, m.Payload(), err)
			return
		}
		id, _ := json.Marshal(req.ID)
		go publishAnswer(t, c, device, fmt.Sprintf(`{"jsonrpc":"2.0",%s,"id":%s}`, body, id))
	}

	t.Run("success", func(t *testing.T) {
		e.device("sc-ok", false, func(c mqtt.Client, m mqtt.Message) { respond(c, "sc-ok", m, `"result":{"on":true}`) })
		e.send(app, "sc-ok", "ok-1", "switch", 0, 0)
		r := e.result("app-sc", "ok-1")
		if gatewayCode(r) != 0 || string(r.Result) != `{"on":true}` {
			t.Errorf("result = %+v, want the device's {\"on\":true}", r)
		}
		if n := e.copies("app-sc", "ok-1"); n != 1 {
			t.Errorf("app-sc got %d copies of the result of ok-1, want exactly 1", n)
		}
		if st, _ := e.status(app, "ok-1"); st != protocol.StatusSucceeded {
			t.Errorf("status = %s, want succeeded", st)
		}
	})

	t.Run("device error", func(t *testing.T) {
		e.device("sc-err", false, func(c mqtt.Client, m mqtt.Message) {
			respond(c, "sc-err", m, `"error":{"code":-32601,"message":"no such method"}`)
		})
		e.send(app, "sc-err", "err-1", "fly", 0, 0)
		if r := e.result("app-sc", "err-1"); gatewayCode(r) != -32601 {
			t.Errorf("result = %+v, want the device's -32601", r)
		}
		if st, _ := e.status(app, "err-1"); st != protocol.StatusFailed {
			t.Errorf("status = %s, want failed", st)
		}
	})

	if !all {
		return
	}

	t.Run("one-way", func(t *testing.T) {
		// The device answers anyway: the answer is kept as late, the
		// PUBACK was the success.
		e.device("sc-ow", false, func(c mqtt.Client, m mqtt.Message) { respond(c, "sc-ow", m, `"result":"done"`) })
		var acc Accepted
		code, err := e.api.Do(t.Context(), http.MethodPost, "/v1/devices/sc-ow/commands?one_way=true", app,
			[]byte(`{"jsonrpc":"2.0","method":"led","id":"ow-1"}`), &acc)
		if err != nil || code != http.StatusAccepted {
			t.Fatalf("POST one_way=true: %d, %v; want 202", code, err)
		}
		r := e.result("app-sc", "ow-1")
		if gatewayCode(r) != 0 || string(r.Result) != protocol.OneWayResult {
			t.Errorf("result = %+v, want %s", r, protocol.OneWayResult)
		}
		if st, delivered := e.status(app, "ow-1"); st != protocol.StatusSucceeded || !delivered {
			t.Errorf("status = %s (delivered %v), want succeeded after delivery", st, delivered)
		}
	})

	t.Run("scheduled", func(t *testing.T) {
		got := make(chan time.Time, 1)
		e.device("sc-later2", false, func(c mqtt.Client, m mqtt.Message) {
			select {
			case got <- time.Now():
			default:
			}
			respond(c, "sc-later2", m, `"result":"on time"`)
		})
		posted := time.Now()
		var acc Accepted
		code, err := e.api.Do(t.Context(), http.MethodPost, "/v1/devices/sc-later2/commands?not_before=3s", app,
			[]byte(`{"jsonrpc":"2.0","method":"wake","id":"sched-1"}`), &acc)
		if err != nil || code != http.StatusAccepted {
			t.Fatalf("POST not_before=3s: %d, %v; want 202", code, err)
		}
		if !e.waitStatus(app, "sched-1", protocol.StatusScheduled, 10*time.Second) {
			if st, _ := e.status(app, "sched-1"); st != protocol.StatusSucceeded {
				t.Errorf("status = %s, want scheduled while it waits", st)
			}
		}
		if r := e.result("app-sc", "sched-1"); gatewayCode(r) != 0 || string(r.Result) != `"on time"` {
			t.Errorf("result = %+v, want the device's", r)
		}
		select {
		case at := <-got:
			// Not early, and not one sweep or answer grace (10 s) late:
			// timer ticks are 200 ms, 2 s leave room for a loaded machine.
			if took := at.Sub(posted); took < 3*time.Second-100*time.Millisecond || took > 5*time.Second {
				t.Errorf("the device got the command %v after the POST, want between 3s and 5s", took)
			}
		default:
			t.Error("the device never got the command")
		}
	})

	t.Run("no answer", func(t *testing.T) {
		e.device("sc-mute", false, func(mqtt.Client, mqtt.Message) {})
		e.send(app, "sc-mute", "mute-1", "ping", time.Second, 0)
		if r := e.result("app-sc", "mute-1"); gatewayCode(r) != protocol.CodeTimeout {
			t.Errorf("result = %+v, want %d (timeout)", r, protocol.CodeTimeout)
		}
		if st, delivered := e.status(app, "mute-1"); st != protocol.StatusTimeout || !delivered {
			t.Errorf("status = %s (delivered %v), want timeout after delivery", st, delivered)
		}
	})

	t.Run("offline past expires_in", func(t *testing.T) {
		e.send(app, "sc-away", "away-1", "ping", 0, time.Second)
		if r := e.result("app-sc", "away-1"); gatewayCode(r) != protocol.CodeExpired {
			t.Errorf("result = %+v, want %d (expired)", r, protocol.CodeExpired)
		}
		if st, _ := e.status(app, "away-1"); st != protocol.StatusExpired {
			t.Errorf("status = %s, want expired", st)
		}
		e.nothingWaits(t, app, "sc-away") // the device connects afterwards
	})

	t.Run("cancel before delivery", func(t *testing.T) {
		e.send(app, "sc-later", "later-1", "ping", 0, time.Hour)
		var v struct {
			Status protocol.Status `json:"status"`
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			code, err := e.api.Do(t.Context(), http.MethodDelete, "/v1/commands/later-1", app, nil, &v)
			if err == nil && code == http.StatusOK {
				break
			}
			// 409 while the command is still pending (its publish not yet
			// confirmed): retry, as a client would.
			if time.Now().After(deadline) {
				t.Fatalf("DELETE = %d, %v; want 200", code, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if v.Status != protocol.StatusCancelled {
			t.Errorf("DELETE answered status %s, want cancelled", v.Status)
		}
		if r := e.result("app-sc", "later-1"); gatewayCode(r) != protocol.CodeCancelled {
			t.Errorf("result = %+v, want %d (cancelled)", r, protocol.CodeCancelled)
		}
		e.nothingWaits(t, app, "sc-later")
	})

	t.Run("late answer", func(t *testing.T) {
		held := make(chan mqtt.Message, 1)
		c := e.device("sc-slow", false, func(_ mqtt.Client, m mqtt.Message) { held <- m })
		e.send(app, "sc-slow", "slow-1", "ping", time.Second, 0)
		var m mqtt.Message
		select {
		case m = <-held:
		case <-time.After(10 * time.Second):
			t.Fatal("the device got no command")
		}
		if r := e.result("app-sc", "slow-1"); gatewayCode(r) != protocol.CodeTimeout {
			t.Fatalf("result = %+v, want %d (timeout)", r, protocol.CodeTimeout)
		}
		// The push server acknowledges an answer once it is recorded
		// (here: as late, in the command's record).
		var req protocol.Request
		if err := json.Unmarshal(m.Payload(), &req); err != nil {
			t.Fatalf("bad request %s: %v", m.Payload(), err)
		}
		id, _ := json.Marshal(req.ID)
		publishAnswer(t, c, "sc-slow", fmt.Sprintf(`{"jsonrpc":"2.0","result":"too late","id":%s}`, id))
		if late := e.late("app-sc", "sc-slow", "slow-1"); !strings.Contains(late, "too late") {
			t.Errorf("the record's late answer = %q after the answer's PUBACK, want the device's \"too late\"", late)
		}
		// result checks that no different result came for the id.
		if r := e.result("app-sc", "slow-1"); gatewayCode(r) != protocol.CodeTimeout {
			t.Errorf("after the late answer: result = %+v, want the timeout still", r)
		}
		if st, _ := e.status(app, "slow-1"); st != protocol.StatusTimeout {
			t.Errorf("status = %s, want timeout (final)", st)
		}
	})

	t.Run("full device mailbox", func(t *testing.T) {
		for _, id := range []string{"full-1", "full-2"} {
			e.send(app, "sc-full", id, "ping", 0, time.Hour)
		}
		// The worker takes commands in order: the first two fill the
		// mailbox (GW_MAILBOX_CAP=2) before the third is dispatched.
		if !e.waitStatus(app, "full-2", protocol.StatusSent, 10*time.Second) {
			t.Fatal("the first two commands were not sent")
		}
		e.send(app, "sc-full", "full-3", "ping", 0, time.Hour)
		if r := e.result("app-sc", "full-3"); gatewayCode(r) != protocol.CodeRejected {
			t.Errorf("result = %+v, want %d (rejected)", r, protocol.CodeRejected)
		}
		if st, _ := e.status(app, "full-3"); st != protocol.StatusRejected {
			t.Errorf("status = %s, want rejected", st)
		}
		// The two that fit are delivered once the device connects.
		e.device("sc-full", false, func(c mqtt.Client, m mqtt.Message) { respond(c, "sc-full", m, `"result":"ok"`) })
		for _, id := range []string{"full-1", "full-2"} {
			if r := e.result("app-sc", id); gatewayCode(r) != 0 {
				t.Errorf("%s: result = %+v, want success", id, r)
			}
		}
	})

	t.Run("same id from two clients", func(t *testing.T) {
		e.device("sc-twin", false, func(c mqtt.Client, m mqtt.Message) {
			var req struct {
				Method string `json:"method"`
			}
			_ = json.Unmarshal(m.Payload(), &req)
			respond(c, "sc-twin", m, fmt.Sprintf(`"result":%q`, req.Method))
		})
		e.send(app, "sc-twin", "twin", "from-app", 0, 0)
		e.send(other, "sc-twin", "twin", "from-other", 0, 0)
		if r := e.result("app-sc", "twin"); string(r.Result) != `"from-app"` {
			t.Errorf("app-sc's result = %+v, want its own \"from-app\"", r)
		}
		if r := e.result("app-sc2", "twin"); string(r.Result) != `"from-other"` {
			t.Errorf("app-sc2's result = %+v, want its own \"from-other\"", r)
		}
	})

	t.Run("answer before PUBACK", func(t *testing.T) {
		// The device answers, waits until the command has succeeded, and
		// only then acknowledges the command's PUBLISH.
		acked := make(chan struct{})
		e.device("sc-eager", true, func(c mqtt.Client, m mqtt.Message) {
			go func() {
				var req protocol.Request
				if err := json.Unmarshal(m.Payload(), &req); err != nil {
					t.Errorf("bad request %s: %v", m.Payload(), err)
					return
				}
				id, _ := json.Marshal(req.ID)
				publishAnswer(t, c, "sc-eager", fmt.Sprintf(`{"jsonrpc":"2.0","result":"first","id":%s}`, id))
				if !e.waitStatus(app, "eager-1", protocol.StatusSucceeded, 10*time.Second) {
					t.Error("the answer did not complete the command before its PUBACK")
				}
				m.Ack()
				close(acked)
			}()
		})
		e.send(app, "sc-eager", "eager-1", "ping", 0, 0)
		select {
		case <-acked:
		case <-time.After(20 * time.Second):
			t.Fatal("the device never acknowledged the command")
		}
		// The late PUBACK's delivered transition sets delivered_at; the
		// status stays succeeded.
		var st protocol.Status
		delivered := false
		for deadline := time.Now().Add(10 * time.Second); !delivered && time.Now().Before(deadline); {
			if st, delivered = e.status(app, "eager-1"); !delivered {
				time.Sleep(20 * time.Millisecond)
			}
		}
		if st != protocol.StatusSucceeded || !delivered {
			t.Errorf("status = %s (delivered_at set %v) 10s after the PUBACK, want succeeded with delivered_at", st, delivered)
		}
		if r := e.result("app-sc", "eager-1"); string(r.Result) != `"first"` {
			t.Errorf("result = %+v, want the device's \"first\"", r)
		}
	})
}
