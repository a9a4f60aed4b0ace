package amqpx

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/iotgw/gateway/protocol"
)

// Declare declares the namespace's topology on ch: every exchange of
// topo.Exchanges() durable and of kind protocol.ExchangeKind, then the
// fence queue (topo.FenceQueue with topo.FenceArgs()), then every queue of
// topo.Bindings() durable with exactly its arguments (quorum queues with
// the delivery limit and dead-lettering; the command queues with the
// leader locator), and each queue's binding. Dead letter queues come
// first, so a main queue's dead-letter target exists.
//
// Every process calls it identically, on every (re)connect; declaring an
// existing topology again is a no-op. A declaration that differs from what
// exists closes ch with PRECONDITION_FAILED, which Declare returns.
//
// The fence comes before any queue, so a process whose counts
// (topo.QueueCount, topo.PartitionCount) differ from those the namespace
// was first declared with creates nothing: Declare returns an [*Error]
// wrapping [ErrCounts], with Recover false, that names both counts of
// both sides. Counts out of range (protocol.CheckQueues,
// protocol.CheckPartitions) are refused the same way before anything is
// declared.
func Declare(ch *amqp.Channel, topo protocol.Topology) error {
	if err := checkTopology(topo); err != nil {
		return err
	}
	for _, ex := range topo.Exchanges() {
		if err := ch.ExchangeDeclare(ex, protocol.ExchangeKind, true, false, false, false, nil); err != nil {
			return fmt.Errorf("cannot declare exchange %s: %w", ex, err)
		}
	}
	if _, err := ch.QueueDeclare(topo.FenceQueue, true, false, false, false, amqp.Table(topo.FenceArgs())); err != nil {
		var ae *amqp.Error
		if errors.As(err, &ae) && ae.Code == amqp.PreconditionFailed {
			if topo.Resizing() && fenceHolds(ae.Reason) == protocol.FenceValue(topo.ResizeFrom, topo.PartitionCount) {
				return errFenceAtFrom
			}
			return countsError(topo, ae.Reason)
		}
		return fmt.Errorf("cannot declare queue %s: %w", topo.FenceQueue, err)
	}
	return declareQueues(ch, topo)
}

// errFenceAtFrom: the fence holds the count a resizing topology comes
// from, which it accepts; RabbitMQ closed the channel, so DeclareConn
// declares the queues on another.
var errFenceAtFrom = errors.New("amqpx: the fence holds the count being resized from")

// DeclareConn is Declare on a channel of conn, which it returns open for
// the caller's use. During a resize (topo.ResizeFrom) it also accepts a
// fence that still holds the count the resize comes from: the failed
// declaration of the fence closes its channel, so the queues are then
// declared on a new one.
func DeclareConn(conn *amqp.Connection, topo protocol.Topology) (*amqp.Channel, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, fmt.Errorf("cannot open channel: %w", err)
	}
	err = Declare(ch, topo)
	if errors.Is(err, errFenceAtFrom) {
		if ch, err = conn.Channel(); err != nil {
			return nil, fmt.Errorf("cannot open channel: %w", err)
		}
		err = declareQueues(ch, topo)
	}
	if err != nil {
		_ = ch.Close()
		return nil, err
	}
	return ch, nil
}

// MoveFence makes the namespace's fence hold topo's counts, whatever it
// held: the switch of a resize of GW_QUEUES. It deletes the fence queue
// (it carries no messages) and declares it again, on a connection of its
// own; a process that declared the fence with other counts in between is
// overruled by a second try. From then on, a process started with the old
// count is refused (a resizing one accepts both).
func MoveFence(ctx context.Context, opts Options, topo protocol.Topology) error {
	opts.ensureDefaults()
	conn, err := dial(ctx, &opts)
	if err != nil {
		return fmt.Errorf("cannot move the fence: %w", err)
	}
	defer conn.Close()
	fence := protocol.NewTopology(topo.NS, topo.QueueCount, topo.PartitionCount)
	for try := 0; ; try++ {
		ch, err := conn.Channel()
		if err != nil {
			return fmt.Errorf("cannot move the fence: %w", err)
		}
		if _, err = ch.QueueDelete(fence.FenceQueue, false, false, false); err == nil {
			_, err = ch.QueueDeclare(fence.FenceQueue, true, false, false, false, amqp.Table(fence.FenceArgs()))
		}
		_ = ch.Close()
		if err == nil || try == 2 {
			if err != nil {
				return fmt.Errorf("cannot move the fence of %s to %s: %w", topo.NS,
					protocol.FenceValue(topo.QueueCount, topo.PartitionCount), err)
			}
			return nil
		}
	}
}

