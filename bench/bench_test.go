package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/latency"
)

func TestThousands(t *testing.T) {
	tests := []struct {
		in   float64
		want string
	}{{0, "0"}, {999, "999"}, {1000, "1,000"}, {1234567.6, "1,234,568"}, {-20000, "-20,000"}}
	for _, tt := range tests {
		if got := thousands(tt.in); got != tt.want {
			t.Errorf("thousands(%v) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestTargetMet(t *testing.T) {
	tests := []struct {
		t    *Target
		v    float64
		want bool
	}{
		{AtLeast(10), 10, true}, {AtLeast(10), 9.99, false},
		{AtMost(5), 5, true}, {AtMost(5), 5.01, false}, {nil, 0, true},
	}
	for _, tt := range tests {
		if got := tt.t.Met(tt.v); got != tt.want {
			t.Errorf("%+v.Met(%v) = %v, want %v", tt.t, tt.v, got, tt.want)
		}
	}
}

func TestPerSecond(t *testing.T) {
	if got := perSecond(500, 250*time.Millisecond); got != 2000 {
		t.Errorf("perSecond(500, 250ms) = %v, want 2000", got)
	}
	if got := perSecond(5, 0); got != 0 {
		t.Errorf("perSecond(5, 0) = %v, want 0", got)
	}
}

func sampleReport() *Report {
	p := func(p50 float64) latency.Percentiles {
		return latency.Percentiles{Count: 100, P50: p50, P90: 2 * p50, P99: 3 * p50, P999: 4 * p50, Max: 5 * p50, Mean: p50}
	}
	base := &Section{Name: "baseline", Title: "Baseline", Namespace: "bench-1-baseline", Status: StatusOK, DurationS: 17}
	base.Add("baseline_amqp_per_s", "bare RabbitMQ", 20000, "/s", nil)
	rt := &Section{Name: "roundtrip", Title: "Round trip", Namespace: "bench-1-roundtrip", Status: StatusOK, DurationS: 90}
	rt.Add("roundtrip_max_per_s", "round trip at maximum rate", 4000, "/s", AtLeast(5000))
	rt.Explain("maximum rate")
	rt.Add("roundtrip_2500_p99_ms", "round trip p99 at 2,500/s", 12.5, "ms", AtMost(25))
	rt.Latencies = []LatencyRow{
		{"round trip at maximum rate (128 in flight)", p(20)},
		{"round trip at 1,000/s", p(2)}, {"202 accepted at 1,000/s", p(1)},
		{"round trip at 2,500/s", p(3)}, {"round trip at 5,000/s", p(9)},
	}
	rt.CPU = []CPUTable{{Run: "maximum rate", Messages: 1000, Rows: []CPURow{
		{Process: "apiserver", CPUS: 0.3, PerMsgUS: 300}, {Process: "rabbitmq", CPUS: 0.5, PerMsgUS: 500}}}}
	rt.Note("a note with 1,000 commands")
	idle := &Section{Name: "idle", Title: "Idle", Status: StatusSkipped, Reason: "pushserver does not build yet"}
	r := &Report{Started: time.Date(2026, 11, 23, 15, 0, 0, 0, time.UTC), DurationS: 300,
		Host:     Host{CPUs: 2, Go: "go1.26", RabbitMQ: "3.10.8", Redis: "7.0.15", AppendFsync: "everysec", NoFile: 20000},
		Gateway:  GatewaySet{APIServers: 1, Workers: 2, PushServers: 3},
		Sections: []*Section{base, rt, idle}}
	r.summarize()
	return r
}

func TestReportJSON(t *testing.T) {
	r := sampleReport()
	var buf bytes.Buffer
	if err := r.WriteJSON(&buf); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Baseline float64                           `json:"baseline_amqp_per_s"`
		Max      float64                           `json:"roundtrip_max_per_s"`
		Ratio    float64                           `json:"ratio"`
		Lat      map[string]map[string]json.Number `json:"roundtrip_latency_ms"`
	}
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got.Baseline != 20000 || got.Max != 4000 || got.Ratio != 0.2 {
		t.Errorf("baseline, max, ratio = %v, %v, %v, want 20000, 4000, 0.2", got.Baseline, got.Max, got.Ratio)
	}
	for _, rate := range []string{"1000", "2500", "5000"} {
		p, ok := got.Lat[rate]
		if !ok {
			t.Errorf("roundtrip_latency_ms has no %q: %v", rate, got.Lat)
			continue
		}
		for _, k := range []string{"p50", "p90", "p99", "p999", "max"} {
			if _, ok := p[k]; !ok {
				t.Errorf("roundtrip_latency_ms[%q] has no %q", rate, k)
			}
		}
	}
	if len(got.Lat) != 3 {
		t.Errorf("roundtrip_latency_ms has keys %v, want only the fixed rates", got.Lat)
	}
	if got.Lat["2500"]["p50"] != "3" {
		t.Errorf("roundtrip_latency_ms[2500].p50 = %v, want 3", got.Lat["2500"]["p50"])
	}
}

func TestReportRatioWithoutBaseline(t *testing.T) {
	r := &Report{Sections: []*Section{{Name: "roundtrip", Figures: []Figure{{Key: "roundtrip_max_per_s", Value: 10}}}}}
	r.summarize()
	if r.Ratio != 0 || r.RoundtripLatencyMS == nil {
		t.Errorf("ratio = %v, latency map %v; want 0 and an empty map", r.Ratio, r.RoundtripLatencyMS)
	}
}

func TestReportMarkdown(t *testing.T) {
	r := sampleReport()
	var buf bytes.Buffer
	if err := r.WriteMarkdown(&buf); err != nil {
		t.Fatal(err)
	}
	md := buf.String()
	for _, want := range []string{
		"# Gateway benchmark, 2026-11-23 15:00 UTC",
		"| bare RabbitMQ baseline (one hop) | 20,000 /s | | |",
		"| ratio round trip / baseline | 0.200 × | | |",
		"| round trip / one-hop baseline (single Redis, maximum rate) | 0.200 × | ≥ 0.250 × | ✗ missed |",
		"| round trip at maximum rate | 4,000 /s | ≥ 5,000 /s | ✗ |",
		"| round trip p99 at 2,500/s | 12.50 ms | ≤ 25.00 ms | ✓ |",
		"- **Idle**: skipped: pushserver does not build yet",
		"**skipped: pushserver does not build yet**",
		"| round trip at 2,500/s | 100 | 3.00 | 6.00 | 9.00 | 12.00 | 15.00 |",
		"| **all processes** | **0.80** | **800** |",
		"## Where the time goes",
		"rabbitmq 500 µs (62%), apiserver 300 µs (38%)",
		"At that cost 2 CPUs carry at most 2,500 messages/s.",
		"- a note with 1,000 commands",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("markdown lacks %q:\n%s", want, md)
		}
	}
}

func TestReportTargets(t *testing.T) {
	r := sampleReport()
	rt := r.Sections[1]
	rt.Add("redis_sent_calls_per_rt", "Redis calls sent per round trip", 4, "calls", AtMost(10))
	rt.Add("redis_calls_per_rt", "Redis commands run per round trip", 72, "commands", nil)
	rt.Add("redis_cpu_us_per_rt", "Redis CPU per round trip", 200, "µs", nil)
	rt.Add("roundtrip_half_p99_ms", "p99 at half", 30, "ms", AtMost(25))
	rt.CPU = append(rt.CPU, CPUTable{Run: rtHalfRun, Messages: 500, Rows: []CPURow{{Process: "apiserver", CPUS: 0.1, PerMsgUS: 200}}})
	cl := &Section{Name: "cluster", Title: "Cluster", Status: StatusOK}
	cl.Add("cluster_roundtrip_max_per_s", "round trip, Cluster", 3400, "/s", nil)
	cl.CPU = []CPUTable{{Run: rtMaxRun, Messages: 1000, Rows: []CPURow{{Process: "apiserver", CPUS: 0.35, PerMsgUS: 350}}}}
	r.Sections = append(r.Sections, cl)
	r.summarize()
	if r.RoundtripClusterMaxPerS != 3400 || r.ClusterRatio != 0.85 {
		t.Errorf("cluster max, ratio = %v, %v, want 3400, 0.85", r.RoundtripClusterMaxPerS, r.ClusterRatio)
	}
	type want struct {
		measured, met bool
	}
	// The round trip's nine (ratio, Redis CPU, calls sent and commands
	// run on single Redis and on the Cluster, p99 on each, the Cluster's
	// ratio), then the push server's seven, not measured here (no idle,
	// push or reconnect section ran).
	wants := []want{{true, false}, {true, false}, {true, true}, {true, true}, {false, false}, {false, false}, {true, false}, {false, false}, {true, true},
		{false, false}, {false, false}, {false, false}, {false, false}, {false, false}, {false, false}, {false, false}}
	if len(r.Targets) != len(wants) {
		t.Fatalf("%d targets, want %d: %+v", len(r.Targets), len(wants), r.Targets)
	}
	for i, w := range wants {
		got := r.Targets[i]
		if got.Measured != w.measured || got.Met != w.met {
			t.Errorf("target %q: measured %v, met %v; want %v, %v", got.Name, got.Measured, got.Met, w.measured, w.met)
		}
		if got.Measured && !got.Met && got.Where == "" {
			t.Errorf("target %q is missed and does not say where the time goes", got.Name)
		}
	}
	if r.Targets[1].Target.Value != 183.5 {
		t.Errorf("Redis CPU target = %v, want half of 367", r.Targets[1].Target.Value)
	}
	if got := r.Targets[3]; got.Target != nil || got.Beside != "calls sent 4 calls" {
		t.Errorf("commands run row: target %v, beside %q; want no target, beside \"calls sent 4 calls\"", got.Target, got.Beside)
	}
}

// TestReportClusterRatioShard checks that with the shard section in the
// run the Cluster's target ratio is over it (like for like), the ratio
// over the shared single Redis is beside it without a target, and a
// missed target says where the time goes, with the ratio the CPU alone
// predicts.
func TestReportClusterRatioShard(t *testing.T) {
	r := sampleReport()
	sh := &Section{Name: "shard", Title: "Shard", Status: StatusOK, Where: map[string]string{"persistence": "appendonly yes, appendfsync always; 1 primary(ies), 1 replica(s)"}}
	sh.Add("shard_roundtrip_max_per_s", "round trip, shard", 2000, "/s", nil)
	sh.CPU = []CPUTable{{Run: rtMaxRun, Messages: 1000, Rows: []CPURow{{Process: "apiserver", CPUS: 1, PerMsgUS: 1000}}}}
	cl := &Section{Name: "cluster", Title: "Cluster", Status: StatusOK, Where: map[string]string{"persistence": "appendonly yes, appendfsync always; 3 primary(ies), 3 replica(s)"}}
	cl.Add("cluster_roundtrip_max_per_s", "round trip, Cluster", 1200, "/s", nil)
	cl.CPU = []CPUTable{{Run: rtMaxRun, Messages: 1000, Rows: []CPURow{{Process: "apiserver", CPUS: 1.6, PerMsgUS: 1600}}}}
	r.Sections[1].Where = map[string]string{"persistence": "appendonly no, appendfsync everysec; 1 primary(ies), 0 replica(s)"}
	r.Sections = append(r.Sections, sh, cl)
	r.summarize()
	if r.RoundtripShardMaxPerS != 2000 || r.ClusterRatio != 0.6 || r.ClusterRatioBase != "shard" || r.ClusterRatioShared != 0.3 {
		t.Errorf("shard max %v, ratio %v over %q, shared ratio %v; want 2000, 0.6 over \"shard\", 0.3",
			r.RoundtripShardMaxPerS, r.ClusterRatio, r.ClusterRatioBase, r.ClusterRatioShared)
	}
	var like, shared *TargetRow
	for i := range r.Targets {
		switch {
		case strings.HasPrefix(r.Targets[i].Name, "Cluster round trip / round trip on a single Redis kept like a Cluster shard"):
			like = &r.Targets[i]
		case strings.HasPrefix(r.Targets[i].Name, "Cluster round trip / round trip on the shared single Redis"):
			shared = &r.Targets[i]
		case strings.HasPrefix(r.Targets[i].Name, "Cluster round trip /"):
			t.Errorf("unexpected Cluster ratio row %q", r.Targets[i].Name)
		}
	}
	if like == nil || shared == nil {
		t.Fatalf("Cluster ratio rows: like for like %v, shared %v; want both", like, shared)
	}
	if like.Value != 0.6 || !like.Measured || like.Met || like.Target == nil || like.Target.Value != 0.8 {
		t.Errorf("like-for-like row = %+v; want 0.6, measured, missed against at least 0.8", *like)
	}
	for _, want := range []string{"kept like a Cluster shard → Cluster", "1,000 / 1,600 = 0.625 × predicted by CPU alone", "at most 1,250 µs per round trip", "Both keep data alike per primary"} {
		if !strings.Contains(like.Where, want) {
			t.Errorf("like-for-like row's where lacks %q: %s", want, like.Where)
		}
	}
	if shared.Value != 0.3 || !shared.Measured || shared.Target != nil {
		t.Errorf("shared row = %+v; want 0.3, measured, no target", *shared)
	}
	if want := "that one runs appendonly no, appendfsync everysec; 1 primary(ies), 0 replica(s))"; !strings.HasSuffix(shared.Name, want) {
		t.Errorf("shared row's name %q does not end with %q", shared.Name, want)
	}
	if want := "The two deployments do not keep data alike"; !strings.Contains(shared.Where, want) {
		t.Errorf("shared row's where lacks %q: %s", want, shared.Where)
	}
	var buf bytes.Buffer
	if err := r.WriteMarkdown(&buf); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"| round trip at maximum rate, single Redis kept like a Cluster shard (appendonly yes, appendfsync always, 1 replica) | 2,000 /s | | |",
		"- **Cluster round trip / round trip on the shared single Redis (maximum rate; not like for like: that one runs appendonly no, appendfsync everysec; 1 primary(ies), 0 replica(s))** (0.300 ×, beside the like-for-like ratio above): CPU µs per round trip, single Redis → Cluster",
	} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("markdown lacks %q:\n%s", want, buf.String())
		}
	}
}

