package telemetry

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func TestServeMetrics(t *testing.T) {
	reg := NewRegistry()
	c := prometheus.NewCounter(prometheus.CounterOpts{Name: "gw_test_things_total", Help: "things"})
	reg.MustRegister(c)
	c.Add(3)
	m, err := ServeMetrics("127.0.0.1:0", reg, Discard())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Shutdown(t.Context()) })
	resp, err := http.Get("http://" + m.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if !strings.Contains(string(body), "gw_test_things_total 3") {
		t.Fatalf("GET /metrics = %q, want it to contain gw_test_things_total 3", body)
	}
	// The runtime's profiles, for operators.
	resp, err = http.Get("http://" + m.Addr() + "/debug/pprof/heap?debug=1")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ = io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "heap profile") {
		t.Fatalf("GET /debug/pprof/heap = %d %.80q, want 200 with a heap profile", resp.StatusCode, body)
	}
}

func TestNewLogger(t *testing.T) {
	var buf bytes.Buffer
	NewLogger(&buf, "json", "warn").Info("hidden")
	NewLogger(&buf, "json", "warn").Warn("shown", "node", "n1")
	if got := buf.String(); strings.Contains(got, "hidden") || !strings.Contains(got, `"node":"n1"`) {
		t.Fatalf("log = %q, want only the warning with node", got)
	}
}

func TestDefaultGCPercent(t *testing.T) {
	defer debug.SetGCPercent(debug.SetGCPercent(100))
	for _, tc := range []struct {
		gogc string
		want int
	}{
		{"", 123},    // the service's default
		{"100", 100}, // the operator's GOGC wins
	} {
		t.Setenv("GOGC", tc.gogc)
		debug.SetGCPercent(100)
		DefaultGCPercent(123)
		if got := debug.SetGCPercent(100); got != tc.want {
			t.Errorf("GOGC=%q: GC percent %d, want %d", tc.gogc, got, tc.want)
		}
	}
}

func TestClip(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("a", 60<<10)
	tests := []struct {
		name, in string
		want     string
	}{
		{"short", "/v1/commands/1", "/v1/commands/1"},
		{"at the bound", strings.Repeat("b", MaxLoggedLen), strings.Repeat("b", MaxLoggedLen)},
		{"60 KB", long, strings.Repeat("a", MaxLoggedLen) + "…(" + strconv.Itoa(len(long)-MaxLoggedLen) + " more bytes)"},
		{"cut inside a rune", strings.Repeat("a", MaxLoggedLen-1) + "é" + "z", strings.Repeat("a", MaxLoggedLen-1) + "…(3 more bytes)"},
	}
	for _, tt := range tests {
		if got := Clip(tt.in); got != tt.want {
			t.Errorf("%s: Clip = %.60q (%d bytes), want %.60q (%d bytes)", tt.name, got, len(got), tt.want, len(tt.want))
		}
	}
}

// TestLimitRepeats: a warning repeated with the same message is written
// once per period, the next one says how many were left out; other
// messages and info records pass.
func TestLimitRepeats(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	h := LimitRepeats(slog.NewJSONHandler(&buf, nil), time.Hour).(*limitedHandler)
	now := time.Unix(1000, 0)
	h.l.now = func() time.Time { return now }
	log := slog.New(h).With("service", "x")
	for range 1000 {
		log.Warn("redis unavailable", "err", "connection refused")
	}
	log.Warn("another warning")
	log.Info("info passes", "n", 1)
	log.Info("info passes", "n", 2)
	now = now.Add(time.Hour)
	log.Warn("redis unavailable", "err", "connection refused")

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{`"msg":"redis unavailable"`, `"msg":"another warning"`, `"n":1`, `"n":2`, `"suppressed":999`}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, w := range want {
		if !strings.Contains(lines[i], w) {
			t.Errorf("line %d = %s, want it to contain %s", i, lines[i], w)
		}
	}
}
