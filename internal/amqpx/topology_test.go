package amqpx

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
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
	_, err = ch.QueueDeclare(topo.CommandQueue(0), true, false, false, false, amqp.Table{"x-queue-type": "quorum", "x-delivery-limit": int32(7)})
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
	m, err := QueueDepth(ctx, conn, topo.NS+".nope", topo.CommandQueue(0))
	if err == nil {
		t.Fatal("QueueDepth of a missing queue: err = nil, want an error")
	}
	if _, ok := m[topo.CommandQueue(0)]; !ok || len(m) != 1 {
		t.Fatalf("QueueDepth = %v, want just %s", m, topo.CommandQueue(0))
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
			d, ok, err := ch.Get(topo.CommandQueue(0), false)
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
	ds, err := ch2.Consume(topo.CommandQueue(0), "probe", false, false, false, false, nil)
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

// TestPartitionedCommandQueues declares a namespace with four command
// queues on the real RabbitMQ: each exists with the leader locator, the
// fence holds the counts, a command for device d lands in queue
// CommandQueueOf(d), and a second declaration with other counts fails,
// naming both, before it creates anything.
func TestPartitionedCommandQueues(t *testing.T) {
	t.Parallel()
	testenv.RequireServices(t)
	ns := testenv.Namespace(t)
	topo := protocol.NewTopology(ns, 4, 256)
	dropQueues(t, topo)
	dropQueues(t, protocol.NewTopology(ns, 8, 256)) // in case the fence fails open
	conn := testenv.AMQP(t)
	withChannel := func(f func(ch *amqp.Channel) error) error {
		t.Helper()
		ch, err := conn.Channel()
		if err != nil {
			t.Fatalf("cannot open channel: %v", err)
		}
		defer ch.Close()
		return f(ch)
	}
	if err := withChannel(func(ch *amqp.Channel) error { return Declare(ch, topo) }); err != nil {
		t.Fatalf("Declare(4 queues, 256 partitions) = %v", err)
	}

	// Four command queues, and the fence.
	want := append(topo.Queues(), topo.FenceQueue)
	m, err := QueueDepth(context.Background(), conn, want...)
	if err != nil || len(m) != len(want) {
		t.Fatalf("QueueDepth(%v) = %v, %v; want every queue", want, m, err)
	}
	if got := topo.CommandQueues(); len(got) != 4 || got[3] != ns+".commands.3" {
		t.Fatalf("CommandQueues() = %v", got)
	}

	// The arguments RabbitMQ compares are what Bindings and FenceArgs
	// say: the same declaration passes, any other value of the leader
	// locator or of the fence's key is refused (PRECONDITION_FAILED).
	redeclare := func(queue string, args map[string]any) error {
		return withChannel(func(ch *amqp.Channel) error {
			_, err := ch.QueueDeclare(queue, true, false, false, false, amqp.Table(args))
			return err
		})
	}
	precondition := func(err error) bool {
		var ae *amqp.Error
		return errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed
	}
	cmdQueues := 0
	for _, b := range topo.Bindings() {
		if b.Queue == topo.CommandsDeadQueue {
			continue
		}
		cmdQueues++
		if b.Args["x-queue-leader-locator"] != "balanced" {
			t.Fatalf("binding of %s: no leader locator in %v", b.Queue, b.Args)
		}
		if err := redeclare(b.Queue, b.Args); err != nil {
			t.Errorf("redeclare %s with its arguments: %v", b.Queue, err)
		}
		other := maps.Clone(b.Args)
		other["x-queue-leader-locator"] = "client-local"
		if err := redeclare(b.Queue, other); !precondition(err) || !strings.Contains(err.Error(), "x-queue-leader-locator") {
			t.Errorf("redeclare %s with another leader locator = %v, want PRECONDITION_FAILED on x-queue-leader-locator (the queue has balanced)", b.Queue, err)
		}
	}
	if cmdQueues != 4 {
		t.Errorf("Bindings() has %d command queues, want 4", cmdQueues)
	}
	if err := redeclare(topo.FenceQueue, topo.FenceArgs()); err != nil {
		t.Errorf("redeclare the fence with its arguments: %v", err)
	}

	// A command for device d goes to queue CommandQueueOf(d).
	p := newPublisher(t, Options{URL: testenv.AMQPURL(), Name: ns, Logger: testenv.Logger(t)}, topo)
	wantIn := map[int][]string{}
	for i := range 24 {
		device := fmt.Sprintf("dev-%d", i)
		exchange, key := topo.DeviceRoute(device)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err := p.Publish(ctx, exchange, key, []byte(`{}`), Headers{MessageID: device})
		cancel()
		if err != nil {
			t.Fatalf("Publish for %s: %v", device, err)
		}
		q := topo.CommandQueueOf(device, topo.PartitionCount)
		wantIn[q] = append(wantIn[q], device)
	}
	if len(wantIn) < 2 {
		t.Fatalf("24 devices all in one queue: %v", wantIn)
	}
	for q := range topo.QueueCount {
		var got []string
		for range wantIn[q] {
			got = append(got, getOne(t, conn, topo.CommandQueue(q)).MessageId)
		}
		if n := depth(t, conn, topo.CommandQueue(q)); n != 0 {
			t.Errorf("queue %d holds %d more messages than its devices sent", q, n)
		}
		slices.Sort(got)
		slices.Sort(wantIn[q])
		if !slices.Equal(got, wantIn[q]) {
			t.Errorf("queue %s has the commands of %v, want %v", topo.CommandQueue(q), got, wantIn[q])
		}
	}

	// Other counts: refused by the fence, with both counts named, and
	// nothing of the other topology created.
	for _, other := range []protocol.Topology{protocol.NewTopology(ns, 8, 256), protocol.NewTopology(ns, 4, 128), protocol.NewTopology(ns, 1, 1)} {
		err := withChannel(func(ch *amqp.Channel) error { return Declare(ch, other) })
		var e *Error
		if !errors.Is(err, ErrCounts) || !errors.As(err, &e) || e.Recover {
			t.Fatalf("Declare(%d queues, %d partitions) = %v, want an unrecoverable *Error wrapping ErrCounts", other.QueueCount, other.PartitionCount, err)
		}
		for _, s := range []string{
			"GW_QUEUES=4 and GW_PARTITIONS=256",
			fmt.Sprintf("GW_QUEUES=%d and GW_PARTITIONS=%d", other.QueueCount, other.PartitionCount),
			topo.FenceQueue,
		} {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("Declare(%d, %d) = %q, want it to name %q", other.QueueCount, other.PartitionCount, err, s)
			}
		}
	}
	if _, err := QueueDepth(context.Background(), conn, ns+".commands.4"); err == nil {
		t.Errorf("the refused declaration of 8 queues created %s.commands.4", ns)
	}

	// The services' entry points refuse to start with other counts.
	other := protocol.NewTopology(ns, 8, 256)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := NewPublisher(ctx, Options{URL: testenv.AMQPURL(), Logger: testenv.Logger(t)}, other); !errors.Is(err, ErrCounts) {
		t.Errorf("NewPublisher with 8 queues = %v, want ErrCounts", err)
	}
	c := NewConsumer(Options{URL: testenv.AMQPURL(), Logger: testenv.Logger(t)}, other, ConsumerOptions{Queue: other.CommandQueue(0)},
		func(context.Context, Delivery) error { return nil })
	if err := c.Run(ctx); !errors.Is(err, ErrCounts) {
		t.Errorf("Consumer.Run with 8 queues = %v, want ErrCounts", err)
	}
}

