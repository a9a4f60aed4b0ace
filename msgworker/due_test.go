package main

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/protocol"
)

// commandCounter is a go-redis hook that counts the commands a client
// sends, pipelined ones each.
type commandCounter struct{ n atomic.Int64 }

func (c *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.n.Add(1)
		return next(ctx, cmd)
	}
}
func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// waitOwnsAll waits until w owns every one of the namespace's partitions.
func waitOwnsAll(t *testing.T, w *Worker) {
	t.Helper()
	require.Eventually(t, func() bool { return len(w.parts.Owned()) == protocol.DefaultPartitions },
		10*time.Second, 10*time.Millisecond, "the worker never owned all %d partitions", protocol.DefaultPartitions)
}

// TestIdleOwnerCallsRedisLittle: an idle worker owning all 256
// partitions polls only the due set each tick, not every partition (two
// reads per partition and tick before the next-due heap: 2,560 commands
// a second at the default 200 ms). The rate, logged, is the figure in
// the package doc.
func TestIdleOwnerCallsRedisLittle(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	w := h.worker(func(c *Config) {
		c.TimerInterval = DefaultTimerInterval
		c.TimerSweep = DefaultTimerSweep // 30 s: the sweep's cost is computed, not waited for
	})
	var cc commandCounter
	w.rdb.AddHook(&cc)
	waitOwnsAll(t, w)
	// The first tick after owning sweeps every partition once; start
	// counting after it.
	require.Eventually(t, func() bool { return cc.n.Load() >= 2*protocol.DefaultPartitions },
		10*time.Second, 10*time.Millisecond, "the first sweep never ran: %d commands", cc.n.Load())
	time.Sleep(DefaultTimerInterval) // let the sweep's tick finish before the window opens
	from, start := cc.n.Load(), time.Now()
	const window = 3 * time.Second
	time.Sleep(window)
	got := float64(cc.n.Load()-from) / time.Since(start).Seconds()
	t.Logf("idle worker owning %d partitions: %.1f Redis commands/s (timer interval %v), plus %d per full sweep",
		protocol.DefaultPartitions, got, DefaultTimerInterval, 2*protocol.DefaultPartitions)
	if want := 20.0; got > want {
		t.Errorf("idle worker sent %.1f Redis commands/s, want at most %.0f", got, want)
	}
}

// TestReportedTimerFires: with a full sweep every 30 s, a timer that a
// step armed after the sweep (the answer timer, armed by the device's
// PUBACK, due within a second) still fires on time, because the step
// reported it.
func TestReportedTimerFires(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	w := h.worker(func(c *Config) { c.TimerSweep = DefaultTimerSweep })
	waitOwnsAll(t, w)
	env := h.send(spec{client: "app-1", device: "lamp-1", id: `1`, timeout: time.Second})
	h.waitStatus(env, protocol.StatusSent, 10*time.Second)
	h.deliver("lamp-1")
	h.waitStatus(env, protocol.StatusTimeout, 10*time.Second)
	require.Equal(t, protocol.CodeTimeout, gatewayCode(t, h.oneResult(env)))
}

// TestSweepFindsUnreportedTimer: a timer that no step reported (as when
// the process that armed it died before reporting) is found by the full
// sweep.
func TestSweepFindsUnreportedTimer(t *testing.T) {
	t.Parallel()
	h := newHarness(t)
	w := h.worker(func(c *Config) { c.TimerSweep = 500 * time.Millisecond })
	waitOwnsAll(t, w)
	// A member the fire step counts as malformed: what is tested is that
	// it is polled at all.
	p := h.store.PartitionOf("lamp-1")
	require.NoError(t, h.rdb.ZAdd(t.Context(), h.keys.Part(p).Timers(),
		redis.Z{Score: float64(time.Now().UnixMilli()), Member: "x|lamp-1|app-1|1"}).Err())
	require.Eventually(t, func() bool {
		return counterValue(w.mx.timerOutcomes.WithLabelValues("malformed")) >= 1
	}, 5*time.Second, 10*time.Millisecond, "the unreported timer was never fired")
}
