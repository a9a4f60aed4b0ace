package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net"
	"os"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/amqpx"
	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/ring"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// Errors of the Node's life cycle.
var (
	ErrStarted = errors.New("pushserver: node already started")
	ErrStopped = errors.New("pushserver: node stopped")
)

// Node is one push server: an MQTT server of its own (on mochi's packet
// codec, see conn.go) with the gateway's authentication and ACL, a
// member of the ring, streaming mailboxes to its connected identities
// and completing device answers.
//
// NewNode only checks the configuration; Start listens, connects, joins
// the ring and serves; Shutdown leaves the ring and closes everything in
// order.
type Node struct {
	rctx     atomic.Pointer[sharedCtx] // the context Redis calls of sessions share (redisCtx)
	rctxMu   sync.Mutex
	cfg      Config
	log      *slog.Logger
	verifier *auth.Verifier
	m        *metrics
	topo     protocol.Topology

	// Set by Start.
	node, url, addr string
	rdb             redis.UniversalClient
	store           *mailbox.Store
	// relays is store once Start has set it, for the metrics that read
	// its relay counters (registered before Start).
	relays     atomic.Pointer[mailbox.Store]
	ring       *ring.Ring
	pub        *amqpx.Publisher
	maxClients int64
	workers    *workers[*client]  // process the connections' packets (conn.go)
	runners    *workers[*session] // run the sessions' steps
	acker      *workers[*session] // run the sessions' background goroutines (acks)
	lis        *listener
	wsLis      *listener // MQTT over WebSocket; nil when Config.WSAddr is empty
	wsAddr     string
	metricsSrv *telemetry.MetricsServer

	ctx        context.Context // cancelled by kill, or at the end of Shutdown
	cancel     context.CancelFunc
	joinCancel context.CancelFunc // stops the ring heartbeat
	loops      sync.WaitGroup     // background loops
	sessWG     sync.WaitGroup     // sessions not ended yet
	connWG     sync.WaitGroup     // connections not ended yet
	heldWG     sync.WaitGroup     // completers of held device answers (response.go)
	completers sync.Map           // *client -> *completer, for connections that held answers
	connected  atomic.Int64       // open connections (Config.MaxClients)
	expiries   expiries           // ends sessions whose tokens expire (expiry.go)
	// closingAnswered counts connections the node is closing once their
	// held answers are acknowledged (closeAnswered).
	closingAnswered atomic.Int32

	mu   sync.RWMutex
	byID map[string]*session // the current session of each identity

	// regLocks order the session registrations (SetSessionConn and
	// ClearSessionConn) of one identity on this node, so that an old
	// connection does not register after a newer one. Each connection
	// registers with its own token (connPrefix and connSeq), so that an
	// old connection's ClearSessionConn that still reaches Redis after a
	// newer connection's SetSessionConn changes nothing.
	regLocks   [64]sync.Mutex
	connPrefix string // random, per process
	connSeq    atomic.Uint64

	revived chan struct{} // the ring re-registered this node after a prune

	// establishLocks make the establishment of one client ID's
	// connections (take-over, CONNACK, session start) one at a time, so
	// that of many connections arriving together the last one is the
	// node's current session.
	establishLocks [64]sync.Mutex

	// beforePublish, when set (by tests), runs just before a session
	// writes a PUBLISH.
	beforePublish atomic.Pointer[func(*session)]

	started  atomic.Bool
	running  atomic.Bool // Start succeeded
	stopping atomic.Bool // refuse new connections; set by Shutdown
	killed   atomic.Bool // kill was called: no Redis cleanup anymore
	stopOnce sync.Once
	stopErr  error
}

// NewNode returns a Node for cfg. It does no I/O.
func NewNode(cfg Config) (*Node, error) {
	if cfg.AuthSecret == "" {
		return nil, ErrNoSecret
	}
	cfg.ensureDefaults()
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		return nil, errors.New("pushserver: set both GW_TLS_CERT and GW_TLS_KEY, or neither")
	}
	if err := cfg.Scale.Check(); err != nil {
		return nil, fmt.Errorf("pushserver: %w", err)
	}
	// No cache of verified tokens: a token is verified once per
	// connection, and a cache would hold every connected session's token
	// (about 0.4 KB each, up to auth.DefaultCacheSize).
	v, err := auth.NewVerifierSize([]byte(cfg.AuthSecret), 0)
	if err != nil {
		return nil, fmt.Errorf("pushserver: %w", err)
	}
	var prefix [8]byte
	_, _ = rand.Read(prefix[:]) // never fails (crypto/rand)
	n := &Node{
		cfg:        cfg,
		log:        cfg.Logger,
		verifier:   v,
		topo:       protocol.NewTopology(cfg.Namespace, cfg.Queues, cfg.Partitions),
		byID:       make(map[string]*session),
		connPrefix: hex.EncodeToString(prefix[:]),
		revived:    make(chan struct{}, 1),
	}
	n.m = newMetrics(cfg.Registry, n.relays.Load)
	n.expiries.n = n
	return n, nil
}

