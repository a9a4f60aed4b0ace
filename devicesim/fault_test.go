package main

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/gwproc"
	"github.com/iotgw/gateway/internal/telemetry"
)

// TestFaultsLoseNothing is guarantee 1 of DESIGN §8 under process faults:
// while a load runs, a worker, a push server and the apiserver are each
// killed with SIGKILL and restarted. Every command that got a 202 must
// reach its client exactly as a final result (duplicates of it allowed,
// none lost, none unexpected, never two different ones). It runs with the
// state in each of redisForms, one after the other.
func TestFaultsLoseNothing(t *testing.T) {
	if testing.Short() {
		t.Skip("fault test: skipped with -short")
	}
	for _, form := range redisForms {
		t.Run(form.name, func(t *testing.T) { runFaults(t, form.url(t)) })
	}
}

func runFaults(t *testing.T, redisURL string) {
	g := startGatewayOn(t, redisURL, 2, 3)
	gl := &globals{API: g.APIURL, Secret: g.Opts.Secret, stdout: io.Discard, stderr: io.Discard, log: telemetry.Discard()}

	fleetCtx, stopFleet := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer func() { stopFleet(); wg.Wait() }()
	fl, err := StartFleet(fleetCtx, gl, FleetOptions{Devices: 30, Prefix: "dev-", Connect: 16,
		Behaviour: Behaviour{Latency: time.Millisecond}}, &wg)
	if err != nil {
		t.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := fl.WaitOnline(waitCtx); err != nil {
		t.Fatal(err)
	}

	// The fault schedule, relative to the start of the load.
	type fault struct {
		at, downFor time.Duration
		proc        *gwproc.Proc
	}
	faults := []fault{
		{at: 2 * time.Second, downFor: 2 * time.Second, proc: g.Workers[0]},
		{at: 4 * time.Second, downFor: 3 * time.Second, proc: g.Push[1]},
		{at: 7 * time.Second, downFor: time.Second, proc: g.API},
	}
	var fwg sync.WaitGroup
	for _, f := range faults {
		fwg.Add(1)
		go func() {
			defer fwg.Done()
			sleep(t.Context(), f.at)
			if err := f.proc.Kill(); err != nil {
				t.Errorf("kill %s: %v", f.proc.Name, err)
			}
			t.Logf("killed %s", f.proc.Name)
			sleep(t.Context(), f.downFor)
			if err := f.proc.Start(); err != nil {
				t.Errorf("restart %s: %v", f.proc.Name, err)
				return
			}
			t.Logf("restarted %s", f.proc.Name)
		}()
	}

	rep, err := RunLoad(t.Context(), gl, LoadOptions{
		Clients: 3, ClientPrefix: "app-", Devices: 30, Prefix: "dev-",
		Rate: 150, Duration: 11 * time.Second, Method: "echo",
		Timeout: 5 * time.Second, ExpiresIn: time.Minute, Drain: 60 * time.Second, MaxInflight: 256,
	})
	fwg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("load: %+v", *rep)
	t.Logf("fleet: %+v", fl.Totals())

	if rep.Accepted < rep.Sent/2 {
		t.Errorf("accepted = %d of %d sent, want most of them accepted", rep.Accepted, rep.Sent)
	}
	checks := []struct {
		name      string
		got, want int64
	}{
		{"lost", rep.Lost, 0},
		{"unexpected", rep.Unexpected, 0},
		{"wrong", rep.Wrong, 0},
		{"conflicting", rep.Conflicting, 0},
		{"rejected with result", rep.RejectedWithResult, 0},
		{"received of accepted", min(rep.Received, rep.Accepted), rep.Accepted},
		{"other gateway errors", rep.Outcomes.OtherGW, 0},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
}
