package main

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

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

// redisTimeout bounds one Redis call of a session (an ack or a fetch: at
// least redisTimeout - 1 s, with the context those calls share, redisCtx).
const redisTimeout = 5 * time.Second

// sharedCtx is a context that the Redis calls starting within about a
// second share (Node.redisCtx).
type sharedCtx struct {
	ctx      context.Context
	cancel   context.CancelFunc // never called early: calls may use ctx until its deadline, which releases it
	deadline time.Time
}

// redisCtx returns the context of one Redis call of a session (an ack, a
// fetch): done when the node stops, with a deadline between
// redisTimeout - 1 s and redisTimeout away. The calls that start within
// the same second share it, so that a call costs no context, timer and
// registration with the node's context of its own: one per ack, they cost
// a tenth of the push server's CPU live.
func (n *Node) redisCtx() context.Context {
	now := time.Now()
	if c := n.rctx.Load(); c != nil && c.deadline.Sub(now) >= redisTimeout-time.Second {
		return c.ctx
	}
	n.rctxMu.Lock()
	defer n.rctxMu.Unlock()
	if c := n.rctx.Load(); c != nil && c.deadline.Sub(now) >= redisTimeout-time.Second {
		return c.ctx
	}
	c := &sharedCtx{deadline: now.Add(redisTimeout)}
	c.ctx, c.cancel = context.WithDeadline(n.ctx, c.deadline)
	n.rctx.Store(c)
	return c.ctx
}

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

// session is one live MQTT connection of an identity and the streaming of
// the identity's mailbox to it.
//
// Its life is a sessionState (below). The connection's reading worker
// records what the client did (a SUBSCRIBE, an UNSUBSCRIBE) and
// processes PUBACKs itself (puback); the session's runner (a goroutine
// that runs only while there is work, see runState) registers the
// session, reads the mailbox and writes PUBLISHes; the background
// goroutine makes the Redis calls nobody waits for (AckMany, Refuse,
// Unsend). A slow Redis never blocks the connection's reads.
//
// Delivery: once the session has a subscription, the runner reads the
// mailbox in order (Fetch after a cursor, no more entries than the free
// slots of the window) and sends each entry that one of its
// subscriptions matches as a QoS 1 PUBLISH, with a packet ID it
// allocates itself, keeping at most window PUBLISHes unacknowledged. A
// PUBACK read on this very connection takes the entry out of the window
// and queues it for the background goroutine, which removes the
// PUBACKed entries from the mailbox in batches (mailbox.AckMany). Entries
// no subscription matches are skipped and stay in the mailbox; a later
// subscription re-reads the mailbox from the start. When the connection
// ends, unacknowledged entries simply stay in the mailbox for the next
// session, wherever it is.
//
// Fetch marks every command entry it returns as on the wire. Each fetched
// command entry that is not published after all (no subscription matches
// it, it is too large for the client, it is in flight or being acked
// already, the connection has ended or refuses writes) is handed back
// with mailbox.Unsend, by the background goroutine, so that Cancel and
// the deliver-by timer see the truth.
type session struct {
	n         *Node
	cl        *client
	identity  string
	conn      string    // token of this connection in the session registry
	role      auth.Role // the token's role: decides the topics (topicAllowed)
	window    int
	expires   int64 // when the token expires, unix nanoseconds; 0: never
	expiryIdx int32 // in the node's expiries heap; -1: not in it

	mu          sync.Mutex
	state       sessionState
	run         runState
	subs        []string        // granted filters (QoS 1); copied on write: the runner reads it unlocked
	granted     []string        // filters granted by a SUBSCRIBE whose SUBACK is not written yet
	wake        bool            // the mailbox may have new entries
	carried     []mailbox.Wake  // wake-ups that carry their entries, in arrival order (offer)
	tail        string          // the latest mailbox tail a sweep found (nudge)
	blocked     bool            // the runner stopped reading for want of room in the window: PUBACKs refill it
	rewind      bool            // a subscription was added: re-read skipped entries
	reoffer     bool            // Redis is back from an outage: offer everything again, delivered commands too
	reofferedAt int64           // when the last re-offer was asked for, unix nanoseconds
	bgBusy      bool            // the background goroutine is running
	acking      map[string]bool // entry IDs PUBACKed whose Ack is queued or running (nil when none)
	ackQ        *[]mailbox.Entry
	unsendQ     []mailbox.Entry // fetched, unpublished entries for it to Unsend
	refuseQ     []refusal       // command entries the device refused, for it to Refuse
	// The window, shared by the runner (which fills it) and the reading
	// worker (whose PUBACKs empty it).
	inflight map[uint16]mailbox.Entry // by packet ID; nil when empty
	sending  map[string]bool          // entry IDs in flight; nil when empty
	// delivered holds the command entries this connection PUBACKed: they
	// stay in the mailbox until their command is final (re-offered to the
	// device's next connection, DESIGN §7a), and a rewind must not send
	// them again on this one. Bounded by maxDelivered; nil when empty.
	delivered map[string]bool

	bgWG sync.WaitGroup // the background goroutine

	// The reading position, the runner's alone (one run hands it to the
	// next under mu).
	cursor  string // last entry read
	more    bool   // the mailbox may hold more after cursor
	skipped bool   // some entry was skipped for want of a subscription
	pid     uint16 // last packet ID allocated
	retry   *time.Timer
	failing bool

	finished chan struct{} // closed when the session has ended (sessionEnded)
}

