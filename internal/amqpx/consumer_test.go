package amqpx

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
)

// calls records handler calls by message ID.
type calls struct {
	mu  sync.Mutex
	got map[string][]Delivery
}

func (c *calls) add(d Delivery) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.got == nil {
		c.got = map[string][]Delivery{}
	}
	c.got[d.MessageID] = append(c.got[d.MessageID], d)
	return len(c.got[d.MessageID])
}

func (c *calls) of(id string) []Delivery {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]Delivery(nil), c.got[id]...)
}

func TestConsumerAckOnNil(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	p := newPublisher(t, opts, topo)
	var rec calls
	c := NewConsumer(opts, topo, ConsumerOptions{Queue: topo.CommandQueue(0), Prefetch: 8}, func(ctx context.Context, d Delivery) error {
		rec.add(d)
		return nil
	})
	stop := startConsumer(t, c)
	for i := range 20 {
		publish(t, p, topo, fmt.Sprint("m", i), "{}")
	}
	conn := testenv.AMQP(t)
	eventually(t, 10*time.Second, "20 handled", func() bool { return len(rec.of("m19")) == 1 && depth(t, conn, topo.CommandQueue(0)) == 0 })
	// Stop the consumer: every handler call has returned, and a delivery
	// left unacked would be back in the queue, so the counts below are
	// final and no redelivery can follow them.
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if d := depth(t, conn, topo.CommandQueue(0)); d != 0 {
		t.Fatalf("%d messages back in the queue after the consumer stopped, want 0: they were not acked", d)
	}
	for i := range 20 {
		id := fmt.Sprint("m", i)
		got := rec.of(id)
		if len(got) != 1 {
			t.Fatalf("%s handled %d times, want 1", id, len(got))
		}
		if d := got[0]; d.DeliveryCount != 0 || d.Redelivered || string(d.Body) != "{}" || d.Exchange != topo.CommandsExchange || d.RoutingKey != commandKey {
			t.Errorf("delivery = %+v", d)
		}
	}
	if c.Inflight() != 0 {
		t.Errorf("Inflight() = %d, want 0", c.Inflight())
	}
}

func TestConsumerRedeliversOnError(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	p := newPublisher(t, opts, topo)
	var rec calls
	c := NewConsumer(opts, topo, ConsumerOptions{Queue: topo.CommandQueue(0)}, func(ctx context.Context, d Delivery) error {
		if rec.add(d) == 1 {
			return errors.New("boom")
		}
		return nil
	})
	startConsumer(t, c)
	publish(t, p, topo, "r1", "{}")
	eventually(t, 10*time.Second, "redelivered", func() bool { return len(rec.of("r1")) == 2 })
	got := rec.of("r1")
	if got[1].DeliveryCount != 1 || !got[1].Redelivered {
		t.Errorf("second delivery: count %d redelivered %v, want 1, true", got[1].DeliveryCount, got[1].Redelivered)
	}
}

func TestConsumerRejectDeadLettersAtOnce(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	p := newPublisher(t, opts, topo)
	var rec calls
	c := NewConsumer(opts, topo, ConsumerOptions{Queue: topo.CommandQueue(0)}, func(ctx context.Context, d Delivery) error {
		rec.add(d)
		return fmt.Errorf("bad envelope: %w", ErrReject)
	})
	startConsumer(t, c)
	publish(t, p, topo, "poison", `{"bad":true}`)
	d := getOne(t, testenv.AMQP(t), topo.CommandsDeadQueue)
	if d.MessageId != "poison" || string(d.Body) != `{"bad":true}` {
		t.Errorf("dead letter = %q %q", d.MessageId, d.Body)
	}
	if n := len(rec.of("poison")); n != 1 {
		t.Errorf("handled %d times, want 1", n)
	}
}

func TestConsumerDeliveryLimitDeadLetters(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	p := newPublisher(t, opts, topo)
	var rec calls
	c := NewConsumer(opts, topo, ConsumerOptions{Queue: topo.CommandQueue(0)}, func(ctx context.Context, d Delivery) error {
		rec.add(d)
		return errors.New("always fails")
	})
	startConsumer(t, c)
	publish(t, p, topo, "loop", "{}")
	d := getOne(t, testenv.AMQP(t), topo.CommandsDeadQueue)
	if d.MessageId != "loop" {
		t.Errorf("dead letter %q, want loop", d.MessageId)
	}
	got := rec.of("loop")
	if len(got) != protocol.DeliveryLimit+1 {
		t.Errorf("handled %d times, want %d (the first delivery plus DeliveryLimit redeliveries)", len(got), protocol.DeliveryLimit+1)
	}
	for i, d := range got {
		if d.DeliveryCount != i {
			t.Errorf("delivery %d: DeliveryCount %d, want %d", i, d.DeliveryCount, i)
		}
	}
}

