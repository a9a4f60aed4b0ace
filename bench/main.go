// Command bench is the gateway's benchmark: `make bench` runs it after
// starting RabbitMQ and Redis. In about seven minutes it measures, on this
// machine and with every process on 127.0.0.1:
//
//   - baseline: bare RabbitMQ, one hop, with the gateway's settings
//     (persistent, mandatory, confirmed publishes to a quorum queue with
//     the gateway's arguments; manual acks, prefetch 128);
//   - roundtrip: client → apiserver (claim and reserve in Redis) →
//     RabbitMQ → msgworker → device's mailbox in Redis → pushserver →
//     device → pushserver, which completes the answer in Redis itself
//     (DESIGN §5: answers never cross RabbitMQ) and relays it to the
//     client's mailbox → pushserver → client; with the state on the one
//     Redis server, at the maximum rate, at half of it and at 200
//     commands/s (the path's own latency), with devicesim fleet and
//     devicesim load processes; 1 msgworker and 1 pushserver unless
//     --workers and --push-servers say otherwise;
//   - shard: the same round trip on one Redis server kept exactly like
//     one shard of the local Cluster (appendonly yes, appendfsync always,
//     one replica; deployments/local/redis-shard.sh on 7301-7302, started
//     for the section and stopped after), at the maximum rate and at half
//     of it: the like-for-like base of the Cluster's ratio, since the
//     shared Redis runs appendonly no and has no replica;
//   - cluster: the same round trip with every service's GW_REDIS_URL on
//     the local Redis Cluster (--redis-cluster-url, `make services`), at
//     the maximum rate and at half of it;
//   - reconnect: a device that connects to 10,000 waiting commands;
//   - intake: the apiserver alone, no workers;
//   - worker: one msgworker draining a pre-filled command queue;
//   - push: one push server streaming mailboxes to 1,000 subscribers at
//     QoS 1, from a backlog and live, and Mosquitto doing the same with
//     the same clients and packets: rates as ratios to Mosquitto, CPU per
//     delivered message beside Mosquitto's, a CPU profile of the live run;
//   - idle: 50,000 idle MQTT sessions (6,000 with --quick) over 3 push
//     servers, held by 3 client processes (this binary run again as
//     `bench idle-clients`: one process may hold at most RLIMIT_NOFILE
//     sockets): resident memory per session, CPU while idle;
//   - httpdevices: 1,000 sleepy devices polling over HTTP every 10 s with
//     commands waiting, beside MQTT devices given the same rate of
//     commands: delivered per second and CPU per command of each;
//   - lanes: 100 devices with one ordered lane each, beside unordered
//     commands to the same devices (closed loop).
//
// It writes bench/results/<date>T<hhmm>.md and .json: throughput, latency
// percentiles, the CPU of every process (the brokers included, every
// node of the Cluster) per message of each run, the Redis calls the
// gateway's processes sent per message (gw_redis_calls_total of each)
// and the commands Redis ran, scripts' inner commands included, with
// their mean time (INFO commandstats, summed over the primaries), the
// ratio of the round trip to the baseline, and a table of the issue's
// targets, met or missed, with where the time goes for a missed one. The
// Redis CPU target is half of the round trip's Redis CPU in
// 2026-11-23T1906.md, the last report before partitions
// (redisCPUReference), whatever reports came since.
// A section whose parts do not build or cannot run here is reported as
// skipped with the reason; the others still run.
//
// Usage:
//
//	go run ./bench [--quick] [--sections baseline,roundtrip,shard,cluster,...] [--out bench/results]
//	               [--redis-cluster-url URL] [--gomaxprocs N]
//
// The round trip (and the shard, cluster and groups sections, which start
// the same way) runs every process it starts, the gateway's and devicesim's,
// with GOMAXPROCS=--gomaxprocs when it is above 0 (default 0: Go's
// default, the CPU count): see rtProcEnv for why and what it measured.
//
// The servers come from GW_AMQP_URL, GW_AMQP_MGMT_URL and GW_REDIS_URL
// (one server; most sections keep their state there) and
// --redis-cluster-url or GW_BENCH_REDIS_CLUSTER_URL (default: the
// Cluster of `make services`, 127.0.0.1:7101-7106), all on loopback. The
// bench and the services it starts reach Redis through config.NewRedis.
//
// Every section works in a namespace of its own (bench-<unix>-<section>)
// and deletes its queues and keys afterwards. Logs of the processes go to
// run/bench-<date>/ (not committed).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/gwproc"
	"github.com/iotgw/gateway/internal/testenv"
)

