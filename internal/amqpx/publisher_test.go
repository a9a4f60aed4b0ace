package amqpx

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"strings"
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
	err := p.Publish(context.Background(), topo.CommandsExchange, commandKey, []byte(`{"v":1}`),
		Headers{MessageID: "c1:42", CorrelationID: "corr-1", TraceParent: tp, Type: "command"})
	if err != nil {
		t.Fatalf("Publish = %v, want nil", err)
	}
	d := getOne(t, testenv.AMQP(t), topo.CommandQueue(0))
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
		{"routing key", d.RoutingKey, commandKey},
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
				if err := p.Publish(context.Background(), topo.CommandsExchange, commandKey, []byte("ok"), Headers{}); err != nil {
					t.Errorf("routable Publish = %v, want nil", err)
				}
			}()
		}
		wg.Wait()
	}
	if n := depth(t, conn, topo.CommandQueue(0)); n != 40 {
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
		return p.Publish(context.Background(), topo.CommandsExchange, commandKey, []byte("x"), Headers{}) == nil
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
	p, err := NewPublisher(context.Background(), opts, protocol.NewTopology("gwt-unreachable", 1, 1))
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
	_, err := NewPublisher(context.Background(), Options{URL: "http://nope"}, protocol.NewTopology("x", 1, 1))
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
	err := p.Publish(context.Background(), topo.CommandsExchange, commandKey, []byte("x"), Headers{})
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
	err := p.Publish(ctx, topo.CommandsExchange, commandKey, []byte("x"), Headers{})
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
				err := p.Publish(context.Background(), topo.CommandsExchange, commandKey, body,
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
	eventually(t, 5*time.Second, "all messages in the queue", func() bool { return depth(t, conn, topo.CommandQueue(0)) == workers*each })
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
	if n := depth(t, conn, topo.CommandQueue(0)); n != 2 {
		t.Errorf("commands queue holds %d, want 2", n)
	}
}

// countingConn records what reaches the socket, one Write at a time.
type countingConn struct {
	net.Conn
	mu     sync.Mutex
	out    bytes.Buffer
	writes int
	fail   error
	delay  time.Duration
	closed atomic.Bool
}

func (c *countingConn) Write(p []byte) (int, error) {
	time.Sleep(c.delay)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail != nil {
		return 0, c.fail
	}
	c.writes++
	return c.out.Write(p)
}

func (c *countingConn) Close() error { c.closed.Store(true); return nil }

func (c *countingConn) snapshot() (string, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.String(), c.writes
}

// The writes of concurrent publishers reach the socket in order (each
// writer's own), all of them, in fewer system calls than writes.
func TestCoalescingConnKeepsOrderAndBatches(t *testing.T) {
	t.Parallel()
	under := &countingConn{delay: 50 * time.Microsecond}
	c := newCoalescingConn(under)
	const writers, each = 8, 500
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				if _, err := fmt.Fprintf(c, "%d:%d\n", w, i); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	check := func(cond bool, format string, args ...any) {
		t.Helper()
		if !cond {
			t.Fatalf(format, args...)
		}
	}
	eventually(t, 5*time.Second, "every write on the socket", func() bool {
		out, _ := under.snapshot()
		return strings.Count(out, "\n") == writers*each
	})
	out, writes := under.snapshot()
	next := make([]int, writers)
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		var w, i int
		_, err := fmt.Sscanf(line, "%d:%d", &w, &i)
		check(err == nil, "bad line %q", line)
		check(i == next[w], "writer %d: got %d, want %d", w, i, next[w])
		next[w]++
	}
	check(writes < writers*each, "%d writes reached the socket for %d publishes: nothing coalesced", writes, writers*each)
	t.Logf("%d writes for %d publishes", writes, writers*each)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if !under.closed.Load() {
		t.Fatal("Close did not close the socket")
	}
	if _, err := c.Write([]byte("late")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close = %v, want net.ErrClosed", err)
	}
}

// A failed write (a write deadline, a reset) closes the socket, so the
// library sees the connection fail, and every later Write returns the
// error.
func TestCoalescingConnWriteError(t *testing.T) {
	t.Parallel()
	boom := errors.New("i/o timeout")
	under := &countingConn{fail: boom}
	c := newCoalescingConn(under)
	if _, err := c.Write([]byte("x")); err != nil {
		t.Fatalf("first Write = %v, want nil (queued)", err)
	}
	eventually(t, 5*time.Second, "the socket closed after the failed write", under.closed.Load)
	if _, err := c.Write([]byte("y")); !errors.Is(err, boom) {
		t.Fatalf("Write after a failed write = %v, want %v", err, boom)
	}
	_ = c.Close()
}

// Close writes what is waiting before it closes the socket (the library's
// last frame, a connection.close-ok, is written just before the close).
func TestCoalescingConnCloseWritesPending(t *testing.T) {
	t.Parallel()
	under := &countingConn{delay: 5 * time.Millisecond}
	c := newCoalescingConn(under)
	for i := range 5 {
		fmt.Fprintf(c, "frame %d;", i)
	}
	_ = c.Close()
	if out, _ := under.snapshot(); out != "frame 0;frame 1;frame 2;frame 3;frame 4;" {
		t.Fatalf("written before close: %q", out)
	}
}