func TestReplicaAddrs(t *testing.T) {
	tests := []struct {
		name string
		repl map[string]string
		want []string
	}{
		{"none", map[string]string{"role": "master", "connected_slaves": "0"}, nil},
		{"one", map[string]string{"slave0": "ip=127.0.0.1,port=7302,state=online,offset=1234,lag=0"}, []string{"127.0.0.1:7302"}},
		{"two in order", map[string]string{
			"slave1": "ip=127.0.0.1,port=7303,state=online,offset=1,lag=1",
			"slave0": "ip=127.0.0.1,port=7302,state=online,offset=1,lag=0",
		}, []string{"127.0.0.1:7302", "127.0.0.1:7303"}},
		{"IPv6", map[string]string{"slave0": "ip=::1,port=7302,state=online"}, []string{"[::1]:7302"}},
		{"bad entries left out", map[string]string{
			"slave0": "ip=127.0.0.1,state=online",
			"slave1": "port=7303",
			"slave2": "ip=127.0.0.1,port=70000",
			"slave3": "ip=127.0.0.1,port=x",
			"slave4": "ip=replica.local,port=7305",
			"slave5": "ip=127.0.0.1,port=7306",
		}, []string{"127.0.0.1:7306"}},
		{"a gap ends the list", map[string]string{"slave0": "ip=127.0.0.1,port=7302", "slave2": "ip=127.0.0.1,port=7304"}, []string{"127.0.0.1:7302"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := replicaAddrs(tt.repl); !slices.Equal(got, tt.want) {
				t.Errorf("replicaAddrs(%v) = %q, want %q", tt.repl, got, tt.want)
			}
		})
	}
}

