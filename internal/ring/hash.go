package ring

import (
	"slices"
	"strings"
	"sync"

	"github.com/buraksezer/consistent"
	"github.com/cespare/xxhash/v2"
)

// The fixed settings of the consistent hash ring. Every process of a
// gateway must use the same values, or they disagree about owners: change
// them only together with every service. See the package documentation
// for the measurements behind them.
const (
	// PartitionCount is the number of partitions identities hash into
	// (identity -> xxhash % PartitionCount -> owner). It is prime, as the
	// library recommends, and large so that a member's share is made of
	// many small pieces: a join moves close to 1/(n+1) of the identities.
	PartitionCount = 7919
	// ReplicationFactor is the number of virtual nodes of each member on
	// the hash circle. With the library's 20, the bounded-load overflow
	// moves up to ~5% of identities between members that did not change
	// when a member joins; with 200 it is ~0.
	ReplicationFactor = 200
	// Load caps a member at Load times the average number of partitions.
	Load = 1.25
)

func init() {
	if PartitionCount <= 0 || PartitionCount > 1<<31-1 || ReplicationFactor <= 0 || Load <= 1 {
		panic("ring: invalid consistent hashing settings")
	}
}

// Member is one process in a ring: a push server, or a worker.
type Member struct {
	// Node is the member's name (GW_NODE_ID); it alone decides placement.
	Node string `json:"node"`
	// URL is, for a push server, where clients connect (GW_ADVERTISE_URL),
	// e.g. "mqtt://127.0.0.1:1885"; a worker has "worker://{node}".
	URL string `json:"mqtt_url"`
}

// String returns the node name; it makes Member a consistent.Member.
func (m Member) String() string { return m.Node }

type hasher struct{}

func (hasher) Sum64(b []byte) uint64 { return xxhash.Sum64(b) }

func config() consistent.Config {
	return consistent.Config{
		PartitionCount:    PartitionCount,
		ReplicationFactor: ReplicationFactor,
		Load:              Load,
		Hasher:            hasher{},
	}
}

// table is an immutable, built ring: the owner of every partition as an
// index into members. Lookups need no lock.
type table struct {
	members []Member // sorted by Node, no duplicates
	owners  []uint16 // partition -> index into members
	sig     string   // canonical form of members
}

// canonical sorts members by Node (then URL), drops empty names and keeps
// the first member of each Node. It returns a fresh slice.
func canonical(in []Member) []Member {
	ms := make([]Member, 0, len(in))
	for _, m := range in {
		if m.Node != "" {
			ms = append(ms, m)
		}
	}
	slices.SortFunc(ms, func(a, b Member) int {
		if c := strings.Compare(a.Node, b.Node); c != 0 {
			return c
		}
		return strings.Compare(a.URL, b.URL)
	})
	return slices.CompactFunc(ms, func(a, b Member) bool { return a.Node == b.Node })
}

func signature(sorted []Member) string {
	var b strings.Builder
	for _, m := range sorted {
		b.WriteString(m.Node)
		b.WriteByte(0)
		b.WriteString(m.URL)
		b.WriteByte(0)
	}
	return b.String()
}

// indexMembers returns the canonical members as the library's members and
// the index of each node in the list.
func indexMembers(sorted []Member) ([]consistent.Member, map[string]uint16) {
	if len(sorted) > 1<<16 {
		panic("ring: too many members")
	}
	cms := make([]consistent.Member, len(sorted))
	idx := make(map[string]uint16, len(sorted))
	for i, m := range sorted {
		cms[i] = m
		idx[m.Node] = uint16(i)
	}
	return cms, idx
}

// build makes the table of an already canonical member list; nil when the
// list is empty.
func build(sorted []Member) *table {
	if len(sorted) == 0 {
		return nil
	}
	cms, idx := indexMembers(sorted)
	c := consistent.New(cms, config())
	t := &table{members: sorted, owners: make([]uint16, PartitionCount), sig: signature(sorted)}
	for p := range PartitionCount {
		t.owners[p] = idx[c.GetPartitionOwner(p).String()]
	}
	return t
}

// partition is consistent.FindPartitionID without the []byte conversion.
func partition(identity string) int {
	return int(xxhash.Sum64String(identity) % PartitionCount)
}

func (t *table) owner(identity string) (Member, bool) {
	if t == nil {
		return Member{}, false
	}
	return t.members[t.owners[partition(identity)]], true
}

// tableCache keeps the last few tables built by OwnerOf, keyed by the
// canonical member list, so that repeated calls with the same members do
// not rebuild the ring.
var tableCache struct {
	sync.Mutex
	m map[string]*table
}

const tableCacheSize = 8

func cachedTable(members []Member) *table {
	sorted := canonical(members)
	sig := signature(sorted)
	tableCache.Lock()
	t, ok := tableCache.m[sig]
	tableCache.Unlock()
	if ok {
		return t
	}
	t = build(sorted)
	tableCache.Lock()
	if tableCache.m == nil || len(tableCache.m) >= tableCacheSize {
		tableCache.m = make(map[string]*table, tableCacheSize)
	}
	tableCache.m[sig] = t
	tableCache.Unlock()
	return t
}

// OwnerOf returns the member that owns identity in the ring built from
// members, exactly as a Ring with those members would; false when members
// is empty. The order of members does not matter. It needs no Redis; the
// last few rings are cached by member list.
func OwnerOf(members []Member, identity string) (Member, bool) {
	return cachedTable(members).owner(identity)
}
