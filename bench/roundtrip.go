package main

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
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
	OutOfOrder    int64   `json:"out_of_order"`
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

// startRT starts a gateway of the given layout in ns with its state on
// dep and a devicesim fleet of devices devices, and waits until every
// device is online.
func (b *Bench) startRT(ctx context.Context, dep *redisDeploy, section, ns string, workers, push, devices int) (*rtEnv, error) {
	g, err := b.startGatewayOn(ctx, dep, section, ns, workers, push, b.rtProcEnv()...)
	if err != nil {
		return nil, err
	}
	e := &rtEnv{ns: ns, workers: workers, push: push, g: g}
	e.fleet = b.proc(section, fmt.Sprintf("devicesim-fleet-%s", ns), "devicesim", []string{"fleet",
		"--devices", strconv.Itoa(devices), "--prefix", "dev-", "--api", g.APIURL, "--secret", b.Secret,
		"--progress=false", "--connect-parallel", "64"}, b.rtProcEnv())
	e.fleet.Name = "devicesim-fleet"
	if err := e.fleet.Start(); err != nil {
		e.stop()
		return nil, err
	}
	ids := make([]string, devices)
	for i := range ids {
		ids[i] = "dev-" + strconv.Itoa(i)
	}
	// 60 s, or 10 ms a device for a large fleet (the groups section).
	wait := max(60*time.Second, time.Duration(devices)*10*time.Millisecond)
	online, err := b.waitOnline(ctx, dep, ns, ids, wait)
	if err == nil && online < devices {
		err = fmt.Errorf("only %d of %d devices came online within %s (fleet log %s)", online, devices, wait, e.fleet.Log)
	}
	if err != nil {
		e.stop()
		return nil, err
	}
	return e, nil
}

// rtProcEnv is what the round trip adds to the environment of every
// process it starts: GOMAXPROCS=--gomaxprocs, nothing when it is 0 (the
// default: Go's own, the CPU count).
//
// Why it is a knob: on the 2 cores the bench runs on, the round trip runs
// seven processes besides the brokers, each with a Go scheduler of its
// own. With GOMAXPROCS=2 a wake-up that finds the other P idle starts a
// second thread spinning for work (runtime.wakep, startm), and each
// process's sysmon thread polls every 20 µs while any P is busy: perf at
// 200/s showed runtime.sysmon at 12-15% and the scheduler's parking and
// spinning (runtime.schedule) at up to 15% of each Go process's CPU.
// Measured on 2026-12-07 with the round trip alone, the machine shared
// with other helpers' work (others' CPU 1-40 s over each 15 s run, the
// maximum rate 134-424/s instead of a quiet machine's 1,542/s), six
// pairs of runs, GOMAXPROCS default (A) and 1 (B); in the first three
// the half-rate run was pinned to 100/s; perf stat and perf record -g
// over 8 s of each Go process at 200/s in those three:
//
//	                                   GOMAXPROCS default    GOMAXPROCS=1
//	context switches in the 8 s,       15,677-22,436         7,684-10,385
//	  apiserver
//	  pushserver                       12,422-25,151         8,651-10,148
//	  devicesim load                   16,656-22,047         7,872-8,891
//	CPU of the 5 Go processes in       3.26-4.30 s           2.79-3.14 s
//	  the 8 s (task clock)
//	runtime.schedule, pushserver       15%                   4%
//	runtime.sysmon, each Go process    12-15%                10-14%
//
// and the round trip's p99 at half rate, in the order run, with the
// CPU others used over that run:
//
//	pair 1-3 (100/s)   A 4,404 ms (25 s), B 2,084 (23); A 7,617 (23), B 829 (20);
//	                   A 2,911 (21), B 1,056 (23)
//	pair 4-6 (half of  A 1,479 (17), B 860 (17); B 1,539 (17), A 231 (1);
//	  the maximum)     B 1,018 (11), A 513 (8)
//
// The run that came second had the lower p99 in all six pairs, whichever
// it was, as the machine grew quieter; the CPU per round trip of the 5
// Go processes moved by less than the noise at every rate (maximum
// 1,868-2,325 µs A, 1,970-2,153 µs B). Fewer context switches and less
// scheduler time every time, but no gain shown in what the issue
// measures, so the default stays Go's; an A/B on a quiet machine
// (--gomaxprocs 1 against 0, alternating, the order swapped half the
// time) is what would decide it.
func (b *Bench) rtProcEnv() []string {
	if b.GoMaxProcs <= 0 {
		return nil
	}
	return []string{"GOMAXPROCS=" + strconv.Itoa(b.GoMaxProcs)}
}

