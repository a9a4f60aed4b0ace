package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/ring"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

const testSecret = "apiserver-test-secret-of-32-bytes!"

// testAnswerGrace is the answer grace of the test stores and servers.
const testAnswerGrace = 100 * time.Millisecond

// gw is one apiserver under test, on real RabbitMQ and Redis, in a
// namespace of its own.
type gw struct {
	t     testing.TB
	ns    string
	topo  protocol.Topology
	rdb   *redis.Client
	store *mailbox.Store
	pub   *amqpx.Publisher
	ring  *ring.Ring
	srv   *Server
	ts    *httptest.Server
	conn  *amqp.Connection
	cfg   Config
}

// gwOption adjusts the configuration or dependencies before the server is
// built.
type gwOption func(*Config, *Deps)

// newGW starts an apiserver for t behind an httptest.Server.
func newGW(t testing.TB, opts ...gwOption) *gw {
	t.Helper()
	ns := testenv.Namespace(t) // first: its cleanup runs after the components stop
	rdb := testenv.Redis(t)
	// The counts are the defaults, as in g.cfg.
	g := &gw{t: t, ns: ns, topo: protocol.NewTopology(ns, protocol.DefaultQueues, protocol.DefaultPartitions), rdb: rdb, conn: testenv.AMQP(t)}
	g.cfg = Config{
		Common:         config.Common{Namespace: ns},
		AuthSecret:     testSecret,
		ConfirmTimeout: 2 * time.Second,
		Rate:           -1,
		MaxWait:        10 * time.Second,
		// A small answer grace: timeout statuses come soon after the
		// deadline. Relaxed durability: the test Redis is not durable
		// (TestReadyzDurability checks strict).
		Scale: config.Scale{AnswerGrace: testAnswerGrace, Durability: config.DurabilityRelaxed},
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	pub, err := amqpx.NewPublisher(ctx, amqpx.Options{URL: testenv.AMQPURL(), ConfirmTimeout: g.cfg.ConfirmTimeout, Name: "apiserver-test", Logger: testenv.Logger(t)}, g.topo)
	require.NoError(t, err)
	t.Cleanup(func() { pub.Close() })
	require.Eventually(t, pub.Ready, 5*time.Second, 10*time.Millisecond, "publisher not ready")
	g.pub = pub

	g.ring = ring.New(rdb, ns, ring.Options{Logger: testenv.Logger(t)})
	rctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); _ = g.ring.Run(rctx) }()
	t.Cleanup(func() { stop(); <-done })

	g.store = mailbox.New(rdb, ns, mailbox.Options{Lease: 2 * g.cfg.ConfirmTimeout, AnswerGrace: testAnswerGrace, Logger: testenv.Logger(t)})
	deps := Deps{Redis: rdb, Store: g.store, Publisher: pub, Ring: g.ring, Logger: testenv.Logger(t)}
	for _, o := range opts {
		o(&g.cfg, &deps)
	}
	srv, err := NewServer(g.cfg, deps)
	require.NoError(t, err)
	g.srv = srv
	g.cfg = srv.cfg
	g.ts = httptest.NewServer(srv.Handler())
	t.Cleanup(g.ts.Close)
	return g
}

// token mints a token signed with the test secret.
func token(t testing.TB, sub string, role auth.Role, devices ...string) string {
	t.Helper()
	tok, err := auth.Mint([]byte(testSecret), sub, role, devices, time.Hour)
	require.NoError(t, err)
	return tok
}

// reply is an HTTP response, read.
type reply struct {
	Status int
	Header http.Header
	Body   []byte
}

// json decodes the body into v.
func (r *reply) json(t testing.TB, v any) {
	t.Helper()
	require.NoError(t, json.Unmarshal(r.Body, v), "body %s", r.Body)
}

// errorCode returns error.code of an error body (0 when there is none).
func (r *reply) errorCode(t testing.TB) int {
	t.Helper()
	var e struct {
		Error *protocol.Error `json:"error"`
	}
	r.json(t, &e)
	if e.Error == nil {
		return 0
	}
	return e.Error.Code
}

// errorReason is the data.reason of an error answer ("" when none).
func (r *reply) errorReason(t testing.TB) string {
	t.Helper()
	var e struct {
		Error *struct {
			Data struct {
				Reason string `json:"reason"`
			} `json:"data"`
		} `json:"error"`
	}
	r.json(t, &e)
	if e.Error == nil {
		return ""
	}
	return e.Error.Data.Reason
}

// do sends a request and validates the response against openapi.yaml.
func (g *gw) do(method, path, tok string, body any, hdr ...string) *reply {
	g.t.Helper()
	return doURL(g.t, http.DefaultClient, g.ts.URL, method, path, tok, body, hdr...)
}

