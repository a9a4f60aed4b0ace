package main

import (
	"bytes"
	"context"
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

// TestGroupRollout runs group commands through the binaries (apiserver,
// a worker, a push server) against a simulated fleet that fails 10% of
// its commands:
//
//   - a 1,000-device group at 200/s with abort_after 5%: the rollout
//     stops (aborted, children cancelled), the counts add up to 1,000,
//     the fleet's failures are the group's failed children, and every
//     child's result over MQTT matches its status;
//   - a rollout at 50/s creates its children at that pace.
func TestGroupRollout(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test")
	}
	const n = 1000
	g := startGatewayOn(t, testenv.RedisURL(), 1, 1)
	gl := &globals{API: g.APIURL, Secret: g.Opts.Secret, stdout: io.Discard, stderr: io.Discard, log: telemetry.Discard()}
	fleetCtx, stopFleet := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer func() { stopFleet(); wg.Wait() }()
	fl, err := StartFleet(fleetCtx, gl, FleetOptions{
		Devices: n, Prefix: "grp-", Connect: 64,
		Behaviour: Behaviour{Latency: time.Millisecond, Jitter: 2 * time.Millisecond, FailRate: 0.1},
	}, &wg)
	if err != nil {
		t.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()
	if err := fl.WaitOnline(waitCtx); err != nil {
		t.Fatal(err)
	}

	api := NewAPI(g.APIURL)
	token, err := g.Token("client", "rollout-app", []string{"grp-*"})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	results := map[string][]*protocol.Response{} // by child id
	sess := NewClientSession("rollout-app", token, api, func(r Result) {
		if id, err := protocol.ParseID(r.Resp.ID); err == nil {
			mu.Lock()
			results[id.Key()] = append(results[id.Key()], r.Resp)
			mu.Unlock()
		}
	})
	sessCtx, stopSess := context.WithCancel(t.Context())
	sessDone := make(chan struct{})
	go func() { defer close(sessDone); sess.Run(sessCtx, nil) }()
	defer func() { stopSess(); <-sessDone }()
	select {
	case <-sess.Ready():
	case <-time.After(30 * time.Second):
		t.Fatal("the client did not connect within 30s")
	}

	devices := make([]string, n)
	for i := range devices {
		devices[i] = fmt.Sprintf("grp-%d", i)
	}
	// waitDone long-polls the group until every child is final.
	waitDone := func(id string) GroupStatus {
		t.Helper()
		deadline := time.Now().Add(90 * time.Second)
		for {
			st, err := api.Group(t.Context(), token, id, 10*time.Second)
			if err != nil {
				t.Fatalf("GET group %s: %v", id, err)
			}
			if st.Done {
				return st
			}
			if time.Now().After(deadline) {
				t.Fatalf("group %s not done within 90s: %s", id, st.line())
			}
		}
	}

	t.Run("1000 devices, 10% failures, abort_after 5%", func(t *testing.T) {
		req := json.RawMessage(`{"jsonrpc":"2.0","method":"echo","params":{"v":1},"id":"roll-1"}`)
		start := time.Now()
		acc, status, err := api.SendGroup(t.Context(), token, req, devices, "", GroupOptions{Timeout: 10 * time.Second, Rate: 200, AbortAfter: "5%"})
		if err != nil || status != http.StatusAccepted {
			t.Fatalf("POST = %d, %v; want 202", status, err)
		}
		if took := time.Since(start); took > time.Second {
			t.Errorf("the 202 took %v, want within 1s", took)
		}
		if acc.StatusURL != "/v1/group-commands/roll-1" {
			t.Errorf("status_url = %q", acc.StatusURL)
		}
		st := waitDone("roll-1")
		t.Logf("%s", st.line())
		sum := 0
		for _, c := range st.Counts {
			sum += c
		}
		ft := fl.Totals()
		checks := []struct {
			name      string
			got, want any
		}{
			{"status", st.Status, "aborted"},
			{"counts add up", sum, n},
			{"final", st.Final, n},
			{"released", st.Released, n},
			{"abort_at", st.AbortAt, 50},
			{"failed children = the fleet's simulated failures", int64(st.Counts["failed"]), ft.Failed},
			{"failures = failed children", st.Failures, st.Counts["failed"]},
			{"no timeout", st.Counts["timeout"], 0},
			{"no expiry", st.Counts["expired"], 0},
		}
		for _, c := range checks {
			if c.got != c.want {
				t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
			}
		}
		if st.Failures < 50 {
			t.Errorf("failures = %d, want at least abort_at 50", st.Failures)
		}
		// The rollout stopped: at 200/s the 50th failure comes after about
		// 500 children, so most of the rest were never released.
		if st.Counts["cancelled"] < 100 {
			t.Errorf("cancelled = %d, want the rollout to have stopped well before its end", st.Counts["cancelled"])
		}

		// Every child's result reached the client, and matches its status.
		deadline := time.Now().Add(30 * time.Second)
		for {
			mu.Lock()
			got := 0
			for _, d := range devices {
				if len(results["roll-1:"+d]) > 0 {
					got++
				}
			}
			mu.Unlock()
			if got == n {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%d of %d children's results reached the client", got, n)
			}
			time.Sleep(50 * time.Millisecond)
		}
		var (
			wg    sync.WaitGroup
			next  = make(chan string)
			wrong []string
			wmu   sync.Mutex
		)
		for range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for d := range next {
					var v struct {
						Status protocol.Status `json:"status"`
						Reason string          `json:"reason"`
					}
					if _, err := api.Do(t.Context(), http.MethodGet, "/v1/commands/roll-1:"+d, token, nil, &v); err != nil {
						t.Errorf("GET child of %s: %v", d, err)
						continue
					}
					mu.Lock()
					r := results["roll-1:"+d][0]
					mu.Unlock()
					if msg := matches(v.Status, r); msg != "" {
						wmu.Lock()
						wrong = append(wrong, fmt.Sprintf("%s: status %s, result %s", d, v.Status, msg))
						wmu.Unlock()
					}
				}
			}()
		}
		for _, d := range devices {
			next <- d
		}
		close(next)
		wg.Wait()
		if len(wrong) > 0 {
			t.Errorf("%d children's results do not match their status, e.g. %s", len(wrong), strings.Join(wrong[:min(5, len(wrong))], "; "))
		}
	})

	t.Run("load --group-devices", func(t *testing.T) {
		var out bytes.Buffer
		getenv := func(string) string { return "" }
		err := run(t.Context(), []string{"load", "--api", g.APIURL, "--secret", g.Opts.Secret, "--group-devices", "300",
			"--prefix", "grp-", "--json", "--progress=false"}, getenv, &out)
		if err != nil {
			t.Fatalf("load --group-devices: %v; output %s", err, out.String())
		}
		var rep GroupLoadReport
		if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
			t.Fatalf("report %s: %v", out.String(), err)
		}
		sum := 0
		for _, c := range rep.Counts {
			sum += c
		}
		if rep.Status != "completed" || rep.Received != 300 || rep.Lost != 0 || sum != 300 || rep.ChildrenPerS <= 0 {
			t.Errorf("report %+v; want completed, 300 received, none lost, counts adding up to 300", rep)
		}
	})
	t.Run("send --devices", func(t *testing.T) {
		var out bytes.Buffer
		getenv := func(string) string { return "" }
		err := run(t.Context(), []string{"send", "--api", g.APIURL, "--secret", g.Opts.Secret, "--client", "cli-g",
			"--devices", "grp-1,grp-2,grp-3,grp-4", "--method", "echo", "--rate", "20", "--id", "send-g"}, getenv, &out)
		// 0 when every child succeeded, 2 when the fleet failed one.
		if err != nil && exitStatus(err) != int(exitDeviceError) {
			t.Fatalf("send --devices: %v (exit %d); output %s", err, exitStatus(err), out.String())
		}
		var st GroupStatus
		if err := json.Unmarshal(out.Bytes(), &st); err != nil {
			t.Fatalf("output %s: %v", out.String(), err)
		}
		if !st.Done || st.Total != 4 || st.Final != 4 || st.Status != "completed" {
			t.Errorf("send --devices printed %+v; want 4 children, completed", st)
		}
	})
	t.Run("rollout at 50/s", func(t *testing.T) {
		req := json.RawMessage(`{"jsonrpc":"2.0","method":"echo","id":"roll-2"}`)
		some := devices[:21]
		if _, status, err := api.SendGroup(t.Context(), token, req, some, "", GroupOptions{Rate: 50}); err != nil || status != http.StatusAccepted {
			t.Fatalf("POST = %d, %v; want 202", status, err)
		}
		st := waitDone("roll-2")
		if st.Status != "completed" || st.Final != len(some) {
			t.Errorf("%s; want completed with %d final", st.line(), len(some))
		}
		var first, last time.Time
		for _, d := range some {
			var v struct {
				CreatedAt time.Time `json:"created_at"`
			}
			if _, err := api.Do(t.Context(), http.MethodGet, "/v1/commands/roll-2:"+d, token, nil, &v); err != nil {
				t.Fatalf("GET child of %s: %v", d, err)
			}
			if first.IsZero() || v.CreatedAt.Before(first) {
				first = v.CreatedAt
			}
			if v.CreatedAt.After(last) {
				last = v.CreatedAt
			}
		}
		// 21 children at 50/s: the last is released 400 ms after the
		// first. A child's created_at is stamped when a worker creates
		// it, so a first child that waited on a busy machine shortens
		// the span by that wait; released all at once, the span would
		// be a few milliseconds.
		if span := last.Sub(first); span < 300*time.Millisecond || span > 5*time.Second {
			t.Errorf("children created over %v, want about 400ms (21 at 50/s)", span)
		}
	})
}

// matches reports how the client's result r disagrees with the child's
// status ("" when it matches).
func matches(st protocol.Status, r *protocol.Response) string {
	switch {
	case st == protocol.StatusSucceeded && r.Error == nil:
	case st == protocol.StatusFailed && r.Error != nil && r.Error.Code == SimulatedFailureCode:
	case st == protocol.StatusCancelled && r.Error != nil && r.Error.Code == protocol.CodeCancelled &&
		strings.Contains(string(r.Error.Data), "group aborted"):
	default:
		b, _ := json.Marshal(r)
		return string(b)
	}
	return ""
}
