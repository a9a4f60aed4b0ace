package amqpx

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
)

func TestPublishPersistsWithProperties(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	p := newPublisher(t, opts, topo)
	if !p.Ready() {
		t.Fatal("Ready() = false after NewPublisher with RabbitMQ up")
	}
	before := time.Now().Add(-time.Second)
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	err := p.Publish(context.Background(), topo.CommandsExchange, protocol.RoutingCommand, []byte(`{"v":1}`),
		Headers{MessageID: "c1:42", CorrelationID: "corr-1", TraceParent: tp, Type: "command"})
	if err != nil {
		t.Fatalf("Publish = %v, want nil", err)
	}
	d := getOne(t, testenv.AMQP(t), topo.CommandsQueue)
	checks := []struct {
		name      string
		got, want any
	}{
		{"body", string(d.Body), `{"v":1}`},
		{"message id", d.MessageId, "c1:42"},
		{"correlation id", d.CorrelationId, "corr-1"},
		{"type", d.Type, "command"},
		{"traceparent", d.Headers["traceparent"], tp},
		{"content type", d.ContentType, "application/json"},
		{"delivery mode", d.DeliveryMode, amqp.Persistent},
		{"exchange", d.Exchange, topo.CommandsExchange},
		{"routing key", d.RoutingKey, protocol.RoutingCommand},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	if d.Timestamp.Before(before.Truncate(time.Second)) || d.Timestamp.After(time.Now().Add(time.Second)) {
		t.Errorf("timestamp = %v, want about now", d.Timestamp)
	}
}

func TestPublishUnroutableIsReturned(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	p := newPublisher(t, opts, topo)
	conn := testenv.AMQP(t)
	ch, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	unbound := topo.NS + ".unbound" // deleted with the namespace
	if err := ch.ExchangeDeclare(unbound, "direct", false, true, false, false, nil); err != nil {
		t.Fatal(err)
	}
	cases := []struct{ exchange, key string }{
		{unbound, "command"},                   // no queue bound at all
		{topo.CommandsExchange, "no-such-key"}, // bound, but not with this key
	}
	for _, c := range cases {
		// Several times and concurrently with routable publishes, so a
		// return is never attributed to the wrong publish.
		var wg sync.WaitGroup
		var wrong atomic.Int64
		for i := range 20 {
			wg.Add(2)
			go func() {
				defer wg.Done()
				err := p.Publish(context.Background(), c.exchange, c.key, []byte("x"), Headers{MessageID: fmt.Sprint("u", i)})
				var e *Error
				if !errors.Is(err, ErrReturned) || !errors.As(err, &e) || e.Reason != "returned" || !e.Recover {
					t.Errorf("Publish(%s, %s) = %v, want *Error wrapping ErrReturned", c.exchange, c.key, err)
					wrong.Add(1)
				}
			}()
			go func() {
				defer wg.Done()
				if err := p.Publish(context.Background(), topo.CommandsExchange, protocol.RoutingCommand, []byte("ok"), Headers{}); err != nil {
					t.Errorf("routable Publish = %v, want nil", err)
				}
			}()
		}
		wg.Wait()
	}
	if n := depth(t, conn, topo.CommandsQueue); n != 40 {
		t.Errorf("commands queue holds %d, want 40", n)
	}
}

func TestPublishToMissingExchangeRecovers(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	opts.Channels = 1
	p := newPublisher(t, opts, topo)
	err := p.Publish(context.Background(), topo.NS+".missing", "k", []byte("x"), Headers{})
	if !errors.Is(err, ErrChannelClosed) {
		t.Fatalf("Publish to a missing exchange = %v, want ErrChannelClosed", err)
	}
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.NotFound {
		t.Errorf("Publish to a missing exchange = %v, want the broker's NOT_FOUND inside", err)
	}
	// The pool replaces the closed channel.
	eventually(t, 5*time.Second, "publish after channel replacement", func() bool {
		return p.Publish(context.Background(), topo.CommandsExchange, protocol.RoutingCommand, []byte("x"), Headers{}) == nil
	})
}

func TestPublishFailsFastWhenUnreachable(t *testing.T) {
	t.Parallel()
	opts := Options{
		URL:            fmt.Sprintf("amqp://guest:guest@%s/", testenv.FreeAddr(t)), // nothing listens
		ConfirmTimeout: 5 * time.Second,
		Logger:         testenv.Logger(t),
	}
	start := time.Now()
	p, err := NewPublisher(context.Background(), opts, protocol.NewTopology("gwt-unreachable"))
	if err != nil {
		t.Fatalf("NewPublisher with RabbitMQ down = %v, want nil", err)
	}
	defer p.Close()
	if p.Ready() {
		t.Error("Ready() = true without a broker")
	}
	for range 3 {
		t0 := time.Now()
		err := p.Publish(context.Background(), "x", "y", []byte("z"), Headers{})
		took := time.Since(t0)
		var e *Error
		if !errors.Is(err, ErrNotConnected) || !errors.As(err, &e) || !e.Recover {
			t.Fatalf("Publish = %v, want *Error wrapping ErrNotConnected", err)
		}
		if took > 50*time.Millisecond {
			t.Errorf("Publish took %v, want fast failure", took)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("NewPublisher and 3 publishes took %v", took)
	}
	t0 := time.Now()
	if err := p.Close(); err != nil {
		t.Errorf("Close = %v", err)
	}
	if took := time.Since(t0); took > time.Second {
		t.Errorf("Close took %v", took)
	}
	if err := p.Publish(context.Background(), "x", "y", nil, Headers{}); !errors.Is(err, ErrClosed) {
		t.Errorf("Publish after Close = %v, want ErrClosed", err)
	}
}

func TestNewPublisherBadURL(t *testing.T) {
	_, err := NewPublisher(context.Background(), Options{URL: "http://nope"}, protocol.NewTopology("x"))
	if err == nil {
		t.Fatal("NewPublisher with a non-AMQP URL: err = nil")
	}
}

func TestPublishFailsFastWhenBlocked(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	p := newPublisher(t, opts, topo)
	// A real connection.blocked needs a broker-wide alarm, which would
	// disturb every other test; set the flag the NotifyBlocked reader sets.
	p.sess.Load().blocked.Store(true)
	if p.Ready() {
		t.Error("Ready() = true while blocked")
	}
	t0 := time.Now()
	err := p.Publish(context.Background(), topo.CommandsExchange, protocol.RoutingCommand, []byte("x"), Headers{})
	if !errors.Is(err, ErrBlocked) || time.Since(t0) > 50*time.Millisecond {
		t.Fatalf("Publish while blocked = %v after %v, want ErrBlocked at once", err, time.Since(t0))
	}
	p.sess.Load().blocked.Store(false)
	publish(t, p, topo, "after-unblock", "{}")
}

func TestPublishRespectsContext(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	p := newPublisher(t, opts, topo)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := p.Publish(ctx, topo.CommandsExchange, protocol.RoutingCommand, []byte("x"), Headers{})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Publish with a cancelled ctx = %v, want context.Canceled", err)
	}
}

func TestPublishConcurrent(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	p := newPublisher(t, opts, topo)
	const workers, each = 64, 200
	body := []byte(`{"v":1,"client":"c","device":"d","payload":{"jsonrpc":"2.0","method":"reboot","id":1}}`)
	var failed atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				err := p.Publish(context.Background(), topo.CommandsExchange, protocol.RoutingCommand, body,
					Headers{MessageID: fmt.Sprintf("w%d-%d", w, i)})
				if err != nil {
					if failed.Add(1) < 5 {
						t.Errorf("Publish = %v", err)
					}
				}
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	t.Logf("%d confirmed publishes from %d goroutines in %v: %.0f/s", workers*each, workers, took, float64(workers*each)/took.Seconds())
	if n := failed.Load(); n > 0 {
		t.Fatalf("%d publishes failed", n)
	}
	conn := testenv.AMQP(t)
	eventually(t, 5*time.Second, "all messages in the queue", func() bool { return depth(t, conn, topo.CommandsQueue) == workers*each })
}

func TestPublisherRecoversAfterForcedClose(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	opts.Name += "-pub"
	p := newPublisher(t, opts, topo)
	publish(t, p, topo, "before", "{}")
	old := p.sess.Load()
	forceClose(t, opts.Name)
	eventually(t, 10*time.Second, "publisher reconnects", func() bool {
		s := p.sess.Load()
		return s != nil && s != old && p.Ready()
	})
	publish(t, p, topo, "after", "{}")
	conn := testenv.AMQP(t)
	if n := depth(t, conn, topo.CommandsQueue); n != 2 {
		t.Errorf("commands queue holds %d, want 2", n)
	}
}