// TestDeclareBadCounts: counts out of range are refused before anything
// is declared.
func TestDeclareBadCounts(t *testing.T) {
	for _, topo := range []protocol.Topology{
		protocol.NewTopology("gwt-bad", 0, 256),
		protocol.NewTopology("gwt-bad", 4, 100),
		protocol.NewTopology("", 4, 256),
	} {
		if err := Declare(nil, topo); err == nil { // nil channel: must not be used
			t.Errorf("Declare(%+v) = nil, want an error", topo)
		}
		if _, err := NewPublisher(context.Background(), Options{}, topo); err == nil {
			t.Errorf("NewPublisher(%+v) = nil error", topo)
		}
		c := NewConsumer(Options{}, topo, ConsumerOptions{Queue: "q"}, func(context.Context, Delivery) error { return nil })
		if err := c.Run(context.Background()); err == nil {
			t.Errorf("Consumer.Run(%+v) = nil", topo)
		}
	}
}

// TestCountsErrorReasons reads both forms of RabbitMQ's reason for an
// inequivalent argument.
func TestCountsErrorReasons(t *testing.T) {
	topo := protocol.NewTopology("gw", 8, 256)
	for _, reason := range []string{
		"PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-routing-key' for queue 'gw.fence' in vhost '/': received 'queues=8,partitions=256' but current is 'queues=4,partitions=128'",
		"PRECONDITION_FAILED - inequivalent arg 'x-dead-letter-routing-key' for queue 'gw.fence' in vhost '/': received the value 'queues=8,partitions=256' of type 'longstr' but current is the value 'queues=4,partitions=128' of type 'longstr'",
	} {
		err := countsError(topo, reason)
		want := "amqpx: declare: counts differ: refused by the namespace's fence: namespace gw was set up with GW_QUEUES=4 and GW_PARTITIONS=128 (kept by the queue gw.fence), this process has GW_QUEUES=8 and GW_PARTITIONS=256"
		if !errors.Is(err, ErrCounts) || !strings.HasPrefix(err.Error(), want) {
			t.Errorf("countsError(%q) = %q, want %q…", reason, err, want)
		}
	}
	// An unknown form still names this process's counts and RabbitMQ's words.
	err := countsError(topo, "PRECONDITION_FAILED - something else")
	if !errors.Is(err, ErrCounts) || !strings.Contains(err.Error(), "GW_QUEUES=8 and GW_PARTITIONS=256") || !strings.Contains(err.Error(), "something else") {
		t.Errorf("countsError(unknown) = %q", err)
	}
}

