package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// gatedPublisher, once hold is set, holds every publish until its gate
// is closed.
type gatedPublisher struct {
	Publisher
	hold    atomic.Bool
	entered chan struct{}
	gate    chan struct{}
}

func (p *gatedPublisher) Publish(ctx context.Context, exchange, key string, body []byte, h amqpx.Headers) error {
	if p.hold.Load() {
		p.entered <- struct{}{}
		<-p.gate
	}
	return p.Publisher.Publish(ctx, exchange, key, body, h)
}

// Beyond Config.MaxInFlight requests in flight the client API answers
// 503 (-32016, server overloaded) with Retry-After at once, before the
// token is checked; once the requests in flight finish, the next is
// served. A waiting long-poll does not hold a place, and health, metrics
// and operator endpoints are not bounded.
func TestOverloadSheds(t *testing.T) {
	t.Parallel()
	gp := &gatedPublisher{entered: make(chan struct{}, 8), gate: make(chan struct{})}
	g := newGW(t, func(c *Config, d *Deps) {
		c.MaxInFlight = 2
		gp.Publisher = d.Publisher
		d.Publisher = gp
	})
	tok := token(t, "app-1", auth.RoleClient, "dev-*")

	// A long-poll that waits (for a command that stays queued) holds no
	// place: two commands can still be taken in.
	require.Equal(t, http.StatusAccepted, g.post(tok, "dev-1", cmd("lp", "m", nil)).Status)
	gp.hold.Store(true)
	polled := make(chan int, 1)
	go func() {
		resp, err := http.DefaultClient.Do(authed(t, http.MethodGet, g.ts.URL+"/v1/commands/lp?wait=3s", tok, nil))
		if err != nil {
			polled <- 0
			return
		}
		resp.Body.Close()
		polled <- resp.StatusCode
	}()
	waitPolling(t, g.srv, "app-1", 1)
	require.Eventually(t, func() bool { return g.srv.inFlight.Load() == 0 }, 5*time.Second, 5*time.Millisecond,
		"the waiting long-poll still holds a place")

	// Two commands held in their publish fill the places.
	var wg sync.WaitGroup
	held := make([]int, 2)
	for i := range held {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := http.DefaultClient.Do(authed(t, http.MethodPost, g.ts.URL+"/v1/devices/dev-1/commands", tok, cmd(fmt.Sprintf("held-%d", i), "m", nil)))
			if err == nil {
				resp.Body.Close()
				held[i] = resp.StatusCode
			}
		}()
		<-gp.entered
	}
	require.EqualValues(t, 2, g.srv.inFlight.Load())

	// The third is refused at once, whoever sends it, valid token or not.
	start := time.Now()
	r := g.post(tok, "dev-1", cmd("third", "m", nil))
	require.Equal(t, http.StatusServiceUnavailable, r.Status, "%s", r.Body)
	assert.Less(t, time.Since(start), time.Second)
	assert.Equal(t, "1", r.Header.Get("Retry-After"))
	assert.Equal(t, protocol.CodeUnavailable, r.errorCode(t))
	var body struct {
		Error struct {
			Message string         `json:"message"`
			Data    map[string]any `json:"data"`
		} `json:"error"`
	}
	r.json(t, &body)
	assert.Contains(t, body.Error.Message, "server overloaded")
	assert.Equal(t, "overloaded", body.Error.Data["reason"])
	assert.Equal(t, "gateway", body.Error.Data["source"])
	assert.EqualValues(t, 1, body.Error.Data["retry_after"])
	r = g.do(http.MethodGet, "/v1/commands/held-0", "not-a-token", nil)
	assert.Equal(t, http.StatusServiceUnavailable, r.Status, "refused before the token is checked")
	r = g.do(http.MethodGet, "/v1/connect/app-1", tok, nil)
	assert.Equal(t, http.StatusServiceUnavailable, r.Status)
	// Not bounded: health, readiness, metrics, operators.
	assert.Equal(t, http.StatusOK, g.do(http.MethodGet, "/healthz", "", nil).Status)
	assert.Equal(t, http.StatusOK, g.do(http.MethodGet, "/readyz", "", nil).Status)
	m := g.do(http.MethodGet, "/metrics", "", nil)
	assert.Contains(t, string(m.Body), "gw_api_requests_in_flight 2")
	assert.Equal(t, http.StatusOK, g.do(http.MethodGet, "/v1/dead", token(t, "ops", auth.RoleOperator), nil).Status)

	close(gp.gate)
	wg.Wait()
	assert.Equal(t, []int{http.StatusAccepted, http.StatusAccepted}, held)
	assert.EqualValues(t, 0, g.srv.inFlight.Load())
	assert.Equal(t, http.StatusNotFound, g.do(http.MethodGet, "/v1/commands/third", tok, nil).Status, "the refused command was not taken")
	r = g.post(tok, "dev-1", cmd("third", "m", nil))
	assert.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	assert.Equal(t, http.StatusOK, <-polled, "the long-poll answered when its wait ended")
	assert.Len(t, g.drain(), 4)
}

