package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/iotgw/gateway/internal/latency"
)

// Section statuses.
const (
	StatusOK      = "ok"
	StatusSkipped = "skipped"
	StatusFailed  = "failed"
)

// Report is the whole benchmark run. Its JSON keys are an interface: the
// first five are what dashboards and the lead's scripts read.
type Report struct {
	BaselineAMQPPerS float64 `json:"baseline_amqp_per_s"`
	RoundtripMaxPerS float64 `json:"roundtrip_max_per_s"`
	// Ratio is RoundtripMaxPerS / BaselineAMQPPerS (0 when either is
	// missing).
	Ratio float64 `json:"ratio"`
	// RoundtripLatencyMS is keyed by the fixed rate of a round-trip run
	// ("200"; reports before 2026-12 also have "1000", "2500", "5000").
	RoundtripLatencyMS map[string]latency.Percentiles `json:"roundtrip_latency_ms"`

	// RoundtripClusterMaxPerS is the round trip at the maximum rate with
	// the state on the Redis Cluster, RoundtripShardMaxPerS with the state
	// on one Redis server kept like one of its shards (appendonly yes,
	// appendfsync always, one replica; the shard section). ClusterRatio
	// is the Cluster's over the round trip named by ClusterRatioBase:
	// "shard" (like for like) when that section ran, otherwise
	// "roundtrip" (the shared single Redis). ClusterRatioShared is always
	// the Cluster's over the shared single Redis (RoundtripMaxPerS),
	// which keeps its data otherwise (docs/DEVIATIONS.md).
	RoundtripClusterMaxPerS float64 `json:"roundtrip_cluster_max_per_s,omitempty"`
	ClusterRatio            float64 `json:"cluster_ratio,omitempty"`
	ClusterRatioBase        string  `json:"cluster_ratio_base,omitempty"`
	RoundtripShardMaxPerS   float64 `json:"roundtrip_shard_max_per_s,omitempty"`
	ClusterRatioShared      float64 `json:"cluster_ratio_shared,omitempty"`
	// Targets are the targets, each with its measured value.
	Targets []TargetRow `json:"targets,omitempty"`
	// RedisCPURef is the reference of the Redis CPU target (always
	// redisCPUReference; in the JSON so that a script need not know it).
	RedisCPURef *RedisCPURef `json:"redis_cpu_reference,omitempty"`

	Started   time.Time  `json:"started"`
	DurationS float64    `json:"duration_s"`
	Quick     bool       `json:"quick"`
	Host      Host       `json:"host"`
	Gateway   GatewaySet `json:"gateway"`
	Sections  []*Section `json:"sections"`
}

// TargetRow is one of the targets and what this run measured.
type TargetRow struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
	Target *Target `json:"target"`
	// Measured is false when the sections it needs did not run.
	Measured bool `json:"measured"`
	Met      bool `json:"met"`
	// From names the report figure or CPU table the value comes from;
	// Where says, for a missed target, where the time goes.
	From  string `json:"from,omitempty"`
	Where string `json:"where,omitempty"`
	// Beside, for a row without a target, is the figure it stands
	// beside (Mosquitto's CPU per message); such a row is neither met
	// nor missed.
	Beside string `json:"beside,omitempty"`
}

// RedisCPURef is the report the Redis CPU target halves.
type RedisCPURef struct {
	File string `json:"file"`
	// RedisUSPerRT is the redis row of that report's round trip at the
	// maximum rate, in CPU µs per round trip.
	RedisUSPerRT float64 `json:"redis_cpu_us_per_rt"`
}

// redisCPUReference is the "today" of issue 11's target "Redis CPU per
// round trip at most half of today's": the last report before
// partitions, whose redis row of the round trip at the maximum rate is
// 367 µs (366.6). It is fixed: halving the newest earlier report instead
// would make the target drift with every run.
var redisCPUReference = RedisCPURef{File: "2026-11-23T1906.md", RedisUSPerRT: 367}

// Host describes the machine and the servers the run used.
type Host struct {
	CPUs        int    `json:"cpus"`
	CPUModel    string `json:"cpu_model,omitempty"`
	MemoryMB    int64  `json:"memory_mb,omitempty"`
	Kernel      string `json:"kernel,omitempty"`
	Go          string `json:"go"`
	RabbitMQ    string `json:"rabbitmq,omitempty"`
	Redis       string `json:"redis,omitempty"`
	AppendOnly  string `json:"redis_appendonly,omitempty"`
	AppendFsync string `json:"redis_appendfsync,omitempty"`
	NoFile      uint64 `json:"rlimit_nofile"`
	// LoadStart and LoadEnd are the 1-minute load averages when the run
	// started and ended: other work on the machine skews every figure.
	LoadStart float64 `json:"loadavg_start"`
	LoadEnd   float64 `json:"loadavg_end"`
}

// GatewaySet is the process layout of the round-trip sections.
type GatewaySet struct {
	APIServers  int    `json:"apiservers"`
	Workers     int    `json:"msgworkers"`
	PushServers int    `json:"pushservers"`
	Why         string `json:"why,omitempty"`
}

// Section is the outcome of one section of the benchmark.
type Section struct {
	Name      string  `json:"name"`
	Title     string  `json:"title"`
	Namespace string  `json:"namespace,omitempty"`
	Status    string  `json:"status"`
	Reason    string  `json:"reason,omitempty"`
	DurationS float64 `json:"duration_s"`

	Figures   []Figure     `json:"figures,omitempty"`
	Latencies []LatencyRow `json:"latencies,omitempty"`
	CPU       []CPUTable   `json:"cpu,omitempty"`
	Notes     []string     `json:"notes,omitempty"`
	// Raw keeps the tools' own reports (devicesim load JSON and the
	// like), keyed by run.
	Raw map[string]any `json:"raw,omitempty"`
	// Where is what the section found about where the time or the
	// memory of a figure goes beyond its CPU tables (a CPU profile, the
	// Go runtime's figures), keyed by the figure's key; the Targets
	// table quotes it for a missed target.
	Where map[string]string `json:"where,omitempty"`
}