// FuzzReplicaAddrs checks that replicaAddrs takes any INFO replication
// entry without panicking and returns only addresses with a host and a
// port in 1-65535.
func FuzzReplicaAddrs(f *testing.F) {
	f.Add("ip=127.0.0.1,port=7302,state=online,offset=1234,lag=0")
	f.Add("ip=::1,port=1")
	f.Add("port=,ip=,=,")
	f.Fuzz(func(t *testing.T, v string) {
		for _, addr := range replicaAddrs(map[string]string{"slave0": v, "slave1": v}) {
			host, port, err := net.SplitHostPort(addr)
			n, perr := strconv.Atoi(port)
			if err != nil || host == "" || perr != nil || n < 1 || n > 65535 {
				t.Errorf("replicaAddrs(%q) returned %q", v, addr)
			}
		}
	})
}

// TestRedisCPUReference checks that the Redis CPU target halves the
// report it names, whatever reports are newer: the reference is the
// redis row of that report's round trip at the maximum rate.
func TestRedisCPUReference(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("results", strings.TrimSuffix(redisCPUReference.File, ".md")+".json"))
	if err != nil {
		t.Fatal(err)
	}
	var old Report
	if err := json.Unmarshal(data, &old); err != nil {
		t.Fatal(err)
	}
	var us float64
	for _, s := range old.Sections {
		for _, c := range s.CPU {
			if s.Name != "roundtrip" || c.Run != rtMaxRun {
				continue
			}
			for _, row := range c.Rows {
				if row.Process == "redis" {
					us = row.PerMsgUS
				}
			}
		}
	}
	if math.Round(us) != redisCPUReference.RedisUSPerRT {
		t.Errorf("%s: redis row of the round trip at the maximum rate = %v µs, the reference says %v", redisCPUReference.File, us, redisCPUReference.RedisUSPerRT)
	}

	r := sampleReport()
	r.Sections[1].Add("redis_cpu_us_per_rt", "Redis CPU per round trip", 150, "µs", nil)
	r.summarize()
	got := r.Targets[1]
	if got.Target == nil || got.Target.Value != 183.5 || !got.Met || !strings.Contains(got.Name, "2026-11-23T1906.md") {
		t.Errorf("Redis CPU target row = %+v; want at most 183.5 µs (half of 367 in 2026-11-23T1906.md), met by 150", got)
	}
	if r.RedisCPURef == nil || *r.RedisCPURef != redisCPUReference {
		t.Errorf("report's redis_cpu_reference = %+v, want %+v", r.RedisCPURef, redisCPUReference)
	}
}