func main() {
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	var err error
	if len(os.Args) > 1 && os.Args[1] == idleClientsCmd {
		err = runIdleClients(ctx, os.Args[2:], os.Getenv, os.Stdin, os.Stdout)
	} else {
		err = run(ctx, os.Args[1:], os.Getenv, os.Stdout)
	}
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// sectionDef is one section of the benchmark.
type sectionDef struct {
	name, title string
	run         func(ctx context.Context, b *Bench, s *Section) error
	// budget bounds the section (full run; a quick run takes half).
	budget time.Duration
}

var sectionDefs = []sectionDef{
	{"baseline", "Bare RabbitMQ baseline (one hop, the gateway's settings)", runBaseline, 60 * time.Second},
	{"roundtrip", "Round trip through the gateway, state on one Redis server", runRoundtrip, 2 * time.Minute},
	{"shard", "Round trip through the gateway, state on one Redis server kept like a Cluster shard", runRoundtripShard, 100 * time.Second},
	{"cluster", "Round trip through the gateway, state on the local Redis Cluster", runRoundtripCluster, 100 * time.Second},
	{"reconnect", "A device reconnecting to 10,000 waiting commands", runReconnect, 90 * time.Second},
	{"intake", "Intake only: the apiserver without workers", runIntake, 90 * time.Second},
	{"worker", "Worker only: one msgworker draining pre-filled queues", runWorker, 2 * time.Minute},
	{"push", "Push server only, and Mosquitto for comparison", runPush, 2 * time.Minute},
	{"idle", "Idle MQTT sessions over 3 push servers: memory per session", runIdle, 3 * time.Minute},
	{"httpdevices", "Sleepy devices polling over HTTP, beside MQTT devices", runHTTPDevices, 3 * time.Minute},
	{"lanes", "Ordered lanes: one lane per device, beside unordered commands", runLanes, 90 * time.Second},
	{"groups", "Group command to the simulated fleet (issue 14)", runGroups, 3 * time.Minute},
}

// run is the whole program; main only supplies the process's context,
// arguments, environment and output.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stdout)
	out := fs.String("out", "bench/results", "folder of the reports (relative to the module root)")
	only := fs.String("sections", "", "comma-separated sections to run (default all): "+sectionNames())
	quick := fs.Bool("quick", false, "a smoke run of about a minute and a half: short runs, small counts")
	workers := fs.Int("workers", 0, "msgworkers of the round-trip gateway (default: probe 2 and 1, keep the faster)")
	push := fs.Int("push-servers", 0, "pushservers of the round-trip gateway (default: probe 3 and 1, keep the faster)")
	logLevel := fs.String("log-level", "", "GW_LOG_LEVEL of the gateway's processes (default: theirs, info)")
	clusterURL := fs.String("redis-cluster-url", envOr(getenv, "GW_BENCH_REDIS_CLUSTER_URL", testenv.DefaultRedisClusterURL), "the Redis Cluster of the cluster section (GW_BENCH_REDIS_CLUSTER_URL; the default is the one of `make services`)")
	gomaxprocs := fs.Int("gomaxprocs", 0, "GOMAXPROCS of every process the round trip starts (its gateway, devicesim fleet and load); 0 (default) leaves Go's, the CPU count")
	maxTime := fs.Duration("max-time", 0, "sections that would start after this are skipped (default 9m, 4m with --quick)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return nil
		}
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	selected, err := selectSections(*only)
	if err != nil {
		return err
	}
	if *workers < 0 || *push < 0 || (*workers == 0) != (*push == 0) {
		return errors.New("--workers and --push-servers go together, each at least 1")
	}
	if *gomaxprocs < 0 {
		return errors.New("--gomaxprocs is at least 0 (0: Go's default)")
	}
	if *maxTime <= 0 {
		*maxTime = 9 * time.Minute
		if *quick {
			*maxTime = 4 * time.Minute
		}
	}
	root, err := gwproc.RepoRoot()
	if err != nil {
		return err
	}
	outDir := *out
	if !filepath.IsAbs(outDir) {
		outDir = filepath.Join(root, outDir)
	}
	if err := os.MkdirAll(outDir, 0o755); err != nil {
		return fmt.Errorf("cannot create %s: %w", outDir, err)
	}

	started := time.Now()
	stamp := started.UTC().Format("2006-01-02T1504")
	b := &Bench{
		AMQPURL:     envOr(getenv, "GW_AMQP_URL", config.DefaultAMQPURL),
		MgmtURL:     envOr(getenv, "GW_AMQP_MGMT_URL", config.DefaultAMQPMgmtURL),
		RedisURL:    envOr(getenv, "GW_REDIS_URL", config.DefaultRedisURL),
		ClusterURL:  *clusterURL,
		Secret:      randomSecret(),
		Quick:       *quick,
		Workers:     *workers,
		PushServers: *push,
		LogLevel:    *logLevel,
		GoMaxProcs:  *gomaxprocs,
		Root:        root,
		Log:         stdout,
		started:     started,
		metricsAddr: map[*gwproc.Proc]string{},
	}
	for _, u := range []string{b.AMQPURL, b.MgmtURL, b.RedisURL, b.ClusterURL} {
		if err := requireLoopback(u); err != nil {
			return err
		}
	}
	// A folder of its own: two runs may start in the same minute.
	if err := os.MkdirAll(filepath.Join(root, "run"), 0o755); err != nil {
		return err
	}
	if b.RunDir, err = os.MkdirTemp(filepath.Join(root, "run"), "bench-"+stamp+"-"); err != nil {
		return fmt.Errorf("cannot create the run folder: %w", err)
	}
	b.BinDir = filepath.Join(b.RunDir, "bin")
	if err := os.MkdirAll(b.BinDir, 0o755); err != nil {
		return fmt.Errorf("cannot create %s: %w", b.BinDir, err)
	}
	defer os.RemoveAll(b.BinDir) // the logs stay
	nofile := raiseNoFile()
	if b.redis, err = openRedis("single Redis", b.RedisURL, 256); err != nil {
		return err
	}
	b.rdb = b.redis.rdb
	defer b.rdb.Close()
	defer func() {
		if b.cluster != nil {
			b.cluster.rdb.Close()
		}
	}()

	rep := &Report{Started: started, Quick: *quick}
	load0 := loadAvg()
	serversErr := b.checkServers(ctx)
	if serversErr == nil {
		rep.Host = b.hostInfo(ctx, nofile)
		b.logf("building the gateway into %s", b.BinDir)
		b.build(ctx)
	} else {
		rep.Host = Host{NoFile: nofile}
	}
	rep.Host.LoadStart = load0
	if serversErr != nil {
		b.logf("servers: %v", serversErr)
	}

	for _, def := range selected {
		s := &Section{Name: def.name, Title: def.title, Status: StatusOK}
		rep.Sections = append(rep.Sections, s)
		if serversErr != nil {
			s.Status, s.Reason = StatusSkipped, serversErr.Error()
			continue
		}
		if ctx.Err() != nil {
			s.Status, s.Reason = StatusSkipped, "interrupted"
			continue
		}
		left := time.Until(started.Add(*maxTime))
		if left < 10*time.Second {
			s.Status, s.Reason = StatusSkipped, fmt.Sprintf("the run's time limit (--max-time %s) was reached", *maxTime)
			continue
		}
		budget := def.budget
		if b.Quick {
			budget /= 2
		}
		budget = min(budget, left)
		b.logf("== %s", def.name)
		t0 := time.Now()
		err := runSection(ctx, budget, b, s, def)
		s.DurationS = time.Since(t0).Seconds()
		var sk errSkip
		switch {
		case errors.As(err, &sk):
			s.Status, s.Reason = StatusSkipped, sk.reason
		case err != nil:
			s.Status, s.Reason = StatusFailed, err.Error()
		}
		b.logf("== %s: %s %s (%s)", def.name, s.Status, s.Reason, time.Since(t0).Round(100*time.Millisecond))
	}
	rep.Gateway = b.layout
	rep.DurationS = time.Since(started).Seconds()
	rep.Host.LoadEnd = loadAvg()
	rep.summarize()
	return writeReports(rep, outDir, stamp, stdout)
}