// newConnToken returns a token unique to one connection: unique on this
// node across restarts (a random prefix per process) and within the
// process (a counter).
func (n *Node) newConnToken() string {
	return n.connPrefix + "-" + strconv.FormatUint(n.connSeq.Add(1), 10)
}

// Addr returns the bound MQTT address (after Start).
func (n *Node) Addr() string { return n.addr }

// WSAddr returns the bound MQTT-over-WebSocket address (after Start),
// "" when Config.WSAddr is empty.
func (n *Node) WSAddr() string { return n.wsAddr }

// listeners returns the MQTT listeners: TCP, and WebSocket when
// configured.
func (n *Node) listeners() []*listener {
	if n.wsLis == nil {
		return []*listener{n.lis}
	}
	return []*listener{n.lis, n.wsLis}
}

// NodeID returns the node's name in the ring (after Start).
func (n *Node) NodeID() string { return n.node }

// URL returns the advertised URL (after Start).
func (n *Node) URL() string { return n.url }

// MetricsAddr returns the bound metrics address, "" when none.
func (n *Node) MetricsAddr() string {
	if n.metricsSrv == nil {
		return ""
	}
	return n.metricsSrv.Addr()
}

// Start listens on MQTTAddr, connects to Redis and RabbitMQ, joins the
// ring and starts serving. Listening happens synchronously, so a bad
// address fails here. ctx bounds the start only.
func (n *Node) Start(ctx context.Context) (err error) {
	if n.started.Swap(true) {
		return ErrStarted
	}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()

	var tlsConfig *tls.Config
	scheme := "mqtt"
	if n.cfg.TLSCert != "" {
		cert, err := tls.LoadX509KeyPair(n.cfg.TLSCert, n.cfg.TLSKey)
		if err != nil {
			return fmt.Errorf("cannot load TLS certificate: %w", err)
		}
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		scheme = "mqtts"
	}
	ln, err := net.Listen("tcp", n.cfg.MQTTAddr)
	if err != nil {
		return fmt.Errorf("cannot listen on %s: %w", n.cfg.MQTTAddr, err)
	}
	undo = append(undo, func() { _ = ln.Close() })
	n.addr = ln.Addr().String()
	var wsln net.Listener
	if n.cfg.WSAddr != "" {
		tcp, err := net.Listen("tcp", n.cfg.WSAddr)
		if err != nil {
			return fmt.Errorf("cannot listen on %s: %w", n.cfg.WSAddr, err)
		}
		n.wsAddr = tcp.Addr().String()
		ws := newWSListener(tcp, tlsConfig, n.cfg.ConnectTimeout, n.log)
		undo = append(undo, func() { _ = ws.Close() })
		wsln = ws
	}
	n.node = n.cfg.NodeID
	if n.node == "" {
		n.node = reachableAddr(n.addr)
	}
	n.url = n.cfg.AdvertiseURL
	if n.url == "" {
		n.url = scheme + "://" + reachableAddr(n.addr)
	}
	n.log = n.log.With("node", n.node)

	n.rdb, err = n.cfg.NewRedis(func(o *redis.UniversalOptions) {
		// Named, so that an operator (and a test) can tell this node's
		// connections in CLIENT LIST.
		if o.ClientName == "" {
			o.ClientName = "gw-push-" + n.node
		}
		if o.PoolSize == 0 {
			// Every session reads and acks on its own goroutine: more
			// connections than go-redis's default of 10 per CPU (on
			// Cluster, per node).
			o.PoolSize = max(64, 10*runtime.GOMAXPROCS(0))
		}
	})
	if err != nil {
		return err
	}
	undo = append(undo, func() { _ = n.rdb.Close() })
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err = n.rdb.Ping(pctx).Err()
	cancel()
	if err != nil {
		return fmt.Errorf("cannot reach Redis: %w", err)
	}
	mailbox.LogDurability(ctx, n.log, n.rdb, n.cfg.WaitReplicas, n.cfg.Durability == config.DurabilityRelaxed)
	n.store = mailbox.New(n.rdb, n.cfg.Namespace, mailbox.Options{
		Partitions:   n.cfg.Partitions,
		AnswerGrace:  n.cfg.AnswerGrace,
		WaitReplicas: n.cfg.WaitReplicas,
		WaitTimeout:  n.cfg.WaitTimeout,
		OwnerOf: func(identity string) string {
			if m, ok := n.ring.Owner(identity); ok {
				return m.Node
			}
			return ""
		},
		Logger: n.log,
	})
	n.relays.Store(n.store)
	n.ring = ring.New(n.rdb, n.cfg.Namespace, ring.Options{
		Heartbeat: n.cfg.RingHeartbeat, TTL: n.cfg.RingTTL, Grace: n.cfg.RingGrace, Logger: n.cfg.Logger, // the ring logs the node itself
		OnPruned: n.forgetSilentNodes,
		OnRevived: func() {
			select {
			case n.revived <- struct{}{}:
			default:
			}
		},
	})

	n.pub, err = amqpx.NewPublisher(ctx, amqpx.Options{
		URL: n.cfg.AMQPURL, ConfirmTimeout: n.cfg.ConfirmTimeout, Name: "pushserver " + n.node, Logger: n.log,
	}, n.topo)
	if err != nil {
		// Also when the namespace's fence refuses GW_QUEUES or
		// GW_PARTITIONS (amqpx.ErrCounts): the error names both counts.
		return fmt.Errorf("cannot start AMQP publisher: %w", err)
	}
	undo = append(undo, func() { _ = n.pub.Close() })
	// The partition counts are fixed per namespace (DESIGN §7a); the
	// publisher passed the AMQP fence, so they may be recorded.
	if err := n.store.CheckCounts(ctx, n.cfg.Queues, true); err != nil {
		return err
	}

	n.maxClients = maxClients(n.cfg.MaxClients)
	n.lis = newListener("mqtt", ln, tlsConfig, n.cfg.ConnectTimeout, n.log, n.serveConn)
	if wsln != nil {
		// TLS, if any, is the WebSocket listener's own (wss://).
		n.wsLis = newListener("ws", wsln, nil, n.cfg.ConnectTimeout, n.log, n.serveConn)
	}

	n.ctx, n.cancel = context.WithCancel(context.Background())
	undo = append(undo, func() { n.cancel(); n.loops.Wait() })
	n.workers = newWorkers(max(16, 4*runtime.GOMAXPROCS(0)), (*client).burst, n.ctx.Done())
	// Wake messages poke many sessions at once: more parked runners
	// spare new goroutines, whose stacks grow during their first step.
	n.runners = newWorkers(max(64, 16*runtime.GOMAXPROCS(0)), (*session).runSession, n.ctx.Done())
	// Live, every session with a PUBACK has its background goroutine
	// waiting on an AckMany (a share of a batch): tens at once, not
	// just a few, so as many are kept parked as runners.
	n.acker = newWorkers(max(64, 16*runtime.GOMAXPROCS(0)), (*session).background, n.ctx.Done())

	// Subscribe to wake signals before joining, so that no signal sent to
	// a member that is already in the ring is missed.
	wake := n.store.Wake(n.ctx, n.node)
	wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	_, err = wake.Receive(wctx)
	cancel()
	if err != nil {
		_ = wake.Close()
		return fmt.Errorf("cannot subscribe to wake signals: %w", err)
	}
	n.m.wakeResubscribes.Inc()
	n.goLoop(func() { n.ring.Run(n.ctx) }) //nolint:errcheck // Run returns nil
	n.goLoop(func() { n.wakeLoop(wake) })

	n.goLoop(n.reregisterLoop)

	var joinCtx context.Context
	joinCtx, n.joinCancel = context.WithCancel(context.Background())
	undo = append(undo, n.joinCancel)
	if err := n.ring.Join(joinCtx, ring.Member{Node: n.node, URL: n.url}); err != nil {
		return fmt.Errorf("cannot join the ring: %w", err)
	}
	undo = append(undo, func() {
		lctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		_ = n.ring.Leave(lctx)
	})
	// The name is ours now (Join refuses a name a live member holds) and
	// nothing is served yet: any session registered under it is an
	// earlier process's (killed, crashed) and gone.
	if forgot, err := n.store.ForgetSessions(ctx, n.node, true); err != nil {
		return fmt.Errorf("cannot clear an earlier process's sessions: %w", err)
	} else if forgot > 0 {
		n.log.Info("cleared the sessions an earlier process of this node left registered", "count", forgot)
	}

	if n.cfg.MetricsAddr != "" {
		n.metricsSrv, err = telemetry.ServeMetrics(n.cfg.MetricsAddr, n.cfg.Registry, n.log)
		if err != nil {
			return err
		}
		n.metricsSrv.SetReady(n.ready)
	}

	n.goLoop(n.sweepLoop)
	n.goLoop(n.shedLoop)
	for _, l := range n.listeners() {
		go l.serve()
	}
	n.running.Store(true)
	n.log.Info("push server listening", "addr", n.addr, "url", n.url, "ws_addr", n.wsAddr,
		"tls", tlsConfig != nil, "max_clients", n.maxClients,
		"inflight", n.cfg.Inflight, "max_packet_size", n.cfg.MaxPacketSize)
	return nil
}