// sessionState is where a session is in its life:
//
//	                 register           SUBACK
//	sessionNew ─────────────▶ sessionIdle ◀────▶ sessionStreaming
//	     │  (or straight to Streaming      UNSUBSCRIBE   │
//	     │   when subscribed already)      of the last   │
//	     │                                               │
//	     ├──── shed, token expiry, lame duck, ───────────┤
//	     │     a write that failed                       ▼
//	     │                                        sessionClosing
//	     │                                               │
//	     └──────── the connection ended ─────────────────┴──▶ sessionClosed ──▶ sessionEnded
//	                                                              (acks, hand-backs done;
//	                                                               registration cleared)
//
// Only the runner registers (New → Idle/Streaming) and ends
// (Closed → Ended) a session; transitions are checked against
// sessionTransitions.
type sessionState uint8

const (
	sessionNew       sessionState = iota // established; not registered in Redis yet
	sessionIdle                          // registered; no subscription: nothing is streamed
	sessionStreaming                     // subscribed: the mailbox is streamed
	sessionClosing                       // the connection is being closed (or refuses writes): nothing more is sent
	sessionClosed                        // the connection has ended: what is queued is finished, then it is unregistered
	sessionEnded                         // unregistered; nothing runs again
)

var sessionStateNames = [...]string{"new", "idle", "streaming", "closing", "closed", "ended"}

func (st sessionState) String() string { return sessionStateNames[st] }

// sessionTransitions lists, for each state, the states it may move to.
var sessionTransitions = [...][]sessionState{
	sessionNew:       {sessionIdle, sessionStreaming, sessionClosing, sessionClosed},
	sessionIdle:      {sessionStreaming, sessionClosing, sessionClosed},
	sessionStreaming: {sessionIdle, sessionClosing, sessionClosed},
	sessionClosing:   {sessionClosed},
	sessionClosed:    {sessionEnded},
	sessionEnded:     nil,
}

// moveTo moves the session to state next if sessionTransitions allows
// it from where it is, and reports whether it did. The caller holds mu.
func (s *session) moveTo(next sessionState) bool {
	if !slices.Contains(sessionTransitions[s.state], next) {
		return false
	}
	s.state = next
	return true
}

// runState says whether the session's runner is running: a session that
// has nothing to do holds no goroutine.
type runState uint8

const (
	runIdle  runState = iota // no runner
	runBusy                  // a runner is stepping
	runAgain                 // a runner is stepping, and more work arrived: it steps again
)

// maxDelivered bounds a session's set of delivered entries.
const maxDelivered = 4096

func newSession(n *Node, c *client, claims *auth.Claims) *session {
	window := n.cfg.Inflight
	if rm := int(c.receiveMax); c.version == 5 && rm > 0 && rm < window {
		window = rm
	}
	s := &session{
		n:         n,
		cl:        c,
		identity:  c.id,
		conn:      n.newConnToken(),
		role:      internRole(claims.Role),
		expiryIdx: -1,
		window:    window,
		finished:  make(chan struct{}),
	}
	if exp := claims.Expires(); !exp.IsZero() {
		s.expires = exp.UnixNano()
	}
	return s
}

