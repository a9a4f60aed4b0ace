package main

import (
	"context"
	"errors"
	"log/slog"
	"sync/atomic"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// maxHeldAnswers bounds the answers one connection may have held (read,
// not yet completed because Redis cannot take them): beyond it, the
// connection's reads wait for a free place (back-pressure).
const maxHeldAnswers = 64

// Causes of gw_answers_late_total: why a device answer arrived after its
// command was final.
const (
	lateDevice = "device" // the device answered after the command had ended
	lateHeld   = "held"   // the answer was read in time but held while Redis could not take it
)

// devAnswer is one device answer read from a connection.
type devAnswer struct {
	// ctx carries the answer's span (see forwardResponse) for the
	// completion step; it ends with the push server.
	ctx    context.Context
	cl     *client
	pk     packets.Packet
	resp   *protocol.Response
	client string
	id     protocol.ID
	read   time.Time
	// attrs are the answer's log attributes (device_id, client_id,
	// msg_id, trace_id); log is n.log with them, made on first use
	// (logger): most answers log nothing, and slog's With formats the
	// attributes at once.
	attrs []any
	base  *slog.Logger
	log   *slog.Logger
}

// logger returns the answer's logger (see attrs). An answer is used by
// one goroutine at a time (the read loop, then its completer).
func (a *devAnswer) logger() *slog.Logger {
	if a.log == nil {
		a.log = a.base.With(a.attrs...)
	}
	return a.log
}

// forwardResponse handles a PUBLISH of device cl.id on its responses
// topic: the push server that reads a device's answer completes it
// (DESIGN §5, "the edge completes them"). It runs the completion step in
// the device's partition (mailbox.Complete, with held = the time since
// the answer was read, so that a timeout is decided by when the answer
// reached the edge) and only then lets the PUBACK go:
//
//   - true: the caller writes the PUBACK (QoS 1) now. Returned once the
//     step is done (succeeded, failed, a late or duplicate answer recorded), and
//     for a response that can never succeed (malformed, an id that is not
//     "{client}:{id}", an unknown command, another device's command, one
//     never sent), which is dropped with a log line and
//     gw_push_responses_dropped_total{reason}.
//   - When Redis cannot take the step, the answer is held off the read
//     loop in the connection's completer (see hold), with every answer
//     read after it: false (the caller writes nothing), the connection
//     goes on reading (PINGREQs answered, more answers read),
//     and the completer retries the step and then writes the PUBACK
//     itself, in arrival order. The gateway never closes a connection to
//     make a device resend (a clean-session device would not).
func (n *Node) forwardResponse(cl *client, pk packets.Packet) bool {
	read := time.Now()

	resp, err := protocol.ParseResponse(pk.Payload)
	if err != nil {
		n.dropResponse(n.log.With("device_id", cl.id), dropMalformed, err)
		return true
	}
	client, id, err := protocol.AnswerTarget(resp)
	if err != nil {
		n.dropResponse(n.log.With("device_id", cl.id), dropID, err)
		return true
	}
	attrs := []any{"device_id", cl.id, "client_id", telemetry.Clip(client), "msg_id", telemetry.Clip(id.Key())}
	// An MQTT 5 device that continues the command's trace sends the
	// traceparent of its answer as a user property: the completion's span
	// is its child, and the result's relay continues it. Without one the
	// record's trace goes on (mailbox.Complete), with no span here. A
	// held answer completes later under the same (ended) span.
	base := n.ctx
	if tp := userProperty(pk, "traceparent"); tp != "" {
		var span trace.Span
		base, span = telemetry.Tracer().Start(telemetry.ContextWithTraceParent(n.ctx, tp), "complete",
			trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
				attribute.String("device_id", cl.id), attribute.String("client_id", client),
				attribute.String("msg_id", id.Key()), attribute.String("node", n.cfg.NodeID)))
		defer span.End()
		if tid := telemetry.TraceID(base); tid != "" {
			attrs = append(attrs, telemetry.KeyTraceID, tid)
		}
	}
	a := &devAnswer{ctx: base, cl: cl, pk: pk, resp: resp, client: client, id: id, read: read, attrs: attrs, base: n.log}
	var c *completer
	if v, ok := n.completers.Load(cl); ok {
		c = v.(*completer)
		if c.pending.Load() > 0 {
			// Answers before it are held: it waits behind them (PUBACKs
			// in arrival order).
			n.hold(a, c, nil)
			return false
		}
	}
	done, err := n.completeAnswer(a, false)
	if done {
		return true
	}
	n.hold(a, c, err)
	return false
}

