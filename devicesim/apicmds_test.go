package main

import (
	"bytes"
	"context"
	"encoding/json"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/internal/testenv"
)

// cliRun runs devicesim with args (and --api api) and GW_AUTH_SECRET set
// to secret; it returns stdout, the error and how long it took.
func cliRun(t *testing.T, api, secret string, args ...string) (string, error, time.Duration) {
	t.Helper()
	var out bytes.Buffer
	getenv := func(k string) string {
		if k == "GW_AUTH_SECRET" {
			return secret
		}
		return ""
	}
	start := time.Now()
	err := run(t.Context(), append(args, "--api", api), getenv, &out)
	return out.String(), err, time.Since(start)
}

const testSecret = "devicesim-test-secret-0123456789abcdef"

// TestAPICommandsUsage: bad input fails before anything is sent, with
// exit status 1 (5 for a token of the wrong role), naming the cause.
func TestAPICommandsUsage(t *testing.T) {
	t.Parallel()
	clientTok, err := auth.Mint([]byte(testSecret), "app-1", auth.RoleClient, []string{"*"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Nothing listens here: a command that got as far as a request would
	// fail with 4, not the status wanted.
	api := "http://" + testenv.FreeAddr(t)
	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int
		wantMsg  []string
	}{
		{"get without an id", []string{"get"}, exitUsage, []string{"get takes 1 argument"}},
		{"--client differs from the token's sub", []string{"get", "x", "--token", clientTok, "--client", "app-2"}, exitUsage, []string{`"app-2"`, `"app-1"`}},
		{"--token not a JWT", []string{"get", "x", "--token", "nonsense"}, exitUsage, []string{"--token is not a JWT"}},
		{"cancel with neither id nor device", []string{"cancel"}, exitUsage, []string{"either a command id or --device"}},
		{"cancel with both", []string{"cancel", "x", "--device", "dev-1"}, exitUsage, []string{"either a command id or --device"}},
		{"list with a bad device", []string{"list", "--device", "no/such"}, exitUsage, []string{"not a valid device ID"}},
		{"list with a bad status", []string{"list", "--device", "dev-1", "--status", "sleeping"}, exitUsage, []string{`"sleeping" is not a status`}},
		{"list with a bad page size", []string{"list", "--device", "dev-1", "--page-size", "0"}, exitUsage, []string{"--page-size 0"}},
		{"wait with no time", []string{"wait", "x", "--timeout", "0s"}, exitUsage, []string{"--timeout must be positive"}},
		{"dead with a client token", []string{"dead", "--token", clientTok}, exitAuth, []string{"operator token", `"app-1"`}},
		{"replay without --client", []string{"replay", "x"}, exitUsage, []string{"client"}},
		{"connect a bad identity", []string{"connect", "a b"}, exitUsage, []string{"not a valid identity"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err, _ := cliRun(t, api, testSecret, tc.args...)
			if got := exitStatus(err); got != tc.wantCode {
				t.Fatalf("devicesim %v: exit status %d (%v), want %d", tc.args, got, err, tc.wantCode)
			}
			for _, m := range tc.wantMsg {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("devicesim %v: error %q, want it to name %s", tc.args, err, m)
				}
			}
		})
	}
}

// TestAPICommandsUnreachable: with nothing listening at --api, every API
// command fails within 2 s with exit status 4, naming the cause.
func TestAPICommandsUnreachable(t *testing.T) {
	t.Parallel()
	api := "http://" + testenv.FreeAddr(t)
	for _, args := range [][]string{
		{"get", "x"},
		{"list", "--device", "dev-1"},
		{"cancel", "x"},
		{"cancel", "--device", "dev-1"},
		{"wait", "x", "--timeout", "10s"},
		{"dead"},
		{"replay", "x", "--client", "app-1"},
		{"connect", "dev-1"},
	} {
		_, err, took := cliRun(t, api, testSecret, args...)
		if got := exitStatus(err); got != exitUnavailable {
			t.Errorf("devicesim %v: exit status %d (%v), want %d", args, got, err, exitUnavailable)
			continue
		}
		if took > 2*time.Second {
			t.Errorf("devicesim %v took %s, want under 2s", args, took)
		}
		for _, m := range []string{"unreachable", "connection refused", api} {
			if !strings.Contains(err.Error(), m) {
				t.Errorf("devicesim %v: error %q, want it to say %q", args, err, m)
			}
		}
	}
}

