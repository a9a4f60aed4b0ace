package ring

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iotgw/gateway/protocol"
	"github.com/redis/go-redis/v9"
)

// Errors returned by Join.
var (
	// ErrJoined is returned by Join when the Ring already heartbeats a member.
	ErrJoined = errors.New("ring: already joined")
	// ErrNodeTaken is returned by Join when a live member with the same node
	// name but another URL is registered: two processes of the group share a
	// GW_NODE_ID.
	ErrNodeTaken = errors.New("ring: node name taken by a member with another URL")
	// ErrInvalidMember is returned by Join for a member without node or URL.
	ErrInvalidMember = errors.New("ring: member needs a node and a URL")
)

// Options configures a Ring. A zero field takes its default.
type Options struct {
	// Group names the ring: processes of one group share members and
	// owners, and the groups of a namespace do not see each other.
	// Default protocol.RingPush (the push servers); the workers' partition
	// owners use protocol.RingWorkers.
	Group string
	// Heartbeat is how often a joined member renews its key. Default 1s.
	Heartbeat time.Duration
	// TTL is the expiry of a member's key: a member that has not
	// heartbeated for TTL has left. Default 3s; a TTL not above Heartbeat
	// is raised to 3 × Heartbeat.
	TTL time.Duration
	// Refresh is how often Run re-reads the members, on top of the change
	// notices on pub/sub. Default 1s.
	Refresh time.Duration
	// Grace is how long OwnsDuringGrace honours a ring after it was
	// replaced. Default 5s; negative means no grace.
	Grace time.Duration
	// Logger receives membership changes and Redis errors. Default: discard.
	Logger *slog.Logger
	// OnPruned, when set, is called with the members this Ring found
	// silent (key expired without a Leave) and removed from the member
	// set, after the new ring is installed. Exactly one process prunes a
	// member, so exactly one calls OnPruned for it: the place to clean up
	// what the member left behind. It runs in the Refresh that pruned.
	OnPruned func(ctx context.Context, nodes []string)
	// OnRevived, when set, is called by the heartbeat when it finds that
	// this Ring's own member had been pruned (a pause longer than TTL)
	// and has just registered it again. It must not block.
	OnRevived func()
}

