package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
)

// TestCompetingWorkers: two Workers share 1,000 commands to 50 devices.
// Every command enters its device's mailbox exactly once; then, driven by
// the simulated push server and devices, every command reaches exactly
// one final status (succeeded, failed, or timeout by the timers, which
// fire once across both workers) and its client exactly one result.
func TestCompetingWorkers(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	w1 := h.worker(nil)
	w2 := h.worker(nil)

	const n, devices = 1000, 50
	envs := h.sendMany(n, 16, func(i int) spec {
		s := spec{client: fmt.Sprintf("c%d", i%7), device: fmt.Sprintf("d%d", i%devices), id: strconv.Itoa(i)}
		if i%10 == 0 {
			s.timeout = time.Second // delivered, never answered: timeout
		}
		return s
	})
	require.Eventually(t, func() bool {
		return handled(w1, queueCommands, "sent")+handled(w2, queueCommands, "sent") == n
	}, 30*time.Second, 20*time.Millisecond)
	require.Positive(t, handled(w1, queueCommands, "sent"), "worker 1 took part")
	require.Positive(t, handled(w2, queueCommands, "sent"), "worker 2 took part")
	h.checkMailboxesOnce(envs, devices)

	// Deliver everything, answer all but every tenth.
	for d := range devices {
		require.Len(t, h.deliver(fmt.Sprintf("d%d", d)), n/devices)
	}
	h.answerAll(envs, func(i int) int {
		switch i % 10 {
		case 0:
			return 1 // no answer
		case 5:
			return -32000
		}
		return 0
	})

	want := func(i int) protocol.Status {
		switch i % 10 {
		case 0:
			return protocol.StatusTimeout
		case 5:
			return protocol.StatusFailed
		}
		return protocol.StatusSucceeded
	}
	h.waitAllFinal(envs, want, 30*time.Second)
	fired := func() float64 { return counterValue(w1.mx.timersFired) + counterValue(w2.mx.timersFired) }
	require.Eventually(t, func() bool { return fired() >= n/10 }, 5*time.Second, 10*time.Millisecond)
	// Every command is final and no timer is left in any partition's
	// timer set: none can fire again, so the count is final.
	require.Eventually(t, func() bool { return h.timersLeft() == 0 }, 10*time.Second, 20*time.Millisecond,
		"timers left in the partitions' timer sets")
	require.Equal(t, float64(n/10), fired(), "each timer fired once")
}

// timersLeft counts the timers in every partition's timer set.
func (h *harness) timersLeft() int64 {
	h.t.Helper()
	pipe := h.rdb.Pipeline()
	cmds := make([]*redis.IntCmd, h.topo.PartitionCount)
	for p := range cmds {
		cmds[p] = pipe.ZCard(context.Background(), h.keys.Part(p).Timers())
	}
	if _, err := pipe.Exec(context.Background()); err != nil {
		h.t.Fatalf("cannot count timers: %v", err)
	}
	var n int64
	for _, c := range cmds {
		n += c.Val()
	}
	return n
}

// answerAll completes the devices' answers to envs, as their push servers
// would, with 16 goroutines: code(i) is 0 for a result, 1 for no answer,
// else an error code.
func (h *harness) answerAll(envs []*protocol.Envelope, code func(i int) int) {
	h.t.Helper()
	var wg sync.WaitGroup
	errs := make([]error, len(envs))
	next := make(chan int)
	for range 16 {
		wg.Go(func() {
			for i := range next {
				_, errs[i] = h.tryAnswer(envs[i], code(i))
			}
		})
	}
	for i := range envs {
		if code(i) != 1 {
			next <- i
		}
	}
	close(next)
	wg.Wait()
	for i, err := range errs {
		require.NoError(h.t, err, "answer %d", i)
	}
}