// TestAPICommands drives get, list, cancel, wait, dead, replay and
// connect against the real gateway, with --json and in the human form,
// and checks their output and exit statuses.
func TestAPICommands(t *testing.T) {
	g := startGatewayOn(t, testenv.RedisURL(), 1, 1)
	secret := g.Opts.Secret
	gl := &globals{API: g.APIURL, Secret: secret, stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}, log: telemetry.Discard()}

	// One device online that answers echo; "off-1" never connects.
	fleetCtx, stopFleet := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer func() { stopFleet(); wg.Wait() }()
	fl, err := StartFleet(fleetCtx, gl, FleetOptions{Devices: 1, Prefix: "on-", Connect: 1}, &wg)
	if err != nil {
		t.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := fl.WaitOnline(waitCtx); err != nil {
		t.Fatal(err)
	}

	tok, err := g.Token("client", "app-1", []string{"*"})
	if err != nil {
		t.Fatal(err)
	}
	api := NewAPI(g.APIURL)
	send := func(device, id string) {
		t.Helper()
		body := []byte(`{"jsonrpc":"2.0","method":"echo","params":{"id":"` + id + `"},"id":"` + id + `"}`)
		if _, _, err := api.SendCommand(t.Context(), tok, device, body, 30*time.Second, time.Hour); err != nil {
			t.Fatalf("cannot send %s to %s: %v", id, device, err)
		}
	}
	for _, id := range []string{"q1", "q2", "q3"} {
		send("off-1", id)
	}
	send("on-0", "w1")

	type cmdJSON struct {
		ID     string `json:"id"`
		Client string `json:"client"`
		Status string `json:"status"`
	}
	decode := func(t *testing.T, out string, v any) {
		t.Helper()
		if err := json.Unmarshal([]byte(out), v); err != nil {
			t.Fatalf("output is not JSON: %v\n%s", err, out)
		}
	}
	cli := func(t *testing.T, wantCode int, args ...string) string {
		t.Helper()
		out, err, _ := cliRun(t, g.APIURL, secret, args...)
		if got := exitStatus(err); got != wantCode {
			t.Fatalf("devicesim %v: exit status %d (%v), want %d\n%s", args, got, err, wantCode, out)
		}
		return out
	}

	// The steps build on each other: run in order.
	t.Run("get --json", func(t *testing.T) {
		var c cmdJSON
		decode(t, cli(t, 0, "get", "q1", "--client", "app-1", "--json"), &c)
		if c.ID != "q1" || c.Client != "app-1" || c.Status == "" || c.Status == "cancelled" {
			t.Errorf("get q1 = %+v, want q1 of app-1, not final", c)
		}
	})
	t.Run("get with the token", func(t *testing.T) {
		out := cli(t, 0, "get", "q1", "--token", tok)
		for _, want := range []string{"id:", "q1", "client:", "app-1", "device:", "off-1", "status:"} {
			if !strings.Contains(out, want) {
				t.Errorf("get q1 printed %q, want it to contain %q", out, want)
			}
		}
	})
	t.Run("get, not found", func(t *testing.T) {
		cli(t, exitNotFound, "get", "no-such", "--client", "app-1")
	})
	t.Run("list --json", func(t *testing.T) {
		var l struct{ Commands []cmdJSON }
		decode(t, cli(t, 0, "list", "--device", "off-1", "--client", "app-1", "--json"), &l)
		var ids []string
		for _, c := range l.Commands {
			ids = append(ids, c.ID)
		}
		sort.Strings(ids)
		if got, want := strings.Join(ids, ","), "q1,q2,q3"; got != want {
			t.Errorf("list --device off-1 = %s (sorted), want %s", got, want)
		}
	})
	t.Run("list follows next_cursor", func(t *testing.T) {
		var l struct{ Commands []cmdJSON }
		decode(t, cli(t, 0, "list", "--device", "off-1", "--client", "app-1", "--page-size", "1", "--json"), &l)
		if len(l.Commands) != 3 {
			t.Errorf("list --page-size 1 = %d commands, want all 3", len(l.Commands))
		}
	})
	t.Run("list --max", func(t *testing.T) {
		// --max 2 stops after two; the human form has a header and a line each.
		out := cli(t, 0, "list", "--device", "off-1", "--client", "app-1", "--max", "2")
		if got := len(strings.Split(strings.TrimSpace(out), "\n")); got != 3 {
			t.Errorf("list --max 2 printed %d lines, want 3 (a header and two commands):\n%s", got, out)
		}
	})
	t.Run("cancel --json", func(t *testing.T) {
		var c cmdJSON
		decode(t, cli(t, 0, "cancel", "q1", "--client", "app-1", "--json"), &c)
		if c.ID != "q1" || c.Status != "cancelled" {
			t.Errorf("cancel q1 = %+v, want q1 cancelled", c)
		}
	})
	t.Run("cancel again: conflict", func(t *testing.T) {
		out, err, _ := cliRun(t, g.APIURL, secret, "cancel", "q1", "--client", "app-1", "--json")
		if got := exitStatus(err); got != exitConflict {
			t.Fatalf("cancel q1 again: exit status %d (%v), want %d", got, err, exitConflict)
		}
		if !strings.Contains(out, "-32013") || !strings.Contains(err.Error(), "409") {
			t.Errorf("cancel q1 again printed %q, error %q; want the 409 body and status", out, err)
		}
	})
	t.Run("list --status cancelled", func(t *testing.T) {
		var l struct{ Commands []cmdJSON }
		decode(t, cli(t, 0, "list", "--device", "off-1", "--client", "app-1", "--status", "cancelled", "--json"), &l)
		if len(l.Commands) != 1 || l.Commands[0].ID != "q1" {
			t.Errorf("list --status cancelled = %+v, want q1 alone", l.Commands)
		}
	})
	t.Run("wait: ended other than succeeded", func(t *testing.T) {
		var c cmdJSON
		decode(t, cli(t, exitNotSucceded, "wait", "q1", "--client", "app-1", "--json"), &c)
		if c.Status != "cancelled" {
			t.Errorf("wait q1 = %+v, want cancelled", c)
		}
	})
	t.Run("wait: timed out", func(t *testing.T) {
		out, err, took := cliRun(t, g.APIURL, secret, "wait", "q2", "--client", "app-1", "--timeout", "1s")
		if got := exitStatus(err); got != exitWaitTimeout {
			t.Fatalf("wait q2 --timeout 1s: exit status %d (%v), want %d", got, err, exitWaitTimeout)
		}
		if took < time.Second || took > 10*time.Second {
			t.Errorf("wait q2 --timeout 1s took %s, want about 1s", took)
		}
		if !strings.Contains(out, "q2") {
			t.Errorf("wait q2 printed %q, want the command", out)
		}
	})
	t.Run("wait: succeeded", func(t *testing.T) {
		var c struct {
			Status   string `json:"status"`
			Response struct {
				Result map[string]string `json:"result"`
			} `json:"response"`
		}
		decode(t, cli(t, 0, "wait", "w1", "--client", "app-1", "--timeout", "30s", "--json"), &c)
		if c.Status != "succeeded" || c.Response.Result["id"] != "w1" {
			t.Errorf("wait w1 = %+v, want succeeded with the echo", c)
		}
	})
	t.Run("cancel --device", func(t *testing.T) {
		var r struct {
			Device    string `json:"device"`
			Client    string `json:"client"`
			Cancelled int    `json:"cancelled"`
		}
		decode(t, cli(t, 0, "cancel", "--device", "off-1", "--client", "app-1", "--json"), &r)
		if r.Device != "off-1" || r.Client != "app-1" || r.Cancelled != 2 {
			t.Errorf("cancel --device off-1 = %+v, want 2 of app-1 cancelled", r)
		}
	})
	t.Run("operator acts for a client", func(t *testing.T) {
		var c cmdJSON
		decode(t, cli(t, 0, "get", "q2", "--operator", "ops", "--client", "app-1", "--json"), &c)
		if c.ID != "q2" || c.Status != "cancelled" {
			t.Errorf("get q2 as operator = %+v, want q2 cancelled", c)
		}
	})
	t.Run("connect --json", func(t *testing.T) {
		var o Owner
		decode(t, cli(t, 0, "connect", "on-0", "--json"), &o)
		if o.Node != "push-0" || !strings.HasPrefix(o.MQTTURL, "mqtt") {
			t.Errorf("connect on-0 = %+v, want push-0 and its MQTT URL", o)
		}
	})
	t.Run("dead --json", func(t *testing.T) {
		var l struct {
			Commands *[]json.RawMessage `json:"commands"`
		}
		decode(t, cli(t, 0, "dead", "--json"), &l)
		if l.Commands == nil {
			t.Errorf("dead --json has no commands list")
		}
	})
	t.Run("replay, not found", func(t *testing.T) {
		cli(t, exitNotFound, "replay", "no-such", "--client", "app-1")
	})
	t.Run("replay, not dead: conflict", func(t *testing.T) {
		cli(t, exitConflict, "replay", "q1", "--client", "app-1")
	})

	other, err := auth.Mint([]byte("another-secret-of-at-least-32-bytes!"), "app-1", auth.RoleClient, []string{"*"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	expired, err := auth.Mint([]byte(secret), "app-1", auth.RoleClient, []string{"*"}, -time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, token, wantMsg string
	}{
		{"token signed with another secret", other, "bad signature"},
		{"expired token", expired, "token expired"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err, took := cliRun(t, g.APIURL, secret, "get", "q1", "--token", tc.token)
			if got := exitStatus(err); got != exitAuth {
				t.Fatalf("get with a bad token: exit status %d (%v), want %d", got, err, exitAuth)
			}
			if took > 2*time.Second {
				t.Errorf("get with a bad token took %s, want under 2s", took)
			}
			if !strings.Contains(err.Error(), "401") || !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("get with a bad token: error %q, want it to name 401 and %q", err, tc.wantMsg)
			}
		})
	}
}

// TestLoadReportFailure: a report with anything lost, unexpected, wrong or
// out of its lane's order is a failure naming the counts.
func TestLoadReportFailure(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		rep  LoadReport
		want string
	}{
		{"clean", LoadReport{Sent: 10, Accepted: 10, Received: 10}, ""},
		{"rejected is not a failure", LoadReport{Sent: 10, Accepted: 8, Rejected: 2, Received: 8}, ""},
		{"lost", LoadReport{Lost: 1}, "load: 1 lost, 0 unexpected, 0 wrong, 0 out of order"},
		{"unexpected", LoadReport{Unexpected: 2}, "load: 0 lost, 2 unexpected, 0 wrong, 0 out of order"},
		{"wrong", LoadReport{Wrong: 3}, "load: 0 lost, 0 unexpected, 3 wrong, 0 out of order"},
		{"out of its lane's order", LoadReport{OutOfOrder: 4}, "load: 0 lost, 0 unexpected, 0 wrong, 4 out of order"},
	} {
		got := ""
		if err := tc.rep.Failure(); err != nil {
			got = err.Error()
		}
		if got != tc.want {
			t.Errorf("%s: Failure() = %q, want %q", tc.name, got, tc.want)
		}
	}
}
