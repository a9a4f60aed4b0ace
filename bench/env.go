package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/gwproc"
	"github.com/iotgw/gateway/protocol"
)

// Bench is what every section shares: the servers, the built binaries,
// the secret, where logs go, and the run's settings.
type Bench struct {
	AMQPURL  string
	MgmtURL  string
	RedisURL string
	Secret   string
	Quick    bool
	// Workers and PushServers are the round-trip gateway's layout.
	Workers, PushServers int
	// LogLevel is passed to the gateway's processes as GW_LOG_LEVEL
	// ("" keeps their default).
	LogLevel string
	// GoMaxProcs is GOMAXPROCS of every process the round trip starts
	// (rtProcEnv); 0 leaves Go's default.
	GoMaxProcs int

	Root   string // module root
	BinDir string
	RunDir string // logs of the processes, under run/ (not committed)
	Log    io.Writer

	layout      GatewaySet              // the round trip's layout, once chosen
	metricsAddr map[*gwproc.Proc]string // Prometheus address of push servers
	bins        map[string]string       // built binaries by name
	buildErrs   map[string]string       // why a binary did not build
	// rdb is redis's client: the one server most sections use.
	rdb   redis.UniversalClient
	redis *redisDeploy
	// ClusterURL is the Redis Cluster of the cluster section; cluster is
	// its deployment once that section opened it.
	ClusterURL string
	cluster    *redisDeploy
	// shard is the single Redis kept like a Cluster shard while the shard
	// section runs (deployments/local/redis-shard.sh).
	shard   *redisDeploy
	started time.Time
}

// errSkip marks a section that cannot run here; the report says why.
type errSkip struct{ reason string }

func (e errSkip) Error() string { return "skipped: " + e.reason }

func skip(format string, args ...any) error { return errSkip{fmt.Sprintf(format, args...)} }

// logf prints a progress line.
func (b *Bench) logf(format string, args ...any) {
	fmt.Fprintf(b.Log, "%s %s\n", time.Since(b.started).Round(100*time.Millisecond), fmt.Sprintf(format, args...))
}

// build compiles each binary on its own, so that one part that does not
// build yet only skips the sections that need it.
func (b *Bench) build(ctx context.Context) {
	b.bins, b.buildErrs = map[string]string{}, map[string]string{}
	for _, name := range gwproc.Binaries {
		out := filepath.Join(b.BinDir, name)
		cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "./"+name)
		cmd.Dir = b.Root
		msg, err := cmd.CombinedOutput()
		if err != nil {
			reason := strings.TrimSpace(string(msg))
			if reason == "" {
				reason = err.Error()
			}
			if lines := strings.Split(reason, "\n"); len(lines) > 4 {
				reason = strings.Join(lines[:4], "; ") + "; …"
			}
			b.buildErrs[name] = strings.ReplaceAll(reason, "\n", "; ")
			b.logf("build %s: failed: %s", name, b.buildErrs[name])
			continue
		}
		b.bins[name] = out
	}
}

// need returns a skip error naming the first of names that did not build.
func (b *Bench) need(names ...string) error {
	for _, n := range names {
		if _, ok := b.bins[n]; !ok {
			return skip("%s does not build yet (%s)", n, b.buildErrs[n])
		}
	}
	return nil
}

// namespace returns a namespace of its own for a section.
func (b *Bench) namespace(section string) string {
	return fmt.Sprintf("bench-%d-%s", time.Now().Unix(), section)
}

// sectionNamespace gives section s its namespace (recorded in the report)
// and the cleanup to defer, which notes in s when it fails.
func (b *Bench) sectionNamespace(s *Section, section string) (ns string, cleanup func()) {
	ns = b.namespace(section)
	s.Namespace = ns
	return ns, func() {
		if err := b.cleanup(ns); err != nil {
			s.Note("cleanup: %v", err)
		}
	}
}

// gwEnv is the environment of a gateway process in namespace ns.
func (b *Bench) gwEnv(ns string) []string {
	env := []string{
		"GW_NAMESPACE=" + ns,
		"GW_AUTH_SECRET=" + b.Secret,
		"GW_AMQP_URL=" + b.AMQPURL,
		"GW_AMQP_MGMT_URL=" + b.MgmtURL,
		"GW_REDIS_URL=" + b.RedisURL,
		"GW_METRICS_ADDR=127.0.0.1:0",
		// The report records appendfsync; readiness must not refuse a
		// Redis that is not durable (DESIGN §7).
		"GW_DURABILITY=relaxed",
	}
	if b.LogLevel != "" {
		env = append(env, "GW_LOG_LEVEL="+b.LogLevel)
	}
	return env
}

