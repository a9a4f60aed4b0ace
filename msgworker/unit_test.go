package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	amqp "github.com/rabbitmq/amqp091-go"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

func TestDeathReason(t *testing.T) {
	tests := []struct {
		name string
		h    amqp.Table
		want string
	}{
		{"first death", amqp.Table{"x-first-death-reason": "delivery_limit", "x-first-death-queue": "gw.commands.2"}, "delivery_limit in gw.commands.2"},
		{"x-death only", amqp.Table{"x-death": []any{amqp.Table{"reason": "rejected", "queue": "gw.commands.0", "count": int64(1)}}}, "rejected in gw.commands.0"},
		{"none", amqp.Table{}, "unknown"},
		{"nil", nil, "unknown"},
	}
	for _, tt := range tests {
		if got := deathReason(tt.h); got != tt.want {
			t.Errorf("%s: deathReason(%v) = %q, want %q", tt.name, tt.h, got, tt.want)
		}
	}
}

func TestCommandOf(t *testing.T) {
	tests := []struct {
		body        string
		client, key string
		ok          bool
	}{
		{`{"v":1,"kind":"command","client":"c1","device":"d1","msg_id":42,"payload":{"method":"m"}}`, "c1", "42", true},
		{`{"v":99,"client":"c1","msg_id":"a-1"}`, "c1", "a-1", true},
		{`{"client":"c1","msg_id":null}`, "", "", false},
		{`{"client":"bad:client","msg_id":1}`, "", "", false},
		{`garbage`, "", "", false},
		{``, "", "", false},
	}
	for _, tt := range tests {
		c, k, ok := commandOf([]byte(tt.body))
		if c != tt.client || k != tt.key || ok != tt.ok {
			t.Errorf("commandOf(%q) = %q, %q, %v, want %q, %q, %v", tt.body, c, k, ok, tt.client, tt.key, tt.ok)
		}
	}
}

// TestIsTransient classifies real go-redis errors: a server that cannot
// be reached is transient, a script error is not.
func TestIsTransient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := ln.Addr().String()
	require.NoError(t, ln.Close())
	ctx := context.Background()
	down := redis.NewClient(&redis.Options{Addr: dead, MaxRetries: -1, DialTimeout: 200 * time.Millisecond})
	defer down.Close()
	refused := down.Ping(ctx).Err()
	require.Error(t, refused)

	closed := redis.NewClient(&redis.Options{Addr: dead})
	_ = closed.Close()
	closedErr := closed.Ping(ctx).Err()

	tests := []struct {
		name string
		err  error
		want bool
	}{
		{"refused", refused, true},
		{"wrapped refused", fmt.Errorf("cannot dispatch: %w", refused), true},
		{"client closed", closedErr, true},
		{"eof", io.EOF, true},
		{"deadline", context.DeadlineExceeded, true},
		{"canceled", context.Canceled, false},
		{"plain", errors.New("something else"), false},
		{"nil", nil, false},
	}
	if !testing.Short() {
		rdb := testenv.Redis(t)
		scriptErr := rdb.Eval(ctx, "return redis.error_reply('ERR boom')", nil).Err()
		require.Error(t, scriptErr)
		reply := func(msg string) error {
			err := rdb.Eval(ctx, "return redis.error_reply(ARGV[1])", nil, msg).Err()
			require.Error(t, err)
			return err
		}
		type tc = struct {
			name string
			err  error
			want bool
		}
		tests = append(tests,
			tc{"script error", scriptErr, false},
			tc{"loading", reply("LOADING Redis is loading the dataset in memory"), true},
			tc{"misconf", reply("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk."), true},
			tc{"max clients", reply("ERR max number of clients reached"), true},
			tc{"oom", reply("OOM command not allowed when used memory > 'maxmemory'."), true},
			tc{"wrong type", reply("WRONGTYPE Operation against a key holding the wrong kind of value"), false},
		)
	}
	for _, tt := range tests {
		if got := isTransient(tt.err); got != tt.want {
			t.Errorf("%s: isTransient(%v) = %v, want %v", tt.name, tt.err, got, tt.want)
		}
	}
}

func TestOutcomeOf(t *testing.T) {
	tests := []struct {
		outcome string
		err     error
		want    string
	}{
		{"sent", nil, "sent"},
		{"", nil, "ok"},
		{"", fmt.Errorf("x: %w", amqpx.ErrTransient), outcomeTransient},
		{outcomePoison, fmt.Errorf("x: %w", amqpx.ErrReject), outcomePoison},
		{"", errors.New("boom"), outcomeError},
		{outcomePanic, errPanic, outcomePanic},
	}
	for _, tt := range tests {
		if got := outcomeOf(&Message{Outcome: tt.outcome}, tt.err); got != tt.want {
			t.Errorf("outcomeOf(%q, %v) = %q, want %q", tt.outcome, tt.err, got, tt.want)
		}
	}
}