// completeAnswer runs the completion step of a once. It reports whether
// a is done with (completed, or dropped for good: either way it is to be
// acknowledged), or else the error that kept Redis from taking it.
func (n *Node) completeAnswer(a *devAnswer, held bool) (bool, error) {
	ctx, cancel := context.WithTimeout(a.ctx, n.cfg.ConfirmTimeout)
	out, err := n.store.Complete(ctx, a.client, a.id.Key(), a.cl.id, a.resp, time.Since(a.read), "")
	cancel()
	if err != nil {
		return false, err
	}
	switch out {
	case mailbox.OutcomeUnknown, mailbox.OutcomeNoop:
		n.dropResponse(a.logger(), dropUnknown, errors.New("no command of this device waits for this answer"))
		return true, nil
	case mailbox.OutcomeOtherDevice:
		n.dropResponse(a.logger(), dropDevice, errors.New("the command is another device's"))
		return true, nil
	case mailbox.OutcomeNotSent:
		n.dropResponse(a.logger(), dropNotSent, errors.New("the command was not sent yet"))
		return true, nil
	case mailbox.OutcomeLate, mailbox.OutcomeTimeout:
		// After its command ended, or read past its timeout: recorded
		// as late.
		cause := lateDevice
		if held {
			cause = lateHeld
		}
		n.m.late.WithLabelValues(cause).Inc()
	}
	n.m.responses.Inc()
	if a.base.Enabled(a.ctx, slog.LevelDebug) {
		a.logger().Debug("device response completed", "outcome", out, "held", held)
	}
	return true, nil
}

// completer is one connection's queue of held answers: those Redis could
// not take at once, and every answer read after them (PUBACKs go in the
// order the answers arrived, as MQTT wants). Its goroutine, started with
// the first held answer, retries each in turn and ends once the
// connection has ended and the queue is empty, or when the node stops.
type completer struct {
	q chan *devAnswer // capacity maxHeldAnswers; closed when the connection ends
	// pending counts the answers queued or being completed; the read
	// loop completes an answer itself only while it is 0.
	pending atomic.Int32
}

// hold queues an answer that cannot be completed now (err; nil when it
// is queued only to keep the order) to its connection's completer, off
// the read loop (the caller writes no PUBACK), and the connection goes
// on reading (PINGREQs answered, more answers read). The
// completer retries the step at least every AnswerGrace/4 (DESIGN §7a)
// until Redis takes it or the node stops, and then writes the PUBACK
// (when the connection is still open). The step decides a timeout by
// when the answer was read, not by how long this took, so a held answer
// never turns into a timeout; it is completed even when its connection
// ends first. A connection holds at most maxHeldAnswers: beyond that,
// its reads wait here for a place. A QoS 0 answer has no PUBACK to
// hold: it is retried for one grace, then counted as lost.
func (n *Node) hold(a *devAnswer, c *completer, err error) {
	if c == nil {
		c = &completer{q: make(chan *devAnswer, maxHeldAnswers)}
		n.completers.Store(a.cl, c)
		n.heldWG.Add(1)
		go func() {
			defer n.heldWG.Done()
			n.runCompleter(c)
		}()
	}
	if err != nil {
		a.logger().Warn("cannot complete the answer yet; holding its PUBACK and retrying", "err", err)
	}
	c.pending.Add(1)
	n.m.held.Inc()
	select {
	case c.q <- a:
		return
	default:
	}
	a.logger().Warn("a connection holds the most answers it may: its reads wait for a place", "max", maxHeldAnswers)
	select {
	case c.q <- a:
	case <-n.ctx.Done():
		c.pending.Add(-1)
		n.m.held.Dec()
		n.m.abandoned.WithLabelValues("shutdown").Inc()
		a.logger().Warn("device response not completed before shutdown: not acknowledged")
	}
}

// runCompleter completes c's answers in order; see hold.
func (n *Node) runCompleter(c *completer) {
	for {
		select {
		case a, ok := <-c.q:
			if !ok {
				return
			}
			n.retryHeld(a)
			n.m.held.Dec()
			c.pending.Add(-1)
		case <-n.ctx.Done():
			for {
				select {
				case a, ok := <-c.q:
					if !ok {
						return
					}
					n.m.held.Dec()
					c.pending.Add(-1)
					n.m.abandoned.WithLabelValues("shutdown").Inc()
					a.logger().Warn("device response not completed before shutdown: not acknowledged")
				default:
					return
				}
			}
		}
	}
}