// internRole returns the constant of a token's role, so that a session
// keeps no string of the decoded token.
func internRole(r auth.Role) auth.Role {
	for _, known := range []auth.Role{auth.RoleDevice, auth.RoleClient, auth.RoleOperator} {
		if r == known {
			return known
		}
	}
	return r
}

// kick asks the runner to read the mailbox.
func (s *session) kick() {
	s.mu.Lock()
	s.wake = true
	s.mu.Unlock()
	s.poke()
}

// nudge is kick for the sweep of the node's pending set, which read the
// ID of the mailbox's last entry (tail, "" when it was empty): the runner
// reads the mailbox only when tail is after its cursor (what it has read
// already needs no read), and an empty mailbox needs no step at all.
func (s *session) nudge(tail string) {
	if tail == "" {
		return
	}
	s.mu.Lock()
	if mailbox.CompareIDs(tail, s.tail) > 0 {
		s.tail = tail
	}
	s.mu.Unlock()
	s.poke()
}

// maxCarriedQueue bounds the carried entries a session keeps until its
// runner steps; beyond it, a wake-up only asks for a read.
const maxCarriedQueue = 256

// offer hands the runner a wake-up that carries its entry
// (mailbox.Wake): when the session has read its mailbox up to the entry
// before it, the runner sends it without reading the mailbox
// (sendCarried); otherwise it reads the mailbox, as for a kick.
func (s *session) offer(w mailbox.Wake) {
	s.mu.Lock()
	if len(s.carried) < maxCarriedQueue {
		s.carried = append(s.carried, w)
	} else {
		s.wake = true
	}
	s.mu.Unlock()
	s.poke()
}

// kickHere is kick, but when the runner is not running, the caller does
// the step itself (for the full sweep, whose workers bound how many
// sessions read their mailbox at once); what arrives meanwhile continues
// on a runner.
func (s *session) kickHere() {
	s.mu.Lock()
	s.wake = true
	start := s.claimRun()
	s.mu.Unlock()
	if start && s.stepOnce() {
		// More arrived during the step (a busy session): it continues
		// on a runner, so that no sweep worker is held by one session.
		s.n.runners.start(s)
	}
}

// claimRun records that there is work, and reports whether the caller
// must start a runner (none is running). The caller holds mu.
func (s *session) claimRun() bool {
	switch s.run {
	case runIdle:
		s.run = runBusy
		return true
	case runBusy:
		s.run = runAgain
	}
	return false
}

// poke gives the runner something to do, starting it if it is not
// running.
func (s *session) poke() {
	s.mu.Lock()
	start := s.claimRun()
	s.mu.Unlock()
	if start {
		// On a parked runner, whose stack has grown for a step already.
		s.n.runners.start(s)
	}
}

// start starts the session: its runner registers it. The caller has
// added the session to n.sessWG.
func (s *session) start() { s.poke() }

// subscribed records the filters a SUBSCRIBE asks for, within limit
// subscriptions in all; it reports which it granted (a filter subscribed
// already is granted again without counting twice). They take effect
// with subscribeDone.
func (s *session) subscribed(filters []string, limit int) []bool {
	ok := make([]bool, len(filters))
	s.mu.Lock()
	defer s.mu.Unlock()
	have := len(s.subs) + len(s.granted)
	for i, f := range filters {
		switch {
		case slices.Contains(s.subs, f) || slices.Contains(s.granted, f):
			ok[i] = true
			if !slices.Contains(s.granted, f) {
				s.granted = append(s.granted, f)
			}
		case have < limit:
			ok[i] = true
			have++
			s.granted = append(s.granted, strings.Clone(f)) // not the packet's bytes
		}
	}
	return ok
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
	subs := slices.Clone(s.subs)
	for _, f := range s.granted {
		if !slices.Contains(subs, f) {
			subs = append(subs, f)
		}
	}
	s.subs = subs
	s.granted = nil
	s.wake, s.rewind = true, true
	if s.state == sessionIdle {
		s.moveTo(sessionStreaming)
	}
	s.mu.Unlock()
	s.poke()
}