// declareQueues declares and binds every queue of topo.Bindings().
func declareQueues(ch *amqp.Channel, topo protocol.Topology) error {
	for _, b := range topo.Bindings() {
		if _, err := ch.QueueDeclare(b.Queue, true, false, false, false, amqp.Table(b.Args)); err != nil {
			return fmt.Errorf("cannot declare queue %s: %w", b.Queue, err)
		}
		if err := ch.QueueBind(b.Queue, b.RoutingKey, b.Exchange, false, nil); err != nil {
			return fmt.Errorf("cannot bind queue %s to %s: %w", b.Queue, b.Exchange, err)
		}
	}
	return nil
}

// checkTopology refuses a topology that cannot be declared: no namespace,
// or counts out of range.
func checkTopology(topo protocol.Topology) error {
	var err error
	switch {
	case topo.NS == "":
		err = errors.New("topology has no namespace")
	case protocol.CheckQueues(topo.QueueCount) != nil:
		err = fmt.Errorf("GW_QUEUES: %w", protocol.CheckQueues(topo.QueueCount))
	case protocol.CheckPartitions(topo.PartitionCount) != nil:
		err = fmt.Errorf("GW_PARTITIONS: %w", protocol.CheckPartitions(topo.PartitionCount))
	default:
		return nil
	}
	return &Error{Op: "declare", Reason: "bad topology", Err: err}
}

// fenceReasonRE reads the two values of RabbitMQ's PRECONDITION_FAILED
// reason for an inequivalent argument: "... received 'queues=8,...' but
// current is 'queues=4,...'" (some versions say "received the value
// '...' of type 'longstr'").
var fenceReasonRE = regexp.MustCompile(`x-dead-letter-routing-key.*received (?:the value )?'([^']*)'.* current is (?:the value )?'([^']*)'`)

// fenceHolds is the fence value a PRECONDITION_FAILED reason says is
// current, or "".
func fenceHolds(reason string) string {
	if m := fenceReasonRE.FindStringSubmatch(reason); m != nil {
		return m[2]
	}
	return ""
}

// countsError is the error of a fence that refused topo: both counts of
// the namespace (as RabbitMQ's reason tells them) and of this process.
func countsError(topo protocol.Topology, reason string) error {
	mine := fmt.Sprintf("GW_QUEUES=%d and GW_PARTITIONS=%d", topo.QueueCount, topo.PartitionCount)
	theirs := "other counts (RabbitMQ: " + reason + ")"
	if m := fenceReasonRE.FindStringSubmatch(reason); m != nil {
		if q, p, ok := protocol.ParseFenceValue(m[2]); ok {
			theirs = fmt.Sprintf("GW_QUEUES=%d and GW_PARTITIONS=%d", q, p)
		}
	}
	return &Error{Op: "declare", Reason: "counts differ", Err: fmt.Errorf(
		"%w: namespace %s was set up with %s (kept by the queue %s), this process has %s; start it with the namespace's counts (changing GW_QUEUES is a resize, changing GW_PARTITIONS is a new deployment)",
		ErrCounts, topo.NS, theirs, topo.FenceQueue, mine)}
}

// QueueInfo is what a passive declare tells about a queue.
type QueueInfo struct {
	Messages  int // ready messages (not counting unacked ones)
	Consumers int // consumers attached
}

