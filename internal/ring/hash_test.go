package ring

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/buraksezer/consistent"
)

func identities(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		if i%2 == 0 {
			ids[i] = fmt.Sprintf("dev-%d", i)
		} else {
			ids[i] = fmt.Sprintf("client-%d", i)
		}
	}
	return ids
}

func members(names ...string) []Member {
	ms := make([]Member, len(names))
	for i, n := range names {
		ms[i] = Member{Node: n, URL: "mqtt://" + n}
	}
	return ms
}

// owners maps every identity to the node owning it in the ring of ms.
func owners(ms []Member, ids []string) map[string]string {
	out := make(map[string]string, len(ids))
	for _, id := range ids {
		m, ok := OwnerOf(ms, id)
		if !ok {
			panic("no owner")
		}
		out[id] = m.Node
	}
	return out
}

func TestOwnerOfEmpty(t *testing.T) {
	for _, ms := range [][]Member{nil, {}, {{Node: "", URL: "mqtt://x"}}} {
		if m, ok := OwnerOf(ms, "dev-1"); ok {
			t.Errorf("OwnerOf(%v, dev-1) = %v, true; want false", ms, m)
		}
	}
}

func TestOwnerOfIgnoresOrderAndDuplicates(t *testing.T) {
	ids := identities(2000)
	base := members("push-a", "push-b", "push-c", "push-d")
	want := owners(base, ids)
	rng := rand.New(rand.NewPCG(1, 1))
	for range 5 {
		ms := slices.Clone(base)
		ms = append(ms, ms[rng.IntN(len(ms))]) // a duplicate
		rng.Shuffle(len(ms), func(i, j int) { ms[i], ms[j] = ms[j], ms[i] })
		got := owners(ms, ids)
		for _, id := range ids {
			if got[id] != want[id] {
				t.Fatalf("OwnerOf(%v, %q) = %s, want %s", ms, id, got[id], want[id])
			}
		}
	}
}

func TestOwnerOfReturnsURL(t *testing.T) {
	ms := members("push-a", "push-b")
	m, ok := OwnerOf(ms, "dev-1")
	if !ok || m.URL != "mqtt://"+m.Node {
		t.Fatalf("OwnerOf(%v, dev-1) = %v, %v", ms, m, ok)
	}
	// The URL does not take part in placement.
	moved := []Member{{Node: "push-a", URL: "mqtt://elsewhere:1"}, {Node: "push-b", URL: "mqtt://elsewhere:2"}}
	m2, _ := OwnerOf(moved, "dev-1")
	if m2.Node != m.Node {
		t.Fatalf("owner changed with the URLs: %s, want %s", m2.Node, m.Node)
	}
}

// TestTableMatchesLibrary checks that the lock-free partition table gives
// exactly consistent.LocateKey's answer.
func TestTableMatchesLibrary(t *testing.T) {
	ms := members("push-1", "push-2", "push-3", "push-4", "push-5")
	cms := make([]consistent.Member, len(ms))
	for i, m := range ms {
		cms[i] = m
	}
	c := consistent.New(cms, config())
	tab := build(canonical(ms))
	for _, id := range identities(10000) {
		want := c.LocateKey([]byte(id)).String()
		got, _ := tab.owner(id)
		if got.Node != want {
			t.Fatalf("owner(%q) = %s, want %s (LocateKey)", id, got.Node, want)
		}
	}
}

func spread(ms []Member, ids []string) map[string]int {
	cnt := map[string]int{}
	for _, n := range owners(ms, ids) {
		cnt[n]++
	}
	return cnt
}

func TestSpreadThreeMembers(t *testing.T) {
	ids := identities(10000)
	ms := members("push-1", "push-2", "push-3")
	cnt := spread(ms, ids)
	avg := float64(len(ids)) / float64(len(ms))
	for _, m := range ms {
		r := float64(cnt[m.Node]) / avg
		t.Logf("%s owns %d of %d identities (%.3f of the average)", m.Node, cnt[m.Node], len(ids), r)
		if r < 0.75 || r > Load+0.02 {
			t.Errorf("%s owns %d identities, %.3f of the average; want within [0.75, %.2f]", m.Node, cnt[m.Node], r, Load+0.02)
		}
	}
}

// movement compares the owners of ids before and after a change; stray
// counts the identities that moved although neither their old nor their
// new owner is the member that changed.
func movement(before, after map[string]string, changed string) (moved, stray int) {
	for id, b := range before {
		if a := after[id]; a != b {
			moved++
			if a != changed && b != changed {
				stray++
			}
		}
	}
	return moved, stray
}