// unsubscribed forgets filters; it reports which were subscribed.
func (s *session) unsubscribed(filters []string) []bool {
	removed := make([]bool, len(filters))
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, f := range filters {
		if k := slices.Index(s.subs, f); k >= 0 {
			s.subs = slices.Delete(slices.Clone(s.subs), k, k+1)
			removed[i] = true
		}
	}
	if len(s.subs) == 0 && s.state == sessionStreaming {
		s.moveTo(sessionIdle)
	}
	return removed
}

// refusal is a command entry that its device refused with a PUBACK
// reason code of 0x80 or more.
type refusal struct {
	e    mailbox.Entry
	code byte
}

// puback processes the PUBACK of packet ID pid read on this connection,
// with its reason code (0 for MQTT 3.1.1), on the reading worker: the
// entry leaves the window and goes to the background goroutine, which
// removes it from the mailbox (AckMany) or, for a command its device
// refused (reason code 0x80 or more), ends the command rejected
// (mailbox.Store.Refuse). A client that refuses a result will never take
// it either: that delivery is complete all the same. A PUBACK of a
// packet ID that is not in flight is ignored.
func (s *session) puback(pid uint16, code byte) {
	s.mu.Lock()
	e, ok := s.inflight[pid]
	if !ok {
		s.mu.Unlock()
		return
	}
	delete(s.inflight, pid)
	delete(s.sending, e.ID)
	if s.acking == nil {
		s.acking = idSetPool.Get().(map[string]bool)
	}
	s.acking[e.ID] = true
	refused := code >= packets.ErrUnspecifiedError.Code
	switch {
	case refused && e.Client != "":
		s.refuseQ = append(s.refuseQ, refusal{e, code})
	default:
		if s.ackQ == nil {
			s.ackQ = entryPool.Get().(*[]mailbox.Entry)
		}
		*s.ackQ = append(*s.ackQ, e)
		if e.Client != "" {
			if s.delivered == nil || len(s.delivered) >= maxDelivered {
				s.delivered = make(map[string]bool) // past the bound: a rewind may repeat one (devices dedupe)
			}
			s.delivered[e.ID] = true
		}
	}
	if len(s.inflight) == 0 {
		s.releaseWindow()
	}
	bg := s.claimBackground()
	refill := s.blocked && s.state == sessionStreaming && s.roomFor(max(1, s.window/4))
	if refill {
		s.blocked = false
	}
	s.mu.Unlock()
	if refused {
		s.n.log.Info("client refused a message", "client_id", s.identity, "reason", code)
	}
	if bg {
		s.n.acker.start(s)
	}
	if refill {
		s.poke()
	}
}

// releaseWindow gives the window's maps back while nothing is in
// flight. The caller holds mu.
func (s *session) releaseWindow() {
	if s.inflight == nil {
		return
	}
	clear(s.sending) // in step with inflight; cleared to be sure
	flightPool.Put(s.inflight)
	idSetPool.Put(s.sending)
	s.inflight, s.sending = nil, nil
}

// closing records that the connection is being closed (shed, token
// expiry, lame duck): nothing more is sent on it. It reports whether the
// session was open until now.
func (s *session) closing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.moveTo(sessionClosing)
}

// close tells the runner that the connection has ended, once: the node
// forgets the session first, so that the runner's unregister sees whether
// a newer session of the identity lives here. It reports whether it did.
func (s *session) close() bool {
	s.n.expiries.remove(s)
	s.mu.Lock()
	moved := s.moveTo(sessionClosed)
	s.mu.Unlock()
	if moved {
		s.n.forget(s)
		s.poke()
	}
	return moved
}

// current returns the session's state.
func (s *session) current() sessionState {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.state
}

// isClosed reports whether the connection has ended.
func (s *session) isClosed() bool { return s.current() >= sessionClosed }

func (s *session) hasSubscription() bool { return s.current() == sessionStreaming }

// isShed reports whether the connection is being closed already.
func (s *session) isShed() bool { return s.current() >= sessionClosing }