func doURL(t testing.TB, client *http.Client, base, method, path, tok string, body any, hdr ...string) *reply {
	t.Helper()
	var raw []byte
	switch b := body.(type) {
	case nil:
	case string:
		raw = []byte(b)
	case []byte:
		raw = b
	default:
		var err error
		raw, err = json.Marshal(b)
		require.NoError(t, err)
	}
	var rd io.Reader
	if raw != nil {
		rd = bytes.NewReader(raw)
	}
	req, err := http.NewRequest(method, base+path, rd)
	require.NoError(t, err)
	if raw != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := client.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	r := &reply{Status: resp.StatusCode, Header: resp.Header, Body: out}
	validateResponse(t, req, r)
	return r
}

var (
	specOnce   sync.Once
	specRouter routers.Router
	specErr    error
)

// validateResponse checks a real response against openapi.yaml: its
// route and status must be documented and its body must match.
func validateResponse(t testing.TB, req *http.Request, r *reply) {
	t.Helper()
	specOnce.Do(func() {
		loader := openapi3.NewLoader()
		doc, err := loader.LoadFromData(openapiYAML)
		if err != nil {
			specErr = fmt.Errorf("cannot load openapi.yaml: %w", err)
			return
		}
		if err := doc.Validate(loader.Context); err != nil {
			specErr = fmt.Errorf("openapi.yaml is not valid: %w", err)
			return
		}
		// The tests' servers listen on random ports, not on the
		// document's servers: match on the path alone.
		doc.Servers = nil
		specRouter, specErr = gorillamux.NewRouter(doc)
	})
	require.NoError(t, specErr)
	// The router matches on the path only; give it a request without a body.
	vreq := req.Clone(context.Background())
	vreq.Body = http.NoBody
	route, params, err := specRouter.FindRoute(vreq)
	require.NoError(t, err, "%s %s is not in openapi.yaml", req.Method, req.URL.Path)
	in := &openapi3filter.ResponseValidationInput{
		RequestValidationInput: &openapi3filter.RequestValidationInput{
			Request: vreq, PathParams: params, Route: route,
			Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc},
		},
		Status:  r.Status,
		Header:  r.Header,
		Body:    io.NopCloser(bytes.NewReader(r.Body)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
	}
	err = openapi3filter.ValidateResponse(context.Background(), in)
	require.NoError(t, err, "%s %s → %d does not match openapi.yaml; body %s", req.Method, req.URL.Path, r.Status, truncate(r.Body))
}

func truncate(b []byte) string {
	if len(b) > 2000 {
		return string(b[:2000]) + "…"
	}
	return string(b)
}

// drain reads every message of the namespace's command queues (basic.get,
// auto-ack), queue 0 first, and returns them. Each must be in the queue
// of its device.
func (g *gw) drain() []amqp.Delivery {
	g.t.Helper()
	ch, err := g.conn.Channel()
	require.NoError(g.t, err)
	defer ch.Close()
	var out []amqp.Delivery
	for q, queue := range g.topo.CommandQueues() {
		for {
			d, ok, err := ch.Get(queue, true)
			require.NoError(g.t, err)
			if !ok {
				break
			}
			if env, err := protocol.DecodeEnvelope(d.Body); err == nil {
				require.Equal(g.t, g.topo.CommandQueueOf(env.Device, g.topo.PartitionCount), q, "the command to %s is in %s", env.Device, queue)
			}
			out = append(out, d)
		}
	}
	return out
}

// envelopes drains the queue and decodes the envelopes.
func (g *gw) envelopes() []*protocol.Envelope {
	g.t.Helper()
	var out []*protocol.Envelope
	for _, d := range g.drain() {
		env, err := protocol.DecodeEnvelope(d.Body)
		require.NoError(g.t, err)
		out = append(out, env)
	}
	return out
}

// cmd returns a JSON-RPC request body.
func cmd(id any, method string, params any) map[string]any {
	m := map[string]any{"jsonrpc": "2.0", "method": method, "id": id}
	if params != nil {
		m["params"] = params
	}
	return m
}

// post sends a command to device as tok.
func (g *gw) post(tok, device string, body any, query ...string) *reply {
	g.t.Helper()
	path := "/v1/devices/" + device + "/commands"
	if len(query) > 0 {
		path += "?" + strings.Join(query, "&")
	}
	return g.do(http.MethodPost, path, tok, body)
}

// waitPolling waits until client has n long-polls waiting: each is counted
// once the server has read its command, found it not final, and starts
// to wait (Server.takePoll).
func waitPolling(t testing.TB, s *Server, client string, n int) {
	t.Helper()
	require.Eventually(t, func() bool {
		s.polls.mu.Lock()
		defer s.polls.mu.Unlock()
		return s.polls.n[client] == n
	}, 10*time.Second, 5*time.Millisecond, "%s never had %d long-polls waiting", client, n)
}