// runSection runs one section within its budget, turning a panic into a
// failure so the other sections still run.
func runSection(ctx context.Context, budget time.Duration, b *Bench, s *Section, def sectionDef) (err error) {
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("panic: %v\n%s", p, debug.Stack())
		}
	}()
	err = def.run(ctx, b, s)
	if err != nil && ctx.Err() != nil && !errors.As(err, new(errSkip)) {
		err = fmt.Errorf("%w (the section's budget is %s)", err, budget)
	}
	return err
}

// checkServers checks that RabbitMQ and Redis answer.
func (b *Bench) checkServers(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := b.rdb.Ping(cctx).Err(); err != nil {
		return fmt.Errorf("Redis is not reachable at %s (start it with deployments/local/services.sh): %w", b.RedisURL, err)
	}
	conn, err := amqp.DialConfig(b.AMQPURL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		return fmt.Errorf("RabbitMQ is not reachable (start it with deployments/local/services.sh): %w", err)
	}
	return conn.Close()
}

func writeReports(rep *Report, dir, stamp string, stdout io.Writer) error {
	base := filepath.Join(dir, stamp)
	for i := 2; ; i++ {
		if _, err := os.Stat(base + ".md"); errors.Is(err, os.ErrNotExist) {
			break
		}
		base = filepath.Join(dir, fmt.Sprintf("%s-%d", stamp, i))
	}
	var md, js strings.Builder
	if err := rep.WriteMarkdown(&md); err != nil {
		return err
	}
	if err := rep.WriteJSON(&js); err != nil {
		return err
	}
	if err := os.WriteFile(base+".md", []byte(md.String()), 0o644); err != nil {
		return fmt.Errorf("cannot write the report: %w", err)
	}
	if err := os.WriteFile(base+".json", []byte(js.String()), 0o644); err != nil {
		return fmt.Errorf("cannot write the report: %w", err)
	}
	fmt.Fprintf(stdout, "\nreport: %s.md\n        %s.json\n", base, base)
	fmt.Fprintf(stdout, "baseline %.0f/s, round trip %.0f/s (kept like a Cluster shard %.0f/s, Cluster %.0f/s), ratio %.3f\n", rep.BaselineAMQPPerS, rep.RoundtripMaxPerS, rep.RoundtripShardMaxPerS, rep.RoundtripClusterMaxPerS, rep.Ratio)
	for _, t := range rep.Targets {
		verdict := "not measured"
		switch {
		case t.Measured && t.Target == nil:
			verdict = fmt.Sprintf("%s beside %s", fmtValue(t.Value, t.Unit), t.Beside)
		case t.Measured:
			verdict = fmt.Sprintf("%s (%s) %s", fmtValue(t.Value, t.Unit), fmtTarget(t.Target, t.Unit), map[bool]string{true: "met", false: "missed"}[t.Met])
		}
		fmt.Fprintf(stdout, "  %s: %s\n", t.Name, verdict)
	}
	return nil
}