// shed closes the session because another node owns the identity (or the
// node is stopping): MQTT 5 clients get DISCONNECT 0x9C with the owner's
// URL as server reference (0x8B when no owner is known).
func (s *session) shed(owner ring.Member) {
	if !s.closing() {
		return
	}
	s.n.m.sheds.Inc()
	if owner.URL != "" {
		s.n.closeAnswered(s.cl, packets.ErrUseAnotherServer, owner.URL)
	} else {
		s.n.closeAnswered(s.cl, packets.ErrServerShuttingDown, "")
	}
}

// take returns and clears what the connection and the wake-ups recorded
// for the runner. A re-offer forgets what this connection PUBACKed.
func (s *session) take() (state sessionState, wake, rewind, reoffer bool, subs []string, carried []mailbox.Wake, tail string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	wake, rewind, reoffer, carried, tail = s.wake, s.rewind, s.reoffer, s.carried, s.tail
	s.wake, s.rewind, s.reoffer, s.carried, s.tail = false, false, false, nil, ""
	if reoffer {
		s.delivered = nil
	}
	return s.state, wake, rewind, reoffer, s.subs, carried, tail // subs: copied on write
}

// offerAgain has the mailbox read again from its start, and the commands
// this connection has PUBACKed offered again (same id), once: after Redis
// came back from an outage (DESIGN §7a, "Re-offer"), during which an
// answer may have been lost. Devices answer a repeated id again without
// executing it again.
//
// Both the node (its sweep) and the session (its mailbox read) notice
// the end of an outage: a session re-offers at most once per
// reofferSweeps sweep intervals, so one outage re-offers once.
func (s *session) offerAgain() {
	now := time.Now().UnixNano()
	s.mu.Lock()
	if s.state != sessionStreaming || (s.reofferedAt != 0 && now-s.reofferedAt < int64(reofferSweeps*s.n.cfg.SweepInterval)) {
		s.mu.Unlock()
		return
	}
	s.reofferedAt = now
	s.reoffer, s.wake = true, true
	s.mu.Unlock()
	s.n.m.reoffers.Inc()
	s.poke()
}

// reofferSweeps is how many sweep intervals a re-offer covers (see
// offerAgain).
const reofferSweeps = 5

// runSession is the runner: it steps while there is something to do (a
// kick, a subscription, a freed slot of the window, the end of the
// connection) and returns when there is nothing, so that idle sessions
// hold no goroutine. At most one runs at a time (poke).
func (s *session) runSession() {
	for s.stepOnce() {
	}
}

// stepOnce does a step and reports whether more work arrived meanwhile
// (the caller steps again); when it reports false, the run state is idle,
// or the session has ended (the run state stays busy: no runner starts
// again).
func (s *session) stepOnce() bool {
	if s.step() {
		return false // ended
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.run == runAgain {
		s.run = runBusy
		return true
	}
	s.run = runIdle
	return false
}

// step registers a new session, ends a closed one, and, when the
// session is streaming, refills the window from the mailbox. It returns
// true when it has ended the session.
func (s *session) step() bool {
	state, wake, rewind, reoffer, subs, carried, tail := s.take()
	if state == sessionNew {
		s.register()
		s.mu.Lock()
		if len(s.subs) > 0 {
			s.moveTo(sessionStreaming)
		} else {
			s.moveTo(sessionIdle)
		}
		state = s.state
		s.mu.Unlock()
	}
	if state == sessionClosed {
		if s.retry != nil {
			s.retry.Stop()
		}
		s.bgWG.Wait()
		s.unregister()
		s.mu.Lock()
		s.moveTo(sessionEnded)
		s.mu.Unlock()
		close(s.finished)
		s.n.sessWG.Done()
		return true
	}
	if wake || mailbox.CompareIDs(tail, s.cursor) > 0 {
		s.more = true
	}
	if reoffer || (rewind && s.skipped) {
		s.cursor, s.skipped, s.more = "", false, true
	}
	if state != sessionStreaming {
		return false // nothing is streamed before a subscription, nor once closing
	}
	if len(carried) > 0 && !s.more {
		s.sendCarried(carried, subs)
	}
	// Refill the window in batches of at least a quarter of it (one
	// Fetch for many entries), unless nothing is in flight. Fetch marks
	// what it returns as on the wire: ask for no more than the free
	// slots.
	refill := max(1, s.window/4)
	for s.more {
		want := s.freeSlots(refill)
		if want == 0 {
			break // the PUBACKs that make room step again (blocked)
		}
		entries, more, err := s.n.store.FetchPage(s.n.redisCtx(), s.identity, s.cursor, want)
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
			// Back from an outage: what this page holds is sent, and
			// the next step reads the mailbox again from its start.
			s.failing = false
			s.n.log.Info("mailbox readable again", "client_id", s.identity)
			s.offerAgain()
		}
		s.n.m.reads.Inc()
		if len(entries) < want && !more {
			s.more = false
		}
		if !s.send(entries, subs) {
			break
		}
	}
	return false
}