// SetWhere records where the time or memory of figure key goes.
func (s *Section) SetWhere(key, where string) {
	if s.Where == nil {
		s.Where = map[string]string{}
	}
	s.Where[key] = where
}

// Figure is one measured number, with its target when it has one.
type Figure struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Unit   string  `json:"unit"`
	Target *Target `json:"target,omitempty"`
	// Key names the figure for scripts ("roundtrip_max_per_s").
	Key string `json:"key,omitempty"`
	// CPURun names the section's CPU table that explains the figure.
	CPURun string `json:"cpu_run,omitempty"`
}

// Target is a goal shown beside a figure; it is not asserted.
type Target struct {
	Op    string  `json:"op"` // ">=" or "<="
	Value float64 `json:"value"`
}

// AtLeast and AtMost build targets.
func AtLeast(v float64) *Target { return &Target{Op: ">=", Value: v} }

// AtMost builds a target that a figure must not exceed.
func AtMost(v float64) *Target { return &Target{Op: "<=", Value: v} }

// Met reports whether v meets the target.
func (t *Target) Met(v float64) bool {
	if t == nil {
		return true
	}
	if t.Op == "<=" {
		return v <= t.Value
	}
	return v >= t.Value
}

// Met reports whether the figure meets its target (true without one).
func (f Figure) Met() bool { return f.Target.Met(f.Value) }

// LatencyRow is one latency distribution.
type LatencyRow struct {
	Name string              `json:"name"`
	P    latency.Percentiles `json:"ms"`
}

// CPUTable is the CPU each process used over one measured run, and per
// message of that run.
type CPUTable struct {
	Run      string   `json:"run"`
	Messages int64    `json:"messages"`
	Rows     []CPURow `json:"rows"`
	// WallS is the length of the measurement; MachineS the CPU time the
	// whole machine was busy meanwhile, OtherS the part of it that no
	// row accounts for (other processes on the machine: interference).
	WallS    float64 `json:"wall_s"`
	MachineS float64 `json:"machine_busy_cpu_s"`
	OtherS   float64 `json:"other_cpu_s"`
	// StealS is the CPU time the hypervisor took from this machine's
	// CPUs meanwhile: when it is not small, every figure of the run is
	// slower than the machine can do.
	StealS float64 `json:"steal_cpu_s"`
	// Redis lists the Redis commands run meanwhile (INFO commandstats,
	// all clients of the server, summed over the primaries of a Cluster),
	// most time per message first.
	Redis []RedisCmdRow `json:"redis_commands,omitempty"`
	// RedisCallsPerMsg is the Redis commands run per message: the calls
	// of every command of INFO commandstats over the messages, so a
	// command run by a script (FCALL) or in a MULTI counts on its own as
	// well as the FCALL (Redis's work, not the calls the gateway sends:
	// those are RedisSentPerMsg). RedisUSPerCall is their mean time in
	// Redis (usec / calls, over RedisPrimaries primaries).
	RedisCallsPerMsg float64 `json:"redis_calls_per_msg,omitempty"`
	RedisUSPerCall   float64 `json:"redis_us_per_call,omitempty"`
	RedisPrimaries   int     `json:"redis_primaries,omitempty"`
	// RedisCPUPerMsgUS is the CPU of the RedisServers redis-server
	// processes of the deployment per message (from /proc, replicas
	// included); RedisPrimaryCPUPerMsgUS that of the primaries only.
	RedisCPUPerMsgUS        float64 `json:"redis_cpu_us_per_msg,omitempty"`
	RedisPrimaryCPUPerMsgUS float64 `json:"redis_primary_cpu_us_per_msg,omitempty"`
	RedisServers            int     `json:"redis_servers,omitempty"`
	// RedisSentPerMsg is the calls the gateway's processes sent to Redis
	// per message (gw_redis_calls_total of each, scraped before and after
	// the run): a command sent on its own (an FCALL however many commands
	// it runs) or a pipeline sent to one server (one network round trip)
	// is one call. RedisSent is the same by process.
	RedisSentPerMsg float64        `json:"redis_sent_calls_per_msg,omitempty"`
	RedisSent       []RedisSentRow `json:"redis_sent,omitempty"`
}

// RedisCmdRow is one Redis command over a measured run.
type RedisCmdRow struct {
	Cmd       string  `json:"cmd"`
	PerMsg    float64 `json:"per_msg"`
	USPerCall float64 `json:"us_per_call"`
	USPerMsg  float64 `json:"us_per_msg"`
}

// CPURow is one process of a CPUTable.
type CPURow struct {
	Process  string  `json:"process"`
	CPUS     float64 `json:"cpu_s"`
	PerMsgUS float64 `json:"us_per_msg"`
}

// Total is the CPU of all rows of t and per message.
func (t CPUTable) Total() CPURow {
	var r CPURow
	r.Process = "total"
	for _, x := range t.Rows {
		r.CPUS += x.CPUS
		r.PerMsgUS += x.PerMsgUS
	}
	return r
}

