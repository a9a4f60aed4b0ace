package telemetry

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"

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
}

func TestNewLogger(t *testing.T) {
	var buf bytes.Buffer
	NewLogger(&buf, "json", "warn").Info("hidden")
	NewLogger(&buf, "json", "warn").Warn("shown", "node", "n1")
	if got := buf.String(); strings.Contains(got, "hidden") || !strings.Contains(got, `"node":"n1"`) {
		t.Fatalf("log = %q, want only the warning with node", got)
	}
}