func (o *Options) ensureDefaults() {
	if o.Group == "" {
		o.Group = protocol.RingPush
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = time.Second
	}
	if o.TTL <= 0 {
		o.TTL = 3 * time.Second
	}
	if o.TTL <= o.Heartbeat {
		o.TTL = 3 * o.Heartbeat
	}
	if o.Refresh <= 0 {
		o.Refresh = time.Second
	}
	if o.Grace == 0 {
		o.Grace = 5 * time.Second
	}
	if o.Grace < 0 {
		o.Grace = 0
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
}

// maxRetired bounds how many replaced rings are kept for the grace period.
const maxRetired = 16

// state is what lookups read: immutable once published.
type state struct {
	cur     *table // nil when there are no members
	retired []retired
}

type retired struct {
	t     *table
	until time.Time // honoured before this instant
}

// Ring is the view of one process on the membership of one group (the
// push servers, or the workers) and the consistent hash ring built from it. Its lookups are safe for concurrent
// use and take no lock.
type Ring struct {
	rdb  redis.UniversalClient
	keys protocol.RingKeys
	opts Options
	log  *slog.Logger

	st      atomic.Pointer[state]
	changes chan struct{}

	refreshMu sync.Mutex // orders Refresh calls, so states are published in order

	joinMu sync.Mutex
	self   Member
	stop   context.CancelFunc // stops the heartbeat; nil when not joined
	done   chan struct{}      // closed when the heartbeat has stopped
}

// New returns a Ring of group opts.Group on namespace ns. It does no I/O: the ring is empty
// until Refresh, Join or Run has read the members.
func New(rdb redis.UniversalClient, ns string, opts Options) *Ring {
	opts.ensureDefaults()
	r := &Ring{
		rdb:     rdb,
		keys:    protocol.NewKeys(ns).Ring(opts.Group),
		opts:    opts,
		log:     opts.Logger.With("ring", opts.Group),
		changes: make(chan struct{}, 1),
	}
	r.st.Store(&state{})
	return r
}

// Owner returns the member that owns identity in the current ring; false
// when the ring has no members. It is cheap (one xxhash and a slice
// index, no lock) and safe for concurrent use.
func (r *Ring) Owner(identity string) (Member, bool) {
	return r.st.Load().cur.owner(identity)
}

// OwnsDuringGrace reports whether node owns identity in the current ring,
// or owned it in a ring that was replaced less than Grace ago. A push
// server keeps a session while this holds and sheds it afterwards.
func (r *Ring) OwnsDuringGrace(node, identity string) bool {
	s := r.st.Load()
	if m, ok := s.cur.owner(identity); ok && m.Node == node {
		return true
	}
	if len(s.retired) == 0 {
		return false
	}
	now := time.Now()
	for _, o := range s.retired {
		if now.Before(o.until) {
			if m, ok := o.t.owner(identity); ok && m.Node == node {
				return true
			}
		}
	}
	return false
}

// Members returns the current members, sorted by node.
func (r *Ring) Members() []Member {
	t := r.st.Load().cur
	if t == nil {
		return nil
	}
	return slices.Clone(t.members)
}

// Changes returns a channel that receives a value after the membership
// changed. Notices are coalesced and never block the Ring: read the
// current state (Members, Owner) after each notice. There is one channel
// per Ring, meant for one reader.
func (r *Ring) Changes() <-chan struct{} { return r.changes }

// Refresh reads the members from Redis now and rebuilds the ring if they
// changed. Members whose key has expired are removed from the member set
// (and the removal is announced). On error the previous ring stays.
func (r *Ring) Refresh(ctx context.Context) error {
	r.refreshMu.Lock()
	defer r.refreshMu.Unlock()
	var members []Member
	var pruned []string
	for attempt := 0; ; attempt++ {
		ms, revived, gone, err := r.read(ctx)
		pruned = append(pruned, gone...)
		if err != nil {
			r.announcePruned(ctx, pruned)
			return err
		}
		members = ms
		// A member found gone by MGET that heartbeated again before the
		// prune: read again so that it is not missing from this ring.
		if !revived || attempt == 2 {
			break
		}
	}
	r.install(canonical(members))
	r.announcePruned(ctx, pruned)
	return nil
}

func (r *Ring) announcePruned(ctx context.Context, nodes []string) {
	if len(nodes) > 0 && r.opts.OnPruned != nil {
		r.opts.OnPruned(ctx, nodes)
	}
}

// read returns the live members and prunes the expired ones; revived
// reports that a member missing from MGET was back by the prune, pruned
// names the members this call removed.
func (r *Ring) read(ctx context.Context) (members []Member, revived bool, pruned []string, err error) {
	nodes, err := r.rdb.SMembers(ctx, r.keys.Nodes()).Result()
	if err != nil {
		return nil, false, nil, fmt.Errorf("ring: cannot read members: %w", err)
	}
	if len(nodes) == 0 {
		return nil, false, nil, nil
	}
	slices.Sort(nodes)
	keys := make([]string, len(nodes))
	for i, n := range nodes {
		keys[i] = r.keys.Node(n)
	}
	vals, err := r.rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return nil, false, nil, fmt.Errorf("ring: cannot read members: %w", err)
	}
	var gone []string
	for i, v := range vals {
		if url, ok := v.(string); ok {
			members = append(members, Member{Node: nodes[i], URL: url})
		} else {
			gone = append(gone, nodes[i])
		}
	}
	if len(gone) == 0 {
		return members, false, nil, nil
	}
	pkeys := make([]string, 0, len(gone)+1)
	args := make([]any, 0, len(gone)+1)
	pkeys = append(pkeys, r.keys.Nodes())
	args = append(args, r.keys.Changes())
	for _, n := range gone {
		pkeys = append(pkeys, r.keys.Node(n))
		args = append(args, n)
	}
	res, err := pruneScript.Run(ctx, r.rdb, pkeys, args...).Slice()
	if err != nil {
		return nil, false, nil, fmt.Errorf("ring: cannot prune members: %w", err)
	}
	alive, ok := int64(0), len(res) == 2
	if ok {
		alive, ok = res[0].(int64)
	}
	var names []any
	if ok {
		names, ok = res[1].([]any)
	}
	if !ok {
		return nil, false, nil, fmt.Errorf("ring: cannot prune members: unexpected reply %v", res)
	}
	for _, v := range names {
		if n, ok := v.(string); ok {
			pruned = append(pruned, n)
		}
	}
	if len(pruned) > 0 {
		r.log.Info("ring: pruned silent members", "nodes", pruned)
	}
	return members, alive > 0, pruned, nil
}

