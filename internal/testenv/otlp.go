package testenv

import (
	"compress/gzip"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"testing"
	"time"

	coltrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	"google.golang.org/protobuf/proto"
)

// Span is one span an OTLPReceiver received, flattened: the service.name
// of its resource, its name, kind (OTLP's number: 1 internal, 2 server, 3
// client, 4 producer, 5 consumer), IDs in hex (ParentID "" for a root) and
// its string attributes.
type Span struct {
	Service, Name             string
	Kind                      int
	TraceID, SpanID, ParentID string
	Attrs                     map[string]string
}

// OTLPReceiver is a real OTLP/HTTP trace receiver (http/protobuf) in the
// test process: it decodes every ExportTraceServiceRequest posted to
// /v1/traces and keeps its spans. Point a binary at it with
// OTEL_EXPORTER_OTLP_ENDPOINT=URL().
type OTLPReceiver struct {
	srv *httptest.Server

	mu    sync.Mutex
	spans []Span
	errs  []string
	added chan struct{}
}

// NewOTLPReceiver starts a receiver on loopback, closed when the test ends.
func NewOTLPReceiver(t testing.TB) *OTLPReceiver {
	r := &OTLPReceiver{added: make(chan struct{}, 1)}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	return r
}

// URL is the receiver's base URL (the exporters append /v1/traces).
func (r *OTLPReceiver) URL() string { return r.srv.URL }

func (r *OTLPReceiver) serve(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost || req.URL.Path != "/v1/traces" {
		r.fail(fmt.Sprintf("unexpected %s %s", req.Method, req.URL.Path))
		http.NotFound(w, req)
		return
	}
	var body io.Reader = req.Body
	if req.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(req.Body)
		if err != nil {
			r.fail("bad gzip: " + err.Error())
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		body = zr
	}
	raw, err := io.ReadAll(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var msg coltrace.ExportTraceServiceRequest
	if err := proto.Unmarshal(raw, &msg); err != nil {
		r.fail("cannot decode ExportTraceServiceRequest: " + err.Error())
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var got []Span
	for _, rs := range msg.GetResourceSpans() {
		service := ""
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "service.name" {
				service = a.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				sp := Span{Service: service, Name: s.GetName(), Kind: int(s.GetKind()),
					TraceID: hex.EncodeToString(s.GetTraceId()), SpanID: hex.EncodeToString(s.GetSpanId()),
					Attrs: map[string]string{}}
				if p := s.GetParentSpanId(); len(p) > 0 {
					sp.ParentID = hex.EncodeToString(p)
				}
				for _, a := range s.GetAttributes() {
					switch v := a.GetValue().GetValue().(type) {
					case *commonpb.AnyValue_StringValue:
						sp.Attrs[a.GetKey()] = v.StringValue
					case *commonpb.AnyValue_IntValue:
						sp.Attrs[a.GetKey()] = strconv.FormatInt(v.IntValue, 10)
					case *commonpb.AnyValue_BoolValue:
						sp.Attrs[a.GetKey()] = strconv.FormatBool(v.BoolValue)
					default:
						sp.Attrs[a.GetKey()] = a.GetValue().String()
					}
				}
				got = append(got, sp)
			}
		}
	}
	r.mu.Lock()
	r.spans = append(r.spans, got...)
	r.mu.Unlock()
	select {
	case r.added <- struct{}{}:
	default:
	}
	b, _ := proto.Marshal(&coltrace.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(b)
}

func (r *OTLPReceiver) fail(msg string) {
	r.mu.Lock()
	r.errs = append(r.errs, msg)
	r.mu.Unlock()
}

// Spans returns the spans received so far.
func (r *OTLPReceiver) Spans() []Span {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]Span(nil), r.spans...)
}

// Errors returns what the receiver could not accept (bad paths, bodies).
func (r *OTLPReceiver) Errors() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.errs...)
}

// Wait returns the spans once done(spans) holds, or an error when ctx
// ends first (with the spans received until then).
func (r *OTLPReceiver) Wait(ctx context.Context, done func([]Span) bool) ([]Span, error) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		s := r.Spans()
		if done(s) {
			return s, nil
		}
		select {
		case <-ctx.Done():
			return s, fmt.Errorf("spans not received: %w", ctx.Err())
		case <-r.added:
		case <-tick.C:
		}
	}
}
