package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/gwproc"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
)

// Issue 15 through the real binaries (one apiserver, one worker, one push
// server) on the real RabbitMQ, Redis and MQTT: sleepy devices over HTTP,
// devices that switch between MQTT and HTTP, one-way commands, and
// ordered lanes. The simulated fleet and the load run in the test's
// process, as devicesim fleet and devicesim load do.

// channelGateway starts the gateway and returns the globals devicesim's
// commands take.
func channelGateway(t *testing.T) (*gwproc.Gateway, *globals) {
	g := startGatewayOn(t, testenv.RedisURL(), 1, 1)
	return g, &globals{API: g.APIURL, Secret: g.Opts.Secret, stdout: io.Discard, stderr: io.Discard, log: telemetry.Discard()}
}

// startFleet starts o's devices and waits until each has connected or
// polled once.
func startFleet(t *testing.T, gl *globals, o FleetOptions) *Fleet {
	t.Helper()
	ctx, stop := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	t.Cleanup(func() { stop(); wg.Wait() })
	fl, err := StartFleet(ctx, gl, o, &wg)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := fl.WaitOnline(wctx); err != nil {
		t.Fatal(err)
	}
	return fl
}

// checkLoad fails t for every count of rep that is not what it should be:
// everything accepted and answered once, nothing lost, unexpected, wrong,
// conflicting or out of order, every result a success.
func checkLoad(t *testing.T, rep *LoadReport) {
	t.Helper()
	checks := []struct {
		name      string
		got, want int64
	}{
		{"accepted", rep.Accepted, rep.Sent},
		{"received", rep.Received, rep.Accepted},
		{"duplicated", rep.Duplicated, 0},
		{"lost", rep.Lost, 0},
		{"unexpected", rep.Unexpected, 0},
		{"wrong", rep.Wrong, 0},
		{"conflicting", rep.Conflicting, 0},
		{"out of order", rep.OutOfOrder, 0},
		{"succeeded", rep.Outcomes.Succeeded, rep.Accepted},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d (report %+v)", c.name, c.got, c.want, *rep)
		}
	}
	if rep.Sent == 0 {
		t.Error("nothing was sent")
	}
}

// TestDeviceChannels runs its parts one after the other on one gateway.
func TestDeviceChannels(t *testing.T) {
	t.Parallel()
	_, gl := channelGateway(t)
	t.Run("sleepy devices over HTTP", func(t *testing.T) { sleepyHTTPDevices(t, gl) })
	t.Run("devices switching between MQTT and HTTP", func(t *testing.T) { devicesSwitchChannels(t, gl) })
}

// TestLanes runs its parts one after the other on one gateway.
func TestLanes(t *testing.T) {
	t.Parallel()
	g, gl := channelGateway(t)
	t.Run("1,000 in order past an expiry", func(t *testing.T) { laneInOrder(t, g, gl) })
	t.Run("PUBACK mode", func(t *testing.T) { lanePUBACKInOrder(t, gl) })
	t.Run("over HTTP", func(t *testing.T) { laneOverHTTP(t, gl) })
}

// sleepyHTTPDevices: devices that wake every 5 s and poll over HTTP get
// the commands queued while they slept and answer them; the round trip
// shows the sleep.
func sleepyHTTPDevices(t *testing.T, gl *globals) {
	fl := startFleet(t, gl, FleetOptions{Devices: 5, Prefix: "sleepy-", HTTP: true,
		Poll: HTTPChannel{Wake: 5 * time.Second, Max: 10}})
	// Every device has polled once and sleeps now: what the load sends
	// waits in their mailboxes until they wake.
	rep, err := RunLoad(t.Context(), gl, LoadOptions{Clients: 2, ClientPrefix: "sleepy-app-", Devices: 5, Prefix: "sleepy-",
		Rate: 20, Duration: time.Second, Method: "echo", Timeout: 10 * time.Second, ExpiresIn: time.Minute,
		Drain: 30 * time.Second, MaxInflight: 16})
	if err != nil {
		t.Fatal(err)
	}
	checkLoad(t, rep)
	ft := fl.Totals()
	if ft.Polls <= 5 || ft.Connects != 0 {
		t.Errorf("fleet: %d polls, %d MQTT connects; want more polls than devices (they woke) and no MQTT", ft.Polls, ft.Connects)
	}
	if rep.RoundTrip.Max < 1000 {
		t.Errorf("round trip max %.0f ms; want the devices' sleep to show (≥ 1 s)", rep.RoundTrip.Max)
	}
}

