package amqpx

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/iotgw/gateway/internal/coalesce"
	"github.com/iotgw/gateway/protocol"
)

// seqHeader carries the channel's publish sequence number in every message,
// so that a basic.return can be matched to its publish.
const seqHeader = "x-amqpx-seq"

// Headers are the message properties a caller sets on a publish. Every
// message also carries an internal x-amqpx-seq header (the publish's
// sequence number on its channel), which matches a basic.return to its
// publish; consumers ignore it.
type Headers struct {
	MessageID     string // AMQP message-id (the command's message ID)
	CorrelationID string // AMQP correlation-id
	TraceParent   string // W3C traceparent, sent as headers["traceparent"]
	Type          string // AMQP type
}

// Publisher publishes persistent, mandatory messages with a publisher
// confirm on every publish. It owns one connection, which it re-establishes
// with backoff in the background (redeclaring the topology each time), and a
// pool of Options.Channels confirm-mode channels. It is safe for concurrent
// use by many goroutines: a publish holds a channel only while writing (into
// a buffer: see coalescingConn), and waits for its confirm without any lock.
type Publisher struct {
	opts Options
	topo protocol.Topology
	log  *slog.Logger

	sess atomic.Pointer[pubSession] // nil when not connected
	rr   atomic.Uint64

	closing  atomic.Bool
	inflight atomic.Int64
	stop     context.CancelFunc
	done     chan struct{} // closed when the reconnect loop has ended
}

// pubSession is one live connection and its channels.
type pubSession struct {
	conn    *amqp.Connection
	chans   []atomic.Pointer[pubChan] // a closed channel is replaced in place
	blocked atomic.Bool               // connection.blocked is in force
}

// pubChan is one confirm-mode channel. lock (a one-slot semaphore, so a
// waiter can give up) serializes taking the next sequence number and
// writing the publish, so the number is the message's delivery tag.
//
// A publish waits for its confirm on the library's DeferredConfirmation,
// which the library's reader resolves itself: no goroutine of ours stands
// between the broker's basic.ack and the waiting publish. Returns
// (basic.return of a mandatory publish no queue took) arrive on the
// returns channel, and are taken from it only under pmu, without blocking
// (takeReturns): a publish that sees its ack takes the returns waiting
// there before it looks whether its message was returned. That is
// enough, because the library's reader hands a message's basic.return to
// the returns channel before it reads the basic.ack that follows it
// (RabbitMQ sends them in that order), so the return of an acked message
// is either in the channel or already marked on its pending entry.
type pubChan struct {
	lock    chan struct{}
	ch      *amqp.Channel
	returns <-chan amqp.Return // read only under pmu, never blocking
	log     *slog.Logger

	pmu     sync.Mutex
	pending map[uint64]*pending
	dead    atomic.Bool
	// closeErr is why the channel closed (nil for a clean close), set
	// before dead.
	closeErr atomic.Pointer[amqp.Error]
	// closed is closed once closeErr and dead are set.
	closed chan struct{}
}

// pending is a publish awaiting its confirm.
type pending struct {
	returned bool // guarded by pubChan.pmu
}

// NewPublisher returns a Publisher after a first connection attempt bounded
// by ctx (ctx bounds only that attempt; the Publisher lives until Close). If
// RabbitMQ is unreachable it still returns a Publisher, which keeps
// reconnecting in the background while Publish fails fast with
// ErrNotConnected. It returns an error for unusable options (a URL that
// does not parse, a topology without a namespace or with counts out of
// range) and when the first attempt finds that the namespace's fence
// refuses topo's counts (an [*Error] wrapping [ErrCounts]; see Declare).
// A later reconnect that meets the fence logs it as an error and keeps
// trying, while Publish fails with ErrNotConnected.
func NewPublisher(ctx context.Context, opts Options, topo protocol.Topology) (*Publisher, error) {
	opts.ensureDefaults()
	if _, err := amqp.ParseURI(opts.URL); err != nil {
		return nil, fmt.Errorf("amqpx: bad URL: %w", err)
	}
	if err := checkTopology(topo); err != nil {
		return nil, err
	}
	lctx, stop := context.WithCancel(context.Background())
	p := &Publisher{
		opts: opts,
		topo: topo,
		log:  opts.Logger.With("component", "amqpx.publisher", "conn", opts.Name),
		stop: stop,
		done: make(chan struct{}),
	}
	first, err := p.connect(ctx)
	switch {
	case errors.Is(err, ErrCounts):
		stop()
		return nil, err
	case err != nil:
		p.log.Warn("rabbitmq not reachable, will keep trying", "err", err)
	default:
		p.sess.Store(first) // usable as soon as we return
	}
	go p.loop(lctx, first)
	return p, nil
}