func TestRequireLoopback(t *testing.T) {
	tests := []struct {
		url string
		ok  bool
	}{
		{"redis://127.0.0.1:6379/0", true},
		{"redis://localhost:7101?addr=127.0.0.1:7102&addr=[::1]:7103", true},
		{"redis://127.0.0.1:7101?addr=10.0.0.2:7102", false},
		{"amqp://guest:guest@192.168.1.1:5672/", false},
	}
	for _, tt := range tests {
		if err := requireLoopback(tt.url); (err == nil) != tt.ok {
			t.Errorf("requireLoopback(%q) = %v, want ok %v", tt.url, err, tt.ok)
		}
	}
}

func TestRTProcEnv(t *testing.T) {
	tests := []struct {
		gomaxprocs int
		want       string
	}{
		{0, ""},
		{1, "GOMAXPROCS=1"},
		{2, "GOMAXPROCS=2"},
	}
	for _, tt := range tests {
		b := &Bench{GoMaxProcs: tt.gomaxprocs}
		if got := strings.Join(b.rtProcEnv(), " "); got != tt.want {
			t.Errorf("rtProcEnv() with GoMaxProcs %d = %q, want %q", tt.gomaxprocs, got, tt.want)
		}
	}
}

func TestGomaxprocsFlag(t *testing.T) {
	var out bytes.Buffer
	err := run(t.Context(), []string{"--gomaxprocs", "-1"}, func(string) string { return "" }, &out)
	if err == nil || !strings.Contains(err.Error(), "--gomaxprocs") {
		t.Errorf("run(--gomaxprocs -1) = %v, want an error about --gomaxprocs", err)
	}
}

