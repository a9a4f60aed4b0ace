package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/protocol"
)

// API is a small client of the gateway's HTTP API.
type API struct {
	Base string
	HTTP *http.Client
}

// NewAPI returns a client for the gateway at base, with connection reuse
// sized for load generation.
func NewAPI(base string) *API {
	tr := &http.Transport{
		Proxy:               nil,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		MaxIdleConns:        4096,
		MaxIdleConnsPerHost: 4096,
		IdleConnTimeout:     90 * time.Second,
	}
	return &API{Base: strings.TrimRight(base, "/"), HTTP: &http.Client{Transport: tr, Timeout: 70 * time.Second}}
}

// APIError is a non-2xx answer of the gateway.
type APIError struct {
	Status int
	Code   int
	Msg    string
	// Reason is the error's data.reason ("overloaded" for a 503 the
	// apiserver answered before looking at the command).
	Reason string
	Body   string
}

// NotAccepted reports whether the answer says for sure that the command
// was not accepted: a 4xx, or a 503 whose data.reason says so
// ("overloaded": refused before anything was stored; "not_accepted").
// Any other 5xx ("outcome_unknown": the confirm never came) may follow a
// publish that queued the command: indeterminate.
func (e *APIError) NotAccepted() bool {
	return e.Status >= 400 && e.Status < 500 ||
		e.Status == http.StatusServiceUnavailable && (e.Reason == protocol.ReasonOverloaded || e.Reason == protocol.ReasonNotAccepted)
}

func (e *APIError) Error() string {
	if e.Code != 0 {
		return fmt.Sprintf("gateway answered %d: %d %s", e.Status, e.Code, e.Msg)
	}
	return fmt.Sprintf("gateway answered %d: %s", e.Status, strings.TrimSpace(e.Body))
}

// Do sends a request with a bearer token and decodes a 2xx JSON answer
// into out (when not nil). It returns the HTTP status too.
func (a *API) Do(ctx context.Context, method, path, token string, body []byte, out any) (int, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, a.Base+path, rd)
	if err != nil {
		return 0, fmt.Errorf("cannot build request: %w", err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	if tp := telemetry.TraceParent(ctx); tp != "" {
		req.Header.Set("traceparent", tp)
	}
	resp, err := a.HTTP.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return resp.StatusCode, fmt.Errorf("cannot read answer: %w", err)
	}
	if resp.StatusCode/100 != 2 {
		e := &APIError{Status: resp.StatusCode, Body: string(raw)}
		var env struct {
			Error struct {
				Code    int    `json:"code"`
				Message string `json:"message"`
				Data    struct {
					Reason string `json:"reason"`
				} `json:"data"`
			} `json:"error"`
		}
		if json.Unmarshal(raw, &env) == nil {
			e.Code, e.Msg, e.Reason = env.Error.Code, env.Error.Message, env.Error.Data.Reason
		}
		return resp.StatusCode, e
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			return resp.StatusCode, fmt.Errorf("cannot decode answer: %w", err)
		}
	}
	return resp.StatusCode, nil
}

// Owner is the answer of GET /v1/connect/{identity}.
type Owner struct {
	Node    string `json:"node"`
	MQTTURL string `json:"mqtt_url"`
}

// Connect asks which push server owns identity.
func (a *API) Connect(ctx context.Context, identity, token string) (Owner, error) {
	var o Owner
	_, err := a.Do(ctx, http.MethodGet, "/v1/connect/"+url.PathEscape(identity), token, nil, &o)
	if err != nil {
		return o, fmt.Errorf("cannot find the push server of %s: %w", identity, err)
	}
	return o, nil
}

// Accepted is the answer to an accepted command.
type Accepted struct {
	ID        json.RawMessage `json:"id"`
	Status    string          `json:"status"`
	StatusURL string          `json:"status_url"`
	// TraceID is the command's trace ID (sent as the traceparent header),
	// the trace_id of every log line about it.
	TraceID string `json:"-"`
}

// SendOptions are the query options of POST /v1/devices/{d}/commands.
type SendOptions struct {
	Timeout, ExpiresIn time.Duration // 0: the gateway's default
	// OneWay: the device's PUBACK is the success; Timeout is not sent.
	OneWay bool
	// Lane: an ordered lane of the device ("" for none); LaneMode
	// "puback" moves it on at each command's delivery.
	Lane, LaneMode string
	// Retry is the command's retry policy.
	Retry RetryOptions
	// NotBefore schedules the command (not_before: an RFC 3339 time or
	// a duration from now; "": at once).
	NotBefore string
}