// gateway reports whether a process is part of the gateway (not a load
// generator, a simulator or a broker).
func gatewayProcess(name string) bool {
	for _, p := range []string{"apiserver", "msgworker", "pushserver"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// Figure returns the section's figure with key, if any.
func (s *Section) Figure(key string) (Figure, bool) {
	for _, f := range s.Figures {
		if f.Key == key {
			return f, true
		}
	}
	return Figure{}, false
}

// Add appends a figure.
func (s *Section) Add(key, name string, v float64, unit string, t *Target) {
	s.Figures = append(s.Figures, Figure{Key: key, Name: name, Value: v, Unit: unit, Target: t})
}

// Explain links the last figure added to the CPU table of run.
func (s *Section) Explain(run string) {
	if len(s.Figures) > 0 {
		s.Figures[len(s.Figures)-1].CPURun = run
	}
}

// Note appends a note.
func (s *Section) Note(format string, args ...any) {
	s.Notes = append(s.Notes, fmt.Sprintf(format, args...))
}

// summarize fills the headline fields from the sections.
func (r *Report) summarize() {
	r.RoundtripLatencyMS = map[string]latency.Percentiles{}
	for _, s := range r.Sections {
		if f, ok := s.Figure("baseline_amqp_per_s"); ok {
			r.BaselineAMQPPerS = f.Value
		}
		if f, ok := s.Figure("roundtrip_max_per_s"); ok {
			r.RoundtripMaxPerS = f.Value
		}
		for _, l := range s.Latencies {
			if rate, ok := strings.CutPrefix(l.Name, "round trip at "); ok {
				rate = strings.ReplaceAll(strings.TrimSuffix(rate, "/s"), ",", "")
				if _, err := strconv.Atoi(rate); err == nil {
					r.RoundtripLatencyMS[rate] = l.P
				}
			}
		}
	}
	r.BaselineAMQPPerS = math.Round(r.BaselineAMQPPerS*10) / 10
	r.RoundtripMaxPerS = math.Round(r.RoundtripMaxPerS*10) / 10
	r.Ratio = 0
	if r.BaselineAMQPPerS > 0 && r.RoundtripMaxPerS > 0 {
		r.Ratio = math.Round(r.RoundtripMaxPerS/r.BaselineAMQPPerS*1000) / 1000
	}
	r.RoundtripClusterMaxPerS, r.ClusterRatio, r.ClusterRatioBase = 0, 0, ""
	r.RoundtripShardMaxPerS, r.ClusterRatioShared = 0, 0
	if f, ok := r.figure("shard", "shard_roundtrip_max_per_s"); ok {
		r.RoundtripShardMaxPerS = math.Round(f.Value*10) / 10
	}
	if f, ok := r.figure("cluster", "cluster_roundtrip_max_per_s"); ok {
		r.RoundtripClusterMaxPerS = math.Round(f.Value*10) / 10
		if r.RoundtripMaxPerS > 0 {
			r.ClusterRatioShared = math.Round(r.RoundtripClusterMaxPerS/r.RoundtripMaxPerS*1000) / 1000
			r.ClusterRatio, r.ClusterRatioBase = r.ClusterRatioShared, "roundtrip"
		}
		if r.RoundtripShardMaxPerS > 0 {
			r.ClusterRatio = math.Round(r.RoundtripClusterMaxPerS/r.RoundtripShardMaxPerS*1000) / 1000
			r.ClusterRatioBase = "shard"
		}
	}
	r.targets()
}

// figure returns the figure key of the section named section, if that
// section ran.
func (r *Report) figure(section, key string) (Figure, bool) {
	for _, s := range r.Sections {
		if s.Name == section && s.Status == StatusOK {
			return s.Figure(key)
		}
	}
	return Figure{}, false
}

// cpuTable returns the CPU table of run in the section named section.
func (r *Report) cpuTable(section, run string) (CPUTable, bool) {
	for _, s := range r.Sections {
		if s.Name == section && s.Status == StatusOK {
			for _, t := range s.CPU {
				if t.Run == run {
					return t, true
				}
			}
		}
	}
	return CPUTable{}, false
}

// targets fills r.Targets: the targets of the issues, in their order
// (the round trip's, then the push server's of issue 13).
func (r *Report) targets() {
	r.Targets = nil
	add := func(row TargetRow, measured bool, section, run string) {
		row.Measured = measured
		row.Met = measured && row.Target.Met(row.Value)
		if measured && !row.Met && row.Target != nil {
			if t, ok := r.cpuTable(section, run); ok {
				row.Where = strings.TrimSpace(cpuBreakdown(t, r.Host.CPUs) + " " + row.Where)
			}
		}
		r.Targets = append(r.Targets, row)
	}
	_, rtOK := r.figure("roundtrip", "roundtrip_max_per_s")
	add(TargetRow{Name: "round trip / one-hop baseline (single Redis, maximum rate)", Value: r.Ratio, Unit: "×", Target: AtLeast(0.25),
		From: "summary: round trip at maximum rate over the bare RabbitMQ baseline"}, r.Ratio > 0, "roundtrip", rtMaxRun)

	cpu, ok := r.figure("roundtrip", "redis_cpu_us_per_rt")
	row := TargetRow{Name: "Redis CPU per round trip (single Redis, maximum rate)", Value: cpu.Value, Unit: "µs",
		From: "roundtrip: the redis row of the CPU table over maximum rate"}
	ref := redisCPUReference
	r.RedisCPURef = &ref
	row.Target = AtMost(ref.RedisUSPerRT / 2)
	row.Name += fmt.Sprintf(", at most half of %s µs in %s (the last report before partitions)", fmtUS(ref.RedisUSPerRT), ref.File)
	add(row, ok, "roundtrip", rtMaxRun)

	// The target counts the calls the gateway sends (a script is one
	// call); beside it, the commands Redis ran, scripts' inner commands
	// included (INFO commandstats cannot tell those apart).
	for _, x := range []struct{ section, prefix, dep string }{{"roundtrip", "", "single Redis"}, {"cluster", "cluster_", "Redis Cluster"}} {
		sent, ok := r.figure(x.section, x.prefix+"redis_sent_calls_per_rt")
		add(TargetRow{Name: fmt.Sprintf("Redis calls sent per round trip by the gateway (%s, maximum rate)", x.dep), Value: sent.Value, Unit: "calls", Target: AtMost(10),
			From: x.section + ": gw_redis_calls_total of the gateway's processes over maximum rate (a command, an FCALL or a pipeline to one server is one call)"}, ok, x.section, rtMaxRun)
		run, ok := r.figure(x.section, x.prefix+"redis_calls_per_rt")
		row := TargetRow{Name: fmt.Sprintf("Redis commands run per round trip, scripts' inner commands included (%s, maximum rate)", x.dep), Value: run.Value, Unit: "commands",
			From: x.section + ": INFO commandstats summed over the primaries, over maximum rate", Beside: "–"}
		if sent.Value > 0 {
			row.Beside = "calls sent " + fmtValue(sent.Value, "calls")
		}
		add(row, ok, x.section, rtMaxRun)
	}

	p99, ok := r.figure("roundtrip", "roundtrip_half_p99_ms")
	add(TargetRow{Name: "round trip p99 at half the maximum rate (single Redis)", Value: p99.Value, Unit: "ms", Target: AtMost(25),
		From: "roundtrip: latency at half the maximum rate"}, ok, "roundtrip", rtHalfRun)
	cp99, ok := r.figure("cluster", "cluster_roundtrip_half_p99_ms")
	add(TargetRow{Name: "round trip p99 at half the maximum rate (Redis Cluster)", Value: cp99.Value, Unit: "ms", Target: AtMost(25),
		From: "cluster: latency at half the maximum rate"}, ok, "cluster", rtHalfRun)

	// The Cluster's ratio: like for like over the single Redis kept like
	// one of its shards when the shard section ran, with the ratio over
	// the shared single Redis beside it; otherwise over the shared one.
	if r.ClusterRatioBase == "shard" {
		add(TargetRow{Name: "Cluster round trip / round trip on a single Redis kept like a Cluster shard (maximum rate; both appendonly yes, appendfsync always, a replica per primary), within 20%",
			Value: r.ClusterRatio, Unit: "×", Target: AtLeast(0.8),
			From: "summary: cluster round trip at maximum rate over the shard section's"}, true, "cluster", rtMaxRun)
		if n := len(r.Targets); !r.Targets[n-1].Met {
			r.Targets[n-1].Where = clusterDiff(r, "shard") + " " + r.Targets[n-1].Where
		}
		name := "Cluster round trip / round trip on the shared single Redis (maximum rate; not like for like"
		if p := r.persistence("roundtrip"); p != "" {
			name += ": that one runs " + p
		}
		add(TargetRow{Name: name + ")", Value: r.ClusterRatioShared, Unit: "×", Beside: "the like-for-like ratio above",
			From: "summary: cluster round trip at maximum rate over the roundtrip section's", Where: clusterDiff(r, "roundtrip")},
			r.ClusterRatioShared > 0, "cluster", rtMaxRun)
	} else {
		add(TargetRow{Name: "Cluster round trip / single-Redis round trip (maximum rate), within 20%", Value: r.ClusterRatio, Unit: "×", Target: AtLeast(0.8),
			From: "summary: cluster round trip at maximum rate over the single-Redis one (the shard section, the like-for-like base, did not run)"}, rtOK && r.ClusterRatio > 0, "cluster", rtMaxRun)
		if n := len(r.Targets); n > 0 && !r.Targets[n-1].Met && r.Targets[n-1].Measured {
			r.Targets[n-1].Where = clusterDiff(r, "roundtrip") + " " + r.Targets[n-1].Where
		}
	}
	r.pushTargets(add)
}

// pushTargets adds the push server's targets (issue 13): idle sessions
// and their memory, delivery beside Mosquitto's, a reconnecting device's
// backlog, and the CPU per delivered message beside Mosquitto's.
func (r *Report) pushTargets(add func(row TargetRow, measured bool, section, run string)) {
	where := func(section, key string) string {
		for _, s := range r.Sections {
			if s.Name == section {
				return s.Where[key]
			}
		}
		return ""
	}
	kb, ok := r.figure("idle", "idle_kb_per_session")
	add(TargetRow{Name: "push server RSS per idle session (3 push servers)", Value: kb.Value, Unit: "KB/session", Target: AtMost(idleKBTarget),
		From: "idle: RSS growth of the push servers over their sessions", Where: where("idle", "idle_kb_per_session")}, ok, "idle", "")
	n, ok := r.figure("idle", "idle_sessions")
	name := "idle sessions over 3 push servers"
	if r.Quick {
		name += fmt.Sprintf(" (quick run: %s, not the issue's %s)", thousands(idleQuickTarget), thousands(idleTarget))
	}
	add(TargetRow{Name: name, Value: n.Value, Unit: "", Target: AtLeast(float64(idleTarget)), From: "idle: sessions connected and subscribed"}, ok, "idle", "")
	if ok && r.Quick {
		r.Targets[len(r.Targets)-1].Target = n.Target
		r.Targets[len(r.Targets)-1].Met = n.Met()
	}

	mq, mqOK := r.figure("push", "mosquitto_cpu_us")
	mqWhere := ""
	if t, ok := r.cpuTable("push", "Mosquitto"); ok {
		mqWhere = "Beside it, Mosquitto: " + cpuBreakdown(t, r.Host.CPUs)
	}
	for _, x := range []struct{ key, run, name string }{
		{"push_backlog_vs_mosquitto", "push server, backlog", "push server from a backlog / Mosquitto (QoS 1, 1,000 clients)"},
		{"push_vs_mosquitto", "push server, live", "push server live, while the mailboxes fill / Mosquitto (QoS 1, 1,000 clients)"},
	} {
		f, ok := r.figure("push", x.key)
		tgt := AtLeast(1.0)
		if f.Target != nil {
			tgt = f.Target
		}
		add(TargetRow{Name: x.name, Value: f.Value, Unit: "×", Target: tgt,
			From: "push: messages delivered per second over Mosquitto's", Where: strings.TrimSpace(mqWhere + " " + where("push", x.key))}, ok, "push", x.run)
	}
	rc, ok := r.figure("reconnect", "reconnect_drain_ms")
	add(TargetRow{Name: fmt.Sprintf("a device reconnecting to %s waiting commands receives them all", thousands(reconnectWaiting)), Value: rc.Value, Unit: "ms", Target: AtMost(1000),
		From: "reconnect: CONNECT → last command", Where: where("reconnect", "reconnect_drain_ms")}, ok, "reconnect", "the drain")
	for _, x := range []struct{ key, name string }{
		{"push_backlog_cpu_us", "push server CPU per delivered message, from a backlog"},
		{"push_live_cpu_us", "push server CPU per delivered message, live"},
	} {
		f, ok := r.figure("push", x.key)
		row := TargetRow{Name: x.name, Value: f.Value, Unit: "µs", From: "push: the push server's row of the CPU table", Beside: "–"}
		if wr, ok := r.figure("push", x.key+"_with_redis"); ok {
			row.Name += fmt.Sprintf(" (%s µs with Redis's)", fmtUS(wr.Value))
		}
		if mqOK {
			row.Beside = "Mosquitto " + fmtValue(mq.Value, "µs")
		}
		add(row, ok, "push", "")
	}
}

// clusterDiff compares the CPU per round trip of each process on the
// Cluster with that on the one server of section base ("roundtrip": the
// shared single Redis; "shard": the one kept like a Cluster shard), and
// says what ratio the CPU alone predicts on this machine.
func clusterDiff(r *Report, base string) string {
	one, ok1 := r.cpuTable(base, rtMaxRun)
	cl, ok2 := r.cpuTable("cluster", rtMaxRun)
	if !ok1 || !ok2 {
		return ""
	}
	label := "single Redis"
	if base == "shard" {
		label = shardName
	}
	byName := map[string]float64{}
	for _, row := range one.Rows {
		byName[row.Process] = row.PerMsgUS
	}
	var parts []string
	for _, row := range cl.Rows {
		if strings.HasPrefix(row.Process, "redis") {
			continue
		}
		if v, ok := byName[row.Process]; ok && row.PerMsgUS > 0 {
			parts = append(parts, fmt.Sprintf("%s %s → %s", row.Process, fmtUS(v), fmtUS(row.PerMsgUS)))
		}
	}
	out := fmt.Sprintf("CPU µs per round trip, %s → Cluster: redis-server processes %s → %s (primaries %s → %s, replicas %s → %s), %s; all processes %s → %s.",
		label, fmtUS(one.RedisCPUPerMsgUS), fmtUS(cl.RedisCPUPerMsgUS), fmtUS(one.RedisPrimaryCPUPerMsgUS), fmtUS(cl.RedisPrimaryCPUPerMsgUS),
		fmtUS(one.RedisCPUPerMsgUS-one.RedisPrimaryCPUPerMsgUS), fmtUS(cl.RedisCPUPerMsgUS-cl.RedisPrimaryCPUPerMsgUS),
		strings.Join(parts, ", "), fmtUS(one.Total().PerMsgUS), fmtUS(cl.Total().PerMsgUS))
	if a, c := one.Total().PerMsgUS, cl.Total().PerMsgUS; a > 0 && c > 0 {
		// Both runs keep the 2 CPUs busy (closed loop), so the rate is
		// about the CPUs over the CPU per round trip.
		out += fmt.Sprintf(" With the CPUs saturated the rate goes as 1 / CPU per round trip: %s / %s = %.3f × predicted by CPU alone; for 0.8 × the Cluster would have to cost at most %s µs per round trip, %s less than now.",
			fmtUS(a), fmtUS(c), a/c, fmtUS(a/0.8), fmtUS(c-a/0.8))
	}
	fcalls := func(t CPUTable) float64 {
		for _, c := range t.Redis {
			if c.Cmd == "fcall" {
				return c.PerMsg
			}
		}
		return 0
	}
	out += fmt.Sprintf(" Per round trip: Redis calls sent %.2f → %.2f; FCALLs %.2f → %.2f (one server runs a batch of any partitions in one FCALL, a Cluster needs one per partition, since a call names the keys of one slot); commands run %.1f → %.1f at %.1f → %.1f µs mean.",
		one.RedisSentPerMsg, cl.RedisSentPerMsg, fcalls(one), fcalls(cl), one.RedisCallsPerMsg, cl.RedisCallsPerMsg, one.RedisUSPerCall, cl.RedisUSPerCall)
	if a, b := r.persistence(base), r.persistence("cluster"); a != "" && b != "" {
		if alike(a, b) {
			out += fmt.Sprintf(" Both keep data alike per primary: %s %s; Cluster %s.", label, a, b)
		} else {
			out += fmt.Sprintf(" The two deployments do not keep data alike: %s %s; Cluster %s.", label, a, b)
		}
	}
	return out
}

// persistence returns how the deployment of section kept its data (its
// "persistence" where), "" when unknown.
func (r *Report) persistence(section string) string {
	for _, s := range r.Sections {
		if s.Name == section {
			return s.Where["persistence"]
		}
	}
	return ""
}

// alike reports whether two persistence descriptions (redisDeploy's
// "appendonly …, appendfsync …; P primary(ies), R replica(s)") keep data
// alike per primary: the same settings and as many replicas per primary.
func alike(a, b string) bool {
	parse := func(s string) (settings string, perPrimary float64, ok bool) {
		settings, counts, ok := strings.Cut(s, "; ")
		var p, r int
		if n, _ := fmt.Sscanf(counts, "%d primary(ies), %d replica(s)", &p, &r); !ok || n != 2 || p == 0 {
			return "", 0, false
		}
		return settings, float64(r) / float64(p), true
	}
	sa, ra, ok1 := parse(a)
	sb, rb, ok2 := parse(b)
	return ok1 && ok2 && sa == sb && ra == rb
}

// WriteJSON writes the report as indented JSON.
func (r *Report) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(r)
}

// WriteMarkdown writes the report for people.
func (r *Report) WriteMarkdown(w io.Writer) error {
	var b strings.Builder
	mode := "full run"
	if r.Quick {
		mode = "quick run (--quick: short runs, smaller counts; not comparable with a full run)"
	}
	fmt.Fprintf(&b, "# Gateway benchmark, %s\n\n", r.Started.UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&b, "Written by `make bench` (`go run ./bench`), a %s that took %s.\n\n", mode, fmtDur(r.DurationS))
	h := r.Host
	fmt.Fprintf(&b, "- Machine: %d CPUs", h.CPUs)
	if h.CPUModel != "" {
		fmt.Fprintf(&b, " (%s)", h.CPUModel)
	}
	if h.MemoryMB > 0 {
		fmt.Fprintf(&b, ", %s MB memory", thousands(float64(h.MemoryMB)))
	}
	if h.Kernel != "" {
		fmt.Fprintf(&b, ", Linux %s", h.Kernel)
	}
	fmt.Fprintf(&b, ", %s; soft RLIMIT_NOFILE %d.\n", h.Go, h.NoFile)
	fmt.Fprintf(&b, "- Load average (1 min) %.2f at the start, %.2f at the end", h.LoadStart, h.LoadEnd)
	if max(h.LoadStart, h.LoadEnd) > 1 {
		b.WriteString(" — **other work was running on this machine; the CPU tables show how much** (\"processes outside this run\")")
	}
	b.WriteString(".\n")
	fmt.Fprintf(&b, "- Servers on 127.0.0.1: RabbitMQ %s, Redis %s (appendonly %s, appendfsync %s).\n", orDash(h.RabbitMQ), orDash(h.Redis), orDash(h.AppendOnly), orDash(h.AppendFsync))
	if g := r.Gateway; g.APIServers > 0 {
		fmt.Fprintf(&b, "- Round-trip gateway: %d apiserver, %d msgworker(s), %d pushserver(s)", g.APIServers, g.Workers, g.PushServers)
		if g.Why != "" {
			fmt.Fprintf(&b, " (%s)", g.Why)
		}
		b.WriteString(".\n")
	}
	b.WriteString("- Everything (brokers, gateway, simulators, load generators) shares the same CPUs. CPU tables list each process's CPU over a measured run (from /proc) and per message; the rabbitmq and redis rows count all the work of those servers meanwhile, including for any other user of them.\n\n")

	b.WriteString("## Summary\n\n")
	b.WriteString("| figure | value | target | |\n|---|---:|---:|---|\n")
	fmt.Fprintf(&b, "| bare RabbitMQ baseline (one hop) | %s | | |\n", fmtValue(r.BaselineAMQPPerS, "/s"))
	fmt.Fprintf(&b, "| round trip at maximum rate, single Redis | %s | | |\n", fmtValue(r.RoundtripMaxPerS, "/s"))
	if r.RoundtripShardMaxPerS > 0 {
		fmt.Fprintf(&b, "| round trip at maximum rate, %s (appendonly yes, appendfsync always, 1 replica) | %s | | |\n", shardName, fmtValue(r.RoundtripShardMaxPerS, "/s"))
	}
	if r.RoundtripClusterMaxPerS > 0 {
		fmt.Fprintf(&b, "| round trip at maximum rate, Redis Cluster | %s | | |\n", fmtValue(r.RoundtripClusterMaxPerS, "/s"))
	}
	fmt.Fprintf(&b, "| ratio round trip / baseline | %s | | |\n", fmtValue(r.Ratio, "×"))
	for _, s := range r.Sections {
		for _, f := range s.Figures {
			if f.Target == nil {
				continue
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", f.Name, fmtValue(f.Value, f.Unit), fmtTarget(f.Target, f.Unit), mark(f, s.Status == StatusOK))
		}
	}
	for _, t := range r.Targets {
		if t.Target == nil && t.Measured {
			fmt.Fprintf(&b, "| %s | %s | beside: %s | |\n", t.Name, fmtValue(t.Value, t.Unit), t.Beside)
		}
	}
	var skipped []string
	for _, s := range r.Sections {
		if s.Status != StatusOK {
			skipped = append(skipped, fmt.Sprintf("- **%s**: %s: %s", s.Title, s.Status, s.Reason))
		}
	}
	if len(skipped) > 0 {
		b.WriteString("\nNot measured:\n\n" + strings.Join(skipped, "\n") + "\n")
	}
	b.WriteString("\nTargets are shown, not asserted. ✓ met, ✗ short.\n")
	writeTargets(&b, r)

	for i, s := range r.Sections {
		fmt.Fprintf(&b, "\n## %d. %s\n\n", i+1, s.Title)
		switch s.Status {
		case StatusOK:
			fmt.Fprintf(&b, "Namespace `%s`, %s.\n\n", s.Namespace, fmtDur(s.DurationS))
		default:
			fmt.Fprintf(&b, "**%s: %s**\n\n", s.Status, s.Reason)
		}
		if len(s.Figures) > 0 {
			b.WriteString("| figure | value | target | |\n|---|---:|---:|---|\n")
			for _, f := range s.Figures {
				fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", f.Name, fmtValue(f.Value, f.Unit), fmtTarget(f.Target, f.Unit), mark(f, true))
			}
			b.WriteString("\n")
		}
		if len(s.Latencies) > 0 {
			b.WriteString("| latency (ms) | count | p50 | p90 | p99 | p99.9 | max |\n|---|---:|---:|---:|---:|---:|---:|\n")
			for _, l := range s.Latencies {
				p := l.P
				fmt.Fprintf(&b, "| %s | %s | %.2f | %.2f | %.2f | %.2f | %.2f |\n", l.Name, thousands(float64(p.Count)), p.P50, p.P90, p.P99, p.P999, p.Max)
			}
			b.WriteString("\n")
		}
		for _, t := range s.CPU {
			writeCPU(&b, t)
		}
		for _, n := range s.Notes {
			fmt.Fprintf(&b, "- %s\n", n)
		}
	}
	writeShortfalls(&b, r)
	_, err := io.WriteString(w, b.String())
	return err
}

// writeTargets writes the targets, met or missed, and for a
// missed one where the time goes.
func writeTargets(b *strings.Builder, r *Report) {
	if len(r.Targets) == 0 {
		return
	}
	b.WriteString("\n## Targets (2-core machine)\n\n")
	b.WriteString("| target | measured | goal | | from |\n|---|---:|---:|---|---|\n")
	for _, t := range r.Targets {
		m, v, goal := "–", "not measured", fmtTarget(t.Target, t.Unit)
		if t.Measured {
			m, v = "✗ missed", fmtValue(t.Value, t.Unit)
			if t.Met {
				m = "✓ met"
			}
		}
		if t.Target == nil {
			m, goal = "beside", t.Beside
		}
		fmt.Fprintf(b, "| %s | %s | %s | %s | %s |\n", t.Name, v, goal, m, t.From)
	}
	var where []string
	for _, t := range r.Targets {
		switch {
		case t.Measured && t.Target == nil && t.Where != "":
			where = append(where, fmt.Sprintf("- **%s** (%s, beside %s): %s", t.Name, fmtValue(t.Value, t.Unit), t.Beside, t.Where))
		case t.Measured && !t.Met && t.Where != "":
			where = append(where, fmt.Sprintf("- **%s** (%s against %s): %s", t.Name, fmtValue(t.Value, t.Unit), fmtTarget(t.Target, t.Unit), t.Where))
		}
	}
	if len(where) > 0 {
		b.WriteString("\nWhere the time goes for a missed target, and for a figure shown beside one (from the CPU tables of the run named):\n\n" + strings.Join(where, "\n") + "\n")
	}
}

func writeCPU(b *strings.Builder, t CPUTable) {
	tot := t.Total()
	if t.Messages == 0 && t.WallS > 0 {
		fmt.Fprintf(b, "CPU over %s:\n\n", t.Run)
		b.WriteString("| process | CPU s | % of a CPU |\n|---|---:|---:|\n")
		for _, r := range t.Rows {
			fmt.Fprintf(b, "| %s | %.2f | %.1f |\n", r.Process, r.CPUS, 100*r.CPUS/t.WallS)
		}
		fmt.Fprintf(b, "| **all processes** | **%.2f** | **%.1f** |\n\n", tot.CPUS, 100*tot.CPUS/t.WallS)
	} else {
		fmt.Fprintf(b, "CPU over %s (%s messages):\n\n", t.Run, thousands(float64(t.Messages)))
		b.WriteString("| process | CPU s | µs per message |\n|---|---:|---:|\n")
		for _, r := range t.Rows {
			fmt.Fprintf(b, "| %s | %.2f | %s |\n", r.Process, r.CPUS, fmtUS(r.PerMsgUS))
		}
		fmt.Fprintf(b, "| **all processes** | **%.2f** | **%s** |\n\n", tot.CPUS, fmtUS(tot.PerMsgUS))
	}
	if t.WallS > 0 && t.MachineS > 0 {
		fmt.Fprintf(b, "Over these %.1f s the machine was busy %.2f CPU s; processes outside this run used %.2f CPU s of it", t.WallS, t.MachineS, t.OtherS)
		if t.StealS >= 0.05 {
			fmt.Fprintf(b, "; the hypervisor took %.2f CPU s (steal)", t.StealS)
		}
		b.WriteString(".")
	}
	if len(t.RedisSent) > 0 && t.Messages > 0 {
		var parts []string
		for _, r := range t.RedisSent {
			parts = append(parts, fmt.Sprintf("%s %.2f (%.2f commands, %.2f pipelines carrying %.2f)", r.Process, r.Calls(), r.Commands, r.Pipelines, r.Pipelined))
		}
		fmt.Fprintf(b, " Redis calls sent per message by the gateway (gw_redis_calls_total: a command, an FCALL or a pipeline to one server is one call): %.2f; %s.",
			t.RedisSentPerMsg, strings.Join(parts, ", "))
	}
	if t.RedisServers > 0 && t.Messages > 0 {
		fmt.Fprintf(b, " Redis per message: %.2f commands run, scripts' inner commands included, of %.1f µs mean (INFO commandstats, %d primary(ies)), %s µs of redis-server CPU (%d process(es))",
			t.RedisCallsPerMsg, t.RedisUSPerCall, t.RedisPrimaries, fmtUS(t.RedisCPUPerMsgUS), t.RedisServers)
		if t.RedisServers > 1 {
			fmt.Fprintf(b, ", %s µs of it on the primaries", fmtUS(t.RedisPrimaryCPUPerMsgUS))
		}
		b.WriteString(".")
	}
	if len(t.Redis) > 0 {
		var parts []string
		for _, c := range t.Redis {
			if c.PerMsg >= 0.01 && len(parts) < 6 {
				parts = append(parts, fmt.Sprintf("%s %.2f × %.1f µs", strings.ToUpper(c.Cmd), c.PerMsg, c.USPerCall))
			}
		}
		if len(parts) > 0 {
			fmt.Fprintf(b, " Redis commands per message, most time first (INFO commandstats; a command run by a script counts on its own and in the script's time): %s.", strings.Join(parts, ", "))
		}
	}
	if t.WallS > 0 || len(t.Redis) > 0 || len(t.RedisSent) > 0 {
		b.WriteString("\n\n")
	}
}

// writeShortfalls explains, for every figure short of its target, where
// the CPU of its section went.
func writeShortfalls(b *strings.Builder, r *Report) {
	var lines []string
	for _, s := range r.Sections {
		if s.Status != StatusOK {
			continue
		}
		explained := map[string]bool{}
		for _, f := range s.Figures {
			if f.Met() {
				continue
			}
			line := fmt.Sprintf("- **%s**: %s against %s.", f.Name, fmtValue(f.Value, f.Unit), fmtTarget(f.Target, f.Unit))
			if t, ok := cpuFor(s, f); ok && f.CPURun != "-" {
				if explained[t.Run] {
					line += fmt.Sprintf(" The same run (%s) as above.", t.Run)
				} else {
					line += " " + cpuBreakdown(t, r.Host.CPUs)
					explained[t.Run] = true
				}
			}
			lines = append(lines, line)
		}
	}
	if len(lines) == 0 {
		return
	}
	b.WriteString("\n## Where the time goes (figures short of their targets)\n\n")
	b.WriteString("Computed from the CPU tables above: each process's share of the CPU per message, largest first, and the rate all CPUs could carry at that cost.\n\n")
	b.WriteString(strings.Join(lines, "\n") + "\n")
}

// cpuFor picks the CPU table of a section that belongs to figure f: the
// one whose run name appears in the figure's name, else the first.
func cpuFor(s *Section, f Figure) (CPUTable, bool) {
	if len(s.CPU) == 0 {
		return CPUTable{}, false
	}
	for _, t := range s.CPU {
		if f.CPURun != "" && t.Run == f.CPURun {
			return t, true
		}
	}
	for _, t := range s.CPU {
		if f.CPURun == "" && strings.Contains(f.Name, t.Run) {
			return t, true
		}
	}
	return s.CPU[0], true
}

func cpuBreakdown(t CPUTable, cpus int) string {
	rows := append([]CPURow(nil), t.Rows...)
	sort.Slice(rows, func(i, j int) bool { return rows[i].PerMsgUS > rows[j].PerMsgUS })
	tot := t.Total()
	var parts []string
	for _, r := range rows {
		if r.PerMsgUS <= 0 {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %s µs (%.0f%%)", r.Process, fmtUS(r.PerMsgUS), 100*r.PerMsgUS/max(tot.PerMsgUS, 1e-9)))
	}
	var gw float64
	for _, r := range rows {
		if gatewayProcess(r.Process) {
			gw += r.PerMsgUS
		}
	}
	s := fmt.Sprintf("Over %s: %s µs of CPU per message across all processes (%s); of that the gateway's own processes %s µs.",
		t.Run, fmtUS(tot.PerMsgUS), strings.Join(parts, ", "), fmtUS(gw))
	if tot.PerMsgUS > 0 && cpus > 0 {
		s += fmt.Sprintf(" At that cost %d CPUs carry at most %s messages/s.", cpus, thousands(float64(cpus)*1e6/tot.PerMsgUS))
	}
	if t.WallS > 0 && t.MachineS > 0 && t.OtherS > 0.1*t.MachineS {
		s += fmt.Sprintf(" Processes outside this run took %.2f of the %.2f CPU s the machine was busy over these %.1f s (its %d CPUs had %.1f).", t.OtherS, t.MachineS, t.WallS, cpus, float64(cpus)*t.WallS)
	}
	return s
}

func mark(f Figure, measured bool) string {
	switch {
	case !measured:
		return "–"
	case f.Target == nil:
		return ""
	case f.Met():
		return "✓"
	}
	return "✗"
}

func fmtTarget(t *Target, unit string) string {
	if t == nil {
		return ""
	}
	op := "≥"
	if t.Op == "<=" {
		op = "≤"
	}
	return op + " " + fmtValue(t.Value, unit)
}

// fmtValue formats a value with its unit: rates and counts without
// decimals and with thousands separators, milliseconds with two decimals.
func fmtValue(v float64, unit string) string {
	switch unit {
	case "/s", "msgs/s", "commands/s", "results/s", "accepted/s", "":
		return thousands(v) + " " + strings.TrimSpace(unit)
	case "ms":
		return strconv.FormatFloat(v, 'f', 2, 64) + " ms"
	case "×":
		return strconv.FormatFloat(v, 'f', 3, 64) + " ×"
	case "KB", "KB/session":
		return strconv.FormatFloat(v, 'f', 1, 64) + " " + unit
	case "s":
		return strconv.FormatFloat(v, 'f', 3, 64) + " s"
	case "µs":
		return fmtUS(v) + " µs"
	}
	if v == math.Trunc(v) {
		return thousands(v) + " " + unit
	}
	return strconv.FormatFloat(v, 'f', 2, 64) + " " + unit
}

func fmtUS(v float64) string {
	if v >= 100 {
		return thousands(v)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

// thousands formats v rounded to an integer with comma separators.
func thousands(v float64) string {
	n := int64(math.Round(v))
	neg := n < 0
	if neg {
		n = -n
	}
	s := strconv.FormatInt(n, 10)
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

func fmtDur(s float64) string {
	return time.Duration(s * float64(time.Second)).Round(100 * time.Millisecond).String()
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}
