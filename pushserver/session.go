package main

import (
	"context"
	"errors"
	"github.com/iotgw/gateway/internal/auth"
	"slices"
	"sync"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
	"github.com/iotgw/gateway/pushserver/ring"
)

// redisTimeout bounds one Redis call of a session.
const redisTimeout = 5 * time.Second

// retryDelay is how long a session waits before reading its mailbox again
// after a Redis error.
const retryDelay = time.Second

// maxAcking bounds the mailbox.Ack calls of one session in flight at once.
const maxAcking = 8

// session is one live MQTT connection of an identity and the goroutine
// that streams the identity's mailbox to it.
//
// The hooks (on mochi's goroutine of the connection) only record events
// under mu and kick the session goroutine; every Redis call is made by
// the session goroutine, so a slow Redis never blocks mochi.
//
// Delivery: once the session has a subscription, the goroutine reads the
// mailbox in order (Fetch after a cursor) and sends each entry that one of
// its subscriptions matches as a QoS 1 PUBLISH, with a packet ID it
// allocates itself, keeping at most window PUBLISHes unacknowledged. A
// PUBACK read on this very connection (hook OnPacketRead) removes the
// entry from the mailbox (mailbox.Ack). Entries no subscription matches
// are skipped and stay in the mailbox; a later subscription re-reads the
// mailbox from the start. When the connection ends, unacknowledged
// entries simply stay in the mailbox for the next session, wherever it
// is.
type session struct {
	n        *Node
	cl       *mqtt.Client
	identity string
	role     auth.Role // the token's role: decides the topics (topicAllowed)
	window   int
	expiry   *time.Timer // closes the session when its token expires

	mu       sync.Mutex
	subs     []string        // granted filters (QoS 1)
	acked    []uint16        // packet IDs PUBACKed and not yet processed
	wake     bool            // the mailbox may have new entries
	rewind   bool            // a subscription was added: re-read skipped entries
	shedding bool            // being closed by the node
	acking   map[string]bool // entry IDs PUBACKed whose Ack is running

	ackSem chan struct{}  // bounds the Acks in flight
	ackWG  sync.WaitGroup // Acks in flight

	signal    chan struct{} // cap 1: something to do
	closed    chan struct{} // closed when the connection has ended
	closeOnce sync.Once
}

func newSession(n *Node, cl *mqtt.Client, expires time.Time) *session {
	window := n.cfg.Inflight
	if rm := int(cl.Properties.Props.ReceiveMaximum); cl.Properties.ProtocolVersion == 5 && rm > 0 && rm < window {
		window = rm
	}
	s := &session{
		n:        n,
		cl:       cl,
		identity: cl.ID,
		window:   window,
		signal:   make(chan struct{}, 1),
		closed:   make(chan struct{}),
		acking:   make(map[string]bool),
		ackSem:   make(chan struct{}, maxAcking),
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

func (s *session) poke() {
	select {
	case s.signal <- struct{}{}:
	default:
	}
}

// subscribed records granted filters and starts (or resumes) streaming.
func (s *session) subscribed(filters []string) {
	s.mu.Lock()
	for _, f := range filters {
		if !slices.Contains(s.subs, f) {
			s.subs = append(s.subs, f)
		}
	}
	s.wake, s.rewind = true, true
	s.mu.Unlock()
	s.poke()
}

// unsubscribed forgets filters.
func (s *session) unsubscribed(filters []string) {
	s.mu.Lock()
	s.subs = slices.DeleteFunc(s.subs, func(f string) bool { return slices.Contains(filters, f) })
	s.mu.Unlock()
}

// puback records the PUBACK of packet ID pid on this connection.
func (s *session) puback(pid uint16) {
	s.mu.Lock()
	s.acked = append(s.acked, pid)
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
	})
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
func (s *session) take() (acked []uint16, wake, rewind bool, subs []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	acked, s.acked = s.acked, nil
	wake, rewind = s.wake, s.rewind
	s.wake, s.rewind = false, false
	return acked, wake, rewind, slices.Clone(s.subs)
}

// run is the session goroutine.
func (s *session) run() {
	defer s.n.sessWG.Done()
	s.register()

	var (
		inflight = make(map[uint16]mailbox.Entry, s.window) // by packet ID
		sending  = make(map[string]bool, s.window)          // entry IDs in flight
		cursor   string                                     // last entry read
		more     bool                                       // the mailbox may hold more after cursor
		skipped  bool                                       // some entry was skipped for want of a subscription
		pid      uint16                                     // last packet ID allocated
		retry    *time.Timer
		failing  bool
		broken   bool // the connection refused a write: send nothing more
	)
	defer func() {
		if retry != nil {
			retry.Stop()
		}
	}()
	for {
		closed := false
		select {
		case <-s.signal:
		case <-s.closed:
			closed = true
		}
		acked, wake, rewind, subs := s.take()
		for _, id := range acked {
			e, ok := inflight[id]
			if !ok {
				continue // not ours (or acked twice)
			}
			delete(inflight, id)
			delete(sending, e.ID)
			s.ackAsync(e)
		}
		if closed {
			s.ackWG.Wait()
			s.unregister()
			return
		}
		if wake {
			more = true
		}
		if rewind && skipped {
			cursor, skipped, more = "", false, true
		}
		if len(subs) == 0 || broken {
			continue // nothing is streamed before a subscription
		}
		// Refill the window in batches of at least a quarter of it (one
		// Fetch for many entries), unless nothing is in flight.
		refill := max(1, s.window/4)
		for more && (len(inflight) == 0 || s.window-len(inflight) >= refill) {
			want := s.window - len(inflight)
			ctx, cancel := context.WithTimeout(s.n.ctx, redisTimeout)
			entries, err := s.n.store.Fetch(ctx, s.identity, cursor, want)
			cancel()
			if err != nil {
				if s.n.ctx.Err() != nil {
					break
				}
				if !failing {
					failing = true
					s.n.log.Warn("cannot read mailbox; retrying", "client_id", s.identity, "err", err)
				}
				if retry == nil {
					retry = time.AfterFunc(retryDelay, s.kick)
				} else {
					retry.Reset(retryDelay)
				}
				break
			}
			if failing {
				failing = false
				s.n.log.Info("mailbox readable again", "client_id", s.identity)
			}
			s.n.m.reads.Inc()
			if len(entries) < want {
				more = false
			}
			for _, e := range entries {
				cursor = e.ID
				if sending[e.ID] || s.isAcking(e.ID) {
					continue
				}
				if !matchesAny(subs, e.Topic) {
					skipped = true
					continue
				}
				for {
					pid++
					if pid == 0 {
						pid = 1
					}
					if _, used := inflight[pid]; !used {
						break
					}
				}
				err := s.publish(pid, e)
				if errors.Is(err, packets.ErrPacketTooLarge) {
					// Larger than the client's Maximum Packet Size: it can
					// never be delivered on this connection. It stays in
					// the mailbox (until it expires).
					s.n.log.Warn("mailbox entry too large for the client's maximum packet size; skipped",
						"client_id", s.identity, "entry", e.ID, "size", len(e.Payload))
					skipped = true
					continue
				}
				if err != nil {
					// The connection is going away; the close follows.
					s.n.log.Debug("cannot send mailbox entry", "client_id", s.identity, "err", err)
					broken, more = true, false
					break
				}
				inflight[pid] = e
				sending[e.ID] = true
				s.n.m.delivers.Inc()
			}
		}
	}
}

// publish writes entry e as a QoS 1 PUBLISH with packet ID pid.
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
	return s.cl.WritePacket(pk)
}

