package main

import (
	"encoding/json"
	"fmt"
	"github.com/iotgw/gateway/internal/latency"
	"io"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
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
	// RoundtripLatencyMS is keyed by the fixed rate ("1000", "2500",
	// "5000").
	RoundtripLatencyMS map[string]latency.Percentiles `json:"roundtrip_latency_ms"`

	Started   time.Time  `json:"started"`
	DurationS float64    `json:"duration_s"`
	Quick     bool       `json:"quick"`
	Host      Host       `json:"host"`
	Gateway   GatewaySet `json:"gateway"`
	Sections  []*Section `json:"sections"`
}

// Host describes the machine and the servers the run used.
type Host struct {
	CPUs        int    `json:"cpus"`
	CPUModel    string `json:"cpu_model,omitempty"`
	MemoryMB    int64  `json:"memory_mb,omitempty"`
	Kernel      string `json:"kernel,omitempty"`
	Go          string `json:"go"`
	RabbitMQ    string `json:"rabbitmq,omitempty"`
	Redis       string `json:"redis,omitempty"`
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
	// all clients of the server), most time per message first.
	Redis []RedisCmdRow `json:"redis_commands,omitempty"`
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
	fmt.Fprintf(&b, "- Servers on 127.0.0.1: RabbitMQ %s, Redis %s (appendfsync %s).\n", orDash(h.RabbitMQ), orDash(h.Redis), orDash(h.AppendFsync))
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
	fmt.Fprintf(&b, "| round trip at maximum rate | %s | | |\n", fmtValue(r.RoundtripMaxPerS, "/s"))
	ratio := Figure{Name: "ratio", Value: r.Ratio, Unit: "×", Target: AtLeast(0.20)}
	fmt.Fprintf(&b, "| ratio round trip / baseline | %s | %s | %s |\n", fmtValue(r.Ratio, "×"), fmtTarget(ratio.Target, "×"), mark(ratio, r.Ratio > 0))
	for _, s := range r.Sections {
		for _, f := range s.Figures {
			if f.Target == nil {
				continue
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s |\n", f.Name, fmtValue(f.Value, f.Unit), fmtTarget(f.Target, f.Unit), mark(f, s.Status == StatusOK))
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
	if t.WallS > 0 || len(t.Redis) > 0 {
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