// devicesSwitchChannels: devices that alternate between MQTT and HTTP
// polls every second lose nothing and get nothing twice; one-way
// commands to devices that never answer succeed by their PUBACK (or the
// poll's ack).
func devicesSwitchChannels(t *testing.T, gl *globals) {
	fl := startFleet(t, gl, FleetOptions{Devices: 4, Prefix: "sw-", Switch: time.Second,
		Poll: HTTPChannel{Wake: 100 * time.Millisecond, Max: 10}})
	rep, err := RunLoad(t.Context(), gl, LoadOptions{Clients: 2, ClientPrefix: "sw-app-", Devices: 4, Prefix: "sw-",
		Rate: 40, Duration: 5 * time.Second, Method: "echo", Timeout: 20 * time.Second, ExpiresIn: time.Minute,
		Drain: 60 * time.Second, MaxInflight: 32})
	if err != nil {
		t.Fatal(err)
	}
	checkLoad(t, rep)
	if ft := fl.Totals(); ft.Polls == 0 || ft.Connects <= 4 {
		t.Errorf("fleet: %d polls, %d MQTT connects; want both channels used, devices back on MQTT after HTTP", ft.Polls, ft.Connects)
	}

	// One-way commands to devices that never answer: succeeded at the
	// PUBACK (MQTT) or at the next poll's ack (HTTP).
	startFleet(t, gl, FleetOptions{Devices: 2, Prefix: "mute-", Switch: time.Second,
		Poll:      HTTPChannel{Wake: 100 * time.Millisecond, Max: 10},
		Behaviour: Behaviour{DropRate: 1}})
	rep, err = RunLoad(t.Context(), gl, LoadOptions{Clients: 1, ClientPrefix: "ow-", Devices: 2, Prefix: "mute-",
		Rate: 20, Duration: 3 * time.Second, Method: "led", OneWay: true, ExpiresIn: time.Minute,
		Drain: 30 * time.Second, MaxInflight: 16})
	if err != nil {
		t.Fatal(err)
	}
	checkLoad(t, rep)
}

// laneInOrder: 1,000 commands in one lane of a device that answers after
// a few ms arrive in acceptance order (load's check); a command in the
// middle of the lane that expires while it waits does not stop it.
func laneInOrder(t *testing.T, g *gwproc.Gateway, gl *globals) {
	startFleet(t, gl, FleetOptions{Devices: 1, Prefix: "lane-", Behaviour: Behaviour{Latency: 2 * time.Millisecond}})

	type outcome struct {
		rep *LoadReport
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		rep, err := RunLoad(t.Context(), gl, LoadOptions{Clients: 1, ClientPrefix: "order-", Devices: 1, Prefix: "lane-",
			Rate: 200, Count: 1000, Method: "seq", Lane: "valve", Timeout: 30 * time.Second,
			ExpiresIn: 5 * time.Minute, Drain: 120 * time.Second, MaxInflight: 64})
		done <- outcome{rep, err}
	}()

	// In the middle of the load: a command that holds the lane for 1.5 s,
	// one behind it that expires after 1 s, and one behind that.
	tok, err := g.Token("client", "mid", []string{"lane-*"})
	if err != nil {
		t.Fatal(err)
	}
	api := NewAPI(g.APIURL)
	// Once the device view shows commands waiting in the lane, the load
	// fills it: what follows lands in its middle.
	for deadline := time.Now().Add(time.Minute); ; {
		var dv struct {
			Lanes []struct {
				Name    string `json:"name"`
				Waiting int    `json:"waiting"`
			} `json:"lanes"`
		}
		if _, err := api.Do(t.Context(), http.MethodGet, "/v1/devices/lane-0", tok, nil, &dv); err != nil {
			t.Fatalf("GET the device: %v", err)
		}
		if len(dv.Lanes) == 1 && dv.Lanes[0].Name == "valve" && dv.Lanes[0].Waiting > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no command waited in the lane within a minute: %+v", dv)
		}
		time.Sleep(20 * time.Millisecond)
	}
	for _, c := range []struct {
		id, method, params string
		expiresIn          time.Duration
	}{
		{"hold", "sleep", `{"ms":1500}`, 5 * time.Minute},
		{"short", "ping", ``, time.Second},
		{"after", "ping", ``, 5 * time.Minute},
	} {
		body := fmt.Sprintf(`{"jsonrpc":"2.0","method":%q,"id":%q}`, c.method, c.id)
		if c.params != "" {
			body = fmt.Sprintf(`{"jsonrpc":"2.0","method":%q,"params":%s,"id":%q}`, c.method, c.params, c.id)
		}
		if _, status, err := api.Send(t.Context(), tok, "lane-0", []byte(body),
			SendOptions{Timeout: 30 * time.Second, ExpiresIn: c.expiresIn, Lane: "valve"}); err != nil || status != http.StatusAccepted {
			t.Fatalf("POST %s: %d, %v; want 202", c.id, status, err)
		}
	}
	final := func(id string) map[string]json.RawMessage {
		var v map[string]json.RawMessage
		for deadline := time.Now().Add(5 * time.Minute); time.Now().Before(deadline); {
			if _, err := api.Do(t.Context(), http.MethodGet, "/v1/commands/"+url.PathEscape(id)+"?wait=30s", tok, nil, &v); err != nil {
				t.Fatalf("GET %s: %v", id, err)
			}
			var st protocol.Status
			_ = json.Unmarshal(v["status"], &st)
			if st.Final() {
				return v
			}
		}
		t.Fatalf("%s not final after 5 minutes: %v", id, v)
		return nil
	}
	wantStatus := map[string]protocol.Status{"hold": protocol.StatusSucceeded, "short": protocol.StatusExpired, "after": protocol.StatusSucceeded}
	views := map[string]map[string]json.RawMessage{}
	for _, id := range []string{"hold", "short", "after"} {
		views[id] = final(id)
		var st protocol.Status
		_ = json.Unmarshal(views[id]["status"], &st)
		if st != wantStatus[id] {
			t.Errorf("%s ended %s, want %s: %s", id, st, wantStatus[id], views[id]["response"])
		}
	}
	var holdDone, afterSent time.Time
	_ = json.Unmarshal(views["hold"]["finished_at"], &holdDone)
	_ = json.Unmarshal(views["after"]["sent_at"], &afterSent)
	if afterSent.Before(holdDone) {
		t.Errorf("after went into the mailbox at %s, before hold ended at %s", afterSent, holdDone)
	}

	o := <-done
	if o.err != nil {
		t.Fatal(o.err)
	}
	checkLoad(t, o.rep)
	if o.rep.Sent != 1000 {
		t.Errorf("sent %d commands in the lane, want 1,000", o.rep.Sent)
	}
	t.Logf("lane of %d commands: throughput %.0f/s, round trip p50 %.0f ms, max %.0f ms",
		o.rep.Accepted, o.rep.Throughput, o.rep.RoundTrip.P50, o.rep.RoundTrip.Max)
}

