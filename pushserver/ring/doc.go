// Package ring is the membership of the push servers and the consistent
// hash ring that gives every MQTT identity exactly one owner among them
// (DESIGN §5 "Ring"). The apiserver uses it to answer GET
// /v1/connect/{identity}, the workers to signal the owner of a recipient,
// and the push servers to refuse identities they do not own and to shed
// sessions after a change.
//
// # Membership in Redis
//
// Keys come from protocol.Keys of the namespace:
//
//	key                  type     content
//	{ns}:ring:nodes      set      node names that registered
//	{ns}:ring:node:{n}   string   advertise URL of live member n, expires after TTL (3s)
//	{ns}:ring:changes    pub/sub  a message after every join, leave or prune
//
// A push server calls [Ring.Join]: one Lua script sets its key (PX TTL)
// and adds it to the set, refusing with [ErrNodeTaken] when a live member
// holds the name with another URL; the join is announced on the channel,
// and a heartbeat renews the key every second. [Ring.Leave] stops the
// heartbeat, deletes the key, removes the name and announces it. A member
// that stops heartbeating (crash, hang, partition) has left once its key
// expires.
//
// Every process reads the members with SMEMBERS then MGET ([Ring.Refresh]),
// on every change notice and every second ([Ring.Run]). A name whose key
// is gone is removed from the set by a script that checks the key again
// in the same atomic step, so a member that heartbeated in between is not
// removed. A silent member thus drops out of every ring within TTL +
// Refresh, about 4 s. A heartbeat that finds its member pruned (after a
// pause longer than TTL) adds it again and announces it. When Redis
// cannot be read, the last ring stays in use.
//
// # The ring
//
// Every process builds the same buraksezer/consistent ring from the
// member list sorted by node name, with fixed settings: [PartitionCount]
// 7919, [ReplicationFactor] 200, [Load] 1.25, xxhash. Only the node name
// places a member; the URL is carried along. [OwnerOf] computes the same
// owner without Redis, for tests and tools.
//
// The settings were chosen by measuring, on random member names and 2 to
// 12 members, how evenly partitions spread and how many identities move
// between members that did not change when a member joins (with bounded
// loads, a join lowers every member's cap, and the overflow can move
// partitions between old members):
//
//	partitions  replicas  worst max/avg  moved between unchanged members on a join (worst)
//	271         20        1.28           8.9%
//	7919        20        1.25           5.4%
//	7919        100       1.25           0.5%
//	7919        200       1.24           0.2% (mean 0.001%)
//
// With 3 members and 10,000 identities the shares are 3477/3268/3255; a
// 4th member takes 27.9% and nothing moves between the others; a member
// that leaves gives away only its own identities. Building a ring costs
// about 4 ms for 3 members and 40 ms for 50; it happens once per process
// per change.
//
// # Lookups
//
// A built ring is flattened into a table of 7919 owners (one uint16 per
// partition) behind an atomic.Pointer, so [Ring.Owner] is one xxhash of
// the identity and a slice index: about 13 ns, no allocation, no lock.
// The library's LocateKey takes a read lock (a shared cache line written
// by every reader) and converts the key to []byte: about 100 ns and one
// allocation. The table gives exactly LocateKey's answers (tested).
//
// # Grace
//
// After a change a push server may still hold sessions of identities it
// no longer owns. [Ring.OwnsDuringGrace] is true when the node owns the
// identity now or owned it in a ring replaced less than Grace (5 s) ago;
// the push server keeps such sessions and sheds the others, at a bounded
// rate. [Ring.Changes] says when to look.
//
// # Use
//
//	r := ring.New(rdb, ns, ring.Options{Logger: log})
//	err := r.Refresh(ctx) // the ring is empty until the first read
//	go r.Run(ctx)         // every process
//	err = r.Join(ctx, ring.Member{Node: id, URL: url}) // push servers only
//	defer r.Leave(shutdownCtx)
//	m, ok := r.Owner(identity)
package ring