// retryHeld retries the completion step of a held answer until it is
// done, then PUBACKs it; see hold.
func (n *Node) retryHeld(a *devAnswer) {
	grace := n.cfg.AnswerGrace
	if grace <= 0 {
		grace = 10 * time.Second
	}
	began := time.Now()
	retry, maxRetry := 50*time.Millisecond, min(2*time.Second, grace/4)
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-n.ctx.Done():
			n.m.abandoned.WithLabelValues("shutdown").Inc()
			a.logger().Warn("device response not completed before shutdown: not acknowledged")
			return
		case <-t.C:
		}
		done, err := n.completeAnswer(a, true)
		if done {
			open := !a.cl.isClosed()
			if held := time.Since(began); held > retry {
				a.logger().Info("held device response completed", "held", held.Round(time.Millisecond), "connection_open", open)
			}
			if open && a.pk.FixedHeader.Qos > 0 {
				if err := a.cl.writePacket(ack(packets.Puback, a.pk.PacketID, packets.CodeSuccess)); err != nil {
					a.logger().Debug("cannot write the PUBACK of a held answer", "err", err)
				}
			}
			return
		}
		if a.pk.FixedHeader.Qos == 0 && time.Since(a.read) > grace {
			// No PUBACK to hold: the answer is lost, and counted.
			n.m.dropped.WithLabelValues(dropUnsent).Inc()
			a.logger().Warn("QoS 0 device response lost", "err", err)
			return
		}
		t.Reset(retry)
		retry = min(2*retry, maxRetry)
	}
}

// connectionEnded closes the completer of a connection that ended: it
// completes what it holds, then ends.
func (n *Node) connectionEnded(cl *client) {
	if c, ok := n.completers.LoadAndDelete(cl); ok {
		close(c.(*completer).q)
	}
	if s := cl.sess; s != nil && s.close() {
		n.log.Debug("session ended", "client_id", s.identity)
	}
}

// holding reports how many answers read on c are held, not yet
// acknowledged.
func (n *Node) holding(c *client) int32 {
	if v, ok := n.completers.Load(c); ok {
		return v.(*completer).pending.Load()
	}
	return 0
}

// answeredPoll is how often closeAnswered looks whether a connection's
// held answers are acknowledged.
const answeredPoll = 20 * time.Millisecond

// closeAnswered closes a connection the gateway ends on purpose (shed,
// token expiry, lame duck: DISCONNECT with code and serverRef), but not
// while it holds answers (DESIGN §7a): it waits until they are
// acknowledged, at most the answer grace G from now, reading on
// meanwhile (the session, closing, sends nothing new). Past G it closes
// the connection all the same; the completer still completes what it
// holds.
func (n *Node) closeAnswered(c *client, code packets.Code, serverRef string) {
	if n.holding(c) == 0 {
		c.disconnect(code, serverRef)
		return
	}
	n.log.Info("connection holds answers: closing it once they are acknowledged", "client_id", c.id,
		"held", n.holding(c), "reason", code.Code)
	n.closingAnswered.Add(1)
	go func() {
		defer n.closingAnswered.Add(-1)
		t := time.NewTicker(answeredPoll)
		defer t.Stop()
		deadline := time.After(n.cfg.AnswerGrace)
		for n.holding(c) > 0 && !c.isClosed() {
			select {
			case <-t.C:
			case <-deadline:
				n.log.Warn("connection still holds answers after the answer grace: closing it", "client_id", c.id,
					"held", n.holding(c))
				c.disconnect(code, serverRef)
				return
			case <-n.ctx.Done():
				return // stopping: the node drops what is left
			}
		}
		c.disconnect(code, serverRef)
	}()
}

// userProperty is the value of the MQTT 5 user property key of pk, "" when
// it has none.
func userProperty(pk packets.Packet, key string) string {
	for _, p := range pk.Properties.User {
		if p.Key == key {
			return p.Val
		}
	}
	return ""
}

// dropResponse counts and logs a response that can never succeed; it is
// still acknowledged.
func (n *Node) dropResponse(log *slog.Logger, reason string, err error) {
	n.m.dropped.WithLabelValues(reason).Inc()
	log.Warn("device response dropped", "reason", reason, "err", telemetry.Clip(err.Error()))
}
