package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/internal/testenv"
)

// TestMoreAPICommandsUsage: bad input to the commands of groups, group
// commands, retry and the device HTTP channel fails before anything is
// sent, with exit status 1 (5 for a token of the wrong role), naming the
// cause.
func TestMoreAPICommandsUsage(t *testing.T) {
	t.Parallel()
	clientTok, err := auth.Mint([]byte(testSecret), "app-1", auth.RoleClient, []string{"*"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	devTok, err := auth.Mint([]byte(testSecret), "dev-1", auth.RoleDevice, nil, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// Nothing listens here: a command that got as far as a request would
	// fail with 4, not the status wanted.
	api := "http://" + testenv.FreeAddr(t)
	missing := filepath.Join(t.TempDir(), "none.txt")
	for _, tc := range []struct {
		name     string
		args     []string
		wantCode int
		wantMsg  []string
	}{
		{"group put with neither --devices nor --file", []string{"group", "put", "g1"}, exitUsage, []string{"either --devices or --file"}},
		{"group put with both", []string{"group", "put", "g1", "--devices", "a", "--file", "x"}, exitUsage, []string{"either --devices or --file"}},
		{"group put, a bad device", []string{"group", "put", "g1", "--devices", "a,b/c"}, exitUsage, []string{`"b/c" is not a valid device ID`}},
		{"group put, a repeated device", []string{"group", "put", "g1", "--devices", "a,b,a"}, exitUsage, []string{`"a" is listed twice`}},
		{"group put, a missing file", []string{"group", "put", "g1", "--file", missing}, exitUsage, []string{"cannot read --file", "none.txt"}},
		{"group put, a bad name", []string{"group", "put", "a b", "--devices", "a"}, exitUsage, []string{`"a b" is not a valid group name`}},
		{"group get, a bad name", []string{"group", "get", "a b"}, exitUsage, []string{`"a b" is not a valid group name`}},
		{"device, a bad device", []string{"device", "a b"}, exitUsage, []string{`"a b" is not a valid device ID`}},
		{"group get with a client token", []string{"group", "get", "g1", "--token", clientTok}, exitAuth, []string{"operator token", `"app-1"`}},
		{"group get without a name", []string{"group", "get"}, exitUsage, []string{"get takes 1 argument"}},
		{"group-command wait with no time", []string{"group-command", "wait", "x", "--timeout", "0s"}, exitUsage, []string{"--timeout must be positive"}},
		{"group-command list, a bad limit", []string{"group-command", "list", "--limit", "0"}, exitUsage, []string{"--limit 0"}},
		{"group-command list with a client token", []string{"group-command", "list", "--token", clientTok}, exitAuth, []string{"operator token"}},
		{"poll without a device", []string{"poll"}, exitUsage, []string{"give --device"}},
		{"poll, a bad device", []string{"poll", "--device", "a b"}, exitUsage, []string{"not a valid device ID"}},
		{"poll, a bad --max", []string{"poll", "--device", "dev-1", "--max", "101"}, exitUsage, []string{"--max 101"}},
		{"poll, an empty ack", []string{"poll", "--device", "dev-1", "--ack", "a,,b"}, exitUsage, []string{"empty token"}},
		{"poll with a client token", []string{"poll", "--token", clientTok}, exitAuth, []string{"device token", `"app-1"`}},
		{"poll, --device differs from the token's sub", []string{"poll", "--token", devTok, "--device", "dev-2"}, exitUsage, []string{`"dev-2"`, `"dev-1"`}},
		{"answer, not JSON", []string{"answer", "--device", "dev-1", "{nope"}, exitUsage, []string{"not JSON"}},
		{"answer with a body and --id", []string{"answer", "--device", "dev-1", "{}", "--id", "a:b", "--result", "1"}, exitUsage, []string{"either the response or --id"}},
		{"answer with nothing", []string{"answer", "--device", "dev-1"}, exitUsage, []string{"give the response"}},
		{"answer, a bad --traceparent", []string{"answer", "--device", "dev-1", "{}", "--traceparent", "00-xyz"}, exitUsage, []string{"not a W3C traceparent"}},
		{"answer, --result not JSON", []string{"answer", "--device", "dev-1", "--id", "a:b", "--result", "on"}, exitUsage, []string{"--result is not JSON"}},
		{"device, a bad ID", []string{"device", "a b"}, exitUsage, []string{`"a b" is not a valid device ID`}},
		{"send, an unknown --retry-on", []string{"send", "--device", "dev-1", "--retry", "2", "--retry-on", "timeout,bogus"}, exitUsage, []string{"--retry-on", `unknown outcome "bogus"`}},
		{"send, --retry-on without --retries", []string{"send", "--device", "dev-1", "--retry-on", "expired"}, exitUsage, []string{"need --retries"}},
		{"retry, --client differs from the token's sub", []string{"retry", "x", "--token", clientTok, "--client", "app-2"}, exitUsage, []string{`"app-2"`, `"app-1"`}},
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

// TestMoreAPICommandsUnreachable: with nothing listening at --api, each
// new API command fails within 2 s with exit status 4, naming the cause.
func TestMoreAPICommandsUnreachable(t *testing.T) {
	t.Parallel()
	api := "http://" + testenv.FreeAddr(t)
	for _, args := range [][]string{
		{"group", "put", "g1", "--devices", "a,b"},
		{"group", "get", "g1"},
		{"group", "delete", "g1"},
		{"group-command", "get", "x"},
		{"group-command", "wait", "x", "--timeout", "10s"},
		{"group-command", "cancel", "x"},
		{"group-command", "list"},
		{"retry", "x"},
		{"poll", "--device", "dev-1"},
		{"device", "dev-1"},
		{"answer", "--device", "dev-1", "--id", "a:b", "--result", "1"},
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

// TestParseDeviceList: the device lists of group put.
func TestParseDeviceList(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in      string
		want    []string
		wantErr string
	}{
		{"a,b", []string{"a", "b"}, ""},
		{"a b\tc\r\nd, e\n", []string{"a", "b", "c", "d", "e"}, ""},
		{"# the valves\nv-1 # first\n\nv-2\n", []string{"v-1", "v-2"}, ""},
		{"", nil, "no device IDs"},
		{"# only a comment", nil, "no device IDs"},
		{"a\nb/c", nil, `line 2: "b/c" is not a valid device ID`},
		{"a\n\na", nil, `line 3: device "a" is listed twice`},
	} {
		got, err := parseDeviceList(tc.in)
		gotErr := ""
		if err != nil {
			gotErr = err.Error()
		}
		if gotErr != tc.wantErr || !slices.Equal(got, tc.want) {
			t.Errorf("parseDeviceList(%q) = %q, %q; want %q, %q", tc.in, got, gotErr, tc.want, tc.wantErr)
		}
	}
}

// FuzzParseDeviceList: any text gives either an error or a list of valid,
// distinct device IDs that parses back to itself.
func FuzzParseDeviceList(f *testing.F) {
	for _, s := range []string{"a,b", "a b\tc\r\nd", "# c\nv-1 # x\n", "", "a,a", "b/c", ",,,\n\n", strings.Repeat("x,", 50)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		got, err := parseDeviceList(in)
		if err != nil {
			return
		}
		if len(got) == 0 {
			t.Fatalf("parseDeviceList(%q): no error and no devices", in)
		}
		again, err := parseDeviceList(strings.Join(got, ","))
		if err != nil || !slices.Equal(again, got) {
			t.Fatalf("parseDeviceList(%q) = %q, which parses back to %q, %v", in, got, again, err)
		}
	})
}

// TestMoreAPICommands drives group, group-command, retry, poll and answer
// against the real gateway, with --json and in the human form, and checks their output
// and exit statuses.
func TestMoreAPICommands(t *testing.T) {
	g := startGatewayOn(t, testenv.RedisURL(), 1, 1)
	secret := g.Opts.Secret
	gl := &globals{API: g.APIURL, Secret: secret, stdout: &bytes.Buffer{}, stderr: &bytes.Buffer{}, log: telemetry.Discard()}

	// One device online that answers echo (and fails unknown methods);
	// "off-1" never connects.
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
	type groupJSON struct {
		Name    string   `json:"name"`
		Devices []string `json:"devices"`
	}
	type groupCmdJSON struct {
		ID     string         `json:"id"`
		Client string         `json:"client"`
		Status string         `json:"status"`
		Done   bool           `json:"done"`
		Total  int            `json:"total"`
		Counts map[string]int `json:"counts"`
	}
	type cmdJSON struct {
		ID     string `json:"id"`
		Status string `json:"status"`
	}

	// The steps build on each other: run in order.
	t.Run("group put --devices --json", func(t *testing.T) {
		var dg groupJSON
		decode(t, cli(t, 0, "group", "put", "g1", "--devices", "on-0,off-9", "--json"), &dg)
		if dg.Name != "g1" || !slices.Equal(dg.Devices, []string{"on-0", "off-9"}) {
			t.Errorf("group put g1 = %+v, want g1 with on-0, off-9", dg)
		}
	})
	t.Run("group put --file replaces", func(t *testing.T) {
		file := filepath.Join(t.TempDir(), "g1.txt")
		if err := os.WriteFile(file, []byte("# g1\non-0\noff-1 # never online\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		out := cli(t, 0, "group", "put", "g1", "--file", file)
		for _, want := range []string{"name:", "g1", "devices:    2", "  on-0\n", "  off-1\n"} {
			if !strings.Contains(out, want) {
				t.Errorf("group put g1 --file printed %q, want it to contain %q", out, want)
			}
		}
	})
	// devicesim runs the test binary as devicesim (TestMain): stdin, stderr
	// and the process's exit status are the real ones.
	devicesim := func(t *testing.T, stdin string, args ...string) (string, string, int) {
		t.Helper()
		cmd := exec.CommandContext(t.Context(), os.Args[0], append(args, "--api", g.APIURL)...)
		cmd.Env = append(os.Environ(), testMainEnv+"=1", "GW_AUTH_SECRET="+secret)
		cmd.Stdin = strings.NewReader(stdin)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatalf("cannot run devicesim %v: %v", args, err)
		}
		return stdout.String(), stderr.String(), cmd.ProcessState.ExitCode()
	}
	t.Run("group put --file - and exit statuses, through the binary", func(t *testing.T) {
		out, errOut, code := devicesim(t, "# from stdin\na-1\na-2, a-3\n", "group", "put", "g2", "--file", "-", "--json")
		var dg groupJSON
		decode(t, out, &dg)
		if code != 0 || !slices.Equal(dg.Devices, []string{"a-1", "a-2", "a-3"}) {
			t.Errorf("group put g2 --file - = %d, %+v (stderr %q); want 0 and a-1, a-2, a-3", code, dg, errOut)
		}
		_, errOut, code = devicesim(t, "", "group", "get", "no-such")
		if code != exitNotFound || !strings.Contains(errOut, "devicesim: cannot get device group no-such") || !strings.Contains(errOut, "404") {
			t.Errorf("group get no-such = exit status %d, stderr %q; want %d naming the group and 404", code, errOut, exitNotFound)
		}
		_, errOut, code = devicesim(t, "a-1\na-1\n", "group", "put", "g2", "--file", "-")
		if code != exitUsage || !strings.Contains(errOut, `--file -: line 2: device "a-1" is listed twice`) {
			t.Errorf("group put g2 with a repeat on stdin = exit status %d, stderr %q; want %d naming the repeat", code, errOut, exitUsage)
		}
	})
	t.Run("group get --json", func(t *testing.T) {
		var dg groupJSON
		decode(t, cli(t, 0, "group", "get", "g1", "--json"), &dg)
		if !slices.Equal(dg.Devices, []string{"on-0", "off-1"}) {
			t.Errorf("group get g1 = %+v, want on-0, off-1", dg)
		}
	})
	t.Run("group get, not found", func(t *testing.T) {
		cli(t, exitNotFound, "group", "get", "no-such")
	})

	// A group command to g1: on-0 answers, off-1 never does.
	req := json.RawMessage(`{"jsonrpc":"2.0","method":"echo","params":{"x":1},"id":"gc1"}`)
	if _, _, err := api.SendGroup(t.Context(), tok, req, nil, "g1", GroupOptions{Timeout: 30 * time.Second, ExpiresIn: time.Hour}); err != nil {
		t.Fatalf("cannot send the group command: %v", err)
	}
	// The children are released after the 202: wait until on-0's has
	// succeeded (off-1's stays pending).
	for deadline := time.Now().Add(30 * time.Second); ; {
		st, err := api.Group(t.Context(), tok, "gc1", 0)
		if err == nil && st.Counts["succeeded"] == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("gc1: on-0's child has not succeeded after 30s: %+v, %v", st, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Run("group-command get --json", func(t *testing.T) {
		var c groupCmdJSON
		decode(t, cli(t, 0, "group-command", "get", "gc1", "--client", "app-1", "--json"), &c)
		if c.ID != "gc1" || c.Client != "app-1" || c.Total != 2 {
			t.Errorf("group-command get gc1 = %+v, want gc1 of app-1 with 2 children", c)
		}
	})
	t.Run("group-command wait: timed out", func(t *testing.T) {
		out, err, took := cliRun(t, g.APIURL, secret, "group-command", "wait", "gc1", "--client", "app-1", "--timeout", "1s")
		if got := exitStatus(err); got != exitWaitTimeout {
			t.Fatalf("group-command wait gc1 --timeout 1s: exit status %d (%v), want %d", got, err, exitWaitTimeout)
		}
		if took < time.Second || took > 10*time.Second {
			t.Errorf("group-command wait gc1 --timeout 1s took %s, want about 1s", took)
		}
		for _, want := range []string{"id:", "gc1", "total:", "2"} {
			if !strings.Contains(out, want) {
				t.Errorf("group-command wait gc1 printed %q, want it to contain %q", out, want)
			}
		}
	})
	t.Run("group-command list --json", func(t *testing.T) {
		var l struct{ Groups []groupCmdJSON }
		decode(t, cli(t, 0, "group-command", "list", "--json"), &l)
		if !slices.ContainsFunc(l.Groups, func(c groupCmdJSON) bool { return c.ID == "gc1" }) {
			t.Errorf("group-command list = %+v, want gc1 in it", l.Groups)
		}
	})
	t.Run("group-command list", func(t *testing.T) {
		out := cli(t, 0, "group-command", "list", "--operator", "ops")
		if !strings.HasPrefix(out, "ID") || !strings.Contains(out, "gc1") {
			t.Errorf("group-command list printed %q, want a table with gc1", out)
		}
	})
	t.Run("group-command cancel", func(t *testing.T) {
		out := cli(t, 0, "group-command", "cancel", "gc1", "--client", "app-1")
		if !strings.Contains(out, "cancelled") {
			t.Errorf("group-command cancel gc1 printed %q, want it cancelled", out)
		}
	})
	t.Run("group-command wait: not every child succeeded", func(t *testing.T) {
		var c groupCmdJSON
		decode(t, cli(t, exitNotSucceded, "group-command", "wait", "gc1", "--client", "app-1", "--timeout", "30s", "--json"), &c)
		if !c.Done || c.Status != "cancelled" || c.Counts["cancelled"] != 1 || c.Counts["succeeded"] != 1 {
			t.Errorf("group-command wait gc1 = %+v, want done, cancelled, on-0's child succeeded and off-1's cancelled", c)
		}
	})
	t.Run("group-command cancel again: conflict", func(t *testing.T) {
		cli(t, exitConflict, "group-command", "cancel", "gc1", "--client", "app-1")
	})
	t.Run("group-command get, not found", func(t *testing.T) {
		cli(t, exitNotFound, "group-command", "get", "no-such", "--client", "app-1")
	})
	t.Run("group delete", func(t *testing.T) {
		out := cli(t, 0, "group", "delete", "g1")
		if out != "deleted device group g1\n" {
			t.Errorf("group delete g1 printed %q", out)
		}
		cli(t, exitNotFound, "group", "get", "g1")
		cli(t, exitNotFound, "group", "delete", "g1")
	})

	// A command that fails (the device knows no such method), retried.
	body := []byte(`{"jsonrpc":"2.0","method":"no_such_method","id":"f1"}`)
	if _, _, err := api.SendCommand(t.Context(), tok, "on-0", body, 30*time.Second, time.Hour); err != nil {
		t.Fatalf("cannot send f1: %v", err)
	}
	t.Run("retry of a command that succeeded: conflict", func(t *testing.T) {
		cli(t, exitConflict, "retry", "gc1:on-0", "--client", "app-1")
	})
	t.Run("retry --json", func(t *testing.T) {
		cli(t, exitNotSucceded, "wait", "f1", "--client", "app-1", "--timeout", "30s")
		var c cmdJSON
		decode(t, cli(t, 0, "retry", "f1", "--token", tok, "--json"), &c)
		if c.ID != "f1" || c.Status != "queued" {
			t.Errorf("retry f1 = %+v, want f1 queued", c)
		}
		var w cmdJSON
		decode(t, cli(t, exitNotSucceded, "wait", "f1", "--client", "app-1", "--timeout", "30s", "--json"), &w)
		if w.Status != "failed" {
			t.Errorf("wait f1 after the retry = %+v, want failed again", w)
		}
	})
	t.Run("retry, not found", func(t *testing.T) {
		cli(t, exitNotFound, "retry", "no-such", "--client", "app-1")
	})

	// The HTTP channel of "http-1", which never connects over MQTT.
	for _, id := range []string{"h1", "h2"} {
		body := []byte(`{"jsonrpc":"2.0","method":"echo","params":{"n":"` + id + `"},"id":"` + id + `"}`)
		if _, _, err := api.SendCommand(t.Context(), tok, "http-1", body, 30*time.Second, time.Hour); err != nil {
			t.Fatalf("cannot send %s: %v", id, err)
		}
	}
	var ack, tp2 string
	t.Run("poll --json", func(t *testing.T) {
		var p struct {
			Commands []struct {
				Polled
				TraceParent string `json:"traceparent"`
			}
		}
		var ids []string
		// --wait: until the commands are in the mailbox.
		for deadline := time.Now().Add(30 * time.Second); len(ids) < 2 && time.Now().Before(deadline); {
			decode(t, cli(t, 0, "poll", "--device", "http-1", "--wait", "10s", "--max", "1", "--json"), &p)
			for _, c := range p.Commands {
				var r struct {
					ID string `json:"id"`
				}
				if err := json.Unmarshal(c.Request, &r); err != nil || c.Ack == "" {
					t.Fatalf("poll: command %s, ack %q: want a request with an id and an ack (%v)", c.Request, c.Ack, err)
				}
				if !slices.Contains(ids, r.ID) {
					ids = append(ids, r.ID)
				}
				switch r.ID {
				case "app-1:h1":
					ack = c.Ack
				case "app-1:h2":
					tp2 = c.TraceParent
				}
			}
		}
		slices.Sort(ids)
		if !slices.Equal(ids, []string{"app-1:h1", "app-1:h2"}) {
			t.Fatalf("poll --max 1 (repeated) = %q, want app-1:h1 and app-1:h2", ids)
		}
	})
	t.Run("poll --ack", func(t *testing.T) {
		out := cli(t, 0, "poll", "--device", "http-1", "--ack", ack)
		if !strings.HasPrefix(out, "ACK") {
			t.Errorf("poll --ack printed %q, want a table", out)
		}
	})
	t.Run("device: polled over HTTP", func(t *testing.T) {
		var d struct {
			Device     string `json:"device"`
			Online     bool   `json:"online"`
			Connection string `json:"connection"`
			LastPoll   string `json:"last_poll"`
		}
		decode(t, cli(t, 0, "device", "http-1", "--client", "app-1", "--json"), &d)
		if d.Device != "http-1" || d.Online || d.Connection != "http_poll" || d.LastPoll == "" {
			t.Errorf("device http-1 = %+v, want offline, connection http_poll, a last_poll", d)
		}
	})
	t.Run("device: online over MQTT", func(t *testing.T) {
		out := cli(t, 0, "device", "on-0", "--token", tok)
		for _, want := range []string{"device:", "on-0", "online:", "true", "connection:", "mqtt", "node:", "push-0"} {
			if !strings.Contains(out, want) {
				t.Errorf("device on-0 printed %q, want it to contain %q", out, want)
			}
		}
	})
	t.Run("poll a device that holds an MQTT session: conflict", func(t *testing.T) {
		cli(t, exitConflict, "poll", "--device", "on-0")
	})
	t.Run("answer --id --result", func(t *testing.T) {
		out := cli(t, 0, "answer", "--device", "http-1", "--id", "app-1:h1", "--result", `{"ok":1}`)
		if !strings.Contains(out, "app-1:h1") || !strings.Contains(out, "succeeded") {
			t.Errorf("answer app-1:h1 printed %q, want it succeeded", out)
		}
		var c struct {
			Status   string `json:"status"`
			Response struct {
				Result map[string]int `json:"result"`
			} `json:"response"`
		}
		decode(t, cli(t, 0, "wait", "h1", "--client", "app-1", "--timeout", "30s", "--json"), &c)
		if c.Status != "succeeded" || c.Response.Result["ok"] != 1 {
			t.Errorf("wait h1 = %+v, want succeeded with the answer's result", c)
		}
	})
	t.Run("answer a batch, one unknown: conflict", func(t *testing.T) {
		devTok, err := g.Token("device", "http-1", nil)
		if err != nil {
			t.Fatal(err)
		}
		if telemetry.TraceIDOf(tp2) == "" {
			t.Fatalf("poll: h2's traceparent %q, want a W3C traceparent", tp2)
		}
		out, err, _ := cliRun(t, g.APIURL, secret, "answer", "--token", devTok, "--json", "--traceparent", tp2,
			`[{"jsonrpc":"2.0","result":2,"id":"app-1:h2"},{"jsonrpc":"2.0","result":1,"id":"app-1:nope"}]`)
		if got := exitStatus(err); got != exitConflict {
			t.Fatalf("answer a batch: exit status %d (%v), want %d\n%s", got, err, exitConflict, out)
		}
		var outs []answerOutcome
		decode(t, out, &outs)
		if len(outs) != 2 || outs[0].Outcome != "succeeded" || outs[1].Outcome != "unknown" {
			t.Errorf("answer a batch = %s, want h2 succeeded and nope unknown", out)
		}
		if !strings.Contains(err.Error(), "1 of 2") || !strings.Contains(err.Error(), "app-1:nope unknown") {
			t.Errorf("answer a batch: error %q, want it to name app-1:nope unknown", err)
		}
	})
	t.Run("answer --traceparent continues the command's trace", func(t *testing.T) {
		// The apiserver logs the POST with the trace ID of its traceparent.
		want := `"path":"/v1/devices/http-1/responses","status":200`
		trace := `"trace_id":"` + telemetry.TraceIDOf(tp2) + `"`
		for deadline := time.Now().Add(10 * time.Second); ; {
			found := false
			for _, l := range strings.Split(g.Logs(3000), "\n") {
				if strings.Contains(l, want) && strings.Contains(l, trace) {
					found = true
				}
			}
			if found {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("no apiserver log line of the answer's POST with %s", trace)
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	t.Run("answer again: conflict", func(t *testing.T) {
		cli(t, exitConflict, "answer", "--device", "http-1", "--id", "app-1:h1", "--result", `{"ok":1}`)
	})
	t.Run("answer - (stdin), through the binary", func(t *testing.T) {
		_, errOut, code := devicesim(t, `{"jsonrpc":"2.0","result":1,"id":"app-1:nope"}`, "answer", "--device", "http-1", "-")
		if code != exitConflict || !strings.Contains(errOut, "1 of 1 responses changed nothing: app-1:nope unknown") {
			t.Errorf("answer - = exit status %d, stderr %q; want %d naming app-1:nope unknown", code, errOut, exitConflict)
		}
	})
	t.Run("answer without a {client}:{id} id: 400", func(t *testing.T) {
		out, err, _ := cliRun(t, g.APIURL, secret, "answer", "--device", "http-1", `{"jsonrpc":"2.0","result":1,"id":"x"}`)
		if got := exitStatus(err); got != exitUsage || !strings.Contains(err.Error(), "400") {
			t.Errorf("answer id x: exit status %d (%v), want %d naming 400\n%s", got, err, exitUsage, out)
		}
	})
}
