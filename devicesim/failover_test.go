package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/gwproc"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
)

// Every step of the gateways of the failover tests waits for one replica
// (DESIGN §7a, durability barrier): what a killed primary had
// acknowledged is on the replica that takes over.
const waitOneReplica = "GW_REDIS_WAIT_REPLICAS=1"

// TestClusterFailoverUnderLoad is guarantee 1 of DESIGN §8 across a Redis
// Cluster failover: while a load runs, the primary that serves the
// partition of device fo-0 is killed with SIGKILL, its replica takes over,
// and the killed node comes back as a replica. Every command that got a
// 202 must reach its client with exactly one final result (copies of it
// allowed, none lost, never two different ones).
func TestClusterFailoverUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("failover test: skipped with -short")
	}
	ctl := testenv.NewClusterControl(t)
	g := startGatewayOn(t, ctl.URL(), 2, 3, waitOneReplica)
	// A slot the load uses: the partition of one of its devices (the
	// gateway runs with the default partition count).
	key := protocol.Tag(g.Opts.Namespace, protocol.Partition("fo-0", protocol.DefaultPartitions))
	runFailover(t, g, func(ctx context.Context) error {
		node, err := ctl.KillPrimaryFor(ctx, key)
		if err != nil {
			return err
		}
		t.Logf("killed the primary %s (pid %d) of %s", node.Addr, node.PID, key)
		addr, err := ctl.WaitPrimaryChange(ctx, key, node.Addr)
		if err != nil {
			return err
		}
		t.Logf("%s took over %s", addr, key)
		return nil
	}, ctl.Restore)
}

// TestSentinelFailoverUnderLoad is TestClusterFailoverUnderLoad with the
// state behind Sentinel: the primary is killed with SIGKILL, the sentinels
// promote its replica, and the killed node comes back as a replica.
func TestSentinelFailoverUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("failover test: skipped with -short")
	}
	ctl := testenv.NewSentinelControl(t)
	g := startGatewayOn(t, ctl.URL(), 2, 3, waitOneReplica)
	runFailover(t, g, func(ctx context.Context) error {
		node, err := ctl.KillPrimary(ctx)
		if err != nil {
			return err
		}
		t.Logf("killed the primary %s (pid %d)", node.Addr, node.PID)
		addr, err := ctl.WaitFailover(ctx, node.Addr)
		if err != nil {
			return err
		}
		t.Logf("the sentinels promoted %s", addr)
		return nil
	}, ctl.Restore)
}

// runFailover runs a load of echo commands on g from 3 clients to 30
// devices, calls fail once the fleet has answered some of them (fail
// kills a primary and returns when another serves in its place), then
// restore (the killed node comes back as a replica, so that the barrier
// can count one again), and checks the ledger once the load has drained.
func runFailover(t *testing.T, g *gwproc.Gateway, fail, restore func(context.Context) error) {
	gl := &globals{API: g.APIURL, Secret: g.Opts.Secret, stdout: io.Discard, stderr: io.Discard, log: telemetry.Discard()}

	fleetCtx, stopFleet := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer func() { stopFleet(); wg.Wait() }()
	fl, err := StartFleet(fleetCtx, gl, FleetOptions{Devices: 30, Prefix: "fo-", Connect: 16,
		Behaviour: Behaviour{Latency: time.Millisecond, Jitter: 2 * time.Millisecond, FailRate: 0.1}}, &wg)
	require.NoError(t, err)
	waitCtx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	require.NoError(t, fl.WaitOnline(waitCtx))

	loadCtx, stopLoad := context.WithCancel(t.Context())
	loadDone := make(chan struct{})
	var rep *LoadReport
	var loadErr error
	go func() {
		defer close(loadDone)
		rep, loadErr = RunLoad(loadCtx, gl, LoadOptions{
			Clients: 3, ClientPrefix: "app-", Devices: 30, Prefix: "fo-",
			Rate: 25, Duration: 18 * time.Second, Method: "echo",
			Timeout: 5 * time.Second, ExpiresIn: time.Minute, Drain: 90 * time.Second, MaxInflight: 256,
		})
	}()
	defer func() { stopLoad(); <-loadDone }()

	// The fault comes once the load is flowing: the fleet has answered
	// some commands.
	require.Eventually(t, func() bool { return fl.Totals().Answered >= 60 }, 30*time.Second, 20*time.Millisecond,
		"the fleet did not answer 60 commands within 30s: no load to fail over under")
	began := time.Now()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	require.NoError(t, fail(ctx))
	t.Logf("failover done after %v (fleet answered %d)", time.Since(began).Round(time.Millisecond), fl.Totals().Answered)
	rctx, rcancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer rcancel()
	require.NoError(t, restore(rctx))
	t.Logf("restored %v after the kill", time.Since(began).Round(time.Millisecond))

	select {
	case <-loadDone:
	case <-time.After(3 * time.Minute):
		t.Fatal("the load did not end within 3 minutes")
	}
	require.NoError(t, loadErr)
	t.Logf("load: %+v", *rep)
	t.Logf("fleet: %+v", fl.Totals())

	// Commands sent while no primary serves are refused (503), so how
	// many are accepted depends on how long the failover takes, which a
	// starved CPU stretches; a quarter shows the load really went through
	// the gateway around the fault. The ledger below is what must hold.
	if rep.Accepted < rep.Sent/4 {
		t.Errorf("accepted = %d of %d sent, want at least a quarter accepted", rep.Accepted, rep.Sent)
	}
	checks := []struct {
		name      string
		got, want int64
	}{
		{"lost", rep.Lost, 0},
		{"conflicting (two different results)", rep.Conflicting, 0},
		{"rejected with result", rep.RejectedWithResult, 0},
		{"unexpected", rep.Unexpected, 0},
		{"wrong", rep.Wrong, 0},
		{"other gateway errors", rep.Outcomes.OtherGW, 0},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, want %d", c.name, c.got, c.want)
		}
	}
	if n, sample := claimsDiffer(t, g, rep.Finals); n != 0 {
		t.Errorf("%d accepted commands have a final result over MQTT that GET (the claim) does not give; first: %s", n, sample)
	}
	t.Logf("commands answered neither 202 nor a sure rejection, without a result, as GET sees them now: %v",
		unsettledStatuses(t, g, rep.Unsettled))
	if t.Failed() {
		for _, s := range rep.Suspects {
			t.Logf("suspect %s %s to %s: %s\n%s", s.Client, s.ID, s.Device, s.Why, logLinesFor(g, s.ID, 40))
		}
	}
}

