package main

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/ring"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// redisTimeout bounds one Redis call of a session.
const redisTimeout = 5 * time.Second

// retryDelay is how long a session waits before reading its mailbox again
// after a Redis error.
const retryDelay = time.Second

// The delivery state's maps and queues come from process-wide pools and
// go back when they empty: a session that goes idle after every message
// (live delivery, one message at a time) allocates nothing per message,
// and an idle session holds none of them.
var (
	flightPool = sync.Pool{New: func() any { return make(map[uint16]mailbox.Entry) }}
	idSetPool  = sync.Pool{New: func() any { return make(map[string]bool) }}
	entryPool  = sync.Pool{New: func() any { b := make([]mailbox.Entry, 0, 8); return &b }}
)

// putEntries clears the buffer (so that it keeps no payload) and pools it.
func putEntries(b *[]mailbox.Entry) {
	clear(*b)
	*b = (*b)[:0]
	entryPool.Put(b)
}

// session is one live MQTT connection of an identity and the goroutine
// that streams the identity's mailbox to it.
//
// The hooks (on the goroutine reading the connection) only record events
// under mu and kick the session goroutine; every Redis call is made by
// the session goroutine, so a slow Redis never blocks mochi.
//
// Delivery: once the session has a subscription, the goroutine reads the
// mailbox in order (Fetch after a cursor, no more entries than the free
// slots of the window) and sends each entry that one of its subscriptions
// matches as a QoS 1 PUBLISH, with a packet ID it allocates itself,
// keeping at most window PUBLISHes unacknowledged. A PUBACK read on this
// very connection (hook OnPacketRead) removes the entry from the mailbox:
// the PUBACKed entries are acked in batches (mailbox.AckMany) by the
// session's background goroutine. Entries no subscription matches are
// skipped and stay in the mailbox; a later subscription re-reads the
// mailbox from the start. When the connection ends, unacknowledged
// entries simply stay in the mailbox for the next session, wherever it
// is.
//
// Fetch marks every command entry it returns as on the wire. Each fetched
// command entry that is not published after all (no subscription matches
// it, it is too large for the client, it is in flight or being acked
// already, the connection has ended or refuses writes) is handed back
// with mailbox.Unsend, by the background goroutine, so that Cancel and
// the deliver-by timer see the truth.
type session struct {
	n        *Node
	cl       *mqtt.Client
	identity string
	conn     string    // token of this connection in the session registry
	role     auth.Role // the token's role: decides the topics (topicAllowed)
	window   int
	expiry   *time.Timer // closes the session when its token expires

	mu       sync.Mutex
	subs     []string         // granted filters (QoS 1)
	granted  []string         // filters granted by a SUBSCRIBE whose SUBACK is not written yet
	acked    []puback         // PUBACKs read and not yet processed
	wake     bool             // the mailbox may have new entries
	rewind   bool             // a subscription was added: re-read skipped entries
	shedding bool             // being closed by the node
	acking   map[string]bool  // entry IDs PUBACKed whose Ack is queued or running (nil when none)
	ackQ     *[]mailbox.Entry // PUBACKed entries for the background goroutine to ack (nil when none)
	unsendQ  []mailbox.Entry  // fetched, unpublished entries for it to Unsend
	refuseQ  []refusal        // command entries the device refused, for it to Refuse
	bgBusy   bool             // the background goroutine is running
	pending  bool             // something for the session goroutine to do
	running  bool             // the session goroutine is running (for good once it has ended the session)

	bgWG sync.WaitGroup // the background goroutine

	// The delivery state, owned by the session goroutine. That goroutine
	// runs only while there is work (see poke), so an idle session costs
	// no goroutine; one run hands the state to the next under mu.
	registered bool
	inflight   map[uint16]mailbox.Entry // by packet ID; nil when empty
	sending    map[string]bool          // entry IDs in flight; nil when empty
	// delivered holds the command entries this connection PUBACKed: they
	// stay in the mailbox until their command is final (re-offered to the
	// device's next connection, DESIGN §7a), and a rewind must not send
	// them again on this one. Bounded by maxDelivered; nil when empty.
	delivered map[string]bool
	cursor    string // last entry read
	more      bool   // the mailbox may hold more after cursor
	skipped   bool   // some entry was skipped for want of a subscription
	pid       uint16 // last packet ID allocated
	retry     *time.Timer
	failing   bool
	broken    bool // the connection refused a write: send nothing more

	closed    chan struct{} // closed when the connection has ended
	closeOnce sync.Once
	finished  chan struct{} // closed when the session goroutine has ended the session (unregistered)
}