// checkMailboxesOnce checks that the devices' mailboxes hold exactly one
// entry per command, all sent.
func (h *harness) checkMailboxesOnce(envs []*protocol.Envelope, devices int) {
	h.t.Helper()
	seen := map[string]int{}
	total := 0
	for d := range devices {
		for _, e := range h.mailboxEntries(fmt.Sprintf("d%d", d)) {
			c, _ := e["c"].(string)
			k, _ := e["k"].(string)
			seen[c+":"+k]++
			total++
		}
	}
	for _, env := range envs {
		key := env.Client + ":" + env.MsgID.Key()
		require.Equal(h.t, 1, seen[key], "mailbox entries of %s", key)
	}
	require.Equal(h.t, len(envs), total, "no other entries")
	ctx := context.Background()
	for _, env := range envs {
		c, err := h.store.Get(ctx, env.Client, env.MsgID.Key())
		require.NoError(h.t, err)
		require.Equal(h.t, protocol.StatusSent, c.Status, "%s:%s", env.Client, env.MsgID.Key())
	}
}

// waitAllFinal waits until every command has its wanted final status,
// then checks that each client has exactly one result per command.
func (h *harness) waitAllFinal(envs []*protocol.Envelope, want func(i int) protocol.Status, within time.Duration) {
	h.t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(within)
	for i, env := range envs {
		for {
			c, err := h.store.Get(ctx, env.Client, env.MsgID.Key())
			require.NoError(h.t, err)
			if c.Status.Final() {
				require.Equal(h.t, want(i), c.Status, "command %d", i)
				break
			}
			if time.Now().After(deadline) {
				h.t.Fatalf("command %d (%s:%s) is %s, want %s", i, env.Client, env.MsgID.Key(), c.Status, want(i))
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	byClient := map[string]map[string][]*protocol.Response{}
	for _, env := range envs {
		if byClient[env.Client] == nil {
			byClient[env.Client] = h.results(env.Client)
		}
	}
	total := 0
	for _, rs := range byClient {
		total += len(rs)
	}
	for i, env := range envs {
		rs := byClient[env.Client][string(env.MsgID.Raw())]
		require.Len(h.t, rs, 1, "results of command %d", i)
		switch want(i) {
		case protocol.StatusSucceeded:
			require.Nil(h.t, rs[0].Error)
		case protocol.StatusTimeout:
			require.Equal(h.t, protocol.CodeTimeout, gatewayCode(h.t, rs[0]))
		case protocol.StatusFailed:
			require.Equal(h.t, -32000, rs[0].Error.Code)
		}
	}
	require.Equal(h.t, len(envs), total, "results in the client mailboxes")
}

// TestRedisOutage: while Redis cannot be reached, a command is held by the
// worker (transient), not retried until the delivery limit: nothing goes
// to the dead letters, and the command is sent once Redis is back. A
// timer that came due during the outage fires once Redis is back.
func TestRedisOutage(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	p := newProxy(t, redisAddr(t))
	u, err := url.Parse(testenv.RedisURL())
	require.NoError(t, err)
	u.Host = p.addr()
	w := h.worker(func(c *Config) { c.RedisURL = u.String() })

	// The first command is delivered and never answered: its
	// answer-within timer comes due during the outage.
	first := h.send(spec{client: "app-1", device: "lamp-1", id: `1`, timeout: time.Second})
	h.waitStatus(first, protocol.StatusSent, 10*time.Second)
	require.Len(t, h.deliver("lamp-1"), 1)
	h.waitStatus(first, protocol.StatusDelivered, 5*time.Second)
	due := time.Now().Add(time.Second)

	p.setDown(true)
	env := h.send(spec{client: "app-1", device: "lamp-1", id: `2`})
	waitHandled(t, w, queueCommands, outcomeTransient, 3, 10*time.Second)
	require.Equal(t, protocol.StatusQueued, h.get(env).Status)
	// The timer comes due during the outage, and the worker keeps trying
	// Redis after that (a connection refused by the proxy after due).
	time.Sleep(time.Until(due))
	tried := p.refused.Load()
	require.Eventually(t, func() bool { return p.refused.Load() > tried }, 10*time.Second, 10*time.Millisecond,
		"the worker did not try Redis after the timer came due")
	require.Equal(t, protocol.StatusDelivered, h.get(first).Status, "a timer fired while Redis was down")
	p.setDown(false)

	h.waitStatus(env, protocol.StatusSent, 15*time.Second)
	h.waitStatus(first, protocol.StatusTimeout, 15*time.Second)
	require.Equal(t, protocol.CodeTimeout, gatewayCode(t, h.oneResult(first)))
	require.Len(t, h.mailboxEntries("lamp-1"), 1)
	require.Equal(t, 0, handled(w, queueCommands, outcomeError), "no attempt burnt")
	require.Equal(t, 0.0, counterValue(w.mx.deadLetters.WithLabelValues(queueCommandsDead)))

	h.deliver("lamp-1")
	h.answer(env, 0)
	h.waitStatus(env, protocol.StatusSucceeded, 10*time.Second)
}

func redisAddr(t testing.TB) string {
	u, err := url.Parse(testenv.RedisURL())
	require.NoError(t, err)
	return u.Host
}

// proxy is a TCP proxy to a real server that can be made unreachable:
// while down, it closes every connection and every new one at once.
type proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	down   bool
	conns  map[net.Conn]struct{}
	// refused counts the connections closed at once because it was down.
	refused atomic.Int64
}

func newProxy(t testing.TB, target string) *proxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	t.Cleanup(func() {
		_ = ln.Close()
		p.setDown(true)
	})
	go p.serve()
	return p
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		down := p.down
		if !down {
			p.conns[c] = struct{}{}
		}
		p.mu.Unlock()
		if down {
			_ = c.Close()
			p.refused.Add(1)
			continue
		}
		go p.pipe(c)
	}
}