// sendCarried sends the entries that wake-ups carried, in order, without
// reading the mailbox, as long as each is the next one (mailbox.Wake.Next:
// after the cursor, and nothing between), fits in the window, carries no
// command (Fetch's stamp must mark those on the wire) and has not expired.
// Entries read already are passed over. At the first that fails one of
// these, the rest is left to a read of the mailbox (s.more), which finds
// them all: an entry is appended before its wake-up is published.
func (s *session) sendCarried(carried []mailbox.Wake, subs []string) {
	s.mu.Lock()
	free := s.window - len(s.inflight)
	s.mu.Unlock()
	now := time.Now()
	cursor := s.cursor
	var page []mailbox.Entry
	for _, w := range carried {
		if mailbox.CompareIDs(w.Entry.ID, cursor) <= 0 {
			continue // read already
		}
		if !w.Next(cursor) || w.Entry.Client != "" || !w.Entry.Expires.After(now) || len(page) >= free {
			s.more = true
			break
		}
		page = append(page, w.Entry)
		cursor = w.Entry.ID
	}
	if len(page) > 0 {
		s.n.m.carried.Add(float64(len(page)))
		s.send(page, subs)
	}
}

// freeSlots returns how many entries to fetch into the window: its free
// slots when they are at least refill or nothing is in flight (roomFor),
// else 0. It records whether it returned 0 for want of room (blocked),
// in the same critical section as the PUBACKs that make room read it, so
// that the PUBACK that makes enough room steps the runner again (puback):
// none is lost, and no other PUBACK steps it for nothing. 0 as well when
// the session no longer streams.
func (s *session) freeSlots(refill int) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.blocked = false
	if s.state != sessionStreaming {
		return 0
	}
	if !s.roomFor(refill) {
		s.blocked = true
		return 0
	}
	return s.window - len(s.inflight)
}

// roomFor reports whether the window has room for a fetch: refill free
// slots or more, or nothing in flight. The caller holds mu.
func (s *session) roomFor(refill int) bool {
	free := s.window - len(s.inflight)
	return free > 0 && (free >= refill || len(s.inflight) == 0)
}

// send publishes the fetched entries that a subscription matches, in
// order, each into the window, and hands the others back (Unsend). It
// reports false when the connection refuses writes (nothing more is
// sent).
func (s *session) send(entries []mailbox.Entry, subs []string) bool {
	var unsend []mailbox.Entry
	// notSent hands a fetched entry back (command entries only: Fetch
	// marks nothing else).
	notSent := func(e mailbox.Entry) {
		if e.Client != "" {
			unsend = append(unsend, e)
		}
	}
	ok := true
	b := getBatch()
	for _, e := range entries {
		s.cursor = e.ID
		if !ok {
			notSent(e)
			continue
		}
		pid, verdict := s.place(e, subs)
		switch verdict {
		case placeOnWire:
			notSent(e) // re-read after a rewind: already on the wire
			continue
		case placeDelivered:
			continue // re-read after a rewind: this connection PUBACKed it
		case placeSkipped:
			s.skipped = true
			notSent(e)
			continue
		case placeClosed:
			ok, s.more = false, false
			notSent(e)
			continue
		}
		if h := s.n.beforePublish.Load(); h != nil {
			(*h)(s)
		}
		err := s.encodePublish(b, pid, e)
		if err == nil {
			if b.buf.Len() >= maxPooledWrite {
				ok = s.flush(b, notSent)
			}
			continue
		}
		if !s.unplace(pid) {
			continue // PUBACKed all the same
		}
		notSent(e)
		if errors.Is(err, packets.ErrPacketTooLarge) {
			// Larger than the client's Maximum Packet Size: it can never
			// be delivered on this connection. It stays in the mailbox
			// (until it expires).
			s.n.log.Warn("mailbox entry too large for the client's maximum packet size; skipped",
				"client_id", s.identity, "entry", e.ID, "size", len(e.Payload), telemetry.KeyTraceID, telemetry.TraceIDOf(e.TraceParent))
			s.skipped = true
			continue
		}
		s.n.log.Warn("cannot encode mailbox entry", "client_id", s.identity, "entry", e.ID, "err", err)
		s.closing()
		ok, s.more = false, false
	}
	if !s.flush(b, notSent) {
		ok = false
	}
	putBatch(b)
	s.enqueue(unsend)
	return ok
}