// maxDelivered bounds a session's set of delivered entries.
const maxDelivered = 4096

func newSession(n *Node, cl *mqtt.Client, expires time.Time) *session {
	window := n.cfg.Inflight
	if rm := int(cl.Properties.Props.ReceiveMaximum); cl.Properties.ProtocolVersion == 5 && rm > 0 && rm < window {
		window = rm
	}
	s := &session{
		n:        n,
		cl:       cl,
		identity: cl.ID,
		conn:     n.newConnToken(),
		window:   window,
		closed:   make(chan struct{}),
		finished: make(chan struct{}),
	}
	if !expires.IsZero() {
		s.expiry = time.AfterFunc(time.Until(expires), func() {
			n.log.Info("token expired: closing session", "client_id", s.identity)
			disconnect(cl, packets.ErrMaxConnectTime, "")
		})
	}
	return s
}

// kick asks the goroutine to read the mailbox.
func (s *session) kick() {
	s.mu.Lock()
	s.wake = true
	s.mu.Unlock()
	s.poke()
}

// kickHere is kick, but when the session goroutine is not running, the
// caller does the step itself (for the full sweep, whose workers bound
// how many sessions read their mailbox at once); what arrives meanwhile
// continues on a runner.
func (s *session) kickHere() {
	s.mu.Lock()
	s.wake = true
	s.pending = true
	start := !s.running
	s.running = true
	s.mu.Unlock()
	if start && s.once() {
		// More arrived during the step (a busy session): it continues
		// on a runner, so that no sweep worker is held by one session.
		s.n.runners.start(s)
	}
}

// poke gives the session goroutine something to do, starting it if it is
// not running.
func (s *session) poke() {
	s.mu.Lock()
	s.pending = true
	start := !s.running
	s.running = true
	s.mu.Unlock()
	if start {
		// On a parked runner, whose stack has grown for a step already.
		s.n.runners.start(s)
	}
}

// start starts the session: its goroutine registers it (and then waits
// for work). The caller has added the session to n.sessWG.
func (s *session) start() { s.poke() }

// subscribed records filters granted by a SUBSCRIBE; they take effect
// with subscribeDone.
func (s *session) subscribed(filters []string) {
	s.mu.Lock()
	s.granted = append(s.granted, filters...)
	s.mu.Unlock()
}

// subscribeDone makes the filters granted by a SUBSCRIBE take effect and
// starts (or resumes) streaming. It is called once the SUBACK is written,
// so that nothing is published on a subscription before its SUBACK.
func (s *session) subscribeDone() {
	s.mu.Lock()
	if len(s.granted) == 0 {
		s.mu.Unlock()
		return
	}
	for _, f := range s.granted {
		if !slices.Contains(s.subs, f) {
			s.subs = append(s.subs, f)
		}
	}
	s.granted = nil
	s.wake, s.rewind = true, true
	s.mu.Unlock()
	s.poke()
}

// subscribedTo reports whether filter is one of the session's
// subscriptions.
func (s *session) subscribedTo(filter string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Contains(s.subs, filter)
}

// subscriptions returns how many filters the session has subscribed to,
// those whose SUBACK is not written yet included.
func (s *session) subscriptions() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.subs) + len(s.granted)
}

// unsubscribed forgets filters.
func (s *session) unsubscribed(filters []string) {
	s.mu.Lock()
	s.subs = slices.DeleteFunc(s.subs, func(f string) bool { return slices.Contains(filters, f) })
	s.mu.Unlock()
}

// puback is one PUBACK read on the connection: its packet ID and (MQTT
// 5) reason code.
type puback struct {
	pid  uint16
	code byte
}

// refusal is a command entry that its device refused with a PUBACK
// reason code of 0x80 or more.
type refusal struct {
	e    mailbox.Entry
	code byte
}

// puback records the PUBACK of packet ID pid on this connection, with its
// reason code (0 for MQTT 3.1.1).
func (s *session) puback(pid uint16, code byte) {
	s.mu.Lock()
	s.acked = append(s.acked, puback{pid, code})
	s.mu.Unlock()
	s.poke()
}