// extraEnv is gwEnv without what gwproc.Options sets itself.
func (b *Bench) extraEnv() []string {
	env := []string{"GW_AMQP_MGMT_URL=" + b.MgmtURL}
	if b.LogLevel != "" {
		env = append(env, "GW_LOG_LEVEL="+b.LogLevel)
	}
	return env
}

// proc describes a process of binary name with its log under the
// section's run folder.
func (b *Bench) proc(section, name, bin string, args, env []string) *gwproc.Proc {
	dir := filepath.Join(b.RunDir, section)
	_ = os.MkdirAll(dir, 0o755)
	return &gwproc.Proc{Name: name, Bin: b.bins[bin], Args: args, Env: env, Log: filepath.Join(dir, name+".log")}
}

// cleanup deletes the namespace's Redis keys, on the one server, on every
// primary of the Cluster when the run used it and on the single Redis kept
// like a shard while it runs, and its queues and
// exchanges (the standard topology plus extra queues).
func (b *Bench) cleanup(ns string, extraQueues ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for _, d := range []*redisDeploy{b.redis, b.cluster, b.shard} {
		if d != nil {
			if err := d.cleanup(ctx, ns); err != nil {
				errs = append(errs, err)
			}
		}
	}
	topo := benchTopology(ns)
	conn, err := amqp.DialConfig(b.AMQPURL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)})
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("cannot connect to RabbitMQ: %w", err))...)
	}
	defer conn.Close()
	var ch *amqp.Channel
	do := func(f func(*amqp.Channel) error) {
		if ch == nil || ch.IsClosed() {
			if ch, err = conn.Channel(); err != nil {
				errs = append(errs, err)
				return
			}
		}
		if err := f(ch); err != nil {
			errs = append(errs, err)
		}
	}
	for _, q := range append(append(topo.Queues(), topo.FenceQueue), extraQueues...) {
		do(func(ch *amqp.Channel) error { _, err := ch.QueueDelete(q, false, false, false); return err })
	}
	for _, x := range topo.Exchanges() {
		do(func(ch *amqp.Channel) error { return ch.ExchangeDelete(x, false, false) })
	}
	return errors.Join(errs...)
}

// benchTopology is the topology of namespace ns with the counts the
// gateway processes the bench starts run with: the defaults (gwEnv sets
// neither GW_QUEUES nor GW_PARTITIONS).
func benchTopology(ns string) protocol.Topology {
	return protocol.NewTopology(ns, protocol.DefaultQueues, protocol.DefaultPartitions)
}

func randomSecret() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// raiseNoFile raises the soft RLIMIT_NOFILE to the hard limit; processes
// started afterwards inherit it. It returns the soft limit now in force.
func raiseNoFile() uint64 {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0
	}
	if rl.Cur < rl.Max {
		want := rl
		want.Cur = want.Max
		if syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want) == nil {
			rl = want
		}
	}
	return rl.Cur
}

// listenerPID finds the process listening on 127.0.0.1 (or any address)
// at port, through /proc/net/tcp and the processes' descriptors; 0 when
// it cannot tell (another user's process, not Linux).
func listenerPID(port int) int {
	inodes := map[string]bool{}
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		file, err := os.Open(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(file)
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 10 || fs[3] != "0A" { // LISTEN
				continue
			}
			_, p, ok := strings.Cut(fs[1], ":")
			if n, err := strconv.ParseInt(p, 16, 32); ok && err == nil && int(n) == port {
				inodes["socket:["+fs[9]+"]"] = true
			}
		}
		file.Close()
	}
	if len(inodes) == 0 {
		return 0
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	for _, p := range procs {
		fds, _ := os.ReadDir(p + "/fd")
		for _, fd := range fds {
			if l, err := os.Readlink(p + "/fd/" + fd.Name()); err == nil && inodes[l] {
				pid, _ := strconv.Atoi(filepath.Base(p))
				return pid
			}
		}
	}
	return 0
}

// urlPort returns the port of a URL, or def.
func urlPort(raw string, def int) int {
	u, err := url.Parse(raw)
	if err != nil || u.Port() == "" {
		return def
	}
	n, _ := strconv.Atoi(u.Port())
	return n
}

// cpuSource is one process whose CPU a meter reads.
type cpuSource struct {
	name string
	cpu  func() time.Duration
	// redis marks a redis-server process of the measured deployment;
	// primary one that is a primary.
	redis, primary bool
	// metrics is the Prometheus endpoint of a gateway process, whose
	// Redis calls sent the meter reads ("" for other processes).
	metrics string
}