func (p *proxy) pipe(c net.Conn) {
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		_ = c.Close()
		return
	}
	p.mu.Lock()
	p.conns[s] = struct{}{}
	p.mu.Unlock()
	go func() { _, _ = io.Copy(s, c); _ = s.Close() }()
	_, _ = io.Copy(c, s)
	_ = c.Close()
}

func (p *proxy) setDown(down bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.down = down
	if down {
		for c := range p.conns {
			_ = c.Close()
		}
		clear(p.conns)
	}
}

// TestAMQPReconnect: when RabbitMQ closes the worker's connections, its
// consumers reconnect with backoff (counted in gw_worker_reconnects_total)
// and work goes on.
func TestAMQPReconnect(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	w := h.worker(nil)
	env := h.send(spec{client: "app-1", device: "lamp-1", id: `1`})
	h.waitStatus(env, protocol.StatusSent, 10*time.Second)

	name := "msgworker@" + h.ns
	var closed int
	require.Eventually(t, func() bool {
		closed += closeConnections(t, name)
		return closed >= 4
	}, 30*time.Second, 200*time.Millisecond, "closed %d of the worker's 4 connections", closed)
	require.Eventually(t, func() bool { return w.reconnects() >= 4 }, 30*time.Second, 20*time.Millisecond)

	env = h.send(spec{client: "app-1", device: "lamp-1", id: `2`})
	h.waitStatus(env, protocol.StatusSent, 15*time.Second)
	h.deliver("lamp-1")
	h.answer(env, 0)
	h.waitStatus(env, protocol.StatusSucceeded, 15*time.Second)
}

// closeConnections closes, through the management API, the connections
// whose client-given name is name, and returns how many it closed.
func closeConnections(t testing.TB, name string) int {
	t.Helper()
	base, err := url.Parse(testenv.AMQPMgmtURL())
	require.NoError(t, err)
	user := base.User
	base.User = nil
	do := func(method, path string) *http.Response {
		req, err := http.NewRequest(method, base.String()+path, nil)
		require.NoError(t, err)
		if user != nil {
			pw, _ := user.Password()
			req.SetBasicAuth(user.Username(), pw)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		return resp
	}
	resp := do(http.MethodGet, "/api/connections?columns=name,user_provided_name")
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var conns []struct {
		Name             string `json:"name"`
		UserProvidedName string `json:"user_provided_name"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&conns))
	n := 0
	for _, c := range conns {
		if c.UserProvidedName != name {
			continue
		}
		r := do(http.MethodDelete, "/api/connections/"+url.PathEscape(c.Name))
		r.Body.Close()
		if r.StatusCode < 300 {
			n++
		}
	}
	return n
}
