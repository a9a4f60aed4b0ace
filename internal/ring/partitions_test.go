package ring

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
)

// coverBound is how soon every partition must have an owner again after a
// member joins, leaves or goes silent (DESIGN §7: "within a few seconds").
const coverBound = 5 * time.Second

// owner is one running Partitions in a test.
type owner struct {
	*Partitions
	stop func() // ends Run and the heartbeat without Leave, as a crash
}

// startOwner joins node to the workers' ring of ns over p partitions and
// runs it until the test ends (then it leaves).
func startOwner(t *testing.T, ns, node string, p int, opts PartitionOptions) *owner {
	t.Helper()
	if opts.Ring.Logger == nil {
		opts.Ring.Logger = testenv.Logger(t)
	}
	ps := NewPartitions(testenv.Redis(t), ns, node, p, opts)
	ctx, cancel := context.WithCancel(context.Background())
	if err := ps.Join(ctx); err != nil {
		cancel()
		t.Fatalf("Join(%s) = %v", node, err)
	}
	done := make(chan error, 1)
	go func() { done <- ps.Run(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run(%s) = %v, want nil", node, err)
		}
	}
	t.Cleanup(func() {
		if !stopped {
			lctx, lcancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer lcancel()
			if err := ps.Leave(lctx); err != nil {
				t.Errorf("Leave(%s) = %v", node, err)
			}
		}
		stop()
	})
	return &owner{Partitions: ps, stop: stop}
}

// coverage describes how the partitions 0..p-1 are owned by os: the
// partitions without an owner and those with more than one.
func coverage(os []*owner, p int) (missing, doubled []int) {
	count := make([]int, p)
	for _, o := range os {
		for _, q := range o.Owned() {
			count[q]++
		}
	}
	for q, c := range count {
		switch {
		case c == 0:
			missing = append(missing, q)
		case c > 1:
			doubled = append(doubled, q)
		}
	}
	return missing, doubled
}