// connect dials, declares the topology and opens the channel pool.
func (p *Publisher) connect(ctx context.Context) (*pubSession, error) {
	conn, err := dialCoalescing(ctx, &p.opts)
	if err != nil {
		return nil, err
	}
	ch, err := DeclareConn(conn, p.topo)
	if err == nil {
		_ = ch.Close()
	}
	if err != nil {
		_ = conn.Close()
		if errors.Is(err, ErrCounts) {
			return nil, err
		}
		return nil, &Error{Op: "declare", Reason: "not connected", Recover: true, Err: fmt.Errorf("%w: %w", ErrNotConnected, err)}
	}
	s := &pubSession{conn: conn, chans: make([]atomic.Pointer[pubChan], p.opts.Channels)}
	for i := range s.chans {
		pc, err := p.openChan(conn)
		if err != nil {
			_ = conn.Close()
			return nil, &Error{Op: "connect", Reason: "not connected", Recover: true, Err: fmt.Errorf("%w: %w", ErrNotConnected, err)}
		}
		s.chans[i].Store(pc)
	}
	blockings := conn.NotifyBlocked(make(chan amqp.Blocking, 8))
	go func() {
		for b := range blockings {
			s.blocked.Store(b.Active)
			if b.Active {
				p.log.Warn("rabbitmq blocked the connection", "reason", b.Reason)
			} else {
				p.log.Info("rabbitmq unblocked the connection")
			}
		}
	}()
	return s, nil
}

func (p *Publisher) openChan(conn *amqp.Connection) (*pubChan, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		_ = ch.Close()
		return nil, err
	}
	pc := &pubChan{ch: ch, lock: make(chan struct{}, 1), pending: make(map[uint64]*pending), log: p.log, closed: make(chan struct{})}
	// Generous: every return is followed by its ack, whose publish takes
	// the returns waiting; Publisher.serve takes the rest now and then.
	// The library blocks its reader while this is full.
	pc.returns = ch.NotifyReturn(make(chan amqp.Return, 1024))
	closes := ch.NotifyClose(make(chan *amqp.Error, 1))
	go func() {
		// The library sends the reason of an abnormal close, or just
		// closes the listener.
		if e, ok := <-closes; ok && e != nil {
			pc.closeErr.Store(e)
			p.log.Warn("publishing channel closed", "err", e)
		}
		pc.dead.Store(true)
		close(pc.closed)
	}()
	return pc, nil
}

// takeReturnsLocked marks the pending publishes whose returns are waiting
// in the returns channel. pmu must be held.
func (pc *pubChan) takeReturnsLocked() {
	for {
		select {
		case r, ok := <-pc.returns:
			if !ok {
				return
			}
			seq, ok := headerUint(r.Headers[seqHeader])
			if !ok {
				pc.log.Warn("returned message without sequence header", "msg_id", r.MessageId, "exchange", r.Exchange, "key", r.RoutingKey)
				continue
			}
			if pp := pc.pending[seq]; pp != nil {
				pp.returned = true
			}
		default:
			return
		}
	}
}