// pubBatch holds the PUBLISHes of one page, encoded into one buffer, until
// they are written with one write (session.flush).
type pubBatch struct {
	pk      packets.Packet // the PUBLISH being encoded: 800 bytes kept off the runner's stack, which then rarely grows
	buf     *bytes.Buffer
	pids    []uint16        // their packet IDs, in the window
	entries []mailbox.Entry // their entries
	spans   []trace.Span    // their producer spans, ended once written
}

var batchPool = sync.Pool{New: func() any { return new(pubBatch) }}

func getBatch() *pubBatch {
	b := batchPool.Get().(*pubBatch)
	b.buf = getWriteBuffer()
	return b
}

// putBatch pools b, keeping no payload.
func putBatch(b *pubBatch) {
	b.reset()
	putWriteBuffer(b.buf)
	b.buf = nil
	batchPool.Put(b)
}

// reset empties b, keeping its buffers but no entry or span.
func (b *pubBatch) reset() {
	b.buf.Reset()
	b.pk = packets.Packet{}
	clear(b.entries)
	clear(b.spans)
	b.pids, b.entries, b.spans = b.pids[:0], b.entries[:0], b.spans[:0]
}

// flush writes the PUBLISHes of batch b at once and empties it. When the
// write fails, the connection is going away (the close follows): a
// failed write never completes a PUBLISH, so the batch's entries leave
// the window and go to notSent (but those PUBACKed all the same: the
// client had them), nothing more is sent, and flush reports false.
func (s *session) flush(b *pubBatch, notSent func(mailbox.Entry)) bool {
	if len(b.pids) == 0 {
		return true
	}
	err := s.cl.writeEncoded(b.buf.Bytes())
	for _, span := range b.spans {
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}
	ok := err == nil
	if ok {
		s.n.m.delivers.Add(float64(len(b.pids)))
	} else {
		for i, pid := range b.pids {
			if s.unplace(pid) {
				notSent(b.entries[i])
			}
		}
		s.n.log.Debug("cannot send mailbox entries", "client_id", s.identity, "entries", len(b.pids), "err", err)
		s.closing()
		s.more = false
	}
	b.reset()
	return ok
}

// Where place puts a fetched entry.
const (
	placeInWindow  = iota // in the window, with a packet ID: publish it
	placeOnWire           // in flight or being acked already
	placeDelivered        // this connection PUBACKed it already
	placeSkipped          // no subscription matches it
	placeClosed           // the session no longer streams
)

// place puts entry e into the window with a new packet ID, unless it is
// there already, was delivered on this connection, no subscription
// matches it, or the session no longer streams. It is in the window
// before its PUBLISH is written, so that its PUBACK always finds it.
func (s *session) place(e mailbox.Entry, subs []string) (uint16, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch {
	case s.sending[e.ID] || s.acking[e.ID]:
		return 0, placeOnWire
	case s.delivered[e.ID]:
		return 0, placeDelivered
	case !matchesAny(subs, e.Topic):
		return 0, placeSkipped
	case s.state != sessionStreaming:
		return 0, placeClosed
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
	if s.inflight == nil {
		s.inflight = flightPool.Get().(map[uint16]mailbox.Entry)
		s.sending = idSetPool.Get().(map[string]bool)
	}
	s.inflight[s.pid] = e
	s.sending[e.ID] = true
	return s.pid, placeInWindow
}

// unplace takes back the entry of packet ID pid whose PUBLISH could not
// be written; false when it is not in the window anymore (PUBACKed).
func (s *session) unplace(pid uint16) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.inflight[pid]
	if !ok {
		return false
	}
	delete(s.inflight, pid)
	delete(s.sending, e.ID)
	if len(s.inflight) == 0 {
		s.releaseWindow()
	}
	return true
}