// waitOneOwnerEach waits until every partition has exactly one owner
// among os, and returns how long that took; it fails t after within.
func waitOneOwnerEach(t *testing.T, os []*owner, p int, within time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	for {
		missing, doubled := coverage(os, p)
		if len(missing) == 0 && len(doubled) == 0 {
			return time.Since(start)
		}
		if time.Since(start) > within {
			t.Fatalf("after %v: partitions without owner %v, with several %v; owned: %s", within, missing, doubled, ownedSummary(os))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ownedSummary(os []*owner) string {
	var b strings.Builder
	for _, o := range os {
		fmt.Fprintf(&b, "%s=%d ", o.self.Node, len(o.Owned()))
	}
	return strings.TrimSpace(b.String())
}

// checkAgree checks that each owner owns exactly what OwnerOfPartition
// assigns to it for the members all of them see.
func checkAgree(t *testing.T, os []*owner, p int) {
	t.Helper()
	ms := os[0].Members()
	for _, o := range os {
		if got := o.Members(); !slices.Equal(got, ms) {
			t.Fatalf("%s sees members %v, %s sees %v", o.self.Node, got, os[0].self.Node, ms)
		}
		var want []int
		for q := range p {
			if m, _ := OwnerOfPartition(ms, p, q); m.Node == o.self.Node {
				want = append(want, q)
			}
		}
		if got := o.Owned(); !slices.Equal(got, want) {
			t.Errorf("%s owns %v, OwnerOfPartition gives it %v", o.self.Node, got, want)
		}
	}
}

func TestPartitionsOneOwnerEach(t *testing.T) {
	t.Parallel()
	ns := testenv.Namespace(t)
	const p = 64
	start := time.Now()
	os := []*owner{
		startOwner(t, ns, "worker-a", p, PartitionOptions{}),
		startOwner(t, ns, "worker-b", p, PartitionOptions{}),
		startOwner(t, ns, "worker-c", p, PartitionOptions{}),
	}
	took := waitOneOwnerEach(t, os, p, 2*coverBound)
	t.Logf("3 owners converged %v after the first Join (%v after the last); shares %s", time.Since(start), took, ownedSummary(os))
	checkAgree(t, os, p)
	for _, o := range os {
		if n := len(o.Owned()); n == 0 || float64(n) > math.Ceil(p/3.0*Load) {
			t.Errorf("%s owns %d of %d partitions; want 1..%v", o.self.Node, n, p, math.Ceil(p/3.0*Load))
		}
		for q := range p {
			if o.Owns(q) != slices.Contains(o.Owned(), q) {
				t.Fatalf("%s: Owns(%d) = %v disagrees with Owned()", o.self.Node, q, o.Owns(q))
			}
		}
		if o.Owns(-1) || o.Owns(p) {
			t.Errorf("%s owns a partition out of range", o.self.Node)
		}
	}
	// The members are registered in the workers' ring only.
	rdb := testenv.Redis(t)
	k := protocol.NewKeys(ns)
	if n := rdb.SCard(t.Context(), k.Ring(protocol.RingWorkers).Nodes()).Val(); n != 3 {
		t.Errorf("workers' ring has %d members in Redis, want 3", n)
	}
	if n := rdb.Exists(t.Context(), k.Ring(protocol.RingPush).Nodes()).Val(); n != 0 {
		t.Error("the push servers' ring has members")
	}
}

func TestPartitionsLeaveHandsOverAtOnce(t *testing.T) {
	t.Parallel()
	ns := testenv.Namespace(t)
	const p = 64
	// A long Settle shows that what the leaver owned does not wait for it.
	opts := PartitionOptions{Settle: 3 * time.Second}
	a := startOwner(t, ns, "worker-a", p, opts)
	b := startOwner(t, ns, "worker-b", p, opts)
	c := startOwner(t, ns, "worker-c", p, opts)
	waitOneOwnerEach(t, []*owner{a, b, c}, p, 2*coverBound)
	left := c.Owned()
	if len(left) == 0 {
		t.Fatal("worker-c owns nothing")
	}

	start := time.Now()
	if err := c.Leave(t.Context()); err != nil {
		t.Fatalf("Leave() = %v", err)
	}
	if got := c.Owned(); len(got) != 0 {
		t.Errorf("after Leave, worker-c still owns %v", got)
	}
	rest := []*owner{a, b}
	waitOneOwnerEach(t, rest, p, 2*coverBound)
	took := time.Since(start)
	t.Logf("one owner each again %v after Leave was called (the leaver had %d); shares %s", took, len(left), ownedSummary(rest))
	if took > opts.Settle {
		t.Errorf("partitions without a single owner for %v after a Leave; want them taken at once, not after Settle (%v)", took, opts.Settle)
	}
	checkAgree(t, rest, p)
}

func TestPartitionsSilentMemberIsReplaced(t *testing.T) {
	t.Parallel()
	ns := testenv.Namespace(t)
	const p = 64
	a := startOwner(t, ns, "worker-a", p, PartitionOptions{})
	b := startOwner(t, ns, "worker-b", p, PartitionOptions{})
	c := startOwner(t, ns, "worker-c", p, PartitionOptions{})
	waitOneOwnerEach(t, []*owner{a, b, c}, p, 2*coverBound)

	start := time.Now()
	c.stop() // no heartbeat, no Leave: as if the process died
	rest := []*owner{a, b}
	waitOneOwnerEach(t, rest, p, 3*coverBound)
	took := time.Since(start)
	t.Logf("one owner each again %v after the member went silent; shares %s", took, ownedSummary(rest))
	if took > coverBound {
		t.Errorf("partitions without a single owner for %v after a member went silent, want at most %v", took, coverBound)
	}
	// The key lives TTL (3s) after the last heartbeat, at most a
	// Heartbeat (1s) before stop: sooner, it was not the expiry.
	if took < 2*time.Second {
		t.Errorf("taken over after %v, before the member's key could expire", took)
	}
	checkAgree(t, rest, p)
}

func TestPartitionsJoinTakesSomeAfterSettle(t *testing.T) {
	t.Parallel()
	ns := testenv.Namespace(t)
	const p = 64
	opts := PartitionOptions{}
	a := startOwner(t, ns, "worker-a", p, opts)
	b := startOwner(t, ns, "worker-b", p, opts)
	waitOneOwnerEach(t, []*owner{a, b}, p, 2*coverBound)

	start := time.Now()
	c := startOwner(t, ns, "worker-c", p, opts)
	all := []*owner{a, b, c}
	for len(c.Owned()) == 0 {
		if time.Since(start) > 2*coverBound {
			t.Fatalf("the joiner owns nothing %v after Join", 2*coverBound)
		}
		time.Sleep(5 * time.Millisecond)
	}
	waitOneOwnerEach(t, all, p, 2*coverBound)
	took := time.Since(start) // from the start of Join
	t.Logf("the joiner owns %d partitions, one owner each, %v after Join was called; shares %s", len(c.Owned()), took, ownedSummary(all))
	if len(c.Owned()) == 0 {
		t.Error("the joiner owns nothing")
	}
	if took > coverBound {
		t.Errorf("one owner each only %v after a join, want at most %v", took, coverBound)
	}
	checkAgree(t, all, p)
}

func TestPartitionsGainFromLiveMemberWaitsSettle(t *testing.T) {
	t.Parallel()
	ns := testenv.Namespace(t)
	const p = 64
	opts := PartitionOptions{Settle: 1500 * time.Millisecond}
	a := startOwner(t, ns, "worker-a", p, opts)
	waitOneOwnerEach(t, []*owner{a}, p, 2*coverBound)

	start := time.Now()
	b := startOwner(t, ns, "worker-b", p, opts)
	// worker-a lets go of worker-b's share as soon as it sees the join;
	// worker-b reports it only after Settle.
	var gained time.Duration
	for {
		if len(b.Owned()) > 0 {
			gained = time.Since(start)
			break
		}
		if time.Since(start) > 2*coverBound {
			t.Fatal("the joiner owns nothing")
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Logf("the joiner's first partitions %v after Join was called", gained)
	if gained < opts.Settle {
		t.Errorf("the joiner owned partitions %v after Join, before Settle (%v)", gained, opts.Settle)
	}
	waitOneOwnerEach(t, []*owner{a, b}, p, 2*coverBound)
}

func TestPartitionsRevivedMemberSettlesAgain(t *testing.T) {
	t.Parallel()
	ns := testenv.Namespace(t)
	const p = 64
	opts := PartitionOptions{Settle: 2 * time.Second}
	a := startOwner(t, ns, "worker-a", p, opts)
	b := startOwner(t, ns, "worker-b", p, opts)
	waitOneOwnerEach(t, []*owner{a, b}, p, 2*coverBound)

	// As if worker-a had paused longer than TTL: its key goes, worker-b
	// prunes it and takes everything at once.
	rdb := testenv.Redis(t)
	if err := rdb.Del(t.Context(), protocol.NewKeys(ns).Ring(protocol.RingWorkers).Node("worker-a")).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.ring.Refresh(t.Context()); err != nil {
		t.Fatalf("Refresh() = %v", err)
	}
	// worker-a's heartbeat registers it again; it gives its partitions up
	// and takes them back after Settle, when worker-b has let them go.
	start := time.Now()
	for len(a.Owned()) != 0 {
		if time.Since(start) > coverBound {
			t.Fatalf("worker-a still owns %d partitions after it was pruned and came back", len(a.Owned()))
		}
		time.Sleep(5 * time.Millisecond)
	}
	gaveUp := time.Since(start)
	for len(a.Owned()) == 0 {
		if time.Since(start) > 2*coverBound {
			t.Fatalf("worker-a owns nothing %v after it came back", 2*coverBound)
		}
		time.Sleep(5 * time.Millisecond)
	}
	back := time.Since(start)
	waitOneOwnerEach(t, []*owner{a, b}, p, 2*coverBound)
	t.Logf("worker-a gave up its partitions %v after the prune and owned some again after %v; shares %s",
		gaveUp, back, ownedSummary([]*owner{a, b}))
	if back-gaveUp < opts.Settle {
		t.Errorf("worker-a owned partitions again %v after giving them up, before Settle (%v)", back-gaveUp, opts.Settle)
	}
	checkAgree(t, []*owner{a, b}, p)
}

func TestOwnerOfPartition(t *testing.T) {
	ms := members("worker-a", "worker-b", "worker-c")
	for _, tc := range []struct {
		ms            []Member
		partitions, p int
	}{
		{nil, 64, 0},
		{ms, 64, -1},
		{ms, 64, 64},
		{ms, 0, 0},
	} {
		if m, ok := OwnerOfPartition(tc.ms, tc.partitions, tc.p); ok {
			t.Errorf("OwnerOfPartition(%v, %d, %d) = %v, true; want false", tc.ms, tc.partitions, tc.p, m)
		}
	}

	rng := rand.New(rand.NewPCG(1, 2))
	for _, partitions := range []int{1, 2, 16, 64, 256, 4096} {
		for n := 1; n <= 9; n++ {
			var ms []Member
			for i := range n {
				ms = append(ms, Member{Node: fmt.Sprintf("w-%d-%d", rng.IntN(1000), i), URL: "worker://x"})
			}
			shuffled := slices.Clone(ms)
			rng.Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
			count := map[string]int{}
			for q := range partitions {
				m, ok := OwnerOfPartition(ms, partitions, q)
				m2, _ := OwnerOfPartition(shuffled, partitions, q)
				if !ok || m != m2 {
					t.Fatalf("OwnerOfPartition(%d of %d) = %v, %v; with the members shuffled %v", q, partitions, m, ok, m2)
				}
				count[m.Node]++
			}
			// The load bound: no member above Load times its share.
			limit := int(math.Ceil(float64(partitions) / float64(n) * Load))
			for node, c := range count {
				if c > limit {
					t.Errorf("%d partitions over %d members: %s owns %d, above the bound %d", partitions, n, node, c, limit)
				}
			}
		}
	}
}

// TestOwnerOfPartitionMoves measures how partitions move when a member
// joins: about 1/(n+1) of them, nearly all to the new member.
func TestOwnerOfPartitionMoves(t *testing.T) {
	const partitions = 256
	var moved, stray, trials int
	for seed := range 20 {
		for n := 2; n <= 8; n++ {
			var ms []Member
			for i := range n {
				ms = append(ms, Member{Node: fmt.Sprintf("w%d-%d", seed, i)})
			}
			joined := append(slices.Clone(ms), Member{Node: fmt.Sprintf("new%d", seed)})
			for q := range partitions {
				before, _ := OwnerOfPartition(ms, partitions, q)
				after, _ := OwnerOfPartition(joined, partitions, q)
				if before != after {
					moved++
					if after.Node != joined[n].Node {
						stray++
					}
				}
			}
			trials++
		}
	}
	t.Logf("%d partitions, 2..8 members, a join: %.1f partitions moved on average, %.2f between old members",
		partitions, float64(moved)/float64(trials), float64(stray)/float64(trials))
	if float64(stray) > 0.02*float64(moved) {
		t.Errorf("%d of %d moves were between old members, want at most 2%%", stray, moved)
	}
}