// RetryOptions is a retry policy: at most Retries + 1 attempts, each
// retried when it ends with an outcome named in On (retry_on; "": the
// gateway's default, timeout), after the wait Backoff gives
// (retry_backoff, "initial[,multiplier[,max]]"; "": none).
type RetryOptions struct {
	Retries     int
	On, Backoff string
}

// set adds the policy's query options to q.
func (o RetryOptions) set(q url.Values) {
	if o.Retries > 0 {
		q.Set("retries", strconv.Itoa(o.Retries))
	}
	if o.On != "" {
		q.Set("retry_on", o.On)
	}
	if o.Backoff != "" {
		q.Set("retry_backoff", o.Backoff)
	}
}

// SendCommand posts one JSON-RPC request to device.
func (a *API) SendCommand(ctx context.Context, token, device string, req []byte, timeout, expiresIn time.Duration) (Accepted, int, error) {
	return a.Send(ctx, token, device, req, SendOptions{Timeout: timeout, ExpiresIn: expiresIn})
}

// Send posts one JSON-RPC request to device with o. Its client span is
// the root of the command's trace: the request carries its traceparent
// (with tracing off, a new trace ID all the same), and Accepted.TraceID
// names the trace.
func (a *API) Send(ctx context.Context, token, device string, req []byte, o SendOptions) (_ Accepted, _ int, err error) {
	ctx, span := telemetry.Tracer().Start(ctx, "POST /v1/devices/:device_id/commands",
		trace.WithSpanKind(trace.SpanKindClient), trace.WithAttributes(attribute.String("device_id", device)))
	ctx = telemetry.EnsureTrace(ctx)
	defer func() {
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	q := url.Values{}
	if o.OneWay {
		q.Set("one_way", "true")
	} else if o.Timeout > 0 {
		q.Set("timeout", o.Timeout.String())
	}
	if o.ExpiresIn > 0 {
		q.Set("expires_in", o.ExpiresIn.String())
	}
	if o.Lane != "" {
		q.Set("lane", o.Lane)
	}
	if o.LaneMode != "" {
		q.Set("lane_mode", o.LaneMode)
	}
	if o.NotBefore != "" {
		q.Set("not_before", o.NotBefore)
	}
	o.Retry.set(q)
	path := "/v1/devices/" + url.PathEscape(device) + "/commands"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	acc := Accepted{TraceID: telemetry.TraceID(ctx)}
	status, err := a.Do(ctx, http.MethodPost, path, token, req, &acc)
	return acc, status, err
}

// Polled is one command of a device's HTTP poll: its ack token and the
// device-facing JSON-RPC request.
type Polled struct {
	Ack     string          `json:"ack"`
	Request json.RawMessage `json:"request"`
}

// Poll is a device's GET /v1/devices/{d}/commands/next: it acknowledges
// acks (the commands of the previous poll), waits up to wait for
// commands (0: answers at once) and returns at most max of them.
func (a *API) Poll(ctx context.Context, token, device string, wait time.Duration, max int, acks []string) ([]Polled, error) {
	q := url.Values{}
	if wait > 0 {
		q.Set("wait", wait.String())
	}
	if max > 0 {
		q.Set("max", strconv.Itoa(max))
	}
	if len(acks) > 0 {
		q.Set("ack", strings.Join(acks, ","))
	}
	var out struct {
		Commands []Polled `json:"commands"`
	}
	path := "/v1/devices/" + url.PathEscape(device) + "/commands/next"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	if _, err := a.Do(ctx, http.MethodGet, path, token, nil, &out); err != nil {
		return nil, err
	}
	return out.Commands, nil
}

// PostResponse is a device's POST /v1/devices/{d}/responses of one
// JSON-RPC response; it returns the gateway's outcome.
func (a *API) PostResponse(ctx context.Context, token, device string, resp []byte) (string, error) {
	var out struct {
		Outcome string `json:"outcome"`
	}
	_, err := a.Do(ctx, http.MethodPost, "/v1/devices/"+url.PathEscape(device)+"/responses", token, resp, &out)
	return out.Outcome, err
}

// brokerURL turns the gateway's advertised mqtt:// or mqtts:// URL into
// the scheme paho expects.
func brokerURL(advertised string) (string, error) {
	u, err := url.Parse(advertised)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("bad MQTT URL %q", advertised)
	}
	switch u.Scheme {
	case "mqtt", "tcp":
		return "tcp://" + u.Host, nil
	case "mqtts", "ssl", "tls":
		return "ssl://" + u.Host, nil
	}
	return "", fmt.Errorf("unsupported MQTT URL scheme %q", u.Scheme)
}