// lanePUBACKInOrder: with lane_mode=puback a lane moves on at each
// delivery, so a device that answers slowly holds several of its
// commands at once, and still receives them in acceptance order.
func lanePUBACKInOrder(t *testing.T, gl *globals) {
	startFleet(t, gl, FleetOptions{Devices: 2, Prefix: "pl-", Behaviour: Behaviour{Latency: 50 * time.Millisecond}})
	rep, err := RunLoad(t.Context(), gl, LoadOptions{Clients: 1, ClientPrefix: "pub-", Devices: 2, Prefix: "pl-",
		Rate: 100, Count: 150, Method: "seq", Lane: "pump", LaneMode: protocol.LaneModePUBACK, Timeout: 30 * time.Second,
		ExpiresIn: 5 * time.Minute, Drain: 60 * time.Second, MaxInflight: 64})
	if err != nil {
		t.Fatal(err)
	}
	checkLoad(t, rep)
	t.Logf("puback lanes of %d commands: throughput %.0f/s, round trip p50 %.0f ms",
		rep.Accepted, rep.Throughput, rep.RoundTrip.P50)
}

// laneOverHTTP: lanes hold for devices polling over HTTP too, in both
// modes (puback: the lane moves on at the ack of the next poll).
func laneOverHTTP(t *testing.T, gl *globals) {
	startFleet(t, gl, FleetOptions{Devices: 2, Prefix: "hl-", HTTP: true, Poll: HTTPChannel{Wake: 20 * time.Millisecond, Max: 10}})
	for _, mode := range []string{"", protocol.LaneModePUBACK} {
		rep, err := RunLoad(t.Context(), gl, LoadOptions{Clients: 1, ClientPrefix: "http" + mode + "-", Devices: 2, Prefix: "hl-",
			Rate: 50, Count: 60, Method: "seq", Lane: "door", LaneMode: mode, Timeout: 30 * time.Second,
			ExpiresIn: 5 * time.Minute, Drain: 60 * time.Second, MaxInflight: 32})
		if err != nil {
			t.Fatal(err)
		}
		checkLoad(t, rep)
		t.Logf("lane mode %q over HTTP: %d commands, %.0f/s, p50 %.0f ms", mode, rep.Accepted, rep.Throughput, rep.RoundTrip.P50)
	}
}
