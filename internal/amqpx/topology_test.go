package amqpx

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/iotgw/gateway/internal/testenv"
)

func TestDeclareIdempotentAcrossConnections(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t) // declares once
	// Twice more, from two other connections, as other processes would.
	for i := range 2 {
		conn, err := Dial(context.Background(), opts)
		if err != nil {
			t.Fatalf("Dial: %v", err)
		}
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		if err := Declare(ch, topo); err != nil {
			t.Fatalf("Declare #%d from a new connection = %v, want nil", i+2, err)
		}
		_ = conn.Close()
	}

	// Passive declares: all queues exist, empty, no consumers.
	conn := testenv.AMQP(t)
	m, err := QueueDepth(context.Background(), conn, topo.Queues()...)
	if err != nil {
		t.Fatalf("QueueDepth: %v", err)
	}
	for _, q := range topo.Queues() {
		if qi, ok := m[q]; !ok || qi != (QueueInfo{}) {
			t.Errorf("QueueDepth[%s] = %+v, %v; want empty, present", q, qi, ok)
		}
	}

	// The management API shows quorum queues with exactly our arguments.
	for _, b := range topo.Bindings() {
		var q struct {
			Type      string         `json:"type"`
			Durable   bool           `json:"durable"`
			Arguments map[string]any `json:"arguments"`
		}
		if err := mgmt(context.Background(), http.MethodGet, "/api/queues/%2F/"+url.PathEscape(b.Queue), &q); err != nil {
			t.Fatalf("cannot read queue %s: %v", b.Queue, err)
		}
		if q.Type != "quorum" || !q.Durable {
			t.Errorf("queue %s: type %q durable %v, want quorum, durable", b.Queue, q.Type, q.Durable)
		}
		if len(q.Arguments) != len(b.Args) {
			t.Errorf("queue %s: arguments %v, want %v", b.Queue, q.Arguments, b.Args)
		}
		for k, want := range b.Args {
			got := q.Arguments[k]
			if f, ok := got.(float64); ok { // JSON numbers
				if f != float64(want.(int32)) {
					t.Errorf("queue %s: %s = %v, want %v", b.Queue, k, got, want)
				}
				continue
			}
			if got != want {
				t.Errorf("queue %s: %s = %v, want %v", b.Queue, k, got, want)
			}
		}
	}
}

func TestDeclareDifferentArgsFails(t *testing.T) {
	t.Parallel()
	topo, _ := setup(t)
	ch, err := testenv.AMQP(t).Channel()
	if err != nil {
		t.Fatal(err)
	}
	_, err = ch.QueueDeclare(topo.CommandsQueue, true, false, false, false, amqp.Table{"x-queue-type": "quorum", "x-delivery-limit": int32(7)})
	var ae *amqp.Error
	if !errors.As(err, &ae) || ae.Code != amqp.PreconditionFailed {
		t.Fatalf("redeclare with another delivery limit = %v, want PRECONDITION_FAILED (the check Declare relies on)", err)
	}
}

func TestQueueDepthMissingQueue(t *testing.T) {
	t.Parallel()
	topo, _ := setup(t)
	conn := testenv.AMQP(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	m, err := QueueDepth(ctx, conn, topo.NS+".nope", topo.CommandsQueue)
	if err == nil {
		t.Fatal("QueueDepth of a missing queue: err = nil, want an error")
	}
	if _, ok := m[topo.CommandsQueue]; !ok || len(m) != 1 {
		t.Fatalf("QueueDepth = %v, want just %s", m, topo.CommandsQueue)
	}
}

// TestBrokerCountsEveryReturn records what ErrTransient's design rests on:
// RabbitMQ 3.10 quorum queues add one to x-delivery-count for every return
// of a delivered message (nack or reject with requeue, channel close,
// connection close), while a cancelled consumer keeps its unacked messages
// until they are settled. (From RabbitMQ 4.3 a basic.nack no longer counts;
// the test then fails and the design can be revisited.)
func TestBrokerCountsEveryReturn(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	p := newPublisher(t, opts, topo)
	conn := testenv.AMQP(t)
	count := func(d amqp.Delivery) int {
		n, _ := headerUint(d.Headers["x-delivery-count"])
		return int(n)
	}
	get := func(ch *amqp.Channel) amqp.Delivery {
		t.Helper()
		for range 500 {
			d, ok, err := ch.Get(topo.CommandsQueue, false)
			if err != nil {
				t.Fatal(err)
			}
			if ok {
				return d
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatal("no message")
		return amqp.Delivery{}
	}
	publish(t, p, topo, "m1", "{}")
	ch1, _ := conn.Channel()
	d := get(ch1)
	if c := count(d); c != 0 {
		t.Fatalf("first delivery: count %d, want 0", c)
	}
	_ = d.Nack(false, true)
	if d = get(ch1); count(d) != 1 {
		t.Fatalf("after nack(requeue): count %d, want 1", count(d))
	}
	_ = ch1.Close()
	ch2, _ := conn.Channel()
	if d = get(ch2); count(d) != 2 {
		t.Fatalf("after channel close: count %d, want 2", count(d))
	}
	_ = ch2.Qos(1, 0, false)
	_ = d.Nack(false, true)
	ds, err := ch2.Consume(topo.CommandsQueue, "probe", false, false, false, false, nil)
	if err != nil {
		t.Fatal(err)
	}
	d = <-ds
	if count(d) != 3 {
		t.Fatalf("consume after nack: count %d, want 3", count(d))
	}
	if err := ch2.Cancel("probe", false); err != nil {
		t.Fatal(err)
	}
	if err := d.Nack(false, true); err != nil { // still ours after cancel
		t.Fatalf("nack after basic.cancel: %v", err)
	}
	if d = get(ch2); count(d) != 4 {
		t.Fatalf("after cancel and nack: count %d, want 4", count(d))
	}
	_ = d.Ack(false)

	publish(t, p, topo, "m2", "{}")
	other, err := Dial(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	ch3, _ := other.Channel()
	if d = get(ch3); d.MessageId != "m2" || count(d) != 0 {
		t.Fatalf("m2: %q count %d", d.MessageId, count(d))
	}
	_ = other.Close()
	if d = get(ch2); count(d) != 1 {
		t.Fatalf("after connection close: count %d, want 1", count(d))
	}
}
