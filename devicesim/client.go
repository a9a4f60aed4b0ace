package main

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/protocol"
)

// Result is one result a client received.
type Result struct {
	Device string
	Resp   *protocol.Response
	At     time.Time
	// Attempts is the result's "attempts" (a command with a retry
	// policy), 0 when it has none.
	Attempts int
}

// connectClient runs sess until stop is called and waits, 15 s at most,
// until it is subscribed to client's results.
func connectClient(ctx context.Context, sess *Session, client string) (stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); sess.Run(ctx, nil) }()
	stop = func() { cancel(); <-done }
	select {
	case <-sess.Ready():
		return stop, nil
	case <-time.After(15 * time.Second):
		err = fmt.Errorf("could not connect client %s to its push server within 15s", client)
	case <-ctx.Done():
		err = ctx.Err()
	}
	stop()
	return nil, err
}

// NewClientSession returns a session that subscribes to all of client's
// results and hands each to deliver (in paho's goroutine: keep it quick).
// A result that came with a traceparent gets a span, "result", that ends
// the command's trace.
func NewClientSession(client, token string, api *API, deliver func(Result)) *Session {
	s := &Session{Identity: client, Token: token, API: api, Filter: protocol.ClientResultsFilter(client)}
	s.Handler = func(m Message) {
		now := time.Now()
		t, err := protocol.ParseTopic(m.Topic)
		if err != nil || t.Kind != protocol.TopicClientResults {
			return
		}
		if m.TraceParent != "" {
			_, span := telemetry.Tracer().Start(telemetry.ContextWithTraceParent(context.Background(), m.TraceParent),
				"result", trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
					attribute.String("client_id", client), attribute.String("device_id", t.Device)))
			span.End()
		}
		resp, err := protocol.ParseResponse(m.Payload)
		if err != nil {
			// Keep what was received visible to the ledger as unexpected.
			resp = &protocol.Response{ID: json.RawMessage("null")}
		}
		deliver(Result{Device: t.Device, Resp: resp, At: now, Attempts: protocol.ResultAttempts(m.Payload)})
	}
	return s
}
