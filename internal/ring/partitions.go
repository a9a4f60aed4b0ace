package ring

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/buraksezer/consistent"
	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/protocol"
)

// PartitionOptions configures Partitions. A zero field takes its default.
type PartitionOptions struct {
	// Ring configures the ring the member joins, with two defaults of its
	// own: Group protocol.RingWorkers, and Refresh 500ms, so that the
	// partitions of a member that went silent move within TTL + Refresh
	// (3.5 s). OnPruned and OnRevived are called as documented there.
	Ring Options
	// URL is the member's URL in the ring (Member.URL). Default
	// "worker://{node}". Workers add what the others must know of them
	// (msgworker: the command queues it consumes).
	URL string
	// Settle is how long a partition that comes to this member from a
	// member still in the ring waits before Owned reports it, so that the
	// previous owner has seen the change and let the partition go.
	// Default 2 × Ring.Refresh (1 s); negative means no wait.
	Settle time.Duration
}

func (o *PartitionOptions) ensureDefaults() {
	if o.Ring.Group == "" {
		o.Ring.Group = protocol.RingWorkers
	}
	if o.Ring.Refresh <= 0 {
		o.Ring.Refresh = 500 * time.Millisecond
	}
	o.Ring.ensureDefaults()
	if o.Settle == 0 {
		o.Settle = 2 * o.Ring.Refresh
	}
	if o.Settle < 0 {
		o.Settle = 0
	}
}

// Partitions is one member's share of the partitions 0..P-1 of the
// gateway's state (DESIGN §7 "Partition owners"). It joins a ring (the
// workers' ring by default), follows it, and reports the partitions the
// member owns; every process computes the same owners from the same
// members ([OwnerOfPartition]).
//
// A partition the member loses leaves Owned as soon as this process sees
// the change. A partition it gains enters Owned:
//
//   - at once when a member left the ring (Leave, or silent for TTL): the
//     departed member's partitions have no owner, and those the load
//     bound moves between the remaining members go from a member that
//     learns of the departure as this one does. Every partition has an
//     owner again within TTL + Refresh (3.5 s) of a member going silent,
//     at once after a Leave;
//   - after Settle when members only joined and the previous owner is
//     still a member, so that it has let the partition go first: a
//     joining member takes its share Settle (1 s) after Join, and a
//     partition waits at most Settle without owner;
//   - after Settle when nothing was known before: the first view of
//     this process, or this member found that it had been pruned (a
//     pause longer than TTL) and the others took its partitions.
//
// Two owners for a moment remain possible (a paused process, a lost
// change notice): steps on partition state are compare-and-set, so that
// is harmless.
//
// Owns and Owned are safe for concurrent use and take no lock.
type Partitions struct {
	ring      *Ring
	self      Member
	n         int
	settle    time.Duration
	log       *slog.Logger
	onRevived func()

	owned   atomic.Pointer[ownedSet]
	changes chan struct{}
	revived chan struct{} // the heartbeat found this member pruned and registered it again
	wake    chan struct{} // Join changed the pending gains: Run re-arms its timer

	mu      sync.Mutex        // orders evaluations; guards the fields below
	seen    bool              // an evaluation has run: last is the view before the next one
	last    *partTable        // the owners at the last evaluation; nil without members
	pending map[int]time.Time // gains not reported yet, with the time they are due
	left    bool              // Leave was called, and Join not since
}

// ownedSet is what Owns and Owned read: immutable once published.
type ownedSet struct {
	has  []bool // indexed by partition
	list []int  // ascending
}

// NewPartitions returns the Partitions of member node over partitions
// partitions (GW_PARTITIONS) on namespace ns. The member's URL is
// "worker://{node}". It does no I/O: call Join, and Run. It panics when
// partitions is not positive.
func NewPartitions(rdb redis.UniversalClient, ns, node string, partitions int, opts PartitionOptions) *Partitions {
	if partitions <= 0 {
		panic("ring: partitions must be positive")
	}
	opts.ensureDefaults()
	ps := &Partitions{
		self:      Member{Node: node, URL: cmp.Or(opts.URL, "worker://"+node)},
		n:         partitions,
		settle:    opts.Settle,
		log:       opts.Ring.Logger.With("ring", opts.Ring.Group, "node", node),
		onRevived: opts.Ring.OnRevived,
		changes:   make(chan struct{}, 1),
		revived:   make(chan struct{}, 1),
		wake:      make(chan struct{}, 1),
		pending:   make(map[int]time.Time),
	}
	ropts := opts.Ring
	ropts.OnRevived = func() {
		notify(ps.revived)
		if ps.onRevived != nil {
			ps.onRevived()
		}
	}
	ps.ring = New(rdb, ns, ropts)
	ps.owned.Store(&ownedSet{has: make([]bool, partitions)})
	return ps
}