// reachableAddr returns addr, with the host name instead of an unspecified
// IP (0.0.0.0, ::), which names no machine.
func reachableAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
		if h, err := os.Hostname(); err == nil && h != "" {
			return net.JoinHostPort(h, port)
		}
	}
	return addr
}

func (n *Node) goLoop(f func()) {
	n.loops.Add(1)
	go func() {
		defer n.loops.Done()
		f()
	}()
}

// Shutdown stops the node in order: it leaves the ring (other nodes take
// over its identities), stops accepting connections, closes its sessions
// gradually (at most Config.ShutdownShed, less if ctx ends sooner, MQTT 5
// clients are told the new owner), closes what connections remain, waits
// for the sessions to end, and closes Redis and RabbitMQ. When ctx ends first,
// the remaining steps are done at once. It returns the first error.
func (n *Node) Shutdown(ctx context.Context) error {
	if !n.running.Load() {
		return nil
	}
	n.stopOnce.Do(func() { n.stopErr = n.shutdown(ctx) })
	return n.stopErr
}

func (n *Node) shutdown(ctx context.Context) error {
	if n.stopping.Swap(true) {
		return nil // killed
	}
	var errs []error
	n.log.Info("push server shutting down")
	lctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	if err := n.ring.Leave(lctx); err != nil {
		errs = append(errs, err)
	}
	cancel()
	n.joinCancel()
	for _, l := range n.listeners() {
		l.stopAccepting()
	}

	budget := n.cfg.ShutdownShed
	if dl, ok := ctx.Deadline(); ok {
		budget = min(budget, time.Until(dl)/2)
	}
	n.shedAll(ctx, budget)
	// A connection holding answers is closed once they are acknowledged,
	// at most the answer grace after its shedding (closeAnswered).
	n.waitAnswered(ctx)
	for _, l := range n.listeners() {
		l.dropAll() // those the shedding did not reach, and those not accepted yet
	}
	if !waitGroup(ctx, &n.connWG) {
		errs = append(errs, fmt.Errorf("cannot close MQTT connections in time: %w", ctx.Err()))
	}
	if !waitGroup(ctx, &n.sessWG) {
		errs = append(errs, fmt.Errorf("cannot finish sessions in time: %w", ctx.Err()))
	}
	n.cancel()
	n.expiries.stop()
	n.loops.Wait()
	n.heldWG.Wait()
	if n.metricsSrv != nil {
		if err := n.metricsSrv.Shutdown(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	_ = n.pub.Close()
	_ = n.rdb.Close()
	n.log.Info("push server stopped")
	return errors.Join(errs...)
}

// waitAnswered waits, at most the answer grace (and until ctx ends),
// until the connections that held answers when they were shed are
// closed (closeAnswered).
func (n *Node) waitAnswered(ctx context.Context) {
	if n.closingAnswered.Load() == 0 {
		return
	}
	deadline := time.NewTimer(n.cfg.AnswerGrace)
	defer deadline.Stop()
	t := time.NewTicker(answeredPoll)
	defer t.Stop()
	for n.closingAnswered.Load() > 0 {
		select {
		case <-t.C:
		case <-deadline.C:
			return
		case <-ctx.Done():
			return
		}
	}
}

// kill stops the node abruptly, as a crash would (for tests): the
// heartbeat stops without leaving the ring, every connection is dropped
// without a DISCONNECT, and no Redis state is cleaned up (sessions stay
// registered, unacknowledged entries stay in their mailboxes).
func (n *Node) kill() {
	if !n.running.Load() || n.stopping.Swap(true) {
		return // not running, shutting down, or killed already
	}
	n.killed.Store(true)
	n.joinCancel()
	n.cancel()
	for _, l := range n.listeners() {
		l.stopAccepting()
		l.dropAll()
	}
	n.connWG.Wait()
	n.expiries.stop()
	n.sessWG.Wait()
	n.loops.Wait()
	n.heldWG.Wait()
	if n.metricsSrv != nil {
		_ = n.metricsSrv.Shutdown(context.Background())
	}
	_ = n.pub.Close()
	_ = n.rdb.Close()
}

func waitGroup(ctx context.Context, wg *sync.WaitGroup) bool {
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		return true
	case <-ctx.Done():
		return false
	}
}

// Session registry.

func (n *Node) current(identity string) *session {
	n.mu.RLock()
	defer n.mu.RUnlock()
	return n.byID[identity]
}

func (n *Node) addSession(s *session) {
	n.mu.Lock()
	n.byID[s.identity] = s
	n.mu.Unlock()
	n.m.sessions.Inc()
}

// forget removes a session whose connection has ended (once), unless a
// newer session of the identity has replaced it already.
func (n *Node) forget(s *session) {
	n.mu.Lock()
	if n.byID[s.identity] == s {
		delete(n.byID, s.identity)
	}
	n.mu.Unlock()
	n.m.sessions.Dec()
}

// sessions returns the current session of every identity (one taken over
// is being closed already).
func (n *Node) sessions() []*session {
	n.mu.RLock()
	defer n.mu.RUnlock()
	out := make([]*session, 0, len(n.byID))
	for _, s := range n.byID {
		out = append(out, s)
	}
	return out
}

func (n *Node) regLock(identity string) *sync.Mutex {
	return &n.regLocks[stripe(identity, len(n.regLocks))]
}

// stripe maps a key to one of n stripes.
func stripe(key string, n int) int {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return int(h.Sum32() % uint32(n))
}

// Background loops.

// wakeLoop kicks the session of every identity named on the node's wake
// channel. Wake-ups sent while the subscription was down are lost (DESIGN
// §7a): when it comes back (go-redis resubscribes after a reconnect) every
// session is kicked, so each re-reads its mailbox at once instead of at
// the next sweep; a channel the server unsubscribed (a Redis Cluster slot
// that moved) is subscribed again.
func (n *Node) wakeLoop(ps *redis.PubSub) {
	defer ps.Close()
	ch := ps.ChannelWithSubscriptions()
	for {
		select {
		case <-n.ctx.Done():
			return
		case m, ok := <-ch:
			if !ok {
				return
			}
			switch msg := m.(type) {
			case *redis.Message:
				n.wakeMessage(msg.Payload)
			case *redis.Subscription:
				n.wakeSubscription(ps, msg)
			}
		}
	}
}

// wakeMessage kicks the session of every identity a wake message names
// (mailbox.ParseWake: one message may carry many wake-ups), or offers it
// the entry the wake-up carries.
func (n *Node) wakeMessage(payload string) {
	ws, err := mailbox.ParseWake(payload)
	for _, w := range ws {
		s := n.current(w.Identity)
		switch {
		case s == nil:
		case w.Carried:
			s.offer(w)
		default:
			s.kick()
		}
	}
	if err != nil {
		n.log.Warn("malformed wake message; the sweep reads what it announced", "size", len(payload), "err", err)
	}
}

// wakeSubscription handles a change of the wake subscription: a
// (re)subscribe kicks every session, an unsubscribe the node did not ask
// for subscribes again.
func (n *Node) wakeSubscription(ps *redis.PubSub, sub *redis.Subscription) {
	switch sub.Kind {
	case "subscribe", "ssubscribe":
		n.m.wakeResubscribes.Inc()
		n.log.Info("wake channel subscribed; re-reading every session's mailbox", "channel", sub.Channel)
		for _, s := range n.sessions() {
			s.kick()
		}
	case "unsubscribe", "sunsubscribe":
		if n.ctx.Err() != nil {
			return
		}
		n.log.Warn("wake channel unsubscribed by the server; subscribing again", "channel", sub.Channel)
		var err error
		if sub.Kind == "sunsubscribe" {
			err = ps.SSubscribe(n.ctx, sub.Channel)
		} else {
			err = ps.Subscribe(n.ctx, sub.Channel)
		}
		if err != nil {
			n.log.Warn("cannot subscribe to the wake channel again; the sweep reads the mailboxes", "err", err)
		}
	}
}

// fullSweepEvery is how many sweeps of the pending set go with one sweep
// of every live session.
const fullSweepEvery = 5

// sweepWorkers is how many sessions a full sweep reads at once.
const sweepWorkers = 64

// sweepLoop catches lost wake signals. Every SweepInterval it takes the
// node's pending set (what a lost pub/sub message leaves behind) and
// kicks those sessions; every fullSweepEvery sweeps it also reads the
// mailbox of every subscribed session whose mailbox is not empty
// (sweepSessions), for an append whose signal went to another node,
// unless the previous full sweep is still going.
func (n *Node) sweepLoop() {
	t := time.NewTicker(n.cfg.SweepInterval)
	defer t.Stop()
	var full sync.WaitGroup
	defer full.Wait()
	var sweeping atomic.Bool
	failing := false
	for tick := 1; ; tick++ {
		select {
		case <-n.ctx.Done():
			return
		case <-t.C:
		}
		err := n.sweepPending()
		switch {
		case err != nil && n.ctx.Err() != nil:
			return
		case err != nil && !failing:
			failing = true
			n.log.Warn("cannot read pending identities", "err", err)
		case err == nil && failing:
			failing = false
			n.log.Info("pending identities readable again; offering every session's mailbox again")
			for _, s := range n.sessions() {
				s.offerAgain()
			}
		}
		if tick%fullSweepEvery == 0 && !sweeping.Swap(true) {
			full.Add(1)
			go func() {
				defer full.Done()
				defer sweeping.Store(false)
				n.sweepSessions()
			}()
		}
	}
}

// sweepSessions kicks every subscribed session whose mailbox the set of
// non-empty mailboxes lists (mailbox.Listed: an empty mailbox has
// nothing to read), sweepWorkers at a time:
// each worker runs the session's step itself when its runner
// is not running (session.kickHere), so that a sweep of many idle
// sessions never starts a goroutine (and its stack) for each of them at
// once.
func (n *Node) sweepSessions() {
	all := n.sessions()
	ch := make(chan *session)
	var wg sync.WaitGroup
	for range min(sweepWorkers, len(all)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for s := range ch {
				s.kickHere()
			}
		}()
	}
	defer wg.Wait()
	defer close(ch)
	var subscribed []*session
	var ids []string
	for _, s := range all {
		if s.hasSubscription() {
			subscribed = append(subscribed, s)
			ids = append(ids, s.identity)
		}
	}
	// Only mailboxes that hold something are read: one pipelined set
	// lookup per thousand sessions instead of a read of every mailbox.
	ctx, cancel := context.WithTimeout(n.ctx, redisTimeout)
	listed, err := n.store.Listed(ctx, ids)
	cancel()
	if err != nil {
		n.log.Debug("full sweep skipped: cannot read the set of mailboxes", "err", err)
		return
	}
	for i, s := range subscribed {
		if !listed[i] {
			continue
		}
		select {
		case ch <- s:
		case <-n.ctx.Done():
			return
		}
	}
}