func TestSelectSections(t *testing.T) {
	all, err := selectSections("")
	if err != nil || len(all) != len(sectionDefs) {
		t.Fatalf("selectSections(\"\") = %d sections, %v; want all", len(all), err)
	}
	got, err := selectSections("idle, baseline")
	if err != nil || len(got) != 2 || got[0].name != "baseline" || got[1].name != "idle" {
		t.Errorf("selectSections(idle, baseline) = %v, %v; want baseline, idle in report order", got, err)
	}
	if _, err := selectSections("baseline,nope"); err == nil {
		t.Error("selectSections(nope) = nil error, want an error")
	}
}

func TestMQTTPackets(t *testing.T) {
	long := strings.Repeat("x", 300) // remaining length needs two bytes
	pkt := connectPacket("dev-1", "dev-1", long, 600*time.Second)
	typ, body, err := readPacket(bufio.NewReader(bytes.NewReader(pkt)))
	if err != nil {
		t.Fatal(err)
	}
	if typ != 0x10 {
		t.Errorf("type = 0x%02x, want 0x10", typ)
	}
	wantHead := []byte{0, 4, 'M', 'Q', 'T', 'T', 4, 0xC2, 0x02, 0x58, 0, 5, 'd', 'e', 'v', '-', '1'}
	if !bytes.HasPrefix(body, wantHead) {
		t.Errorf("CONNECT body starts % x, want % x", body[:len(wantHead)], wantHead)
	}
	if !bytes.HasSuffix(body, []byte(long)) || len(body) != len(wantHead)+2+5+2+300 {
		t.Errorf("CONNECT body has %d bytes, want the username and the password at the end", len(body))
	}
	sub := subscribePacket(7, "devices/dev-1/commands")
	typ, body, err = readPacket(bufio.NewReader(bytes.NewReader(sub)))
	if err != nil || typ != 0x80 || body[0] != 0 || body[1] != 7 || body[len(body)-1] != 1 {
		t.Errorf("SUBSCRIBE = 0x%02x % x, %v", typ, body, err)
	}
}