// TestDeclareResize: a topology resizing from 2 to 4 queues is accepted
// by a fence that holds 2 (and declares the union of the queues) and by
// one that holds 4, not by one that holds 8; MoveFence makes the fence
// hold 4, after which a plain 2 is refused.
func TestDeclareResize(t *testing.T) {
	t.Parallel()
	testenv.RequireServices(t)
	ns := testenv.Namespace(t)
	two, resizing := protocol.NewTopology(ns, 2, 256), protocol.NewResizeTopology(ns, 2, 4, 256)
	dropQueues(t, resizing)
	conn := testenv.AMQP(t)
	declare := func(topo protocol.Topology) error {
		t.Helper()
		ch, err := DeclareConn(conn, topo)
		if err == nil {
			_ = ch.Close()
		}
		return err
	}
	if err := declare(two); err != nil {
		t.Fatalf("DeclareConn(2 queues) = %v", err)
	}
	if err := declare(resizing); err != nil {
		t.Fatalf("DeclareConn(2 → 4 queues) on a fence of 2 = %v, want nil", err)
	}
	if m, err := QueueDepth(context.Background(), conn, resizing.CommandQueues()...); err != nil || len(m) != 4 {
		t.Fatalf("QueueDepth(the union) = %v, %v; want 4 queues", m, err)
	}
	if err := declare(protocol.NewResizeTopology(ns, 8, 4, 256)); !errors.Is(err, ErrCounts) {
		t.Errorf("DeclareConn(8 → 4 queues) on a fence of 2 = %v, want ErrCounts", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := MoveFence(ctx, Options{URL: testenv.AMQPURL(), Logger: testenv.Logger(t)}, resizing.WithQueues(4)); err != nil {
		t.Fatalf("MoveFence(4) = %v", err)
	}
	for _, tt := range []struct {
		topo protocol.Topology
		ok   bool
	}{{two, false}, {resizing, true}, {resizing.WithQueues(4), true}} {
		if err := declare(tt.topo); (err == nil) != tt.ok {
			t.Errorf("DeclareConn(%d from %d) after the move = %v, want ok %v", tt.topo.QueueCount, tt.topo.ResizeFrom, err, tt.ok)
		}
	}
}