// QueueDepth does a passive declare of each queue on a channel of its own
// and returns the ready messages and consumer counts by queue name. A queue
// that does not exist is left out of the map and reported in the error;
// the map always holds every queue that could be inspected. It returns
// early when ctx is done.
func QueueDepth(ctx context.Context, conn *amqp.Connection, queues ...string) (map[string]QueueInfo, error) {
	type result struct {
		m   map[string]QueueInfo
		err error
	}
	done := make(chan result, 1)
	go func() {
		m := make(map[string]QueueInfo, len(queues))
		var errs []error
		var ch *amqp.Channel
		defer func() {
			if ch != nil {
				_ = ch.Close()
			}
		}()
		for _, q := range queues {
			if ctx.Err() != nil {
				errs = append(errs, ctx.Err())
				break
			}
			if ch == nil || ch.IsClosed() {
				var err error
				if ch, err = conn.Channel(); err != nil {
					ch = nil
					errs = append(errs, fmt.Errorf("cannot open channel: %w", err))
					break
				}
			}
			qi, err := ch.QueueDeclarePassive(q, true, false, false, false, nil)
			if err != nil {
				errs = append(errs, fmt.Errorf("cannot inspect queue %s: %w", q, err))
				continue
			}
			m[q] = QueueInfo{Messages: qi.Messages, Consumers: qi.Consumers}
		}
		done <- result{m, errors.Join(errs...)}
	}()
	select {
	case r := <-done:
		return r.m, r.err
	case <-ctx.Done():
		return map[string]QueueInfo{}, fmt.Errorf("cannot inspect queues: %w", ctx.Err())
	}
}

// Dial opens a connection with the options' URL, connection name and
// socket write timeout (Options.ConfirmTimeout), giving up when ctx is
// done. Callers own the connection; Publisher and Consumer dial their own.
func Dial(ctx context.Context, opts Options) (*amqp.Connection, error) {
	opts.ensureDefaults()
	return dial(ctx, &opts)
}

func dial(ctx context.Context, o *Options) (*amqp.Connection, error) {
	return dialWrapped(ctx, o, nil)
}

// dialWrapped is dial with the socket (whose writes are bounded by the
// write timeout) wrapped by wrap, when not nil.
func dialWrapped(ctx context.Context, o *Options, wrap func(net.Conn) net.Conn) (*amqp.Connection, error) {
	props := amqp.NewConnectionProperties()
	if o.Name != "" {
		props.SetClientConnectionName(o.Name)
	}
	writeTimeout := o.ConfirmTimeout
	// The library does not close the socket when the handshake fails
	// (refused credentials, no common SASL mechanism): close it here, with
	// whatever wraps it (a coalescing writer's goroutine).
	var opened net.Conn
	cfg := amqp.Config{
		Properties: props,
		Heartbeat:  10 * time.Second,
		Locale:     "en_US",
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: 30 * time.Second}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// The handshake must finish in time too.
			if err := c.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
				_ = c.Close()
				return nil, err
			}
			var nc net.Conn = &deadlineConn{Conn: c, write: writeTimeout}
			if wrap != nil {
				nc = wrap(nc)
			}
			opened = nc
			return nc, nil
		},
	}
	conn, err := amqp.DialConfig(o.URL, cfg)
	if err != nil {
		if opened != nil {
			_ = opened.Close()
		}
		return nil, &Error{Op: "connect", Reason: "not connected", Recover: true, Err: fmt.Errorf("%w: %w", ErrNotConnected, err)}
	}
	return conn, nil
}

// deadlineConn bounds every write: a broker that stops reading (a blocked
// connection whose socket buffers are full, a dead peer) makes the write
// fail after the timeout, which closes the connection, instead of hanging
// a publisher forever.
type deadlineConn struct {
	net.Conn
	write time.Duration
}

func (c *deadlineConn) Write(p []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(c.write)); err != nil {
		return 0, err
	}
	return c.Conn.Write(p)
}