// install publishes the ring of sorted members if it differs from the
// current one.
func (r *Ring) install(sorted []Member) {
	old := r.st.Load()
	sig := signature(sorted)
	if old.cur == nil && len(sorted) == 0 || old.cur != nil && old.cur.sig == sig {
		return
	}
	now := time.Now()
	next := &state{cur: build(sorted)}
	if old.cur != nil && r.opts.Grace > 0 {
		next.retired = append(next.retired, retired{t: old.cur, until: now.Add(r.opts.Grace)})
	}
	for _, o := range old.retired {
		if len(next.retired) < maxRetired && now.Before(o.until) {
			next.retired = append(next.retired, o)
		}
	}
	r.st.Store(next)
	var prev []Member
	if old.cur != nil {
		prev = old.cur.members
	}
	r.log.Info("ring: membership changed", "members", nodeNames(sorted), "previous", nodeNames(prev))
	select {
	case r.changes <- struct{}{}:
	default:
	}
}

func nodeNames(ms []Member) []string {
	out := make([]string, len(ms))
	for i, m := range ms {
		out[i] = m.Node
	}
	return out
}

// Run keeps the ring current until ctx is done: it reads the members at
// once, then on every change notice (pub/sub) and every Refresh interval.
// Redis errors are logged and retried, never returned; Run returns nil
// once ctx is done.
func (r *Ring) Run(ctx context.Context) error {
	ps := r.rdb.Subscribe(ctx, r.keys.Changes())
	defer ps.Close()
	notices := ps.Channel()

	tick := time.NewTicker(r.opts.Refresh)
	defer tick.Stop()
	failing := false
	refresh := func() {
		err := r.Refresh(ctx)
		switch {
		case err != nil && ctx.Err() != nil:
		case err != nil && !failing:
			failing = true
			r.log.Warn("ring: cannot refresh members; keeping the last ring", "err", err)
		case err == nil && failing:
			failing = false
			r.log.Info("ring: members readable again")
		}
	}
	refresh()
	for {
		select {
		case <-ctx.Done():
			return nil
		case _, ok := <-notices:
			if !ok {
				notices = nil // closed: rely on the ticker
				continue
			}
			// Coalesce a burst of notices into one read.
			for drained := false; !drained; {
				select {
				case <-notices:
				default:
					drained = true
				}
			}
			refresh()
		case <-tick.C:
			refresh()
		}
	}
}

// Join registers m in the ring and announces it, then renews its key
// every Heartbeat in the background until Leave is called or ctx is done.
// When ctx is done the heartbeat stops and the member disappears after
// TTL; call Leave to go at once. Join refreshes the local ring before it
// returns, so Owner already counts m.
func (r *Ring) Join(ctx context.Context, m Member) error {
	if m.Node == "" || m.URL == "" {
		return ErrInvalidMember
	}
	r.joinMu.Lock()
	defer r.joinMu.Unlock()
	if r.stop != nil {
		select {
		case <-r.done: // the previous heartbeat ended with its ctx
		default:
			return ErrJoined
		}
	}
	if _, err := r.register(ctx, m); err != nil {
		return err
	}
	if err := r.rdb.Publish(ctx, r.keys.Changes(), m.Node).Err(); err != nil {
		r.log.Warn("ring: cannot announce join", "node", m.Node, "err", err)
	}
	if r.stop != nil {
		r.stop()
	}
	hctx, stop := context.WithCancel(ctx)
	r.self, r.stop, r.done = m, stop, make(chan struct{})
	go r.heartbeat(hctx, m, r.done)
	if err := r.Refresh(ctx); err != nil {
		r.log.Warn("ring: cannot refresh after join", "node", m.Node, "err", err)
	}
	r.log.Info("ring: joined", "node", m.Node, "url", m.URL)
	return nil
}

