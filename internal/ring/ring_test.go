package ring

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
)

// fast are options for tests: the production cadence, a short grace.
func fast(t *testing.T) Options {
	return Options{Heartbeat: time.Second, TTL: 3 * time.Second, Refresh: time.Second, Grace: time.Second, Logger: testenv.Logger(t)}
}

// newRing returns a Ring with a client of its own, running until the test ends.
func newRing(t *testing.T, ns string, opts Options) *Ring {
	t.Helper()
	r := New(testenv.Redis(t), ns, opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run() = %v, want nil", err)
		}
	})
	return r
}

// join makes a Ring with a client of its own join as node, and leave when
// the test ends.
func join(t *testing.T, ns, node string, opts Options) *Ring {
	t.Helper()
	r := newRing(t, ns, opts)
	m := Member{Node: node, URL: "mqtt://" + node}
	if err := r.Join(t.Context(), m); err != nil {
		t.Fatalf("Join(%v) = %v", m, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := r.Leave(ctx); err != nil {
			t.Errorf("Leave() = %v", err)
		}
	})
	return r
}

func nodes(r *Ring) []string { return nodeNames(r.Members()) }

func waitMembers(t *testing.T, r *Ring, within time.Duration, want ...string) time.Duration {
	t.Helper()
	start := time.Now()
	for !slices.Equal(nodes(r), want) {
		if time.Since(start) > within {
			t.Fatalf("members = %v after %v, want %v", nodes(r), within, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

func waitChange(t *testing.T, r *Ring, within time.Duration) {
	t.Helper()
	select {
	case <-r.Changes():
	case <-time.After(within):
		t.Fatalf("no change notice within %v", within)
	}
}

func drain(r *Ring) {
	select {
	case <-r.Changes():
	default:
	}
}

func ringOwners(r *Ring, ids []string) map[string]string {
	out := make(map[string]string, len(ids))
	for _, id := range ids {
		m, ok := r.Owner(id)
		if !ok {
			panic("no owner")
		}
		out[id] = m.Node
	}
	return out
}

func TestRingsAgree(t *testing.T) {
	t.Parallel()
	ns := testenv.Namespace(t)
	opts := fast(t)
	rings := []*Ring{join(t, ns, "push-a", opts), join(t, ns, "push-b", opts), join(t, ns, "push-c", opts)}
	rings = append(rings, newRing(t, ns, opts)) // an apiserver or worker: watches only
	for _, r := range rings {
		waitMembers(t, r, 3*time.Second, "push-a", "push-b", "push-c")
	}
	ids := identities(10000)
	want := owners(rings[0].Members(), ids)
	for i, r := range rings {
		for _, id := range ids {
			m, ok := r.Owner(id)
			if !ok || m.Node != want[id] || m.URL != "mqtt://"+m.Node {
				t.Fatalf("ring %d: Owner(%q) = %v, %v; want %s (OwnerOf)", i, id, m, ok, want[id])
			}
		}
	}
	cnt := map[string]int{}
	for _, n := range want {
		cnt[n]++
	}
	t.Logf("10000 identities over 3 members: %v", cnt)
}

func TestJoinAndLeaveMoveOnlyTheirIdentities(t *testing.T) {
	t.Parallel()
	ns := testenv.Namespace(t)
	opts := fast(t)
	join(t, ns, "push-a", opts)
	join(t, ns, "push-b", opts)
	join(t, ns, "push-c", opts)
	obs := newRing(t, ns, opts)
	waitMembers(t, obs, 3*time.Second, "push-a", "push-b", "push-c")
	ids := identities(10000)
	before := ringOwners(obs, ids)

	drain(obs)
	d := join(t, ns, "push-d", opts)
	waitChange(t, obs, 2*time.Second)
	took := waitMembers(t, obs, 2*time.Second, "push-a", "push-b", "push-c", "push-d")
	t.Logf("join seen by the observer %v after Join returned", took)
	after := ringOwners(obs, ids)
	moved, stray := movement(before, after, "push-d")
	t.Logf("join: %d of %d identities moved, %d between old members", moved, len(ids), stray)
	if moved < 1500 || moved > 3500 || stray != 0 {
		t.Errorf("join moved %d identities (%d between old members); want about 2500, all to push-d", moved, stray)
	}

	drain(obs)
	if err := d.Leave(t.Context()); err != nil {
		t.Fatalf("Leave() = %v", err)
	}
	waitChange(t, obs, 2*time.Second)
	waitMembers(t, obs, 2*time.Second, "push-a", "push-b", "push-c")
	back := ringOwners(obs, ids)
	for _, id := range ids {
		if back[id] != before[id] {
			t.Fatalf("after leave, Owner(%q) = %s, want %s as before the join", id, back[id], before[id])
		}
	}
	if got := nodes(d); slices.Contains(got, "push-d") {
		t.Errorf("the leaving ring still lists itself: %v", got)
	}

	drain(obs)
	c := join(t, ns, "push-e", opts)
	waitMembers(t, obs, 2*time.Second, "push-a", "push-b", "push-c", "push-e")
	before = ringOwners(obs, ids)
	if err := c.Leave(t.Context()); err != nil {
		t.Fatalf("Leave() = %v", err)
	}
	waitMembers(t, obs, 2*time.Second, "push-a", "push-b", "push-c")
	after = ringOwners(obs, ids)
	moved, stray = movement(before, after, "push-e")
	t.Logf("leave: %d of %d identities moved, %d between remaining members", moved, len(ids), stray)
	if stray != 0 {
		t.Errorf("leave moved %d identities between remaining members", stray)
	}
}

func TestSilentMemberDisappears(t *testing.T) {
	t.Parallel()
	ns := testenv.Namespace(t)
	opts := fast(t)
	// Both push-a's ring and obs's may prune: they share one record.
	var prunedMu sync.Mutex
	var pruned []string
	recOpts := opts
	recOpts.OnPruned = func(_ context.Context, nodes []string) {
		prunedMu.Lock()
		defer prunedMu.Unlock()
		pruned = append(pruned, nodes...)
	}
	join(t, ns, "push-a", recOpts)
	obs := newRing(t, ns, recOpts)

	silent := New(testenv.Redis(t), ns, opts)
	ctx, stop := context.WithCancel(t.Context())
	if err := silent.Join(ctx, Member{Node: "push-z", URL: "mqtt://z"}); err != nil {
		t.Fatalf("Join() = %v", err)
	}
	waitMembers(t, obs, 2*time.Second, "push-a", "push-z")
	// Heartbeats renew its key (its expiry jumps back up, twice), and a
	// refresh of obs after them keeps it.
	zKey := protocol.NewKeys(ns).Ring(protocol.RingPush).Node("push-z")
	rdb := testenv.Redis(t)
	renewals := 0
	last, err := rdb.PTTL(t.Context(), zKey).Result()
	if err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); renewals < 2; time.Sleep(20 * time.Millisecond) {
		d, err := rdb.PTTL(t.Context(), zKey).Result()
		if err != nil {
			t.Fatal(err)
		}
		if d > last {
			renewals++
		}
		last = d
		if time.Now().After(deadline) {
			t.Fatalf("push-z's key renewed %d times in 10s, want 2 (heartbeat %v)", renewals, opts.Heartbeat)
		}
	}
	if err := obs.Refresh(t.Context()); err != nil {
		t.Fatalf("Refresh() = %v", err)
	}
	if got := nodes(obs); !slices.Equal(got, []string{"push-a", "push-z"}) {
		t.Fatalf("members = %v while push-z heartbeats", got)
	}
	drain(obs)
	stop() // the heartbeat stops, as if the process hung or died
	// Its key expires at most TTL after its last heartbeat, and the next
	// read (at most Refresh later) drops it: about 4s, plus scheduling.
	took := waitMembers(t, obs, 10*time.Second, "push-a")
	t.Logf("silent member gone after %v", took)
	waitChange(t, obs, time.Second)
	// Exactly one of the two pruned it, so OnPruned named it once.
	var got []string
	for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		prunedMu.Lock()
		got = slices.Clone(pruned)
		prunedMu.Unlock()
		if len(got) > 0 {
			break
		}
	}
	// OnPruned is called by the member whose SREM removed push-z from the
	// set: once push-z is out of the set, no other call can name it.
	nodesKey := protocol.NewKeys(ns).Ring(protocol.RingPush).Nodes()
	for deadline := time.Now().Add(3 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		in, err := testenv.Redis(t).SIsMember(t.Context(), nodesKey, "push-z").Result()
		if err != nil {
			t.Fatal(err)
		}
		if !in {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("push-z still in the ring's set 3s after it left the members")
		}
	}
	prunedMu.Lock()
	got = slices.Clone(pruned)
	prunedMu.Unlock()
	if !slices.Equal(got, []string{"push-z"}) {
		t.Errorf("OnPruned got %v, want [push-z] once", got)
	}
	set, err := testenv.Redis(t).SMembers(t.Context(), protocol.NewKeys(ns).Ring(protocol.RingPush).Nodes()).Result()
	if err != nil || !slices.Equal(set, []string{"push-a"}) {
		t.Errorf("member set = %v, %v; want [push-a] (pruned)", set, err)
	}
}

func TestHeartbeatRestoresPrunedMember(t *testing.T) {
	t.Parallel()
	ns := testenv.Namespace(t)
	opts := fast(t)
	join(t, ns, "push-a", opts)
	revived := make(chan struct{}, 4)
	bOpts := opts
	bOpts.OnRevived = func() { revived <- struct{}{} }
	join(t, ns, "push-b", bOpts)
	obs := newRing(t, ns, opts)
	waitMembers(t, obs, 2*time.Second, "push-a", "push-b")
	// As if push-b had paused longer than TTL and another process pruned it.
	k := protocol.NewKeys(ns).Ring(protocol.RingPush)
	rdb := testenv.Redis(t)
	if err := rdb.Del(t.Context(), k.Node("push-b")).Err(); err != nil {
		t.Fatal(err)
	}
	if err := obs.Refresh(t.Context()); err != nil {
		t.Fatalf("Refresh() = %v", err)
	}
	if got := nodes(obs); !slices.Equal(got, []string{"push-a"}) {
		t.Fatalf("members = %v after push-b's key went, want [push-a]", got)
	}
	took := waitMembers(t, obs, 3*time.Second, "push-a", "push-b")
	t.Logf("pruned member back after %v", took)
	select {
	case <-revived:
	case <-time.After(5 * time.Second):
		t.Error("push-b's OnRevived was not called")
	}
}

func TestGrace(t *testing.T) {
	t.Parallel()
	ns := testenv.Namespace(t)
	opts := fast(t)
	opts.Grace = 3 * time.Second // long enough that "right after the change" holds on a loaded machine
	join(t, ns, "push-a", opts)
	join(t, ns, "push-b", opts)
	obs := newRing(t, ns, opts)
	waitMembers(t, obs, 2*time.Second, "push-a", "push-b")
	ids := identities(1000)
	before := ringOwners(obs, ids)

	join(t, ns, "push-c", opts)
	waitMembers(t, obs, 2*time.Second, "push-a", "push-b", "push-c")
	changed := time.Now()
	var id, prev string
	for _, x := range ids {
		if m, _ := obs.Owner(x); m.Node == "push-c" {
			id, prev = x, before[x]
			break
		}
	}
	if id == "" {
		t.Fatal("no identity moved to push-c")
	}
	if !obs.OwnsDuringGrace("push-c", id) {
		t.Errorf("OwnsDuringGrace(push-c, %q) = false for the new owner", id)
	}
	if !obs.OwnsDuringGrace(prev, id) && time.Since(changed) < opts.Grace {
		t.Errorf("OwnsDuringGrace(%s, %q) = false right after the change, want true", prev, id)
	}
	other := "push-a"
	if prev == other {
		other = "push-b"
	}
	if obs.OwnsDuringGrace(other, id) {
		t.Errorf("OwnsDuringGrace(%s, %q) = true; it never owned it", other, id)
	}
	time.Sleep(opts.Grace + 100*time.Millisecond)
	if obs.OwnsDuringGrace(prev, id) {
		t.Errorf("OwnsDuringGrace(%s, %q) = true after Grace, want false", prev, id)
	}
	if !obs.OwnsDuringGrace("push-c", id) {
		t.Errorf("OwnsDuringGrace(push-c, %q) = false after Grace", id)
	}
}

func TestJoinErrors(t *testing.T) {
	t.Parallel()
	ns := testenv.Namespace(t)
	opts := fast(t)
	a := join(t, ns, "push-a", opts)
	if err := a.Join(t.Context(), Member{Node: "push-x", URL: "mqtt://x"}); !errors.Is(err, ErrJoined) {
		t.Errorf("second Join() = %v, want ErrJoined", err)
	}
	b := New(testenv.Redis(t), ns, opts)
	if err := b.Join(t.Context(), Member{Node: "push-a", URL: "mqtt://other"}); !errors.Is(err, ErrNodeTaken) {
		t.Errorf("Join() with a taken node = %v, want ErrNodeTaken", err)
	}
	if err := b.Join(t.Context(), Member{Node: "push-b"}); !errors.Is(err, ErrInvalidMember) {
		t.Errorf("Join() without URL = %v, want ErrInvalidMember", err)
	}
	if err := b.Leave(t.Context()); err != nil {
		t.Errorf("Leave() without Join = %v, want nil", err)
	}
	// Leaving under a name that another URL holds removes nothing.
	k := protocol.NewKeys(ns).Ring(protocol.RingPush)
	rdb := testenv.Redis(t)
	if err := leaveScript.Run(t.Context(), rdb, []string{k.Node("push-a"), k.Nodes()}, "push-a", "mqtt://other", k.Changes()).Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if got := b.Members(); !slices.Equal(got, []Member{{Node: "push-a", URL: "mqtt://push-a"}}) {
		t.Errorf("members = %v, want [push-a] still", got)
	}
}

func TestRejoinAfterLeave(t *testing.T) {
	t.Parallel()
	ns := testenv.Namespace(t)
	opts := fast(t)
	r := join(t, ns, "push-a", opts)
	for i := range 3 {
		if err := r.Leave(t.Context()); err != nil {
			t.Fatalf("Leave() = %v", err)
		}
		if got := r.Members(); len(got) != 0 {
			t.Fatalf("members after Leave = %v", got)
		}
		m := Member{Node: "push-a", URL: fmt.Sprintf("mqtt://a:%d", i)}
		if err := r.Join(t.Context(), m); err != nil {
			t.Fatalf("Join() = %v", err)
		}
		if got, _ := r.Owner("dev-1"); got != m {
			t.Fatalf("Owner(dev-1) = %v, want %v", got, m)
		}
	}
}

func TestOwnerWithoutMembers(t *testing.T) {
	t.Parallel()
	ns := testenv.Namespace(t)
	r := New(testenv.Redis(t), ns, fast(t))
	if err := r.Refresh(t.Context()); err != nil {
		t.Fatalf("Refresh() = %v", err)
	}
	if m, ok := r.Owner("dev-1"); ok {
		t.Errorf("Owner(dev-1) = %v, true with no members", m)
	}
	if r.OwnsDuringGrace("push-a", "dev-1") {
		t.Error("OwnsDuringGrace = true with no members")
	}
}

func TestGroupsAreSeparate(t *testing.T) {
	t.Parallel()
	ns := testenv.Namespace(t)
	opts := fast(t)
	push := join(t, ns, "node-a", opts) // Group "" is the push servers' ring
	wopts := opts
	wopts.Group = protocol.RingWorkers
	workers := join(t, ns, "node-b", wopts)
	waitMembers(t, push, 2*time.Second, "node-a")
	waitMembers(t, workers, 2*time.Second, "node-b")
	// A member of one group is not pruned by the other group's reads.
	if err := workers.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := push.Refresh(t.Context()); err != nil {
		t.Fatal(err)
	}
	k := protocol.NewKeys(ns)
	rdb := testenv.Redis(t)
	for group, node := range map[string]string{protocol.RingPush: "node-a", protocol.RingWorkers: "node-b"} {
		rk := k.Ring(group)
		if got, err := rdb.SMembers(t.Context(), rk.Nodes()).Result(); err != nil || !slices.Equal(got, []string{node}) {
			t.Errorf("SMEMBERS %s = %v, %v; want [%s]", rk.Nodes(), got, err, node)
		}
		if n := rdb.Exists(t.Context(), rk.Node(node)).Val(); n != 1 {
			t.Errorf("member key %s missing", rk.Node(node))
		}
	}
}