// close tells the goroutine that the connection has ended.
func (s *session) close() {
	s.closeOnce.Do(func() {
		if s.expiry != nil {
			s.expiry.Stop()
		}
		close(s.closed)
		s.poke()
	})
}

// isClosed reports whether the connection has ended.
func (s *session) isClosed() bool {
	select {
	case <-s.closed:
		return true
	default:
		return false
	}
}

func (s *session) hasSubscription() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.subs) > 0
}

func (s *session) isShed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shedding
}

// shed closes the session because another node owns the identity (or the
// node is stopping): MQTT 5 clients get DISCONNECT 0x9C with the owner's
// URL as server reference (0x8B when no owner is known).
func (s *session) shed(owner ring.Member) {
	s.mu.Lock()
	if s.shedding {
		s.mu.Unlock()
		return
	}
	s.shedding = true
	s.mu.Unlock()
	s.n.m.sheds.Inc()
	if owner.URL != "" {
		disconnect(s.cl, packets.ErrUseAnotherServer, owner.URL)
	} else {
		disconnect(s.cl, packets.ErrServerShuttingDown, "")
	}
}

// take returns and clears what the hooks recorded.
func (s *session) take() (acked []puback, wake, rewind bool, subs []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	acked, s.acked = s.acked, nil
	wake, rewind = s.wake, s.rewind
	s.wake, s.rewind = false, false
	return acked, wake, rewind, slices.Clone(s.subs)
}

// run is the session goroutine: it runs while there is something to do
// (a kick, a subscription, a PUBACK, the end of the connection) and
// returns when there is nothing, so that idle sessions hold no goroutine.
// At most one runs at a time (poke). The first run registers the session;
// the run that sees the connection closed ends the session for good.
func (s *session) run() {
	for s.once() {
	}
}