// register renews m's key and set entry; added reports that m was not in
// the set (new, or pruned after a silence).
func (r *Ring) register(ctx context.Context, m Member) (added bool, err error) {
	res, err := registerScript.Run(ctx, r.rdb,
		[]string{r.keys.Node(m.Node), r.keys.Nodes()},
		m.Node, m.URL, r.opts.TTL.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("ring: cannot register %s: %w", m.Node, err)
	}
	if res < 0 {
		return false, fmt.Errorf("%w: %s", ErrNodeTaken, m.Node)
	}
	return res == 1, nil
}

func (r *Ring) heartbeat(ctx context.Context, m Member, done chan struct{}) {
	defer close(done)
	tick := time.NewTicker(r.opts.Heartbeat)
	defer tick.Stop()
	failing := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		cctx, cancel := context.WithTimeout(ctx, r.opts.TTL)
		added, err := r.register(cctx, m)
		if err == nil && added {
			// We had been pruned (a pause longer than TTL): say we are back.
			r.log.Warn("ring: this member had been pruned after a silence; registered again", "node", m.Node)
			if r.opts.OnRevived != nil {
				r.opts.OnRevived()
			}
			err = r.rdb.Publish(cctx, r.keys.Changes(), m.Node).Err()
		}
		cancel()
		switch {
		case err != nil && ctx.Err() != nil:
			return
		case err != nil && !failing:
			failing = true
			r.log.Error("ring: heartbeat failed", "node", m.Node, "err", err)
		case err == nil && failing:
			failing = false
			r.log.Info("ring: heartbeat restored", "node", m.Node)
		}
	}
}

// Leave stops the heartbeat, deletes the member's key (if it is still
// its own), removes it from the member set and announces the change. It
// is a no-op when the Ring has not joined.
func (r *Ring) Leave(ctx context.Context) error {
	r.joinMu.Lock()
	defer r.joinMu.Unlock()
	if r.stop == nil {
		return nil
	}
	r.stop()
	select {
	case <-r.done:
	case <-ctx.Done():
		return fmt.Errorf("ring: cannot leave: %w", ctx.Err())
	}
	m := r.self
	r.stop, r.done, r.self = nil, nil, Member{}
	err := leaveScript.Run(ctx, r.rdb,
		[]string{r.keys.Node(m.Node), r.keys.Nodes()},
		m.Node, m.URL, r.keys.Changes()).Err()
	if err != nil {
		return fmt.Errorf("ring: cannot leave: %w", err)
	}
	if err := r.Refresh(ctx); err != nil {
		r.log.Warn("ring: cannot refresh after leave", "node", m.Node, "err", err)
	}
	r.log.Info("ring: left", "node", m.Node)
	return nil
}

// The scripts name every key they touch in KEYS: the keys of one ring
// share the hash tag {ns:ring:group}, so on Redis Cluster they live in one
// slot and one script may change a member and the member set together.
// They carry the #!lua flag line (Redis 7), with which Cluster refuses a
// key outside the declared slot. The changes channel is an argument, not
// a key: a plain PUBLISH reaches the subscribers on every Cluster node.

// registerScript renews a member unless another URL holds its name.
// KEYS: node key, node set. ARGV: node, URL, TTL in ms.
// Returns -1 when taken, 1 when added to the set, 0 when renewed.
var registerScript = redis.NewScript(`#!lua
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[2] then return -1 end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return redis.call('SADD', KEYS[2], ARGV[1])
`)

// leaveScript removes a member if its key is absent or its own.
// KEYS: node key, node set. ARGV: node, URL, changes channel.
var leaveScript = redis.NewScript(`#!lua
local cur = redis.call('GET', KEYS[1])
if cur and cur ~= ARGV[2] then return 0 end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
`)

// pruneScript removes from the set the members whose key is gone; a
// member that heartbeated meanwhile stays. Announces any removal.
// KEYS: node set, then one node key per member. ARGV: changes channel,
// then the member names in the order of their keys.
// Returns {still alive, the names removed}.
var pruneScript = redis.NewScript(`#!lua
local pruned, alive = {}, 0
for i = 2, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then
    if redis.call('SREM', KEYS[1], ARGV[i]) == 1 then pruned[#pruned + 1] = ARGV[i] end
  else
    alive = alive + 1
  end
end
if #pruned > 0 then redis.call('PUBLISH', ARGV[1], 'prune') end
return {alive, pruned}
`)
