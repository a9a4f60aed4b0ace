package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/iotgw/gateway/internal/gwproc"
	"github.com/iotgw/gateway/internal/latency"
)

// loadReport is the part of devicesim load's JSON report the bench uses.
type loadReport struct {
	Clients       int     `json:"clients"`
	Devices       int     `json:"devices"`
	TargetRate    float64 `json:"target_rate_per_s"`
	DurationS     float64 `json:"duration_s"`
	Sent          int64   `json:"sent"`
	Accepted      int64   `json:"accepted"`
	Rejected      int64   `json:"rejected"`
	Indeterminate int64   `json:"indeterminate"`
	Received      int64   `json:"received"`
	Duplicated    int64   `json:"duplicated"`
	Lost          int64   `json:"lost"`
	Unexpected    int64   `json:"unexpected"`
	Wrong         int64   `json:"wrong"`
	Outcomes      struct {
		Succeeded   int64 `json:"succeeded"`
		DeviceError int64 `json:"device_error"`
		Timeout     int64 `json:"timeout"`
		Expired     int64 `json:"expired"`
		OtherGW     int64 `json:"other_gateway_error"`
	} `json:"outcomes"`
	Throughput    float64             `json:"throughput_per_s"`
	AcceptLatency latency.Percentiles `json:"accept_latency_ms"`
	RoundTrip     latency.Percentiles `json:"roundtrip_latency_ms"`
	RejectedBy    map[string]int64    `json:"rejected_by_status,omitempty"`
	Errors        []string            `json:"sample_errors,omitempty"`
}

// Round-trip settings.
const (
	// rtConcurrency is the closed-loop concurrency of the maximum-rate
	// run: commands in flight through the HTTP API at once.
	rtConcurrency = 128
	// rtClients stays well under the per-client rate limit (1,000/s).
	rtClients = 16
)

// rtEnv is a running gateway with its simulated fleet.
type rtEnv struct {
	ns      string
	workers int
	push    int
	g       *gwproc.Gateway
	fleet   *gwproc.Proc
}

func (e *rtEnv) stop() {
	if e == nil {
		return
	}
	if e.fleet != nil {
		_ = e.fleet.Stop()
	}
	e.g.Stop()
}

// startRT starts a gateway of the given layout in ns and a devicesim
// fleet of devices devices, and waits until every device is online.
func (b *Bench) startRT(ctx context.Context, ns string, workers, push, devices int) (*rtEnv, error) {
	g, err := b.startGateway(ctx, "roundtrip", ns, workers, push)
	if err != nil {
		return nil, err
	}
	e := &rtEnv{ns: ns, workers: workers, push: push, g: g}
	e.fleet = b.proc("roundtrip", fmt.Sprintf("devicesim-fleet-%s", ns), "devicesim", []string{"fleet",
		"--devices", strconv.Itoa(devices), "--prefix", "dev-", "--api", g.APIURL, "--secret", b.Secret,
		"--progress=false", "--connect-parallel", "64"}, nil)
	e.fleet.Name = "devicesim-fleet"
	if err := e.fleet.Start(); err != nil {
		e.stop()
		return nil, err
	}
	ids := make([]string, devices)
	for i := range ids {
		ids[i] = "dev-" + strconv.Itoa(i)
	}
	online, err := b.waitOnline(ctx, ns, ids, 60*time.Second)
	if err == nil && online < devices {
		err = fmt.Errorf("only %d of %d devices came online within 60s (fleet log %s)", online, devices, e.fleet.Log)
	}
	if err != nil {
		e.stop()
		return nil, err
	}
	return e, nil
}

// load runs one devicesim load process against e: open loop at rate, or
// closed loop with rtConcurrency in flight when rate is 0.
func (b *Bench) load(ctx context.Context, e *rtEnv, tag string, rate int, dur, drain time.Duration, devices int) (loadReport, time.Duration, error) {
	args := []string{"load", "--api", e.g.APIURL, "--secret", b.Secret,
		"--clients", strconv.Itoa(rtClients), "--client-prefix", "load" + tag + "-",
		"--devices", strconv.Itoa(devices), "--prefix", "dev-",
		"--rate", strconv.Itoa(rate), "--concurrency", strconv.Itoa(rtConcurrency),
		"--duration", dur.String(), "--method", "echo", "--timeout", "10s", "--expires-in", "1m",
		"--drain", drain.String(), "--max-inflight", "4096", "--json", "--progress=false"}
	var rep loadReport
	cpu, err := runJSON(ctx, b.bins["devicesim"], args, filepath.Join(b.RunDir, "roundtrip", "devicesim-load-"+tag+".log"), &rep)
	return rep, cpu, err
}