// load runs one devicesim load process against e: open loop at rate, or
// closed loop with rtConcurrency in flight when rate is 0.
func (b *Bench) load(ctx context.Context, section string, e *rtEnv, tag string, rate int, dur, drain time.Duration, devices int) (loadReport, time.Duration, error) {
	args := []string{"load", "--api", e.g.APIURL, "--secret", b.Secret,
		"--clients", strconv.Itoa(rtClients), "--client-prefix", "load" + tag + "-",
		"--devices", strconv.Itoa(devices), "--prefix", "dev-",
		"--rate", strconv.Itoa(rate), "--concurrency", strconv.Itoa(rtConcurrency),
		"--duration", dur.String(), "--method", "echo", "--timeout", "10s", "--expires-in", "1m",
		"--drain", drain.String(), "--max-inflight", "4096", "--json", "--progress=false"}
	var rep loadReport
	cpu, err := runJSON(ctx, b.bins["devicesim"], args, b.rtProcEnv(), filepath.Join(b.RunDir, section, "devicesim-load-"+tag+".log"), &rep)
	return rep, cpu, err
}

// Run names of the round trip, shared by its CPU tables and the report's
// targets.
const (
	rtMaxRun  = "maximum rate"
	rtHalfRun = "half the maximum rate"
)

// runRoundtrip measures the whole way of a command and its answer with
// the gateway's state on the one Redis server (GW_REDIS_URL).
func runRoundtrip(ctx context.Context, b *Bench, s *Section) error {
	return roundtrip(ctx, b, s, b.redis, "roundtrip", "")
}

