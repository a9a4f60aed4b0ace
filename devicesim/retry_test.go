package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
)

// TestRetryPolicy drives retry policies (issue 14) through the real
// binaries, from the POST to the client's MQTT subscription: simulated
// devices that fail the first two attempts of every command
// (--fail-first 2), one that refuses the first attempt with an MQTT 5
// PUBACK (--refuse-first 1), and a device that is never online (expired,
// and a full mailbox: rejected). Each command's client gets exactly one result, the
// last attempt's, with "attempts"; its record says the same.
func TestRetryPolicy(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	t.Parallel()
	e := newScenarioEnv(t, testenv.RedisURL(), "GW_MAILBOX_CAP=2")
	gl := &globals{API: e.gw.APIURL, Secret: e.gw.Opts.Secret, stdout: io.Discard, stderr: io.Discard, log: telemetry.Discard()}
	startFleet(t, gl, FleetOptions{Devices: 4, Prefix: "rty-", Connect: 4, Behaviour: Behaviour{FailFirst: 2}})
	startFleet(t, gl, FleetOptions{Devices: 1, Prefix: "rty-refuse-", Connect: 1, Behaviour: Behaviour{RefuseFirst: 1}})

	const client = "rty-app"
	token := e.tok("client", client, "rty-*")
	var mu sync.Mutex
	results := map[string][]Result{}  // by the result's id key
	arrived := map[string]time.Time{} // when the first result of an id key arrived
	sess := NewClientSession(client, token, e.api, func(r Result) {
		if id, err := protocol.ParseID(r.Resp.ID); err == nil {
			mu.Lock()
			results[id.Key()] = append(results[id.Key()], r)
			if _, ok := arrived[id.Key()]; !ok {
				arrived[id.Key()] = time.Now()
			}
			mu.Unlock()
		}
	})
	stop, err := connectClient(t.Context(), sess, client)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	// only waits for id's result, then until nothing more for id is on its
	// way (settled), and wants exactly one.
	only := func(t *testing.T, id string) Result {
		t.Helper()
		for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			mu.Lock()
			n := len(results[id])
			mu.Unlock()
			if n > 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no result for %s within 60s", id)
			}
		}
		e.settled(client, id)
		mu.Lock()
		defer mu.Unlock()
		if got := results[id]; len(got) != 1 {
			t.Errorf("%d results for %s, want exactly 1", len(got), id)
		}
		return results[id][0]
	}
	type view struct {
		Status    protocol.Status `json:"status"`
		Attempts  int             `json:"attempts"`
		Tries     int             `json:"tries"`
		RetryOn   string          `json:"retry_on"`
		RetriedOn string          `json:"retried_on"`
	}
	record := func(t *testing.T, id string) view {
		t.Helper()
		var v view
		if _, err := e.api.Do(t.Context(), http.MethodGet, "/v1/commands/"+id, token, nil, &v); err != nil {
			t.Fatalf("GET %s: %v", id, err)
		}
		return v
	}
	send := func(t *testing.T, device, id string, o SendOptions) {
		t.Helper()
		req := fmt.Sprintf(`{"jsonrpc":"2.0","method":"echo","params":{"n":1},"id":%q}`, id)
		if _, status, err := e.api.Send(t.Context(), token, device, []byte(req), o); err != nil || status != http.StatusAccepted {
			t.Fatalf("POST %s to %s = %d, %v; want 202", id, device, status, err)
		}
	}

	// within bounds the time from the POST to the result of the cases
	// that wait (a backoff, not_before) on devices that answer at once:
	// the waits plus a few timer ticks (200 ms) and steps, with room for
	// a loaded machine. Right after the gateway started, the partition
	// owner used to hold these timers for its answer grace (10 s): the
	// first of these cases, within 10 s of the start, took that long.
	const within = 5 * time.Second
	tests := []struct {
		name, device, id string
		o                SendOptions
		code             int             // the result's error code, 0 for a success
		status           protocol.Status // the record's
		attempts         int
		retriedOn        string
		earliest, within time.Duration // the result arrives in [earliest, within] after the POST; within 0: no bound
	}{
		{"fails twice then succeeds", "rty-0", "twice", SendOptions{Timeout: 10 * time.Second, Retry: RetryOptions{Retries: 2, On: "device_error"}},
			0, protocol.StatusSucceeded, 3, "device_error", 0, 0},
		{"the attempts run out", "rty-1", "short", SendOptions{Timeout: 10 * time.Second, Retry: RetryOptions{Retries: 1, On: "timeout,device_error"}},
			SimulatedFailureCode, protocol.StatusFailed, 2, "device_error", 0, 0},
		{"device_error not retried", "rty-2", "not-on", SendOptions{Timeout: 10 * time.Second, Retry: RetryOptions{Retries: 2}},
			SimulatedFailureCode, protocol.StatusFailed, 1, "", 0, 0},
		{"with a backoff", "rty-3", "backoff", SendOptions{Timeout: 10 * time.Second, Retry: RetryOptions{Retries: 2, On: "device_error", Backoff: "200ms,2"}},
			0, protocol.StatusSucceeded, 3, "device_error", 600 * time.Millisecond, within},
		{"scheduled a second ahead", "rty-3", "later", SendOptions{Timeout: 10 * time.Second, NotBefore: "1s", Retry: RetryOptions{Retries: 2, On: "device_error"}},
			0, protocol.StatusSucceeded, 3, "device_error", time.Second, within},
		{"refused once (MQTT 5 PUBACK 0x87), then answered", "rty-refuse-0", "refused", SendOptions{Timeout: 10 * time.Second, Retry: RetryOptions{Retries: 1, On: "rejected"}},
			0, protocol.StatusSucceeded, 2, "rejected", 0, 0},
		{"refused, rejected not retried", "rty-refuse-0", "refused-final", SendOptions{Timeout: 10 * time.Second, Retry: RetryOptions{Retries: 1}},
			protocol.CodeRejected, protocol.StatusRejected, 1, "", 0, 0},
		{"expired every time", "rty-offline", "exp", SendOptions{ExpiresIn: time.Second, Retry: RetryOptions{Retries: 2, On: "expired"}},
			protocol.CodeExpired, protocol.StatusExpired, 3, "expired", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			posted := time.Now()
			send(t, tt.device, tt.id, tt.o)
			r := only(t, tt.id)
			mu.Lock()
			took := arrived[tt.id].Sub(posted)
			mu.Unlock()
			if tt.within > 0 && (took < tt.earliest-50*time.Millisecond || took > tt.within) {
				t.Errorf("the result arrived %v after the POST, want between %v and %v", took, tt.earliest, tt.within)
			}
			if got := gatewayCode(r.Resp); got != tt.code || r.Attempts != tt.attempts {
				t.Errorf("result %+v: code %d attempts %d, want %d, %d", r.Resp, got, r.Attempts, tt.code, tt.attempts)
			}
			if v := record(t, tt.id); v.Status != tt.status || v.Attempts != tt.attempts || v.Tries != tt.attempts-1 || v.RetriedOn != tt.retriedOn {
				t.Errorf("record %+v, want %s with attempts %d, tries %d, retried on %q", v, tt.status, tt.attempts, tt.attempts-1, tt.retriedOn)
			}
		})
	}

	t.Run("send --not-before", func(t *testing.T) {
		cli := func(args ...string) (string, error) {
			var out bytes.Buffer
			err := run(t.Context(), append([]string{"send", "--api", e.gw.APIURL, "--secret", e.gw.Opts.Secret,
				"--client", "rty-cli", "--method", "echo", "--retries", "2", "--retry-on", "device_error"}, args...),
				func(string) string { return "" }, &out)
			return out.String(), err
		}
		posted := time.Now()
		out, err := cli("--device", "rty-2", "--id", "cli-later", "--not-before", "1s")
		took := time.Since(posted)
		if err != nil || !strings.Contains(out, `"result"`) {
			t.Fatalf("send --not-before 1s: %v; output %s; want a result", err, out)
		}
		if took < time.Second {
			t.Errorf("send --not-before 1s got its result %v after the POST, want at least 1s", took)
		}
		for _, bad := range [][]string{
			{"--device", "rty-2", "--id", "cli-bad", "--not-before", "yesterday"},
			{"--devices", "rty-1,rty-2", "--id", "cli-bad-g", "--not-before", "1s"},
		} {
			if out, err := cli(bad...); err == nil {
				t.Errorf("send %v: no error (output %s), want one", bad, out)
			}
		}
	})

	t.Run("a full mailbox, rejected twice", func(t *testing.T) {
		// rty-full is never online: two commands fill its mailbox
		// (GW_MAILBOX_CAP=2), the third is rejected, tried again at once,
		// rejected again.
		for _, id := range []string{"fill-1", "fill-2"} {
			send(t, "rty-full", id, SendOptions{})
			for deadline := time.Now().Add(30 * time.Second); record(t, id).Status != protocol.StatusSent; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("%s not sent within 30s", id)
				}
			}
		}
		send(t, "rty-full", "full", SendOptions{Retry: RetryOptions{Retries: 1, On: "rejected"}})
		r := only(t, "full")
		if got := gatewayCode(r.Resp); got != protocol.CodeRejected || r.Attempts != 2 {
			t.Errorf("result %+v: code %d attempts %d, want %d, 2", r.Resp, got, r.Attempts, protocol.CodeRejected)
		}
		var data struct {
			Attempts int `json:"attempts"`
		}
		if r.Resp.Error != nil {
			_ = json.Unmarshal(r.Resp.Error.Data, &data)
		}
		if data.Attempts != 2 {
			t.Errorf("result's error data %s, want attempts 2", r.Resp.Error.Data)
		}
	})

	t.Run("a group's children inherit the policy", func(t *testing.T) {
		devices := []string{"rty-0", "rty-1", "rty-2", "rty-3"}
		req := json.RawMessage(`{"jsonrpc":"2.0","method":"echo","id":"grp"}`)
		o := GroupOptions{Timeout: 10 * time.Second, AbortAfter: "1", Retry: RetryOptions{Retries: 2, On: "device_error"}}
		if _, status, err := e.api.SendGroup(t.Context(), token, req, devices, "", o); err != nil || status != http.StatusAccepted {
			t.Fatalf("POST group = %d, %v; want 202", status, err)
		}
		for _, d := range devices {
			child := "grp:" + d
			r := only(t, child)
			if r.Resp.Error != nil || r.Attempts != 3 {
				t.Errorf("child %s: result %+v attempts %d, want a success after 3 attempts", child, r.Resp, r.Attempts)
			}
		}
		st, err := e.api.Group(t.Context(), token, "grp", 10*time.Second)
		if err != nil || !st.Done || st.Counts["succeeded"] != len(devices) || st.Failures != 0 {
			t.Errorf("group %+v, %v; want done, %d succeeded, no failures (abort_after 1 counts only final failures)", st, err, len(devices))
		}
	})
}