func TestConsumerTransientHoldsWithoutBurningDeliveryLimit(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	p := newPublisher(t, opts, topo)
	var rec calls
	var down atomic.Bool // "Redis" is down
	down.Store(true)
	var heldCalls atomic.Int64
	c := NewConsumer(opts, topo, ConsumerOptions{Queue: topo.CommandQueue(0), Prefetch: 16, Concurrency: 4}, func(ctx context.Context, d Delivery) error {
		rec.add(d)
		if down.Load() {
			heldCalls.Add(1)
			return fmt.Errorf("redis: connection refused: %w", ErrTransient)
		}
		return nil
	})
	startConsumer(t, c)
	publish(t, p, topo, "t0", "{}")
	// Far more retries than the delivery limit allows.
	eventually(t, 10*time.Second, "retried in place", func() bool { return len(rec.of("t0")) >= protocol.DeliveryLimit+3 })
	// While held, the consumer takes no new work: it retries t0 several
	// more times after the new messages are in the queue (publish waits
	// for the confirm) without handling any of them.
	for i := range 5 {
		publish(t, p, topo, fmt.Sprint("n", i), "{}")
	}
	retried := len(rec.of("t0"))
	eventually(t, 10*time.Second, "t0 retried after the publishes", func() bool { return len(rec.of("t0")) >= retried+3 })
	for i := range 5 {
		if n := len(rec.of(fmt.Sprint("n", i))); n != 0 {
			t.Errorf("n%d handled %d times while the consumer was paused", i, n)
		}
	}
	down.Store(false)
	eventually(t, 10*time.Second, "all handled after recovery", func() bool {
		for i := range 5 {
			if len(rec.of(fmt.Sprint("n", i))) != 1 {
				return false
			}
		}
		return true
	})
	for _, d := range rec.of("t0") {
		if d.DeliveryCount != 0 {
			t.Fatalf("held delivery has DeliveryCount %d, want 0 (never returned to the queue)", d.DeliveryCount)
		}
	}
	conn := testenv.AMQP(t)
	eventually(t, 5*time.Second, "queues empty", func() bool {
		return depth(t, conn, topo.CommandQueue(0)) == 0 && depth(t, conn, topo.CommandsDeadQueue) == 0
	})
	t.Logf("%d handler calls returned ErrTransient", heldCalls.Load())
}

func TestConsumerTransientReleasedAtShutdown(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	p := newPublisher(t, opts, topo)
	var rec calls
	c := NewConsumer(opts, topo, ConsumerOptions{Queue: topo.CommandQueue(0)}, func(ctx context.Context, d Delivery) error {
		rec.add(d)
		return ErrTransient
	})
	stop := startConsumer(t, c)
	publish(t, p, topo, "h", "{}")
	eventually(t, 10*time.Second, "held", func() bool { return len(rec.of("h")) >= 2 })
	t0 := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if took := time.Since(t0); took > 2*time.Second {
		t.Errorf("Run took %v to return", took)
	}
	// Back in the queue, counted once.
	d := getOne(t, testenv.AMQP(t), topo.CommandQueue(0))
	if n, _ := headerUint(d.Headers["x-delivery-count"]); d.MessageId != "h" || n != 1 {
		t.Errorf("requeued %q with x-delivery-count %d, want h, 1", d.MessageId, n)
	}
}

func TestConsumerResumesAfterForcedClose(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	p := newPublisher(t, opts, topo)
	var rec calls
	copts := opts
	copts.Name += "-consumer"
	c := NewConsumer(copts, topo, ConsumerOptions{Queue: topo.CommandQueue(0)}, func(ctx context.Context, d Delivery) error {
		rec.add(d)
		return nil
	})
	startConsumer(t, c)
	publish(t, p, topo, "before", "{}")
	eventually(t, 10*time.Second, "first handled", func() bool { return len(rec.of("before")) == 1 })
	forceClose(t, copts.Name)
	eventually(t, 10*time.Second, "reconnected", func() bool { return c.Reconnects() >= 1 })
	publish(t, p, topo, "after", "{}")
	eventually(t, 10*time.Second, "handled after reconnect", func() bool { return len(rec.of("after")) == 1 })
}