// once does the pending step, if any, and reports whether more is
// pending; when it reports false, running is cleared (nothing pending)
// or the session has ended (running stays set: no run starts again).
func (s *session) once() bool {
	s.mu.Lock()
	if !s.pending {
		s.running = false
		s.mu.Unlock()
		return false
	}
	s.pending = false
	s.mu.Unlock()
	if !s.registered {
		s.registered = true
		s.register()
	}
	if s.step() {
		return false // ended
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.pending {
		s.running = false
		return false
	}
	return true
}

// step does what the hooks recorded: it processes the PUBACKs, then,
// when the session is subscribed, refills the window from the mailbox.
// It returns true when it has ended the session (the connection closed).
func (s *session) step() bool {
	closed := s.isClosed()
	acked, wake, rewind, subs := s.take()
	var buf [4]mailbox.Entry
	acks := buf[:0]
	var refusals []refusal
	for _, a := range acked {
		e, ok := s.inflight[a.pid]
		if !ok {
			continue // not ours (or acked twice)
		}
		delete(s.inflight, a.pid)
		delete(s.sending, e.ID)
		if a.code >= packets.ErrUnspecifiedError.Code && e.Client != "" {
			// A device refused a command: it will never take it, and it
			// ends rejected instead of delivered.
			refusals = append(refusals, refusal{e, a.code})
			continue
		}
		acks = append(acks, e)
		if e.Client != "" {
			if s.delivered == nil || len(s.delivered) >= maxDelivered {
				s.delivered = make(map[string]bool) // past the bound: a rewind may repeat one (devices dedupe)
			}
			s.delivered[e.ID] = true
		}
	}
	if s.inflight != nil && len(s.inflight) == 0 {
		// Give the maps back while idle.
		clear(s.sending) // in step with inflight; cleared to be sure
		flightPool.Put(s.inflight)
		idSetPool.Put(s.sending)
		s.inflight, s.sending = nil, nil
	}
	s.enqueue(acks, refusals, nil)
	if closed {
		if s.retry != nil {
			s.retry.Stop()
		}
		s.bgWG.Wait()
		s.unregister()
		close(s.finished)
		s.n.sessWG.Done()
		return true
	}
	if wake {
		s.more = true
	}
	if rewind && s.skipped {
		s.cursor, s.skipped, s.more = "", false, true
	}
	if len(subs) == 0 || s.broken {
		return false // nothing is streamed before a subscription
	}
	// Refill the window in batches of at least a quarter of it (one
	// Fetch for many entries), unless nothing is in flight. Fetch marks
	// what it returns as on the wire: ask for no more than the free
	// slots.
	refill := max(1, s.window/4)
	for s.more && !s.broken && !s.isClosed() && (len(s.inflight) == 0 || s.window-len(s.inflight) >= refill) {
		want := s.window - len(s.inflight)
		ctx, cancel := context.WithTimeout(s.n.ctx, redisTimeout)
		entries, more, err := s.n.store.FetchPage(ctx, s.identity, s.cursor, want)
		cancel()
		if err != nil {
			if s.n.ctx.Err() != nil {
				break
			}
			if !s.failing {
				s.failing = true
				s.n.log.Warn("cannot read mailbox; retrying", "client_id", s.identity, "err", err)
			}
			if s.retry == nil {
				s.retry = time.AfterFunc(retryDelay, s.kick)
			} else {
				s.retry.Reset(retryDelay)
			}
			break
		}
		if s.failing {
			s.failing = false
			s.n.log.Info("mailbox readable again", "client_id", s.identity)
		}
		s.n.m.reads.Inc()
		if len(entries) < want && !more {
			s.more = false
		}
		if len(entries) == 0 {
			continue // a run of stale entries, skipped and deleted: read on
		}
		var unsend []mailbox.Entry
		// notSent hands a fetched entry back (command entries only: Fetch
		// marks nothing else).
		notSent := func(e mailbox.Entry) {
			if e.Client != "" {
				unsend = append(unsend, e)
			}
		}
		for _, e := range entries {
			s.cursor = e.ID
			if s.broken {
				notSent(e)
				continue
			}
			if s.sending[e.ID] || s.isAcking(e.ID) {
				notSent(e) // re-read after a rewind: already on the wire
				continue
			}
			if s.delivered[e.ID] {
				continue // re-read after a rewind: this connection PUBACKed it
			}
			if !matchesAny(subs, e.Topic) {
				s.skipped = true
				notSent(e)
				continue
			}
			if s.isClosed() {
				s.broken, s.more = true, false
				notSent(e)
				continue
			}
			for {
				s.pid++
				if s.pid == 0 {
					s.pid = 1
				}
				if _, used := s.inflight[s.pid]; !used {
					break
				}
			}
			if h := s.n.beforePublish.Load(); h != nil {
				(*h)(s)
			}
			err := s.publish(s.pid, e)
			if errors.Is(err, packets.ErrPacketTooLarge) {
				// Larger than the client's Maximum Packet Size: it can
				// never be delivered on this connection. It stays in the
				// mailbox (until it expires).
				s.n.log.Warn("mailbox entry too large for the client's maximum packet size; skipped",
					"client_id", s.identity, "entry", e.ID, "size", len(e.Payload), telemetry.KeyTraceID, telemetry.TraceIDOf(e.TraceParent))
				s.skipped = true
				notSent(e)
				continue
			}
			if err != nil {
				// The connection is going away; the close follows. A
				// failed write never completes a PUBLISH, so neither this
				// entry nor the rest of the batch went out.
				s.n.log.Debug("cannot send mailbox entry", "client_id", s.identity, "err", err)
				s.broken, s.more = true, false
				notSent(e)
				continue
			}
			if s.inflight == nil {
				s.inflight = flightPool.Get().(map[uint16]mailbox.Entry)
				s.sending = idSetPool.Get().(map[string]bool)
			}
			s.inflight[s.pid] = e
			s.sending[e.ID] = true
			s.n.m.delivers.Inc()
		}
		s.enqueue(nil, nil, unsend)
	}
	return false
}

// publish writes entry e as a QoS 1 PUBLISH with packet ID pid. An
// entry that carries a trace (Entry.TraceParent: the worker's dispatch
// for a command, the relay for a result) gets a producer span, "send" to
// a device or "deliver" to a client, whose traceparent an MQTT 5
// receiver gets as the user property "traceparent".
func (s *session) publish(pid uint16, e mailbox.Entry) error {
	pk := packets.Packet{
		FixedHeader: packets.FixedHeader{Type: packets.Publish, Qos: 1},
		TopicName:   e.Topic,
		Payload:     e.Payload,
		PacketID:    pid,
		Created:     time.Now().Unix(),
	}
	if !e.Expires.IsZero() {
		pk.Expiry = e.Expires.Unix() // MQTT 5 message expiry interval
	}
	if e.TraceParent == "" {
		return s.cl.WritePacket(pk)
	}
	if !telemetry.Enabled() {
		// No span to record: the entry's traceparent goes on as it is
		// (written by the gateway, so well-formed), at no cost.
		if s.cl.Properties.ProtocolVersion == 5 {
			pk.Properties.User = []packets.UserProperty{{Key: "traceparent", Val: e.TraceParent}}
		}
		return s.cl.WritePacket(pk)
	}
	name, attrs := "deliver", []attribute.KeyValue{attribute.String("client_id", s.identity)}
	if e.Client != "" {
		name, attrs = "send", []attribute.KeyValue{attribute.String("device_id", s.identity),
			attribute.String("client_id", e.Client), attribute.String("msg_id", e.MsgKey)}
	}
	ctx, span := telemetry.Tracer().Start(telemetry.ContextWithTraceParent(context.Background(), e.TraceParent), name,
		trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(append(attrs,
			attribute.String("messaging.system", "mqtt"), attribute.String("messaging.destination.name", e.Topic),
			attribute.String("node", s.n.cfg.NodeID))...))
	defer span.End()
	if s.cl.Properties.ProtocolVersion == 5 {
		pk.Properties.User = []packets.UserProperty{{Key: "traceparent", Val: telemetry.TraceParent(ctx)}}
	}
	err := s.cl.WritePacket(pk)
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	return err
}

// enqueue hands PUBACKed entries (acks), refused command entries
// (refusals) and fetched but unpublished entries (unsends) to the
// session's background goroutine, starting it if it is not running, so
// that the window refills without waiting for Redis. Until its Ack (or
// Refuse) is done, a re-read of the mailbox skips an acked entry. It
// copies the entries: the caller keeps its slices.
func (s *session) enqueue(acks []mailbox.Entry, refusals []refusal, unsends []mailbox.Entry) {
	if len(acks) == 0 && len(refusals) == 0 && len(unsends) == 0 {
		return
	}
	s.mu.Lock()
	if len(refusals) > 0 {
		if s.acking == nil {
			s.acking = idSetPool.Get().(map[string]bool)
		}
		for _, r := range refusals {
			s.acking[r.e.ID] = true
		}
		s.refuseQ = append(s.refuseQ, refusals...)
	}
	if len(acks) > 0 {
		if s.acking == nil {
			s.acking = idSetPool.Get().(map[string]bool)
		}
		if s.ackQ == nil {
			s.ackQ = entryPool.Get().(*[]mailbox.Entry)
		}
		for _, e := range acks {
			s.acking[e.ID] = true
		}
		*s.ackQ = append(*s.ackQ, acks...)
	}
	s.unsendQ = append(s.unsendQ, unsends...)
	start := !s.bgBusy
	if start {
		s.bgBusy = true
		s.bgWG.Add(1)
	}
	s.mu.Unlock()
	if start {
		go s.background()
	}
}

// background makes the Redis calls that the session goroutine does not
// wait for, until nothing is queued: the Unsends first (so that an entry
// re-read while its Ack is still queued gets its attempt back before the
// Ack makes it delivered), then the refused command entries, one Refuse
// each, then all the PUBACKed entries in one AckMany. What arrives
// meanwhile makes the next batch.
func (s *session) background() {
	defer s.bgWG.Done()
	for {
		s.mu.Lock()
		acks, refusals, unsends := s.ackQ, s.refuseQ, s.unsendQ
		s.ackQ, s.refuseQ, s.unsendQ = nil, nil, nil
		if acks == nil && len(refusals) == 0 && len(unsends) == 0 {
			s.bgBusy = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		if len(unsends) > 0 {
			s.unsend(unsends)
		}
		if len(refusals) > 0 {
			for _, r := range refusals {
				s.refuse(r)
			}
			s.mu.Lock()
			for _, r := range refusals {
				delete(s.acking, r.e.ID)
			}
			if len(s.acking) == 0 && s.acking != nil {
				idSetPool.Put(s.acking)
				s.acking = nil
			}
			s.mu.Unlock()
		}
		if acks != nil {
			s.ack(*acks)
			s.mu.Lock()
			for _, e := range *acks {
				delete(s.acking, e.ID)
			}
			if len(s.acking) == 0 {
				idSetPool.Put(s.acking)
				s.acking = nil
			}
			s.mu.Unlock()
			putEntries(acks)
		}
	}
}

func (s *session) isAcking(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acking[id]
}

// ack removes entries whose PUBACK arrived on this connection, in one
// round trip. A failure leaves the entries in the mailbox: they are sent
// again to the next session (a duplicate, never a loss).
func (s *session) ack(entries []mailbox.Entry) {
	if s.n.killed.Load() {
		return
	}
	var err error
	for attempt := range 3 {
		if attempt > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(s.n.ctx, redisTimeout)
		err = s.n.store.AckMany(ctx, s.identity, entries)
		cancel()
		if err == nil {
			s.n.m.acks.Add(float64(len(entries)))
			return
		}
		if s.n.ctx.Err() != nil {
			break
		}
	}
	s.n.log.Warn("cannot remove acknowledged mailbox entries; they will be sent again", "client_id", s.identity,
		"entries", len(entries), "first", entries[0].ID, "err", err)
}

// refuse ends the command of an entry that the device refused
// (mailbox.Store.Refuse: rejected, -32005 with the reason code to the
// client). A failure leaves the entry in the mailbox: it is sent again to
// the next session, which may refuse it again.
func (s *session) refuse(r refusal) {
	if s.n.killed.Load() {
		return
	}
	var err error
	for attempt := range 3 {
		if attempt > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(s.n.ctx, redisTimeout)
		var out mailbox.Outcome
		out, err = s.n.store.Refuse(ctx, s.identity, r.e, r.code)
		cancel()
		if err == nil {
			s.n.m.refusals.WithLabelValues(string(out)).Inc()
			return
		}
		if s.n.ctx.Err() != nil {
			break
		}
	}
	s.n.log.Warn("cannot end a refused command; its entry will be sent again", "client_id", s.identity,
		"entry", r.e.ID, telemetry.KeyTraceID, telemetry.TraceIDOf(r.e.TraceParent), "err", err)
}

// unsend hands back fetched entries that were not published
// (mailbox.Unsend), within one Redis timeout for the batch. A failure
// leaves those commands marked as on the wire: they cannot be cancelled,
// and time out instead of expiring (conservative, not wrong).
func (s *session) unsend(entries []mailbox.Entry) {
	if s.n.killed.Load() {
		return
	}
	ctx, cancel := context.WithTimeout(s.n.ctx, redisTimeout)
	defer cancel()
	for i, e := range entries {
		if err := s.n.store.Unsend(ctx, s.identity, e); err != nil {
			if s.n.ctx.Err() == nil {
				s.n.log.Warn("cannot hand back unsent mailbox entries; their commands stay on the wire",
					"client_id", s.identity, "entries", len(entries)-i, "first", e.ID, "err", err)
			}
			return
		}
		s.n.m.unsent.Inc()
	}
}

// register records the live session in Redis with this connection's
// token (mailbox.SetSessionConn), so that workers signal this node.
func (s *session) register() {
	mu := s.n.regLock(s.identity)
	mu.Lock()
	defer mu.Unlock()
	if s.n.current(s.identity) != s {
		return // replaced already; the newer session registers
	}
	ctx, cancel := context.WithTimeout(s.n.ctx, redisTimeout)
	defer cancel()
	if err := s.n.store.SetSessionConn(ctx, s.identity, s.n.node, s.conn); err != nil {
		s.n.log.Warn("cannot register session", "client_id", s.identity, "err", err)
	}
}

// unregister forgets the session in Redis unless a newer session of the
// identity lives on this node.
func (s *session) unregister() {
	if s.n.killed.Load() {
		return
	}
	mu := s.n.regLock(s.identity)
	mu.Lock()
	defer mu.Unlock()
	if s.n.current(s.identity) != nil {
		return
	}
	if err := s.clearRegistration(); err != nil && s.n.ctx.Err() == nil {
		s.n.log.Warn("cannot unregister session", "client_id", s.identity, "err", err)
	}
}

// clearRegistration forgets the registration of this very connection
// (mailbox.ClearSessionConn): when it reaches Redis after a newer
// connection of the identity has registered (a takeover, a call that
// timed out here but still ran there), it changes nothing.
func (s *session) clearRegistration() error {
	ctx, cancel := context.WithTimeout(s.n.ctx, redisTimeout)
	defer cancel()
	return s.n.store.ClearSessionConn(ctx, s.identity, s.n.node, s.conn)
}

func matchesAny(filters []string, topic string) bool {
	for _, f := range filters {
		if protocol.FilterMatches(f, topic) {
			return true
		}
	}
	return false
}
