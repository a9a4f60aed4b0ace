package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/internal/testenv"
)

// traceHop is one span of a command's trace: the process that writes it,
// its name and the span it must be the child of ("" for the root).
type traceHop struct{ service, name, parent string }

// commandTrace is the trace of one command, from the client's POST to its
// result, in order.
var commandTrace = []traceHop{
	{"devicesim", "POST /v1/devices/:device_id/commands", ""},
	{"apiserver", "POST /v1/devices/:device_id/commands", "devicesim/POST /v1/devices/:device_id/commands"},
	{"apiserver", "intake", "apiserver/POST /v1/devices/:device_id/commands"},
	{"apiserver", "publish", "apiserver/intake"},
	{"msgworker", "dispatch", "apiserver/publish"},
	{"pushserver", "send", "msgworker/dispatch"},
	{"devicesim", "answer", "pushserver/send"},
	{"pushserver", "complete", "devicesim/answer"},
	{"pushserver", "relay", "pushserver/complete"},
	{"pushserver", "deliver", "pushserver/relay"},
	{"devicesim", "result", "pushserver/deliver"},
}

// TestTraceEndToEnd runs the real binaries with OTLP export to a receiver
// in the test process (which plays devicesim, exporting there too), sends
// one command, and checks that its trace has a span for every hop, each
// the child of the one before, across the processes.
func TestTraceEndToEnd(t *testing.T) {
	// Not parallel: the OTEL_* variables are the process's (the
	// exporters read them) and the gateway's processes inherit them.
	rcv := testenv.NewOTLPReceiver(t)
	t.Setenv("OTEL_TRACES_EXPORTER", "otlp")
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rcv.URL())
	t.Setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
	t.Setenv("OTEL_SERVICE_NAME", "")
	t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "100") // ms: spans leave at once
	g := startGatewayOn(t, testenv.RedisURL(), 1, 1, "GW_LOG_LEVEL=debug")

	stop, err := telemetry.StartTracing(t.Context(), "devicesim", os.Getenv, io.Discard, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(telemetry.ResetProvider)
	var stderr testenv.SyncBuffer
	gl := &globals{API: g.APIURL, Secret: g.Opts.Secret, stdout: &bytes.Buffer{}, stderr: &stderr, log: telemetry.Discard()}

	fleetCtx, stopFleet := context.WithCancel(t.Context())
	var wg sync.WaitGroup
	defer func() { stopFleet(); wg.Wait() }()
	fl, err := StartFleet(fleetCtx, gl, FleetOptions{Devices: 1, Prefix: "trace-dev-", Connect: 1}, &wg)
	if err != nil {
		t.Fatal(err)
	}
	waitCtx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := fl.WaitOnline(waitCtx); err != nil {
		t.Fatal(err)
	}
	secret, err := gl.secret()
	if err != nil {
		t.Fatal(err)
	}
	token, err := auth.Mint(secret, "trace-app", auth.RoleClient, []string{"trace-dev-0"}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	body := []byte(`{"jsonrpc":"2.0","method":"echo","params":{"traced":true},"id":"trace-1"}`)
	if err := sendOne(t.Context(), gl, "trace-app", token, "trace-dev-0", "trace-1", body, SendOptions{Timeout: 10 * time.Second, ExpiresIn: time.Minute}, 30*time.Second); err != nil {
		t.Fatalf("send: %v; output %s", err, gl.stdout)
	}
	if !strings.Contains(gl.stdout.(*bytes.Buffer).String(), `"traced": true`) {
		t.Fatalf("send printed %q, want the echoed params", gl.stdout)
	}
	sctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := stop(sctx); err != nil { // flushes devicesim's spans
		t.Fatal(err)
	}

	// The trace of the command: the one of devicesim's result span.
	wctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	var traceID string
	spans, err := rcv.Wait(wctx, func(spans []testenv.Span) bool {
		for _, s := range spans {
			if s.Service == "devicesim" && s.Name == "result" {
				traceID = s.TraceID
			}
		}
		if traceID == "" {
			return false
		}
		return len(hopsOf(spans, traceID)) == len(commandTrace)
	})
	if err != nil {
		got := hopsOf(spans, traceID)
		var missing []string
		for _, h := range commandTrace {
			if _, ok := got[h.service+"/"+h.name]; !ok {
				missing = append(missing, h.service+"/"+h.name)
			}
		}
		dump, _ := json.MarshalIndent(spans, "", " ")
		t.Fatalf("%v; trace %q lacks %v; received %s; receiver errors %v", err, traceID, missing, dump, rcv.Errors())
	}
	if !strings.Contains(stderr.String(), "(trace_id "+traceID+")") {
		t.Errorf("send printed %q, want the trace_id %s", stderr.String(), traceID)
	}
	hops := hopsOf(spans, traceID)
	for _, h := range commandTrace {
		s := hops[h.service+"/"+h.name]
		if h.parent == "" {
			if s.ParentID != "" {
				t.Errorf("%s/%s has parent %s, want none (the root)", h.service, h.name, s.ParentID)
			}
			continue
		}
		p := hops[h.parent]
		if s.ParentID != p.SpanID {
			t.Errorf("%s/%s: parent span %s, want %s (%s)", h.service, h.name, s.ParentID, p.SpanID, h.parent)
		}
	}
	if got := hops["pushserver/send"].Attrs["msg_id"]; got != "trace-1" {
		t.Errorf("send span msg_id = %q, want trace-1", got)
	}
	// Every process logged the command with its trace_id.
	for _, p := range g.All() {
		if !strings.Contains(p.Tail(1<<20), `"trace_id":"`+traceID+`"`) {
			t.Errorf("%s: no log line with trace_id %s", p.Name, traceID)
		}
	}
}

// hopsOf returns the spans of trace id by "service/name", the hops of
// commandTrace only.
func hopsOf(spans []testenv.Span, id string) map[string]testenv.Span {
	want := map[string]bool{}
	for _, h := range commandTrace {
		want[h.service+"/"+h.name] = true
	}
	out := map[string]testenv.Span{}
	for _, s := range spans {
		if k := s.Service + "/" + s.Name; s.TraceID == id && want[k] {
			out[k] = s
		}
	}
	return out
}