func (n *Node) sweepPending() error {
	const batch = 1000
	for range 100 {
		ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
		ids, err := n.store.TakePending(ctx, n.node, batch)
		cancel()
		if err != nil {
			return err
		}
		// Nothing taken here needs to go back (mailbox.Repend): a kick
		// is never lost by a session that cannot stream yet (not
		// subscribed, window full, Redis failing), it stays pending in
		// the session until it can, and its first subscription reads
		// the mailbox anyway. Identities not connected here (or whose
		// connection is ending) are dropped from the set: their next
		// session, wherever it is, reads the whole mailbox when it
		// subscribes. The sessions read their mailbox only when it
		// holds something after what they have read (one pipelined
		// read of the mailboxes' tails, session.nudge): most pending
		// identities were streamed already by their wake-ups.
		var live []*session
		var liveIDs []string
		for _, id := range ids {
			if s := n.current(id); s != nil {
				live = append(live, s)
				liveIDs = append(liveIDs, id)
			}
		}
		if len(live) > 0 {
			ctx, cancel := context.WithTimeout(n.ctx, 5*time.Second)
			tails, err := n.store.Tails(ctx, liveIDs)
			cancel()
			for i, s := range live {
				if err != nil {
					s.kick()
				} else {
					s.nudge(tails[i])
				}
			}
			if err != nil {
				return err
			}
		}
		if len(ids) < batch {
			return nil
		}
	}
	return nil
}

