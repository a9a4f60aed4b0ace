package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/latency"
)

// httpLoad posts commands to the apiserver: the bench's own small HTTP
// load loop, for the sections that have no MQTT side.
type httpLoad struct {
	base    string
	client  *http.Client
	tokens  []string // one per client identity
	devices int
	prefix  string // device prefix
	runID   string
	query   string
	seq     atomic.Int64

	mu       sync.Mutex
	byStatus map[int]int64
	errs     []string
}

func newHTTPLoad(base, secret, clientPrefix string, clients, devices int, query string) (*httpLoad, error) {
	h := &httpLoad{
		base: strings.TrimRight(base, "/"),
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConns:        4096,
			MaxIdleConnsPerHost: 4096,
			IdleConnTimeout:     90 * time.Second,
		}},
		devices:  devices,
		prefix:   "dev-",
		runID:    strconv.FormatInt(time.Now().UnixNano(), 36),
		query:    query,
		byStatus: map[int]int64{},
	}
	for i := range clients {
		tok, err := auth.Mint([]byte(secret), fmt.Sprintf("%s%d", clientPrefix, i), auth.RoleClient, []string{"*"}, 24*time.Hour)
		if err != nil {
			return nil, err
		}
		h.tokens = append(h.tokens, tok)
	}
	return h, nil
}

// post sends one new command from client ci to device and returns the
// HTTP status (0 for a transport error).
func (h *httpLoad) post(ctx context.Context, ci int, device string) int {
	status, _ := h.postN(ctx, ci, device, 0)
	return status
}

// postN sends n new commands from client ci to device as one JSON-RPC
// batch (n = 0: a single request, not a batch) and returns the HTTP
// status (0 for a transport error) and how many commands were accepted
// (for a batch, the entries answered queued; a batch is 202 when at
// least one was).
func (h *httpLoad) postN(ctx context.Context, ci int, device string, n int) (int, int) {
	var body string
	var first int64
	if n == 0 {
		first = h.seq.Add(1)
		body = h.command(first)
	} else {
		first = h.seq.Add(int64(n)) - int64(n) + 1
		var b strings.Builder
		b.WriteByte('[')
		for i := range int64(n) {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(h.command(first + i))
		}
		b.WriteByte(']')
		body = b.String()
	}
	if device == "" {
		device = h.prefix + strconv.FormatInt(first%int64(h.devices), 10)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, h.base+"/v1/devices/"+device+"/commands"+h.query, strings.NewReader(body))
	if err != nil {
		return 0, 0
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+h.tokens[ci%len(h.tokens)])
	resp, err := h.client.Do(req)
	status, accepted := 0, 0
	if err == nil {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		status = resp.StatusCode
		switch {
		case status != http.StatusAccepted:
			h.sample(fmt.Sprintf("%d %s", status, strings.TrimSpace(string(b[:min(len(b), 200)]))))
		case n == 0:
			accepted = 1
		default:
			var entries []struct {
				Status string          `json:"status"`
				Error  json.RawMessage `json:"error"`
			}
			if err := json.Unmarshal(b, &entries); err != nil {
				h.sample(fmt.Sprintf("202 with a body that is not a batch: %v", err))
			}
			for _, e := range entries {
				if e.Status == "queued" && e.Error == nil {
					accepted++
				} else if e.Error != nil {
					h.sample(fmt.Sprintf("202 batch entry %s", e.Error))
				}
			}
		}
	} else if ctx.Err() == nil {
		h.sample(err.Error())
	} else {
		return 0, 0 // cut off by the end of the run: not an answer
	}
	h.mu.Lock()
	h.byStatus[status]++
	h.mu.Unlock()
	return status, accepted
}

// command is the JSON-RPC request of command n.
func (h *httpLoad) command(n int64) string {
	s := strconv.FormatInt(n, 10)
	return `{"jsonrpc":"2.0","method":"echo","params":{"seq":` + s + `},"id":"` + h.runID + "-" + s + `"}`
}

func (h *httpLoad) sample(s string) {
	h.mu.Lock()
	if len(h.errs) < 5 {
		h.errs = append(h.errs, s)
	}
	h.mu.Unlock()
}

// statuses returns and resets the counts by status.
func (h *httpLoad) statuses() map[int]int64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.byStatus
	h.byStatus = map[int]int64{}
	return out
}

// closedLoop runs workers goroutines, each sending as soon as the
// previous answer came, for d (and at most maxN requests in all). It
// records the latency of each 202 and returns the number of 202s.
func (h *httpLoad) closedLoop(ctx context.Context, workers int, d time.Duration, maxN int64, lat *latency.Recorder) (accepted int64, elapsed time.Duration) {
	return h.closedLoopN(ctx, workers, 0, d, maxN, lat)
}

// closedLoopN is closedLoop with each request a batch of batch commands
// (0: single requests). It records the latency of each 202 request and
// returns the number of commands accepted.
func (h *httpLoad) closedLoopN(ctx context.Context, workers, batch int, d time.Duration, maxN int64, lat *latency.Recorder) (accepted int64, elapsed time.Duration) {
	ctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	var n, acc atomic.Int64
	var wg sync.WaitGroup
	t0 := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil && n.Add(1) <= maxN {
				start := time.Now()
				if status, k := h.postN(ctx, w, "", batch); status == http.StatusAccepted {
					lat.Add(time.Since(start))
					acc.Add(int64(k))
				}
			}
		}()
	}
	wg.Wait()
	return acc.Load(), time.Since(t0)
}

// openLoop sends at rate per second for d, each request at its scheduled
// time whatever the earlier ones do (at most maxInflight at once; beyond,
// the schedule slips and the latency shows it). Latency is measured from
// the scheduled time.
func (h *httpLoad) openLoop(ctx context.Context, rate float64, d time.Duration, maxInflight int, lat, service *latency.Recorder) (accepted, sent int64, elapsed time.Duration) {
	interval := time.Duration(float64(time.Second) / rate)
	sem := make(chan struct{}, maxInflight)
	var acc atomic.Int64
	var wg sync.WaitGroup
	t0 := time.Now()
	for i := 0; ; i++ {
		at := t0.Add(time.Duration(i) * interval)
		if at.Sub(t0) >= d || ctx.Err() != nil {
			break
		}
		if w := time.Until(at); w > 0 {
			sleepCtx(ctx, w)
		}
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil {
			break
		}
		sent++
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			start := time.Now()
			if h.post(ctx, i, "") == http.StatusAccepted {
				lat.Add(time.Since(at))
				service.Add(time.Since(start))
				acc.Add(1)
			}
		}()
	}
	wg.Wait()
	return acc.Load(), sent, time.Since(t0)
}