// Owns reports whether this member owns partition p now; false for a p
// outside 0..P-1.
func (ps *Partitions) Owns(p int) bool {
	s := ps.owned.Load()
	return p >= 0 && p < len(s.has) && s.has[p]
}

// Owned returns the partitions this member owns now, ascending. The
// slice is the caller's.
func (ps *Partitions) Owned() []int { return slices.Clone(ps.owned.Load().list) }

// Changes returns a channel that receives a value after Owned changed.
// Notices are coalesced and never block: read Owned after each one. There
// is one channel, meant for one reader.
func (ps *Partitions) Changes() <-chan struct{} { return ps.changes }

// Members returns the members of the ring as this process sees them,
// sorted by node.
func (ps *Partitions) Members() []Member { return ps.ring.Members() }

// Join registers the member in the ring, after reading the members
// without it (their owners are the previous owners of what it gains).
// The heartbeat runs until Leave or until ctx is done; when ctx is done
// without Leave, the others take the partitions over once the member's
// key expires (TTL). Run must be running for the gains to be reported.
func (ps *Partitions) Join(ctx context.Context) error {
	if err := ps.ring.Refresh(ctx); err != nil {
		return fmt.Errorf("cannot join as %s: %w", ps.self.Node, err)
	}
	ps.mu.Lock()
	ps.left = false
	ps.mu.Unlock()
	ps.evaluate(time.Now())
	if err := ps.ring.Join(ctx, ps.self); err != nil {
		return err
	}
	ps.evaluate(time.Now())
	notify(ps.wake)
	return nil
}

// Run follows the ring until ctx is done: it runs the Ring (reading the
// members on every change notice and every Refresh) and updates Owned
// after every change and when a settling gain is due. It returns nil once
// ctx is done.
func (ps *Partitions) Run(ctx context.Context) error {
	done := make(chan error, 1)
	go func() { done <- ps.ring.Run(ctx) }()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		ps.evaluate(time.Now())
		if due, ok := ps.nextDue(); ok {
			timer.Reset(time.Until(due))
		} else {
			timer.Stop()
		}
		select {
		case <-ctx.Done():
			return <-done
		case <-ps.ring.Changes():
		case <-ps.revived:
			ps.revive(time.Now())
		case <-ps.wake:
		case <-timer.C:
		}
	}
}

// Leave gives every partition away: Owned is empty when it returns, and
// the member leaves the ring at once (Ring.Leave), so that the others
// take its partitions over without waiting for TTL. Call it on shutdown,
// once the work on the owned partitions has stopped.
func (ps *Partitions) Leave(ctx context.Context) error {
	ps.mu.Lock()
	ps.left = true
	clear(ps.pending)
	ps.publishLocked(time.Now())
	ps.mu.Unlock()
	return ps.ring.Leave(ctx)
}

// evaluate reassigns the partitions if the members changed since the
// last evaluation, then publishes the owned set.
func (ps *Partitions) evaluate(now time.Time) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var t *partTable
	if !ps.left {
		members := ps.ring.Members()
		if sig := signature(members); sig == ps.last.signature() {
			t = ps.last
		} else {
			t = cachedPartitions(members, ps.n)
		}
	}
	if !ps.seen || t != ps.last {
		ps.reassignLocked(t, now)
		ps.seen, ps.last = true, t
	}
	ps.publishLocked(now)
}

// reassignLocked records the gains of the view t over the last one.
func (ps *Partitions) reassignLocked(t *partTable, now time.Time) {
	self := t.index(ps.self.Node)
	cur := ps.owned.Load()
	// When a member left, the others learn it as this process does (the
	// same notice, or their own read), and its partitions have no owner:
	// every gain is taken at once.
	departed := false
	if ps.seen && ps.last != nil {
		departed = slices.ContainsFunc(ps.last.members, func(m Member) bool { return t.index(m.Node) < 0 })
	}
	for p := range ps.n {
		if self < 0 || int(t.owners[p]) != self {
			delete(ps.pending, p)
			continue
		}
		if cur.has[p] {
			continue
		}
		if _, ok := ps.pending[p]; ok {
			continue
		}
		due := now.Add(ps.settle)
		if ps.seen {
			if prev, ok := ps.last.owner(p); departed || !ok || t.index(prev.Node) < 0 {
				due = now
			}
		}
		ps.pending[p] = due
	}
}