func TestConsumerGracefulShutdownWaitsForHandler(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	p := newPublisher(t, opts, topo)
	started := make(chan struct{})
	var finished atomic.Bool
	c := NewConsumer(opts, topo, ConsumerOptions{Queue: topo.CommandQueue(0)}, func(ctx context.Context, d Delivery) error {
		close(started)
		select {
		case <-time.After(700 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
		finished.Store(true)
		return nil
	})
	stop := startConsumer(t, c)
	publish(t, p, topo, "slow", "{}")
	<-started
	t0 := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if !finished.Load() {
		t.Fatalf("Run returned after %v, before the in-flight handler finished", time.Since(t0))
	}
	// A quorum queue reports its consumer count from the Raft state,
	// which may trail the cancel-ok by a moment: wait for the consumer to
	// be gone. Only then does Messages tell an ack from an unacked
	// delivery, which would be back in the queue.
	conn := testenv.AMQP(t)
	var qi QueueInfo
	eventually(t, 10*time.Second, "consumer gone after shutdown", func() bool {
		m, err := QueueDepth(context.Background(), conn, topo.CommandQueue(0))
		if err != nil {
			t.Fatal(err)
		}
		qi = m[topo.CommandQueue(0)]
		return qi.Consumers == 0
	})
	if qi.Messages != 0 {
		t.Errorf("after shutdown: %+v, want the message acked (0 messages)", qi)
	}
}

func TestConsumerShutdownTimeoutCancelsHandler(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	p := newPublisher(t, opts, topo)
	started := make(chan struct{})
	c := NewConsumer(opts, topo, ConsumerOptions{Queue: topo.CommandQueue(0), ShutdownTimeout: 300 * time.Millisecond},
		func(ctx context.Context, d Delivery) error {
			close(started)
			<-ctx.Done() // a handler stuck until told to stop
			return ctx.Err()
		})
	stop := startConsumer(t, c)
	publish(t, p, topo, "stuck", "{}")
	<-started
	t0 := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if took := time.Since(t0); took < 300*time.Millisecond || took > 2*time.Second {
		t.Errorf("Run returned after %v, want about ShutdownTimeout", took)
	}
	// The unfinished delivery went back to the queue.
	if d := getOne(t, testenv.AMQP(t), topo.CommandQueue(0)); d.MessageId != "stuck" {
		t.Errorf("requeued %q, want stuck", d.MessageId)
	}
}

func TestConsumerRecoversHandlerPanic(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	p := newPublisher(t, opts, topo)
	var rec calls
	c := NewConsumer(opts, topo, ConsumerOptions{Queue: topo.CommandQueue(0)}, func(ctx context.Context, d Delivery) error {
		if rec.add(d) == 1 {
			panic("handler bug")
		}
		return nil
	})
	startConsumer(t, c)
	publish(t, p, topo, "p", "{}")
	eventually(t, 10*time.Second, "redelivered after panic", func() bool { return len(rec.of("p")) == 2 })
}

func TestConsumerBadOptions(t *testing.T) {
	c := NewConsumer(Options{}, protocol.NewTopology("x", 1, 1), ConsumerOptions{}, func(context.Context, Delivery) error { return nil })
	if err := c.Run(context.Background()); err == nil {
		t.Fatal("Run without a queue: err = nil")
	}
}

func TestConsumerUnreachableStopsOnCancel(t *testing.T) {
	t.Parallel()
	opts := Options{URL: fmt.Sprintf("amqp://guest:guest@%s/", testenv.FreeAddr(t)), Logger: testenv.Logger(t)}
	c := NewConsumer(opts, protocol.NewTopology("gwt-unreachable", 1, 1), ConsumerOptions{Queue: "q"}, func(context.Context, Delivery) error { return nil })
	stop := startConsumer(t, c)
	time.Sleep(300 * time.Millisecond) // a few failed attempts
	t0 := time.Now()
	if err := stop(); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if took := time.Since(t0); took > time.Second {
		t.Errorf("Run took %v to return after cancel", took)
	}
}