// settle ends the wait of the publish with tag after its confirm came,
// and reports whether the message was returned.
func (pc *pubChan) settle(tag uint64) (returned bool) {
	pc.pmu.Lock()
	defer pc.pmu.Unlock()
	pc.takeReturnsLocked()
	if pp := pc.pending[tag]; pp != nil {
		returned = pp.returned
		delete(pc.pending, tag)
	}
	return returned
}

// loop keeps the Publisher connected until Close.
func (p *Publisher) loop(ctx context.Context, s *pubSession) {
	defer close(p.done)
	attempt := 0
	for {
		if s != nil {
			attempt = 0
			p.sess.Store(s)
			p.log.Info("connected to rabbitmq")
			p.serve(ctx, s)
			p.sess.Store(nil)
			_ = s.conn.Close()
			if ctx.Err() != nil {
				return
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff(p.opts.MinBackoff, p.opts.MaxBackoff, attempt)):
		}
		attempt++
		var err error
		switch s, err = p.connect(ctx); {
		case err == nil || ctx.Err() != nil:
		case errors.Is(err, ErrCounts):
			p.log.Error("rabbitmq refuses this process's counts; not publishing", "attempt", attempt, "err", err)
		default:
			logAttempt(p.log, attempt, "cannot reconnect to rabbitmq", err)
		}
	}
}

// serve watches the session until its connection closes or ctx is done,
// replacing channels that close (a channel-level error) on a live
// connection.
func (p *Publisher) serve(ctx context.Context, s *pubSession) {
	closed := s.conn.NotifyClose(make(chan *amqp.Error, 1))
	tick := time.NewTicker(p.opts.MinBackoff)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case err := <-closed:
			p.log.Warn("rabbitmq connection lost", "err", err)
			return
		case <-tick.C:
			for i := range s.chans {
				pc := s.chans[i].Load()
				// Returns of publishes that gave up waiting.
				pc.pmu.Lock()
				pc.takeReturnsLocked()
				pc.pmu.Unlock()
				if !pc.dead.Load() {
					continue
				}
				npc, err := p.openChan(s.conn)
				if err != nil {
					p.log.Debug("cannot reopen channel", "err", err)
					break
				}
				s.chans[i].Store(npc)
				p.log.Info("reopened a publishing channel")
			}
		}
	}
}

// Ready reports whether the Publisher is connected and not blocked, so a
// Publish now would be attempted rather than failed fast.
func (p *Publisher) Ready() bool {
	s := p.sess.Load()
	return s != nil && !s.blocked.Load() && !p.closing.Load()
}