// TestChainOrder checks that middleware runs outermost first and that a
// panic becomes an error.
func TestChainOrder(t *testing.T) {
	var trace []string
	mw := func(name string) Middleware {
		return func(next Handler) Handler {
			return func(ctx context.Context, m *Message) error {
				trace = append(trace, name+">")
				err := next(ctx, m)
				trace = append(trace, "<"+name)
				return err
			}
		}
	}
	h := chain(func(context.Context, *Message) error { trace = append(trace, "h"); panic("boom") },
		mw("a"), recoverer(testenv.Logger(t)), mw("b"))
	m := &Message{Queue: "q"}
	err := h(context.Background(), m)
	require.ErrorIs(t, err, errPanic)
	require.Equal(t, outcomePanic, m.Outcome)
	require.Equal(t, []string{"a>", "b>", "h", "<a"}, trace)
}

// TestRunConfig checks the binary's configuration: flags, variables,
// errors and -h.
func TestRunConfig(t *testing.T) {
	env := func(kv ...string) func(string) string {
		return func(k string) string {
			for i := 0; i+1 < len(kv); i += 2 {
				if kv[i] == k {
					return kv[i+1]
				}
			}
			return ""
		}
	}
	ctx := context.Background()
	tests := []struct {
		name    string
		args    []string
		getenv  func(string) string
		wantErr string
	}{
		{"bad variable", nil, env("GW_PREFETCH", "lots"), "GW_PREFETCH"},
		{"bad flag", []string{"--nope"}, env(), "invalid flags"},
		{"zero prefetch", []string{"--prefetch", "0"}, env(), "prefetch must be positive"},
		{"bad interval", nil, env("GW_TIMER_INTERVAL", "0"), "timer-interval"},
		{"bad namespace", []string{"--namespace", "a b"}, env(), "namespace"},
		{"bad partitions", nil, env("GW_PARTITIONS", "100"), "partitions"},
		{"no queues", []string{"--queues", "0"}, env(), "queues"},
		{"bad durability", nil, env("GW_DURABILITY", "maybe"), "durability"},
		{"bad log level", []string{"--log-level", "loud"}, env(), "log-level"},
		{"bad redis url", []string{"--redis-url", "http://x"}, env(), "redis-url"},
		{"bad metrics addr", []string{"--metrics-addr", "256.0.0.1:99999"}, env(), "cannot listen for metrics"},
	}
	for _, tt := range tests {
		var out bytes.Buffer
		err := run(ctx, tt.args, tt.getenv, &out)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("%s: run(%q) = %v, want an error containing %q", tt.name, tt.args, err, tt.wantErr)
		}
	}
	var out bytes.Buffer
	require.NoError(t, run(ctx, []string{"-h"}, env(), &out))
	for _, name := range []string{"amqp-url", "redis-url", "namespace", "retention", "mailbox-cap", "prefetch",
		"concurrency", "timer-interval", "metrics-addr", "log-level", "log-format", "GW_AMQP_URL", "GW_QUEUES", "GW_PARTITIONS"} {
		require.Contains(t, out.String(), name)
	}
}

// TestRunStartsAndStops runs the program in-process: it logs the metrics
// address, warns about Redis durability when it applies, and returns nil
// once its context is cancelled.
func TestRunStartsAndStops(t *testing.T) {
	t.Parallel()
	testenv.RequireServices(t)
	ns := testenv.Namespace(t)
	ctx, cancel := context.WithCancel(context.Background())
	out := &testenv.SyncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"--log-format", "text"}, func(k string) string {
			switch k {
			case "GW_NAMESPACE":
				return ns
			case "GW_AMQP_URL":
				return testenv.AMQPURL()
			case "GW_REDIS_URL":
				return testenv.RedisURL()
			}
			return ""
		}, out)
	}()
	require.Eventually(t, func() bool { return strings.Count(out.String(), "msg=consuming") >= protocol.DefaultQueues+1 },
		20*time.Second, 20*time.Millisecond, "%s", out.String())
	require.Contains(t, out.String(), "metrics listening")
	if err := mailbox.CheckDurable(context.Background(), testenv.Redis(t), 0); err != nil {
		// Strict durability (the default) on a Redis that is not durable:
		// a warning at start, and /readyz refuses, saying why.
		require.Eventually(t, func() bool { return strings.Contains(out.String(), "not ready until Redis is durable") },
			5*time.Second, 10*time.Millisecond, "no durability warning")
		m := regexp.MustCompile(`msg="metrics listening" .*addr=(\S+)`).FindStringSubmatch(out.String())
		require.NotNil(t, m, "%s", out.String())
		resp, err := http.Get("http://" + m[1] + "/readyz")
		require.NoError(t, err)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusServiceUnavailable || !strings.Contains(string(body), "appendfsync") {
			t.Errorf("GET /readyz = %d %q, want 503 naming appendfsync", resp.StatusCode, body)
		}
	}
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(15 * time.Second):
		t.Fatal("run did not return")
	}
	require.Contains(t, out.String(), "msgworker stopped")
	testenv.RequireLogSchema(t, "msgworker", out.Lines())
}