// forgetSilentNodes clears the session registrations of push servers
// this node's ring pruned (gone silent without leaving: killed, crashed),
// so that no live session is claimed for them and no signal goes to
// them. A pruned node that comes back registers its sessions again
// (reregisterLoop); ForgetSessions leaves a live member alone.
func (n *Node) forgetSilentNodes(ctx context.Context, nodes []string) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	for _, node := range nodes {
		forgot, err := n.store.ForgetSessions(ctx, node, false)
		switch {
		case errors.Is(err, mailbox.ErrNodeAlive):
			n.log.Info("a pruned push server is back; its sessions stay", "silent_node", node, "cleared", forgot)
		case err != nil:
			n.log.Warn("cannot clear the sessions of a silent push server", "silent_node", node, "err", err)
		default:
			n.log.Info("cleared the sessions of a silent push server", "silent_node", node, "count", forgot)
		}
	}
}

// reregisterLoop registers every session of the node again after the
// ring found this node pruned (a pause longer than the ring's TTL):
// the node that pruned it may have cleared them (forgetSilentNodes).
func (n *Node) reregisterLoop() {
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-n.revived:
		}
		all := n.sessions()
		for _, s := range all {
			if n.ctx.Err() != nil {
				return
			}
			s.register()
		}
		n.log.Info("registered the sessions again after the ring had pruned this node", "count", len(all))
	}
}