// encodePublish adds entry e to batch b as a QoS 1 PUBLISH with packet
// ID pid. An entry that carries a trace (Entry.TraceParent: the worker's
// dispatch for a command, the relay for a result) gets a producer span,
// "send" to a device or "deliver" to a client, whose traceparent an
// MQTT 5 receiver gets as the user property "traceparent"; the span ends
// when the batch is written (flush).
func (s *session) encodePublish(b *pubBatch, pid uint16, e mailbox.Entry) error {
	b.pk = packets.Packet{} // nothing of the page's previous PUBLISH; reset clears it too (no payload kept)
	pk := &b.pk
	pk.FixedHeader = packets.FixedHeader{Type: packets.Publish, Qos: 1}
	pk.TopicName, pk.Payload, pk.PacketID, pk.Created = e.Topic, e.Payload, pid, time.Now().Unix()
	if !e.Expires.IsZero() {
		pk.Expiry = e.Expires.Unix() // MQTT 5 message expiry interval
	}
	var span trace.Span
	switch {
	case e.TraceParent == "":
	case !telemetry.Enabled():
		// No span to record: the entry's traceparent goes on as it is
		// (written by the gateway, so well-formed), at no cost.
		if s.cl.version == 5 {
			pk.Properties.User = []packets.UserProperty{{Key: "traceparent", Val: e.TraceParent}}
		}
	default:
		name, attrs := "deliver", []attribute.KeyValue{attribute.String("client_id", s.identity)}
		if e.Client != "" {
			name, attrs = "send", []attribute.KeyValue{attribute.String("device_id", s.identity),
				attribute.String("client_id", e.Client), attribute.String("msg_id", e.MsgKey)}
		}
		var ctx context.Context
		ctx, span = telemetry.Tracer().Start(telemetry.ContextWithTraceParent(context.Background(), e.TraceParent), name,
			trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(append(attrs,
				attribute.String("messaging.system", "mqtt"), attribute.String("messaging.destination.name", e.Topic),
				attribute.String("node", s.n.cfg.NodeID))...))
		if s.cl.version == 5 {
			pk.Properties.User = []packets.UserProperty{{Key: "traceparent", Val: telemetry.TraceParent(ctx)}}
		}
	}
	if err := s.cl.encodeTo(pk, b.buf); err != nil {
		if span != nil {
			span.SetStatus(codes.Error, err.Error())
			span.End()
		}
		return err
	}
	b.pids = append(b.pids, pid)
	b.entries = append(b.entries, e)
	if span != nil {
		b.spans = append(b.spans, span)
	}
	return nil
}

// enqueue hands fetched but unpublished entries to the background
// goroutine (Unsend), starting it if it is not running. It copies the
// entries: the caller keeps its slice.
func (s *session) enqueue(unsends []mailbox.Entry) {
	if len(unsends) == 0 {
		return
	}
	s.mu.Lock()
	s.unsendQ = append(s.unsendQ, unsends...)
	start := s.claimBackground()
	s.mu.Unlock()
	if start {
		s.n.acker.start(s)
	}
}

// claimBackground reports whether the caller must start the background
// goroutine for what it has just queued (none is running). The caller
// holds mu.
func (s *session) claimBackground() bool {
	if s.bgBusy {
		return false
	}
	s.bgBusy = true
	s.bgWG.Add(1)
	return true
}

// background makes the Redis calls that nobody waits for, until nothing is queued: the Unsends first (so that an entry
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
		err = s.n.store.AckMany(s.n.redisCtx(), s.identity, entries)
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