// authed is a request with a bearer token and an optional JSON body.
func authed(t *testing.T, method, url, tok string, body any) *http.Request {
	t.Helper()
	var raw []byte
	if body != nil {
		var err error
		raw, err = json.Marshal(body)
		require.NoError(t, err)
	}
	req, err := http.NewRequest(method, url, bytes.NewReader(raw))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("Content-Type", "application/json")
	return req
}

// The default bound, from flags and GW_MAX_INFLIGHT.
func TestMaxInFlightConfig(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		args []string
		env  string
		want int
	}{
		{nil, "", DefaultMaxInFlight},
		{nil, "64", 64},
		{[]string{"--max-inflight", "-1"}, "64", -1},
	} {
		c, err := parseConfig(tt.args, func(k string) string {
			if k == "GW_MAX_INFLIGHT" {
				return tt.env
			}
			return ""
		}, &bytes.Buffer{})
		require.NoError(t, err)
		assert.Equal(t, tt.want, c.MaxInFlight, "%v %q", tt.args, tt.env)
	}
}

// The hand-written 202 body is what encoding/json writes for acceptedBody.
func TestAcceptedJSON(t *testing.T) {
	t.Parallel()
	for _, raw := range []string{`"cmd-1"`, `7`, `"a:b.c_d-e"`, `999999999999999`, `"` + strings.Repeat("x", 128) + `"`} {
		id, err := protocol.ParseID(json.RawMessage(raw))
		require.NoError(t, err, raw)
		var want bytes.Buffer
		require.NoError(t, json.NewEncoder(&want).Encode(acceptedBody{ID: id.Raw(), Status: protocol.StatusQueued, StatusURL: statusURL(id, "")}))
		assert.Equal(t, want.String(), string(acceptedJSON(id)))
	}
	assert.Equal(t, `"a\u003cb\"c"`, string(appendJSONString(nil, `a<b"c`)))
}

// The log writer keeps the order of lines, writes them in batches, and
// Close returns once everything is written.
func TestLogWriter(t *testing.T) {
	t.Parallel()
	var out lockedBuffer
	w := newLogWriter(&out)
	var want strings.Builder
	for i := range 10000 {
		line := fmt.Sprintf("line %d\n", i)
		want.WriteString(line)
		n, err := w.Write([]byte(line))
		require.NoError(t, err)
		require.Equal(t, len(line), n)
	}
	require.NoError(t, w.Close())
	assert.Equal(t, want.String(), out.String())
	assert.Less(t, out.writes, 10000, "lines are written in batches")
	_, _ = w.Write([]byte("after close\n"))
	assert.True(t, strings.HasSuffix(out.String(), "after close\n"))
}

type lockedBuffer struct {
	mu     sync.Mutex
	b      bytes.Buffer
	writes int
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.writes++
	time.Sleep(10 * time.Microsecond)
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