// pushSections are the idle, push and reconnect sections of a run, with
// the figures those sections add.
func pushSections(quick bool) []*Section {
	idle := &Section{Name: "idle", Title: "Idle", Status: StatusOK}
	idle.Add("idle_kb_per_session", "push server RSS per idle session", 9.5, "KB/session", AtMost(idleKBTarget))
	n := float64(idleTarget)
	if quick {
		n = idleQuickTarget
	}
	idle.Add("idle_sessions", "idle sessions", n, "", AtLeast(n))
	idle.SetWhere("idle_kb_per_session", "7.0 KB of heap in use")
	push := &Section{Name: "push", Title: "Push", Status: StatusOK}
	push.CPU = []CPUTable{
		{Run: "push server, backlog", Messages: 1000, Rows: []CPURow{{Process: "pushserver-0", CPUS: 0.012, PerMsgUS: 12}, {Process: "redis", CPUS: 0.008, PerMsgUS: 8}}},
		{Run: "push server, live", Messages: 1000, Rows: []CPURow{{Process: "pushserver-0", CPUS: 0.045, PerMsgUS: 45}, {Process: "redis", CPUS: 0.04, PerMsgUS: 40}}},
		{Run: "Mosquitto", Messages: 1000, Rows: []CPURow{{Process: "mosquitto", CPUS: 0.02, PerMsgUS: 20}}},
	}
	push.Add("push_backlog_msgs_per_s", "backlog", 60000, "msgs/s", nil)
	addCPUPerMsg(push, "push_backlog_cpu_us", "push server, backlog", push.CPU[0], "pushserver-0")
	push.Add("push_msgs_per_s", "live", 15000, "msgs/s", nil)
	addCPUPerMsg(push, "push_live_cpu_us", "push server, live", push.CPU[1], "pushserver-0")
	push.Add("mosquitto_msgs_per_s", "Mosquitto", 50000, "msgs/s", nil)
	addCPUPerMsg(push, "mosquitto_cpu_us", "Mosquitto", push.CPU[2], "mosquitto")
	pushRatios(push)
	push.SetWhere("push_vs_mosquitto", "CPU profile: mailbox.(*Store).FetchPage 40%")
	rc := &Section{Name: "reconnect", Title: "Reconnect", Status: StatusOK}
	rc.Add("reconnect_drain_ms", "drain", 640, "ms", AtMost(1000))
	return []*Section{idle, push, rc}
}