// revive handles a heartbeat that found this member pruned: the others
// took its partitions meanwhile, so it gives them up and takes them back
// after Settle, like a member that just joined.
func (ps *Partitions) revive(now time.Time) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	ps.log.Warn("ring: this member had been pruned; its partitions settle again")
	clear(ps.pending)
	if self := ps.last.index(ps.self.Node); self >= 0 && !ps.left {
		for p, o := range ps.last.owners {
			if int(o) == self {
				ps.pending[p] = now.Add(ps.settle)
			}
		}
	}
	ps.publishLocked(now)
}

// publishLocked makes the owned set the partitions still owned in the
// last view and not settling, plus the gains that are due, and announces
// a change.
func (ps *Partitions) publishLocked(now time.Time) {
	cur := ps.owned.Load()
	self := -1
	if !ps.left {
		self = ps.last.index(ps.self.Node)
	}
	next := &ownedSet{has: make([]bool, ps.n)}
	var gained, lost int
	for p := range ps.n {
		var keep bool
		if due, ok := ps.pending[p]; ok {
			if keep = !due.After(now); keep {
				delete(ps.pending, p)
			}
		} else {
			keep = cur.has[p] && self >= 0 && int(ps.last.owners[p]) == self
		}
		if keep {
			next.has[p] = true
			next.list = append(next.list, p)
		}
		switch {
		case keep && !cur.has[p]:
			gained++
		case !keep && cur.has[p]:
			lost++
		}
	}
	if gained == 0 && lost == 0 {
		return
	}
	ps.owned.Store(next)
	ps.log.Info("ring: owned partitions changed", "owned", len(next.list), "gained", gained, "lost", lost, "settling", len(ps.pending))
	notify(ps.changes)
}

// nextDue returns the earliest due time of a settling gain.
func (ps *Partitions) nextDue() (time.Time, bool) {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var first time.Time
	for _, due := range ps.pending {
		if first.IsZero() || due.Before(first) {
			first = due
		}
	}
	return first, !first.IsZero()
}

func notify(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// partTable is the owner of every gateway partition for one member list:
// an index into members per partition. Immutable.
type partTable struct {
	members []Member // canonical
	owners  []uint16 // partition -> index into members
	sig     string   // signature(members)
}

// buildPartitions assigns the partitions 0..n-1 to the canonical members
// with a consistent ring of n partitions (the gateway partition p is the
// library's partition p) and the fixed ReplicationFactor, Load and
// xxhash; nil when there are no members.
func buildPartitions(sorted []Member, n int) *partTable {
	if len(sorted) == 0 {
		return nil
	}
	cms, idx := indexMembers(sorted)
	c := consistent.New(cms, consistent.Config{
		PartitionCount:    n,
		ReplicationFactor: ReplicationFactor,
		Load:              Load,
		Hasher:            hasher{},
	})
	t := &partTable{members: sorted, owners: make([]uint16, n), sig: signature(sorted)}
	for p := range n {
		t.owners[p] = idx[c.GetPartitionOwner(p).String()]
	}
	return t
}

func (t *partTable) signature() string {
	if t == nil {
		return ""
	}
	return t.sig
}

// index returns the position of node among the members, or -1.
func (t *partTable) index(node string) int {
	if t == nil {
		return -1
	}
	i, ok := slices.BinarySearchFunc(t.members, node, func(m Member, node string) int {
		return strings.Compare(m.Node, node)
	})
	if !ok {
		return -1
	}
	return i
}

func (t *partTable) owner(p int) (Member, bool) {
	if t == nil || p < 0 || p >= len(t.owners) {
		return Member{}, false
	}
	return t.members[t.owners[p]], true
}

// partCache keeps the last few partition tables, keyed by the member list
// and the partition count, so that the processes of a test, and repeated
// calls of OwnerOfPartition, share them.
var partCache struct {
	sync.Mutex
	m map[string]*partTable
}

func cachedPartitions(members []Member, n int) *partTable {
	sorted := canonical(members)
	key := fmt.Sprintf("%d\x00%s", n, signature(sorted))
	partCache.Lock()
	t, ok := partCache.m[key]
	partCache.Unlock()
	if ok {
		return t
	}
	t = buildPartitions(sorted, n)
	partCache.Lock()
	if partCache.m == nil || len(partCache.m) >= tableCacheSize {
		partCache.m = make(map[string]*partTable, tableCacheSize)
	}
	partCache.m[key] = t
	partCache.Unlock()
	return t
}

// OwnerOfPartition returns the member that owns gateway partition p of
// partitions (0 ≤ p < partitions) when the ring has members, exactly as
// Partitions computes it; false when members is empty or p is out of
// range. The order of members does not matter. It needs no Redis; the
// last few assignments are cached.
func OwnerOfPartition(members []Member, partitions, p int) (Member, bool) {
	if partitions <= 0 || p < 0 || p >= partitions {
		return Member{}, false
	}
	return cachedPartitions(members, partitions).owner(p)
}