func selectSections(list string) ([]sectionDef, error) {
	if strings.TrimSpace(list) == "" {
		return sectionDefs, nil
	}
	want := map[string]bool{}
	for _, n := range strings.Split(list, ",") {
		n = strings.TrimSpace(n)
		found := false
		for _, d := range sectionDefs {
			if d.name == n {
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown section %q (sections: %s)", n, sectionNames())
		}
		want[n] = true
	}
	var out []sectionDef
	for _, d := range sectionDefs {
		if want[d.name] {
			out = append(out, d)
		}
	}
	return out, nil
}

func sectionNames() string {
	var n []string
	for _, d := range sectionDefs {
		n = append(n, d.name)
	}
	return strings.Join(n, ",")
}

// requireLoopback refuses a server URL whose host, or any addr=
// parameter (the other nodes of a Redis Cluster), is not a loopback
// address: the benchmark sends all its traffic to 127.0.0.1.
func requireLoopback(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return fmt.Errorf("cannot parse server URL: %w", err)
	}
	hosts := []string{u.Hostname()}
	for _, a := range u.Query()["addr"] {
		h, _, err := net.SplitHostPort(a)
		if err != nil {
			h = a
		}
		hosts = append(hosts, h)
	}
	for _, h := range hosts {
		if h == "localhost" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil && ip.IsLoopback() {
			continue
		}
		return fmt.Errorf("the benchmark only talks to servers on loopback, and %s is on %q", u.Redacted(), h)
	}
	return nil
}

func envOr(getenv func(string) string, name, def string) string {
	if v := getenv(name); v != "" {
		return v
	}
	return def
}