func TestPushTargets(t *testing.T) {
	type row struct {
		name     string // prefix of the target's name
		value    float64
		met      bool
		where    string // part of Where, for a missed target
		beside   string
		noTarget bool
	}
	rows := []row{
		{name: "push server RSS per idle session", value: 9.5, where: "7.0 KB of heap in use"},
		{name: "idle sessions over 3 push servers", value: idleTarget, met: true},
		{name: "push server from a backlog / Mosquitto", value: 1.2, met: true},
		{name: "push server live", value: 0.3, where: "Beside it, Mosquitto: Over Mosquitto: 20.0 µs"},
		{name: "a device reconnecting to 10,000 waiting commands", value: 640, met: true},
		{name: "push server CPU per delivered message, from a backlog (20.0 µs with Redis's)", value: 12, beside: "Mosquitto 20.0 µs", noTarget: true},
		{name: "push server CPU per delivered message, live (85.0 µs with Redis's)", value: 45, beside: "Mosquitto 20.0 µs", noTarget: true},
	}
	for _, quick := range []bool{false, true} {
		r := &Report{Quick: quick, Host: Host{CPUs: 2}, Sections: pushSections(quick)}
		r.summarize()
		got := r.Targets[len(r.Targets)-len(rows):]
		rows[1].value = idleTarget
		if quick {
			rows[1].value = idleQuickTarget
		}
		for i, w := range rows {
			g := got[i]
			if !strings.HasPrefix(g.Name, w.name) || !g.Measured || math.Abs(g.Value-w.value) > 1e-9 || g.Met != w.met && !w.noTarget || g.Beside != w.beside || (g.Target == nil) != w.noTarget {
				t.Errorf("quick %v: target %d = %+v, want %+v", quick, i, g, w)
			}
			if w.where != "" && !strings.Contains(g.Where, w.where) {
				t.Errorf("quick %v: target %q says where %q, want it to contain %q", quick, g.Name, g.Where, w.where)
			}
		}
		if s := got[1]; quick && (s.Target.Value != idleQuickTarget || !strings.Contains(s.Name, "quick run")) {
			t.Errorf("quick: sessions target %+v, want ≥ %d and the name saying so", s, idleQuickTarget)
		}
		var buf bytes.Buffer
		if err := r.WriteMarkdown(&buf); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{
			"| push server CPU per delivered message, live (85.0 µs with Redis's) | 45.0 µs | Mosquitto 20.0 µs | beside |",
			"| push server CPU per delivered message, live (85.0 µs with Redis's) | 45.0 µs | beside: Mosquitto 20.0 µs | |",
			"| push server live (while the mailboxes fill) / Mosquitto, messages delivered per second | 0.300 × | ≥ 0.500 × | ✗ |",
		} {
			if !strings.Contains(buf.String(), want) {
				t.Errorf("quick %v: markdown lacks %q:\n%s", quick, want, buf.String())
			}
		}
	}
}