// Publish sends body to exchange with routing key key, persistent and
// mandatory, and waits for the broker's confirm. It returns nil only when
// the broker acked the message and did not return it (a return means no
// queue took it). Otherwise it returns an [*Error] wrapping ErrNotConnected,
// ErrBlocked, ErrNacked, ErrReturned, ErrConfirmTimeout, ErrChannelClosed or
// ErrClosed, or ctx's error when ctx ends first.
//
// It fails fast, without waiting for a reconnect, when there is no
// connection or the connection is blocked, and never waits longer than
// Options.ConfirmTimeout for the confirm.
func (p *Publisher) Publish(ctx context.Context, exchange, key string, body []byte, h Headers) error {
	p.inflight.Add(1)
	defer p.inflight.Add(-1)
	if p.closing.Load() {
		return &Error{Op: "publish", Reason: "closed", Err: ErrClosed}
	}
	if err := ctx.Err(); err != nil {
		return &Error{Op: "publish", Reason: "cancelled", Recover: true, Err: err}
	}
	s := p.sess.Load()
	if s == nil {
		return &Error{Op: "publish", Reason: "not connected", Recover: true, Err: ErrNotConnected}
	}
	if s.blocked.Load() {
		return &Error{Op: "publish", Reason: "blocked", Recover: true, Err: ErrBlocked}
	}
	pc := p.pick(s)
	if pc == nil {
		return &Error{Op: "publish", Reason: "not connected", Recover: true, Err: ErrNotConnected}
	}

	hdr := amqp.Table{}
	if h.TraceParent != "" {
		hdr["traceparent"] = h.TraceParent
	}
	msg := amqp.Publishing{
		Headers:       hdr,
		ContentType:   "application/json",
		DeliveryMode:  amqp.Persistent,
		MessageId:     h.MessageID,
		CorrelationId: h.CorrelationID,
		Type:          h.Type,
		Timestamp:     time.Now(),
		Body:          body,
	}
	pp := &pending{}

	// One deadline for the whole publish: waiting for the channel, and
	// waiting for the confirm. (The write itself is bounded by the
	// socket's write deadline, also ConfirmTimeout.)
	timer := time.NewTimer(p.opts.ConfirmTimeout)
	defer timer.Stop()
	select {
	case pc.lock <- struct{}{}:
	case <-timer.C:
		return &Error{Op: "publish", Reason: "confirm timeout", Recover: true, Err: ErrConfirmTimeout}
	case <-ctx.Done():
		return &Error{Op: "publish", Reason: "cancelled", Recover: true, Err: ctx.Err()}
	}
	// The lock covers only taking the sequence number and the write, so
	// the number is the delivery tag the confirm will carry.
	tag := pc.ch.GetNextPublishSeqNo()
	hdr[seqHeader] = int64(tag)
	pc.pmu.Lock()
	pc.pending[tag] = pp
	pc.pmu.Unlock()
	dc, err := pc.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, key, true, false, msg)
	<-pc.lock
	if err == nil && dc == nil {
		err = errors.New("channel not in confirm mode")
	}
	if err != nil {
		pc.forget(tag)
		if ctx.Err() != nil {
			return &Error{Op: "publish", Reason: "cancelled", Recover: true, Err: ctx.Err()}
		}
		return &Error{Op: "publish", Reason: "channel closed", Recover: true, Err: pc.closedErr(err)}
	}

	select {
	case <-dc.Done():
		returned := pc.settle(tag)
		switch {
		case !dc.Acked() && pc.ch.IsClosed():
			// The library fails the confirms of a channel that
			// closes as nacks; a nack just before a close is taken
			// for the close too (the message may be in a queue).
			// The library told the close listener first: its reason
			// is at hand.
			select {
			case <-pc.closed:
			case <-timer.C:
			}
			return &Error{Op: "confirm", Reason: "channel closed", Recover: true, Err: pc.closedErr(nil)}
		case !dc.Acked():
			return &Error{Op: "confirm", Reason: "nack", Recover: true, Err: ErrNacked}
		case returned:
			return &Error{Op: "publish", Reason: "returned", Recover: true, Err: ErrReturned}
		}
		return nil
	case <-timer.C:
		pc.forget(tag)
		return &Error{Op: "confirm", Reason: "confirm timeout", Recover: true, Err: ErrConfirmTimeout}
	case <-ctx.Done():
		pc.forget(tag)
		return &Error{Op: "confirm", Reason: "cancelled", Recover: true, Err: ctx.Err()}
	}
}

// pick returns a live channel of s, round robin, or nil if none is.
func (p *Publisher) pick(s *pubSession) *pubChan {
	n := uint64(len(s.chans))
	start := p.rr.Add(1)
	for i := range n {
		pc := s.chans[(start+i)%n].Load()
		if !pc.dead.Load() && !pc.ch.IsClosed() {
			return pc
		}
	}
	return nil
}

// closedErr wraps ErrChannelClosed with the broker's reason, if known.
func (pc *pubChan) closedErr(cause error) error {
	if e := pc.closeErr.Load(); e != nil {
		cause = e
	}
	if cause == nil {
		return ErrChannelClosed
	}
	return fmt.Errorf("%w: %w", ErrChannelClosed, cause)
}

// forget drops a publish the caller no longer waits for.
func (pc *pubChan) forget(tag uint64) {
	pc.pmu.Lock()
	delete(pc.pending, tag)
	pc.pmu.Unlock()
}