// layouts are the gateway layouts the round trip probes when none is
// given: DESIGN §10's, and the smallest.
var layouts = [][2]int{{2, 3}, {1, 1}}

// runRoundtrip measures the whole way of a command and its result, with
// a devicesim fleet answering echo and one devicesim load process per
// run: closed loop at the maximum rate, then open loop at fixed rates.
// Without --workers and --push-servers it first probes each layout of
// layouts at the maximum rate and keeps the faster.
func runRoundtrip(ctx context.Context, b *Bench, s *Section) error {
	if err := b.need("apiserver", "msgworker", "pushserver", "devicesim"); err != nil {
		return err
	}
	ns := b.namespace("roundtrip")
	var namespaces []string
	defer func() {
		for _, n := range namespaces {
			if err := b.cleanup(n); err != nil {
				s.Note("cleanup: %v", err)
			}
		}
	}()
	devices, dur, drain, probe := 200, 15*time.Second, 20*time.Second, 6*time.Second
	if b.Quick {
		devices, dur, drain, probe = 50, 4*time.Second, 10*time.Second, 3*time.Second
	}

	var e *rtEnv
	if b.Workers > 0 || b.Quick {
		w, p, why := b.Workers, b.PushServers, "given with --workers and --push-servers"
		if w == 0 {
			w, p, why = 1, 1, "--quick skips the layout probe and runs one of each"
		}
		namespaces = append(namespaces, ns)
		var err error
		if e, err = b.startRT(ctx, ns, w, p, devices); err != nil {
			return err
		}
		b.layout = GatewaySet{APIServers: 1, Workers: w, PushServers: p, Why: why}
	} else {
		var keep *rtEnv
		var bestL [2]int
		bestRate := -1.0
		var why []string
		for i, l := range layouts {
			pns := fmt.Sprintf("%s-%dw%dp", ns, l[0], l[1])
			namespaces = append(namespaces, pns)
			pe, err := b.startRT(ctx, pns, l[0], l[1], devices)
			if err != nil {
				return err
			}
			rep, _, err := b.load(ctx, pe, fmt.Sprintf("probe%d", i), 0, probe, drain, devices)
			if err != nil {
				pe.stop()
				return err
			}
			why = append(why, fmt.Sprintf("%d msgworker(s) and %d pushserver(s): %s/s", l[0], l[1], thousands(rep.Throughput)))
			b.logf("layout probe: %d workers, %d push servers: %.0f/s", l[0], l[1], rep.Throughput)
			if rep.Throughput > bestRate {
				bestL, bestRate = l, rep.Throughput
				if i == len(layouts)-1 {
					keep = pe // the last probe is the faster: keep it running
					continue
				}
			}
			pe.stop() // only the measured gateway runs
		}
		if keep == nil {
			pns := ns + "-run"
			namespaces = append(namespaces, pns)
			var err error
			if keep, err = b.startRT(ctx, pns, bestL[0], bestL[1], devices); err != nil {
				return err
			}
		}
		e = keep
		b.layout = GatewaySet{APIServers: 1, Workers: e.workers, PushServers: e.push,
			Why: fmt.Sprintf("the faster at the maximum rate in a %s probe of each layout on this machine: %s", probe, strings.Join(why, ", "))}
	}
	defer e.stop()
	s.Namespace = e.ns
	b.logf("gateway up (%d msgworkers, %d pushservers), %d devices online", e.workers, e.push, devices)

	srcs := append(gatewaySources(e.g), procSource(e.fleet))
	srcs = append(srcs, b.brokers(ctx)...)
	m := b.newMeter(srcs...)
	// At rest: what the gateway and the fleet cost with no command.
	rest := 5 * time.Second
	if b.Quick {
		rest = 2 * time.Second
	}
	sleepCtx(ctx, rest)
	s.CPU = append(s.CPU, m.table(fmt.Sprintf("%s at rest (fleet connected, no commands)", rest), 0))
	type rtRun struct {
		name string
		rate int
	}
	// 200/s is far below any capacity: its latency is the path's own,
	// without queueing.
	runs := []rtRun{{"maximum rate", 0}, {"200/s", 200}, {"1,000/s", 1000}, {"2,500/s", 2500}, {"5,000/s", 5000}}
	s.Raw = map[string]any{}
	for i, r := range runs {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		m.reset()
		rep, cpu, err := b.load(ctx, e, strconv.Itoa(i), r.rate, dur, drain, devices)
		if err != nil {
			return err
		}
		m.addTotal("devicesim load", cpu)
		t := m.table(r.name, rep.Received)
		s.CPU = append(s.CPU, t)
		s.Raw[r.name] = rep
		b.logf("round trip %s: %.0f/s, accepted %d, received %d, lost %d, p50 %.2f ms, p99 %.2f ms",
			r.name, rep.Throughput, rep.Accepted, rep.Received, rep.Lost, rep.RoundTrip.P50, rep.RoundTrip.P99)

		if r.rate == 0 {
			s.Add("roundtrip_max_per_s", "round trip at maximum rate", rep.Throughput, "/s", AtLeast(5000))
			s.Explain(r.name)
			s.Add("roundtrip_max_accepted_per_s", "accepted (202) at maximum rate", perSecond(rep.Accepted, time.Duration(rep.DurationS*float64(time.Second))), "/s", nil)
			s.Latencies = append(s.Latencies,
				LatencyRow{fmt.Sprintf("round trip at maximum rate (%d in flight)", rtConcurrency), rep.RoundTrip},
				LatencyRow{"202 accepted at maximum rate", rep.AcceptLatency})
		} else {
			s.Add("roundtrip_"+strconv.Itoa(r.rate)+"_per_s", "round trip achieved at "+r.name, rep.Throughput, "/s", nil)
			s.Explain(r.name)
			if r.rate == 2500 {
				s.Add("roundtrip_2500_p50_ms", "round trip p50 at 2,500/s", rep.RoundTrip.P50, "ms", AtMost(5))
				s.Explain(r.name)
				s.Add("roundtrip_2500_p99_ms", "round trip p99 at 2,500/s", rep.RoundTrip.P99, "ms", AtMost(25))
				s.Explain(r.name)
			}
			s.Latencies = append(s.Latencies, LatencyRow{"round trip at " + r.name, rep.RoundTrip},
				LatencyRow{"202 accepted at " + r.name, rep.AcceptLatency})
		}
		s.Note("%s: sent %d in %.1f s, accepted %d, rejected %d %v, indeterminate %d, received %d, duplicated %d, lost %d, unexpected %d, wrong %d; outcomes: %d succeeded, %d timeout, %d expired, %d other gateway errors.%s",
			r.name, rep.Sent, rep.DurationS, rep.Accepted, rep.Rejected, rep.RejectedBy, rep.Indeterminate, rep.Received, rep.Duplicated,
			rep.Lost, rep.Unexpected, rep.Wrong, rep.Outcomes.Succeeded, rep.Outcomes.Timeout, rep.Outcomes.Expired, rep.Outcomes.OtherGW,
			sampleErrors(rep.Errors))
	}
	s.Note("Gateway: 1 apiserver, %d msgworker(s), %d pushserver(s) (%s).", e.workers, e.push, b.layout.Why)
	s.Note("Open-loop runs schedule commands at fixed times and measure the round trip from the scheduled time (no coordinated omission); the maximum-rate run is closed loop with %d commands in flight. %d clients, %d devices answering echo at once, %s per run; latency is from the scheduled send to the client's receipt of the result over MQTT; throughput is devicesim's: results received over the time from the first send to the last result (plus 0.3 s).",
		rtConcurrency, rtClients, devices, dur)
	s.Notes = append(s.Notes, logProblems(append(e.g.All(), e.fleet)...)...)
	return nil
}

func sampleErrors(errs []string) string {
	if len(errs) == 0 {
		return ""
	}
	return fmt.Sprintf(" Sample error: %q.", errs[0])
}