// TestCommandShare: the command queues share the prefetch and the
// concurrency, rounded up, never below one, concurrency never above
// prefetch.
func TestCommandShare(t *testing.T) {
	for _, tt := range []struct{ queues, prefetch, concurrency, wantP, wantC int }{
		{1, 128, 64, 128, 64},
		{4, 128, 64, 32, 16},
		{3, 128, 64, 43, 22},
		{256, 128, 64, 1, 1},
		{4, 2, 2, 1, 1},
		{4, 8, 64, 2, 2},
	} {
		c := Config{Scale: config.Scale{Queues: tt.queues}, Prefetch: tt.prefetch, Concurrency: tt.concurrency}
		if p, n := c.commandShare(); p != tt.wantP || n != tt.wantC {
			t.Errorf("%d queues, prefetch %d, concurrency %d: commandShare() = %d, %d; want %d, %d",
				tt.queues, tt.prefetch, tt.concurrency, p, n, tt.wantP, tt.wantC)
		}
	}
}

// TestWorkerRefusesOtherCounts: a worker whose GW_QUEUES differs from the
// namespace's stops at once, naming both counts.
func TestWorkerRefusesOtherCounts(t *testing.T) {
	t.Parallel()
	h := newHarness(t) // declares the namespace with the default counts
	w, err := New(Config{
		Common:     config.Common{AMQPURL: testenv.AMQPURL(), RedisURL: testenv.RedisURL(), Namespace: h.ns},
		Scale:      config.Scale{Queues: 2},
		Logger:     testenv.Logger(t),
		Registerer: prometheus.NewRegistry(),
	})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = w.Run(ctx)
	require.ErrorIs(t, err, amqpx.ErrCounts)
	require.ErrorContains(t, err, fmt.Sprintf("GW_QUEUES=%d and GW_PARTITIONS=%d", protocol.DefaultQueues, protocol.DefaultPartitions))
	require.ErrorContains(t, err, fmt.Sprintf("GW_QUEUES=2 and GW_PARTITIONS=%d", protocol.DefaultPartitions))
	require.NoError(t, ctx.Err(), "Run returned only at the deadline")
}

// TestReachability: a partition's timers may fire only once the worker
// has owned and reached it without error for the grace; a failure, or
// losing and regaining the partition, starts the clock again.
func TestReachability(t *testing.T) {
	const grace = 10 * time.Second
	t0 := time.Unix(1000, 0)
	r := reachability{}
	steps := []struct {
		name string
		do   func()
		at   time.Duration // when steady is asked, after t0
		p    int
		want bool
	}{
		{"just owned", func() { r.own([]int{1, 2}, t0) }, 0, 1, false},
		{"owned for less than the grace", func() {}, grace - time.Millisecond, 1, false},
		{"owned for the grace", func() {}, grace, 1, true},
		{"not owned", func() {}, grace, 3, false},
		{"a failure restarts the clock", func() { r.lost(1); r.own([]int{1, 2}, t0.Add(grace)) }, grace + time.Second, 1, false},
		{"the other partition kept its clock", func() {}, grace + time.Second, 2, true},
		{"steady again a grace after the failure", func() {}, 2 * grace, 1, true},
		{"given up", func() { r.own([]int{1}, t0.Add(2*grace)) }, 3 * grace, 2, false},
		{"regained: a new clock", func() { r.own([]int{1, 2}, t0.Add(3*grace)) }, 3*grace + time.Second, 2, false},
	}
	for _, s := range steps {
		s.do()
		if got := r.steady(s.p, t0.Add(s.at), grace); got != s.want {
			t.Errorf("%s: steady(%d, t0+%v) = %v, want %v", s.name, s.p, s.at, got, s.want)
		}
	}
}