// meter measures the CPU that each of its processes uses between start
// and table.
type meter struct {
	primaries []*redis.Client // for INFO commandstats; none: not read
	redis0    map[string]redisCmd
	srcs      []cpuSource
	start     []time.Duration
	// sent0 is each source's Redis calls sent at the start; sentOK
	// false when a source with metrics could not be read.
	sent0     []redisSent
	sentOK    bool
	extra     []CPURow
	busy0     time.Duration
	steal0    time.Duration
	startedAt time.Time
}

// brokers returns the CPU sources of RabbitMQ, the one Redis server and
// this process.
func (b *Bench) brokers(ctx context.Context) []cpuSource { return b.brokersFor(ctx, b.redis) }

// brokersFor returns the CPU sources of RabbitMQ, every redis-server
// process of d and this process.
func (b *Bench) brokersFor(ctx context.Context, d *redisDeploy) []cpuSource {
	var out []cpuSource
	if pid := listenerPID(urlPort(b.AMQPURL, 5672)); pid > 0 {
		out = append(out, cpuSource{name: "rabbitmq", cpu: func() time.Duration { return gwproc.ProcessCPU(pid) }})
	}
	out = append(out, d.cpuSources(ctx)...)
	self := os.Getpid()
	out = append(out, cpuSource{name: "bench (this process)", cpu: func() time.Duration { return gwproc.ProcessCPU(self) }})
	return out
}

// procSource is the CPU source of a gateway process.
func procSource(p *gwproc.Proc) cpuSource {
	return cpuSource{name: p.Name, cpu: p.CPU, metrics: p.MetricsURL}
}

func newMeter(srcs ...cpuSource) *meter {
	m := &meter{srcs: srcs}
	m.reset()
	return m
}

// newMeter returns a meter that also counts the Redis commands run
// meanwhile (INFO commandstats).
func (b *Bench) newMeter(srcs ...cpuSource) *meter { return b.newMeterFor(b.redis, srcs...) }

// newMeterFor returns a meter that also counts the Redis commands run on
// the primaries of d meanwhile (INFO commandstats, summed).
func (b *Bench) newMeterFor(d *redisDeploy, srcs ...cpuSource) *meter {
	m := &meter{srcs: srcs, primaries: d.primaries(context.Background())}
	m.reset()
	return m
}

// redisCmd is one line of INFO commandstats.
type redisCmd struct {
	calls, usec int64
}

// redisCommandStats reads INFO commandstats of one server (nil when it
// cannot).
func redisCommandStats(rdb *redis.Client) map[string]redisCmd {
	if rdb == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	m, err := rdb.InfoMap(ctx, "commandstats").Result()
	if err != nil {
		return nil
	}
	out := map[string]redisCmd{}
	for k, v := range m["Commandstats"] {
		name, ok := strings.CutPrefix(k, "cmdstat_")
		if !ok {
			continue
		}
		var c redisCmd
		for _, kv := range strings.Split(v, ",") {
			key, val, _ := strings.Cut(kv, "=")
			n, _ := strconv.ParseInt(val, 10, 64)
			switch key {
			case "calls":
				c.calls = n
			case "usec":
				c.usec = n
			}
		}
		out[name] = c
	}
	return out
}

// reset starts a new measurement.
func (m *meter) reset() {
	m.start = make([]time.Duration, len(m.srcs))
	for i, s := range m.srcs {
		m.start[i] = s.cpu()
	}
	m.extra = nil
	m.sent0, m.sentOK = m.redisSent()
	m.redis0 = commandStats(m.primaries)
	m.busy0, m.steal0 = machineBusy()
	m.startedAt = time.Now()
}

// redisSent reads the Redis calls sent by every source with metrics;
// false when one could not be read (a process that stopped, say).
func (m *meter) redisSent() ([]redisSent, bool) {
	out := make([]redisSent, len(m.srcs))
	ok := true
	for i, s := range m.srcs {
		if s.metrics == "" {
			continue
		}
		r, err := scrapeRedisSent(context.Background(), s.metrics)
		if err != nil {
			ok = false
			continue
		}
		out[i] = r
	}
	return out, ok
}

// addTotal adds a process measured as a whole (one that ran only for
// this measurement).
func (m *meter) addTotal(name string, cpu time.Duration) {
	m.extra = append(m.extra, CPURow{Process: name, CPUS: cpu.Seconds()})
}