// claimsDiffer reads every command of finals with GET /v1/commands/{id}
// (the claim, the client's ledger) and returns how many are not final
// there or end with another response than the one the client got over
// MQTT (each final's Why), and the first of them.
func claimsDiffer(t *testing.T, g *gwproc.Gateway, finals []Suspect) (int, string) {
	return viewsDiffer(finals, getCommands(t, g, finals))
}

// viewsDiffer is claimsDiffer on views already read (getCommands).
func viewsDiffer(finals []Suspect, views map[string]cmdView) (int, string) {
	n, first := 0, ""
	for _, f := range finals {
		v := views[f.Client+" "+f.ID]
		var resp protocol.Response
		if v.Err == nil && v.Status.Final() && json.Unmarshal(v.Response, &resp) == nil {
			if b, _ := json.Marshal(&resp); sameJSON(b, []byte(f.Why)) {
				continue
			}
		}
		n++
		if first == "" {
			first = fmt.Sprintf("%s %s: GET answered %d %v, status %s, response %s; the client got %s", f.Client, f.ID, v.Code, v.Err, v.Status, v.Response, f.Why)
		}
	}
	return n, first
}

// cmdView is what GET /v1/commands/{id} said of one command.
type cmdView struct {
	Code        int // the HTTP status (0: no answer)
	Err         error
	Status      protocol.Status `json:"status"`
	Response    json.RawMessage `json:"response"`
	TimeoutMS   int64           `json:"timeout_ms"`
	DeliveredAt time.Time       `json:"delivered_at"`
	DeliverBy   time.Time       `json:"deliver_by"`
	FinishedAt  time.Time       `json:"finished_at"`
}

// deadline is when the command must have its answer (delivered_at +
// timeout) or, not delivered, its delivery (deliver_by); zero when GET
// did not say.
func (v cmdView) deadline() time.Time {
	if !v.DeliveredAt.IsZero() {
		return v.DeliveredAt.Add(time.Duration(v.TimeoutMS) * time.Millisecond)
	}
	return v.DeliverBy
}

// getCommands reads every command of cmds with GET /v1/commands/{id},
// four at a time, keyed by "{client} {id}".
func getCommands(t *testing.T, g *gwproc.Gateway, cmds []Suspect) map[string]cmdView {
	api := NewAPI(g.APIURL)
	var mu sync.Mutex
	tokens := map[string]string{}
	token := func(client string) string {
		mu.Lock()
		defer mu.Unlock()
		tok, ok := tokens[client]
		if !ok {
			var err error
			tok, err = g.Token("client", client, []string{"fo-*"})
			require.NoError(t, err)
			tokens[client] = tok
		}
		return tok
	}
	views := make(map[string]cmdView, len(cmds))
	work := make(chan Suspect)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for c := range work {
				var v cmdView
				v.Code, v.Err = api.Do(t.Context(), http.MethodGet, "/v1/commands/"+c.ID, token(c.Client), nil, &v)
				mu.Lock()
				views[c.Client+" "+c.ID] = v
				mu.Unlock()
			}
		}()
	}
	for _, c := range cmds {
		work <- c
	}
	close(work)
	wg.Wait()
	return views
}

// unsettledStatuses counts the statuses that GET /v1/commands/{id} gives
// for cmds ("404" when there is no such command).
func unsettledStatuses(t *testing.T, g *gwproc.Gateway, cmds []Suspect) map[string]int {
	api := NewAPI(g.APIURL)
	tokens := map[string]string{}
	got := map[string]int{}
	for _, c := range cmds {
		tok, ok := tokens[c.Client]
		if !ok {
			var err error
			tok, err = g.Token("client", c.Client, []string{"fo-*"})
			require.NoError(t, err)
			tokens[c.Client] = tok
		}
		var v struct {
			Status protocol.Status `json:"status"`
		}
		code, err := api.Do(t.Context(), http.MethodGet, "/v1/commands/"+c.ID, tok, nil, &v)
		switch {
		case err == nil:
			got[string(v.Status)]++
		case code != 0:
			got[strconv.Itoa(code)]++
		default:
			got["error"]++
		}
	}
	return got
}

// logLinesFor returns the lines of the gateway's logs that mention id, at
// most max of them, each prefixed with its process.
func logLinesFor(g *gwproc.Gateway, id string, max int) string {
	var b strings.Builder
	n := 0
	for _, p := range g.All() {
		f, err := os.Open(p.Log)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() && n < max {
			if strings.Contains(sc.Text(), id) {
				b.WriteString("  " + p.Name + ": " + sc.Text() + "\n")
				n++
			}
		}
		f.Close()
	}
	return b.String()
}