// runRoundtripCluster measures the same round trip with every service's
// GW_REDIS_URL on the local Redis Cluster (--redis-cluster-url).
func runRoundtripCluster(ctx context.Context, b *Bench, s *Section) error {
	if b.cluster == nil {
		d, err := openRedis("Redis Cluster", b.ClusterURL, 256)
		if err != nil {
			return skip("cannot use the Redis Cluster URL: %v", err)
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err = d.rdb.Ping(cctx).Err()
		cancel()
		if err != nil || !d.cluster() {
			d.rdb.Close()
			return skip("no Redis Cluster answers at %s (start it with `make services`): %v", b.ClusterURL, err)
		}
		b.cluster = d
	}
	return roundtrip(ctx, b, s, b.cluster, "cluster", "cluster_")
}

// shardURL is the Redis of deployments/local/redis-shard.sh: one server
// kept like one shard of the local Cluster (appendonly yes, appendfsync
// always, one replica).
const shardURL = "redis://127.0.0.1:7301"

// runRoundtripShard measures the round trip with every service's
// GW_REDIS_URL on one Redis server kept exactly like one shard of the
// local Cluster: the like-for-like base of the Cluster's ratio (the
// shared Redis runs appendonly no and has no replica, and must not be
// reconfigured). It starts that server with
// deployments/local/redis-shard.sh (private ports, idempotent) and stops
// it afterwards, unless it already ran (another run of the bench uses
// it: stopping it would break that run; the CPU rows then count both).
func runRoundtripShard(ctx context.Context, b *Bench, s *Section) error {
	script := filepath.Join(b.Root, "deployments", "local", "redis-shard.sh")
	logFile := filepath.Join(b.RunDir, "shard", "redis-shard.log")
	if runScript(ctx, script, "status", logFile) == nil {
		s.Note("The single Redis kept like a Cluster shard (%s) was already running: it was used as found and left running; its CPU rows count whatever else used it meanwhile.", shardURL)
	} else {
		if err := runScript(ctx, script, "start", logFile); err != nil {
			return skip("cannot start the single Redis kept like a Cluster shard (%s start): %v", script, err)
		}
		defer func() {
			// Its own context: the section's may have ended.
			sctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			if err := runScript(sctx, script, "stop", logFile); err != nil {
				s.Note("cannot stop the single Redis kept like a Cluster shard: %v", err)
			}
		}()
	}
	d, err := openRedis(shardName, shardURL, 256)
	if err != nil {
		return err
	}
	b.shard = d
	defer func() {
		b.shard = nil
		d.rdb.Close()
	}()
	return roundtrip(ctx, b, s, d, "shard", "shard_")
}

// shardName is the name of the deployment of runRoundtripShard.
const shardName = "single Redis kept like a Cluster shard"

// runScript runs a deployments/local script with one argument, its
// output appended to logFile.
func runScript(ctx context.Context, script, arg, logFile string) error {
	if err := os.MkdirAll(filepath.Dir(logFile), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	cmd := exec.CommandContext(ctx, "bash", script, arg)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w (log %s)", filepath.Base(script), arg, err, logFile)
	}
	return nil
}

// roundtrip runs the round trip on dep, with a devicesim fleet answering
// echo and one devicesim load process per run: closed loop at the
// maximum rate, then open loop at half of it (the latency target's
// rate) and, on the one server, at 200/s (the path's own latency, far
// below any capacity). Figure keys start with prefix.
func roundtrip(ctx context.Context, b *Bench, s *Section, dep *redisDeploy, section, prefix string) error {
	if err := b.need("apiserver", "msgworker", "pushserver", "devicesim"); err != nil {
		return err
	}
	ns, cleanup := b.sectionNamespace(s, section)
	defer cleanup()
	devices, dur, drain := 200, 15*time.Second, 20*time.Second
	if b.Quick {
		devices, dur, drain = 50, 4*time.Second, 10*time.Second
	}
	w, p, why := b.Workers, b.PushServers, "given with --workers and --push-servers"
	if w == 0 {
		w, p, why = 1, 1, "the default: on 2 CPUs one of each was faster than 2 msgworkers with 3 pushservers (report 2026-11-23T1906.md, layout probe)"
	}
	e, err := b.startRT(ctx, dep, section, ns, w, p, devices)
	if err != nil {
		return err
	}
	defer e.stop()
	if pers := dep.persistence(ctx); pers != "" {
		s.SetWhere("persistence", pers)
	}
	b.layout = GatewaySet{APIServers: 1, Workers: w, PushServers: p, Why: why}
	b.logf("gateway up on %s (%d msgworkers, %d pushservers), %d devices online", dep.Name, e.workers, e.push, devices)

	srcs := append(gatewaySources(e.g), procSource(e.fleet))
	srcs = append(srcs, b.brokersFor(ctx, dep)...)
	m := b.newMeterFor(dep, srcs...)
	rest := 5 * time.Second
	if b.Quick {
		rest = 2 * time.Second
	}
	sleepCtx(ctx, rest)
	s.CPU = append(s.CPU, m.table(fmt.Sprintf("%s at rest (fleet connected, no commands)", rest), 0))
	s.Raw = map[string]any{}

	one := func(i int, name string, rate int) (loadReport, CPUTable, error) {
		m.reset()
		rep, cpu, err := b.load(ctx, section, e, strconv.Itoa(i), rate, dur, drain, devices)
		if err != nil {
			return rep, CPUTable{}, err
		}
		m.addTotal("devicesim load", cpu)
		t := m.table(name, rep.Received)
		s.CPU = append(s.CPU, t)
		s.Raw[name] = rep
		b.logf("%s %s: %.0f/s, accepted %d, received %d, lost %d, p50 %.2f ms, p99 %.2f ms; Redis %.2f calls sent, %.1f commands run × %.1f µs, %.0f µs CPU per round trip",
			section, name, rep.Throughput, rep.Accepted, rep.Received, rep.Lost, rep.RoundTrip.P50, rep.RoundTrip.P99,
			t.RedisSentPerMsg, t.RedisCallsPerMsg, t.RedisUSPerCall, t.RedisCPUPerMsgUS)
		s.Note("%s: sent %d in %.1f s, accepted %d, rejected %d %v, indeterminate %d, received %d, duplicated %d, lost %d, unexpected %d, wrong %d; outcomes: %d succeeded, %d timeout, %d expired, %d other gateway errors.%s",
			name, rep.Sent, rep.DurationS, rep.Accepted, rep.Rejected, rep.RejectedBy, rep.Indeterminate, rep.Received, rep.Duplicated,
			rep.Lost, rep.Unexpected, rep.Wrong, rep.Outcomes.Succeeded, rep.Outcomes.Timeout, rep.Outcomes.Expired, rep.Outcomes.OtherGW,
			sampleErrors(rep.Errors))
		return rep, t, nil
	}

	// Maximum rate, closed loop.
	rep, t, err := one(0, rtMaxRun, 0)
	if err != nil {
		return err
	}
	s.Add(prefix+"roundtrip_max_per_s", "round trip at maximum rate, "+dep.Name, rep.Throughput, "/s", nil)
	s.Explain(rtMaxRun)
	s.Add(prefix+"roundtrip_max_accepted_per_s", "accepted (202) at maximum rate", perSecond(rep.Accepted, time.Duration(rep.DurationS*float64(time.Second))), "/s", nil)
	s.Explain(rtMaxRun)
	if len(t.RedisSent) > 0 {
		s.Add(prefix+"redis_sent_calls_per_rt", "Redis calls sent per round trip by the gateway, "+dep.Name+" (gw_redis_calls_total)", t.RedisSentPerMsg, "calls", AtMost(10))
		s.Explain(rtMaxRun)
	} else {
		s.Note("The Redis calls the gateway sent were not measured: a process's gw_redis_calls_total could not be read before or after the run.")
	}
	s.Add(prefix+"redis_calls_per_rt", "Redis commands run per round trip, scripts' inner commands included, "+dep.Name+" (INFO commandstats)", t.RedisCallsPerMsg, "commands", nil)
	s.Explain(rtMaxRun)
	s.Add(prefix+"redis_us_per_call", "mean time in Redis per command run, "+dep.Name+" (usec / calls)", t.RedisUSPerCall, "µs", nil)
	s.Add(prefix+"redis_cpu_us_per_rt", fmt.Sprintf("Redis CPU per round trip, %s (%d redis-server process(es))", dep.Name, t.RedisServers), t.RedisCPUPerMsgUS, "µs", nil)
	s.Explain(rtMaxRun)
	if t.RedisServers > 1 {
		s.Add(prefix+"redis_primary_cpu_us_per_rt", "Redis CPU per round trip, primaries only", t.RedisPrimaryCPUPerMsgUS, "µs", nil)
	}
	s.Latencies = append(s.Latencies,
		LatencyRow{fmt.Sprintf("round trip at maximum rate (%d in flight)", rtConcurrency), rep.RoundTrip},
		LatencyRow{"202 accepted at maximum rate", rep.AcceptLatency})

	// Half of it, open loop: the latency target's rate.
	half := max(1, int(rep.Throughput/2+0.5))
	if ctx.Err() != nil {
		return ctx.Err()
	}
	rep, _, err = one(1, rtHalfRun, half)
	if err != nil {
		return err
	}
	s.Add(prefix+"roundtrip_half_rate", "half the maximum rate (the open-loop rate asked)", float64(half), "/s", nil)
	s.Add(prefix+"roundtrip_half_per_s", "round trip achieved at half the maximum rate", rep.Throughput, "/s", nil)
	s.Explain(rtHalfRun)
	s.Add(prefix+"roundtrip_half_p50_ms", "round trip p50 at half the maximum rate, "+dep.Name, rep.RoundTrip.P50, "ms", nil)
	s.Explain(rtHalfRun)
	s.Add(prefix+"roundtrip_half_p99_ms", "round trip p99 at half the maximum rate, "+dep.Name, rep.RoundTrip.P99, "ms", AtMost(25))
	s.Explain(rtHalfRun)
	s.Latencies = append(s.Latencies,
		LatencyRow{fmt.Sprintf("round trip at %s/s (half the maximum rate)", thousands(float64(half))), rep.RoundTrip},
		LatencyRow{"202 accepted at half the maximum rate", rep.AcceptLatency})

	// 200/s: the path's own latency, without queueing.
	if prefix == "" && ctx.Err() == nil {
		rep, _, err = one(2, "200/s", 200)
		if err != nil {
			return err
		}
		s.Add(prefix+"roundtrip_200_per_s", "round trip achieved at 200/s", rep.Throughput, "/s", nil)
		s.Explain("200/s")
		s.Latencies = append(s.Latencies, LatencyRow{"round trip at 200/s", rep.RoundTrip},
			LatencyRow{"202 accepted at 200/s", rep.AcceptLatency})
	}

	s.Note("State on %s (GW_REDIS_URL of every service: %s; %s). Gateway: 1 apiserver, %d msgworker(s), %d pushserver(s) (%s).", dep.Name, redactURL(dep.URL), orDash(s.Where["persistence"]), e.workers, e.push, why)
	if b.GoMaxProcs > 0 {
		s.Note("Every process of the round trip (its gateway, devicesim fleet and load) ran with GOMAXPROCS=%d (--gomaxprocs; 0 leaves Go's default, the CPU count).", b.GoMaxProcs)
	} else {
		s.Note("Every process of the round trip ran with Go's default GOMAXPROCS, the CPU count (--gomaxprocs 0).")
	}
	s.Note("Open-loop runs schedule commands at fixed times and measure the round trip from the scheduled time (no coordinated omission); the maximum-rate run is closed loop with %d commands in flight. %d clients, %d devices answering echo at once, %s per run; latency is from the scheduled send to the client's receipt of the result over MQTT; throughput is devicesim's: results received over the time from the first send to the last result (plus 0.3 s).",
		rtConcurrency, rtClients, devices, dur)
	s.Note("Redis calls sent per round trip are the calls the gateway's processes sent (gw_redis_calls_total of each, read from its /metrics before and after the run): a command sent on its own is one call, an FCALL too however many commands it runs, and a pipeline or MULTI/EXEC sent to one server is one call (one network round trip); the issue's target of at most 10 Redis calls per round trip applies to these (docs/DEVIATIONS.md). Redis commands run per round trip are the calls of every command in INFO commandstats (summed over the primaries) over the round trips: Redis counts each command a function (FCALL) runs as a call of its own, besides the FCALL, so that figure is Redis's work, not the calls the gateway makes, and commandstats cannot tell the two apart; the mean time per command run is usec / calls of the same lines. Redis CPU per round trip is the CPU of the redis-server processes (from /proc; on the Cluster every primary and replica) over the round trips, whoever else used them meanwhile.")
	s.Notes = append(s.Notes, logProblems(append(e.g.All(), e.fleet)...)...)
	return nil
}

// redactURL drops the password of a URL for the report.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparsable URL)"
	}
	return u.Redacted()
}

func sampleErrors(errs []string) string {
	if len(errs) == 0 {
		return ""
	}
	return fmt.Sprintf(" Sample error: %q.", errs[0])
}