func TestJoinMovesOnlyToNewMember(t *testing.T) {
	ids := identities(10000)
	before := owners(members("push-1", "push-2", "push-3"), ids)
	after := owners(members("push-1", "push-2", "push-3", "push-4"), ids)
	moved, stray := movement(before, after, "push-4")
	t.Logf("join of a 4th member: %d of %d identities moved (%.3f), %d not to the new member", moved, len(ids), float64(moved)/float64(len(ids)), stray)
	if f := float64(moved) / float64(len(ids)); f < 0.15 || f > 0.35 {
		t.Errorf("join moved %.3f of the identities, want about 1/4", f)
	}
	if stray != 0 {
		t.Errorf("join moved %d identities between old members", stray)
	}
}

func TestLeaveMovesOnlyItsIdentities(t *testing.T) {
	ids := identities(10000)
	before := owners(members("push-1", "push-2", "push-3", "push-4"), ids)
	after := owners(members("push-1", "push-3", "push-4"), ids)
	moved, stray := movement(before, after, "push-2")
	t.Logf("leave of 1 of 4 members: %d of %d identities moved (%.3f), %d not from the leaving member", moved, len(ids), float64(moved)/float64(len(ids)), stray)
	if stray != 0 {
		t.Errorf("leave moved %d identities between remaining members", stray)
	}
}

// TestSettingsOverManyMemberSets backs the choice of the fixed settings
// on random member names and sizes: bounded partitions per member and
// (almost) no movement between members that did not change.
func TestSettingsOverManyMemberSets(t *testing.T) {
	trials := 20
	if testing.Short() {
		trials = 3
	}
	rng := rand.New(rand.NewPCG(7, 7))
	worstStray, worstLoad := 0.0, 0.0
	for _, size := range []int{2, 3, 5, 8} {
		for range trials {
			var names []string
			for len(names) <= size {
				n := fmt.Sprintf("127.0.0.1:%d", 1024+rng.IntN(60000))
				if !slices.Contains(names, n) {
					names = append(names, n)
				}
			}
			a := build(canonical(members(names[:size]...)))
			b := build(canonical(members(names...)))
			stray := 0
			load := map[uint16]int{}
			for p := range PartitionCount {
				load[a.owners[p]]++
				oa, ob := a.members[a.owners[p]].Node, b.members[b.owners[p]].Node
				if oa != ob && ob != names[size] {
					stray++
				}
			}
			for _, l := range load {
				worstLoad = max(worstLoad, float64(l)/(float64(PartitionCount)/float64(size)))
			}
			worstStray = max(worstStray, float64(stray)/PartitionCount)
		}
	}
	t.Logf("worst partitions per member: %.3f of the average; worst share moved between unchanged members on a join: %.4f", worstLoad, worstStray)
	if worstLoad > Load+0.01 {
		t.Errorf("a member holds %.3f of the average, above Load %.2f", worstLoad, Load)
	}
	if worstStray > 0.01 {
		t.Errorf("a join moved %.4f of the partitions between unchanged members, want <= 0.01", worstStray)
	}
}

func BenchmarkOwner(b *testing.B) {
	r := New(nil, "bench", Options{})
	r.install(canonical(members("push-1", "push-2", "push-3")))
	ids := identities(1024)
	b.Run("serial", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			r.Owner(ids[i&1023])
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for i := 0; pb.Next(); i++ {
				r.Owner(ids[i&1023])
			}
		})
	})
}

// BenchmarkLocateKey is what Owner would cost with the library's lookup
// (a []byte conversion, an RWMutex read lock and a map lookup).
func BenchmarkLocateKey(b *testing.B) {
	ms := members("push-1", "push-2", "push-3")
	cms := make([]consistent.Member, len(ms))
	for i, m := range ms {
		cms[i] = m
	}
	c := consistent.New(cms, config())
	ids := identities(1024)
	b.Run("serial", func(b *testing.B) {
		for i := 0; b.Loop(); i++ {
			c.LocateKey([]byte(ids[i&1023]))
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for i := 0; pb.Next(); i++ {
				c.LocateKey([]byte(ids[i&1023]))
			}
		})
	})
}

func BenchmarkOwnerOfCached(b *testing.B) {
	ms := members("push-1", "push-2", "push-3")
	for b.Loop() {
		OwnerOf(ms, "dev-1")
	}
}

func BenchmarkBuild(b *testing.B) {
	for _, n := range []int{3, 10, 50} {
		var names []string
		for i := range n {
			names = append(names, fmt.Sprintf("push-%d", i))
		}
		ms := canonical(members(names...))
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			for b.Loop() {
				build(ms)
			}
		})
	}
}