// shedLoop closes, at most ShedRate per second, the sessions of
// identities that this node no longer owns once the ring's grace period
// is over. It looks after every ring change and every half second.
func (n *Node) shedLoop() {
	t := time.NewTicker(500 * time.Millisecond)
	defer t.Stop()
	interval := time.Second / time.Duration(n.cfg.ShedRate)
	var last time.Time
	for {
		select {
		case <-n.ctx.Done():
			return
		case <-n.ring.Changes():
		case <-t.C:
		}
		for _, s := range n.sessions() {
			if n.stopping.Load() {
				break
			}
			if s.isShed() || n.ring.OwnsDuringGrace(n.node, s.identity) {
				continue
			}
			if wait := time.Until(last.Add(interval)); wait > 0 {
				select {
				case <-n.ctx.Done():
					return
				case <-time.After(wait):
				}
			}
			if n.ring.OwnsDuringGrace(n.node, s.identity) {
				continue
			}
			last = time.Now()
			owner, _ := n.ring.Owner(s.identity)
			n.log.Info("shedding session this node no longer owns", "client_id", s.identity, "owner", owner.Node)
			s.shed(owner)
		}
	}
}

// shedAll closes every session, spread over budget (at least ShedRate per
// second), telling MQTT 5 clients where to go.
func (n *Node) shedAll(ctx context.Context, budget time.Duration) {
	all := n.sessions()
	if len(all) == 0 {
		return
	}
	interval := time.Second / time.Duration(n.cfg.ShedRate)
	if budget > 0 {
		interval = min(interval, budget/time.Duration(len(all)))
	}
	n.log.Info("closing sessions", "count", len(all), "over", interval*time.Duration(len(all)))
	for i, s := range all {
		if i > 0 && interval > 0 {
			select {
			case <-ctx.Done():
				interval = 0
			case <-time.After(interval):
			}
		}
		owner, ok := n.ring.Owner(s.identity)
		if !ok || owner.Node == n.node {
			owner = ring.Member{}
		}
		s.shed(owner)
	}
}

// ready is the push server's readiness, served at /readyz on the metrics
// listener: it serves MQTT, Redis answers PING and, unless
// GW_DURABILITY=relaxed, keeps what the server acknowledges
// (mailbox.CheckDurable, every primary of a Cluster).
func (n *Node) ready(ctx context.Context) error {
	if !n.running.Load() {
		return errors.New("not serving MQTT")
	}
	if err := n.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("redis: ping failed: %w", err)
	}
	if n.cfg.Durability == config.DurabilityRelaxed {
		return nil
	}
	if err := mailbox.CheckDurable(ctx, n.rdb, n.cfg.WaitReplicas); err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	return nil
}