func TestPprofTop(t *testing.T) {
	out := `File: pushserver
Type: cpu
Duration: 3s, Total samples = 2.50s (83.33%)
Showing nodes accounting for 2.10s, 84.00% of 2.50s total
Dropped 10 nodes (cum <= 0.01s)
Showing top 2 nodes out of 200
      flat  flat%   sum%        cum   cum%
     0.50s 20.00% 20.00%      1.00s 40.00%  github.com/iotgw/gateway/mailbox.(*Store).fetchPage
     0.25s 10.00% 30.00%      0.25s 10.00%  runtime.memmove
`
	want := "of 2.50s in all: mailbox.(*Store).fetchPage 20.00% (cum 40.00%), runtime.memmove 10.00% (cum 10.00%)"
	if got := pprofTop(out); got != want {
		t.Errorf("pprofTop = %q, want %q", got, want)
	}
	if got := pprofTop("no table"); got != "" {
		t.Errorf("pprofTop(no table) = %q, want empty", got)
	}
}

func TestLogField(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p.log")
	log := `not json
{"level":"INFO","msg":"metrics listening","addr":"127.0.0.1:4242"}
{"level":"INFO","msg":"push server listening","addr":"127.0.0.1:1883","inflight":32}
{"level":"INFO","msg":"push server listening","inflight":64}
`
	if err := os.WriteFile(path, []byte(log), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ msg, field, want string }{
		{"metrics listening", "addr", "127.0.0.1:4242"},
		{"push server listening", "inflight", "32"}, // the first record
		{"push server listening", "nope", ""},
		{"no such message", "addr", ""},
	}
	for _, tt := range tests {
		if got := logField(path, tt.msg, tt.field); got != tt.want {
			t.Errorf("logField(%q, %q) = %q, want %q", tt.msg, tt.field, got, tt.want)
		}
	}
	if got := logField(filepath.Join(t.TempDir(), "none.log"), "x", "y"); got != "" {
		t.Errorf("logField(missing file) = %q, want empty", got)
	}
}

func TestCPUBreakdownInterference(t *testing.T) {
	tab := CPUTable{Run: "live", Messages: 1000, WallS: 2, MachineS: 3.5, OtherS: 2,
		Rows: []CPURow{{Process: "pushserver-0", CPUS: 1, PerMsgUS: 1000}, {Process: "redis", CPUS: 0.5, PerMsgUS: 500}}}
	got := cpuBreakdown(tab, 2)
	for _, want := range []string{"pushserver-0 1,000 µs (67%)", "Processes outside this run took 2.00 of the 3.50 CPU s the machine was busy over these 2.0 s (its 2 CPUs had 4.0)."} {
		if !strings.Contains(got, want) {
			t.Errorf("cpuBreakdown = %q, want it to contain %q", got, want)
		}
	}
	tab.OtherS = 0.1
	if got := cpuBreakdown(tab, 2); strings.Contains(got, "outside") {
		t.Errorf("cpuBreakdown with little interference = %q, want no word of it", got)
	}
}

func TestRedisCallsCompared(t *testing.T) {
	backlog := CPUTable{RedisCallsPerMsg: 1.02, Redis: []RedisCmdRow{{Cmd: "xrange", PerMsg: 0.93}, {Cmd: "xdel", PerMsg: 0.03}}}
	live := CPUTable{RedisCallsPerMsg: 10.5, Redis: []RedisCmdRow{{Cmd: "xadd", PerMsg: 1}, {Cmd: "xrange", PerMsg: 1.76}, {Cmd: "xlen", PerMsg: 1.71}}}
	want := "Redis calls per delivered message: from a backlog 1.02 (XRANGE 0.93, XDEL 0.03); live 10.50 (XRANGE 1.76, XLEN 1.71, XADD 1.00; the bench's mailbox.Put included)."
	if got := redisCallsCompared(backlog, live); got != want {
		t.Errorf("redisCallsCompared = %q, want %q", got, want)
	}
	if got := redisCallsCompared(CPUTable{}, live); got != "" {
		t.Errorf("redisCallsCompared without backlog calls = %q, want empty", got)
	}
}