// On one channel, with many publishes in flight, every return reaches
// its own publish and no other: an unroutable message is never reported
// confirmed, whatever the acks around it (one multiple ack often covers
// returned and routed messages alike).
func TestPublishReturnsUnderLoad(t *testing.T) {
	t.Parallel()
	topo, opts := setup(t)
	opts.Channels = 1
	p := newPublisher(t, opts, topo)
	const workers, each = 16, 100
	var routed, wrong atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				key := commandKey
				if (w+i)%3 == 0 {
					key = "no-such-key"
				}
				err := p.Publish(context.Background(), topo.CommandsExchange, key, []byte("x"), Headers{MessageID: fmt.Sprintf("%d-%d", w, i)})
				switch {
				case key == commandKey && err == nil:
					routed.Add(1)
				case key != commandKey && errors.Is(err, ErrReturned):
				default:
					if wrong.Add(1) < 5 {
						t.Errorf("Publish(%s) = %v", key, err)
					}
				}
			}
		}()
	}
	wg.Wait()
	if wrong.Load() > 0 {
		t.Fatalf("%d publishes with the wrong outcome", wrong.Load())
	}
	conn := testenv.AMQP(t)
	eventually(t, 5*time.Second, "every routed message in the queue", func() bool {
		return depth(t, conn, topo.CommandQueue(0)) == int(routed.Load())
	})
}

// TestDialWithoutCommonMechanismClosesSocket: when the broker offers no
// SASL mechanism the library knows, amqp091 returns ErrSASL from the
// handshake without closing the socket (the reader goroutine would wait
// on it, and a wrapping coalescing writer with it); dial closes it. The
// broker is a fake that speaks only the first frame of the handshake.
func TestDialWithoutCommonMechanismClosesSocket(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	clientGone := make(chan struct{})
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		header := make([]byte, 8) // "AMQP" 0 0 9 1
		if _, err := io.ReadFull(c, header); err != nil {
			return
		}
		// connection.start: version 0-9, no server properties, mechanism
		// FOO only, locale en_US.
		var p []byte
		p = binary.BigEndian.AppendUint16(p, 10)
		p = binary.BigEndian.AppendUint16(p, 10)
		p = append(p, 0, 9)
		p = binary.BigEndian.AppendUint32(p, 0)
		p = binary.BigEndian.AppendUint32(p, 3)
		p = append(p, "FOO"...)
		p = binary.BigEndian.AppendUint32(p, 5)
		p = append(p, "en_US"...)
		f := []byte{1, 0, 0}
		f = binary.BigEndian.AppendUint32(f, uint32(len(p)))
		f = append(append(f, p...), 0xCE)
		if _, err := c.Write(f); err != nil {
			return
		}
		_, _ = io.Copy(io.Discard, c) // until the client closes
		close(clientGone)
	}()
	o := Options{URL: "amqp://guest:guest@" + ln.Addr().String() + "/"}
	o.ensureDefaults()
	var rec *closeRecorder
	_, err = dialWrapped(context.Background(), &o, func(c net.Conn) net.Conn {
		rec = &closeRecorder{Conn: newCoalescingConn(c)}
		return rec
	})
	if !errors.Is(err, amqp.ErrSASL) {
		t.Fatalf("dial = %v, want ErrSASL", err)
	}
	if rec == nil {
		t.Fatal("no socket was opened")
	}
	select {
	case <-clientGone:
	case <-time.After(5 * time.Second):
		t.Error("the broker still sees the connection 5 s after the failed dial")
	}
}

// closeRecorder notes whether the library's socket was closed.
type closeRecorder struct {
	net.Conn
	closed atomic.Bool
}

func (c *closeRecorder) Close() error { c.closed.Store(true); return c.Conn.Close() }

// TestDialRefusedClosesSocket: when RabbitMQ refuses the credentials, the
// failed dial leaves no socket (nor the coalescing writer's goroutine
// wrapping it) open, whoever closes it: the library, after the broker's
// connection.close, or dial.
func TestDialRefusedClosesSocket(t *testing.T) {
	testenv.RequireServices(t)
	u, err := url.Parse(testenv.AMQPURL())
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword("gw-no-such-user", "wrong")
	o := Options{URL: u.String()}
	o.ensureDefaults()
	var rec *closeRecorder
	_, err = dialWrapped(context.Background(), &o, func(c net.Conn) net.Conn {
		rec = &closeRecorder{Conn: newCoalescingConn(c)}
		return rec
	})
	if !errors.Is(err, ErrNotConnected) {
		t.Fatalf("dial with refused credentials: err = %v, want ErrNotConnected", err)
	}
	if rec == nil {
		t.Fatal("no socket was opened")
	}
	if !rec.closed.Load() {
		t.Error("the socket of the refused dial was left open")
	}
}