// Close stops taking publishes (they fail with ErrClosed), waits for
// in-flight publishes to finish (at most ConfirmTimeout plus a second),
// stops reconnecting and closes the connection.
func (p *Publisher) Close() error {
	if p.closing.Swap(true) {
		<-p.done
		return nil
	}
	deadline := time.Now().Add(p.opts.ConfirmTimeout + time.Second)
	for p.inflight.Load() > 0 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	p.stop()
	<-p.done
	return nil
}

// QueueDepth runs [QueueDepth] on the Publisher's connection.
func (p *Publisher) QueueDepth(ctx context.Context, queues ...string) (map[string]QueueInfo, error) {
	s := p.sess.Load()
	if s == nil {
		return map[string]QueueInfo{}, &Error{Op: "inspect", Reason: "not connected", Recover: true, Err: ErrNotConnected}
	}
	return QueueDepth(ctx, s.conn, queues...)
}

// logAttempt logs a failed connection attempt: the first one and every
// 20th as a warning, the others at debug level.
func logAttempt(log *slog.Logger, attempt int, msg string, err error) {
	level := slog.LevelDebug
	if attempt <= 1 || attempt%20 == 0 {
		level = slog.LevelWarn
	}
	log.Log(context.Background(), level, msg, "attempt", attempt, "err", err)
}

// headerUint reads an integer header of any AMQP integer type.
func headerUint(v any) (uint64, bool) {
	switch n := v.(type) {
	case int64:
		return uint64(n), n >= 0
	case int32:
		return uint64(n), n >= 0
	case int16:
		return uint64(n), n >= 0
	case int8:
		return uint64(n), n >= 0
	case int:
		return uint64(n), n >= 0
	case uint64:
		return n, true
	case uint32:
		return uint64(n), true
	case uint16:
		return uint64(n), true
	case uint8:
		return uint64(n), true
	}
	return 0, false
}

// dialCoalescing is dial, with the socket's writes coalesced (see
// coalescingConn).
func dialCoalescing(ctx context.Context, o *Options) (*amqp.Connection, error) {
	return dialWrapped(ctx, o, func(c net.Conn) net.Conn { return newCoalescingConn(c) })
}

// coalescingMax is how many bytes may wait for the socket before a write
// blocks until they are written.
const coalescingMax = 1 << 20

// coalescingConn coalesces the writes of concurrent publishes into fewer
// system calls. The library writes and flushes every publish on its own,
// under one lock per connection, so concurrent publishes cost one write
// (and one wake-up of the broker) each. Here Write only appends to a
// buffer, and one goroutine writes whatever has accumulated: at once when
// it is idle, so a lone publish is not delayed, and many publishes per
// write under load. Order is kept. A write error (the socket's write
// deadline, Options.ConfirmTimeout, included) is returned by every later
// Write and closes the socket, so the library sees the connection fail
// and every publish waiting for a confirm fails with it, as when the
// library's own write fails; nothing is confirmed that was not written.
type coalescingConn struct {
	net.Conn // writes bounded by a deadline

	w      *coalesce.Writer
	closed atomic.Bool
}

func newCoalescingConn(c net.Conn) *coalescingConn {
	return &coalescingConn{Conn: c, w: coalesce.New(c, coalesce.Options{
		Max:     coalescingMax,
		OnError: func(error) { _ = c.Close() },
	})}
}

// Write queues a copy of p for the writer goroutine.
func (c *coalescingConn) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	if err == coalesce.ErrClosed {
		err = net.ErrClosed
	}
	return n, err
}

// Close stops taking writes, gives the writer a moment to write what
// waits (the library closes the socket right after its last frame, a
// connection.close-ok), then closes the socket.
func (c *coalescingConn) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	select {
	case <-c.w.Stop():
	case <-time.After(100 * time.Millisecond):
	}
	return c.Conn.Close()
}