// ackAsync acks e in its own goroutine (at most maxAcking at once), so
// that the window refills without waiting for Redis. Until the Ack is
// done, a re-read of the mailbox skips the entry.
func (s *session) ackAsync(e mailbox.Entry) {
	s.ackSem <- struct{}{}
	s.mu.Lock()
	s.acking[e.ID] = true
	s.mu.Unlock()
	s.ackWG.Add(1)
	go func() {
		defer s.ackWG.Done()
		s.ack(e)
		s.mu.Lock()
		delete(s.acking, e.ID)
		s.mu.Unlock()
		<-s.ackSem
	}()
}

func (s *session) isAcking(id string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.acking[id]
}

// ack removes an entry whose PUBACK arrived. A failure leaves the entry in
// the mailbox: it is sent again to the next session (a duplicate, never a
// loss).
func (s *session) ack(e mailbox.Entry) {
	if s.n.killed.Load() {
		return
	}
	var err error
	for attempt := range 3 {
		if attempt > 0 {
			time.Sleep(100 * time.Millisecond)
		}
		ctx, cancel := context.WithTimeout(s.n.ctx, redisTimeout)
		err = s.n.store.Ack(ctx, s.identity, e)
		cancel()
		if err == nil {
			s.n.m.acks.Inc()
			return
		}
		if s.n.ctx.Err() != nil {
			break
		}
	}
	s.n.log.Warn("cannot remove acknowledged mailbox entry; it will be sent again", "client_id", s.identity, "entry", e.ID, "err", err)
}

// register records the live session in Redis (mailbox.SetSession), so
// that workers signal this node.
func (s *session) register() {
	mu := s.n.regLock(s.identity)
	mu.Lock()
	defer mu.Unlock()
	if s.n.current(s.identity) != s {
		return // replaced already; the newer session registers
	}
	ctx, cancel := context.WithTimeout(s.n.ctx, redisTimeout)
	defer cancel()
	if err := s.n.store.SetSession(ctx, s.identity, s.n.node); err != nil {
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
	ctx, cancel := context.WithTimeout(s.n.ctx, redisTimeout)
	defer cancel()
	if err := s.n.store.ClearSession(ctx, s.identity, s.n.node); err != nil && s.n.ctx.Err() == nil {
		s.n.log.Warn("cannot unregister session", "client_id", s.identity, "err", err)
	}
}

func matchesAny(filters []string, topic string) bool {
	for _, f := range filters {
		if protocol.FilterMatches(f, topic) {
			return true
		}
	}
	return false
}