// table returns the CPU used since reset by each process, per message.
func (m *meter) table(run string, msgs int64) CPUTable {
	t := CPUTable{Run: run, Messages: msgs}
	var redisS, primaryS float64
	redisServers := 0
	for i, s := range m.srcs {
		cpu := (s.cpu() - m.start[i]).Seconds()
		t.Rows = append(t.Rows, CPURow{Process: s.name, CPUS: cpu})
		if s.redis {
			redisS += cpu
			redisServers++
			if s.primary {
				primaryS += cpu
			}
		}
	}
	t.Rows = append(t.Rows, m.extra...)
	if sent, ok := m.redisSent(); ok && m.sentOK && msgs > 0 {
		var all redisSent
		for i, s := range m.srcs {
			if s.metrics == "" {
				continue
			}
			d := sent[i].sub(m.sent0[i])
			all = redisSent{all.commands + d.commands, all.pipelines + d.pipelines, all.pipelined + d.pipelined}
			n := float64(msgs)
			t.RedisSent = append(t.RedisSent, RedisSentRow{Process: s.name, Commands: d.commands / n, Pipelines: d.pipelines / n, Pipelined: d.pipelined / n})
		}
		if len(t.RedisSent) > 0 {
			t.RedisSentPerMsg = all.calls() / float64(msgs)
		}
	}
	for i := range t.Rows {
		if msgs > 0 {
			t.Rows[i].PerMsgUS = t.Rows[i].CPUS * 1e6 / float64(msgs)
		}
	}
	t.WallS = time.Since(m.startedAt).Seconds()
	if msgs > 0 && redisServers > 0 {
		t.RedisServers = redisServers
		t.RedisCPUPerMsgUS = redisS * 1e6 / float64(msgs)
		t.RedisPrimaryCPUPerMsgUS = primaryS * 1e6 / float64(msgs)
	}
	if m.redis0 != nil && msgs > 0 {
		var calls, usec int64
		for name, c := range commandStats(m.primaries) {
			d := redisCmd{c.calls - m.redis0[name].calls, c.usec - m.redis0[name].usec}
			if d.calls <= 0 {
				continue
			}
			calls += d.calls
			usec += d.usec
			t.Redis = append(t.Redis, RedisCmdRow{Cmd: name, PerMsg: float64(d.calls) / float64(msgs),
				USPerCall: float64(d.usec) / float64(d.calls), USPerMsg: float64(d.usec) / float64(msgs)})
		}
		sort.Slice(t.Redis, func(i, j int) bool { return t.Redis[i].USPerMsg > t.Redis[j].USPerMsg })
		t.RedisCallsPerMsg = float64(calls) / float64(msgs)
		if calls > 0 {
			t.RedisUSPerCall = float64(usec) / float64(calls)
		}
		t.RedisPrimaries = len(m.primaries)
	}
	busy1, steal1 := machineBusy()
	t.StealS = (steal1 - m.steal0).Seconds()
	if busy := busy1 - m.busy0; busy > 0 {
		var ours float64
		for _, r := range t.Rows {
			ours += r.CPUS
		}
		// Processes measured as a whole ran partly outside the window.
		t.OtherS = max(0, busy.Seconds()-ours)
		t.MachineS = busy.Seconds()
	}
	return t
}

// machineBusy returns the CPU time all CPUs spent not idle since boot
// (user, nice, system, irq, softirq), and the time the hypervisor took
// from them (steal), from /proc/stat.
func machineBusy() (busy, steal time.Duration) {
	f, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(f), "\n")
	fs := strings.Fields(line)
	if len(fs) < 9 || fs[0] != "cpu" {
		return 0, 0
	}
	tick := func(i int) time.Duration {
		n, _ := strconv.ParseInt(fs[i], 10, 64)
		return time.Duration(n) * time.Second / 100
	}
	return tick(1) + tick(2) + tick(3) + tick(6) + tick(7), tick(8)
}

// loadAvg returns the 1-minute load average.
func loadAvg() float64 {
	f, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	fs := strings.Fields(string(f))
	if len(fs) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(fs[0], 64)
	return v
}

// hostInfo describes the machine.
func (b *Bench) hostInfo(ctx context.Context, nofile uint64) Host {
	h := Host{CPUs: runtime.NumCPU(), Go: runtime.Version(), NoFile: nofile}
	if f, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(f), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				h.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if f, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(f), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				if fs := strings.Fields(rest); len(fs) > 0 {
					kb, _ := strconv.ParseInt(fs[0], 10, 64)
					h.MemoryMB = kb >> 10
				}
			}
		}
	}
	if f, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		h.Kernel = strings.TrimSpace(string(f))
	}
	if m, err := b.rdb.InfoMap(ctx, "server").Result(); err == nil {
		h.Redis = m["Server"]["redis_version"]
	}
	if v, err := b.rdb.ConfigGet(ctx, "append*").Result(); err == nil {
		h.AppendOnly, h.AppendFsync = v["appendonly"], v["appendfsync"]
	}
	if conn, err := amqp.DialConfig(b.AMQPURL, amqp.Config{Dial: amqp.DefaultDial(5 * time.Second)}); err == nil {
		if v, ok := conn.Properties["version"].(string); ok {
			h.RabbitMQ = v
		}
		conn.Close()
	}
	return h
}
