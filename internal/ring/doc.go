// Package ring is the membership of a group of processes in Redis and
// the consistent hash ring built from it. There are two groups
// ([Options].Group):
//
//   - the push servers (protocol.RingPush, the default): the ring gives
//     every MQTT identity exactly one owner among them (DESIGN §5
//     "Ring"). The apiserver uses it to answer GET
//     /v1/connect/{identity}, the workers to signal the owner of a
//     recipient, and the push servers to refuse identities they do not
//     own and to shed sessions after a change;
//   - the workers (protocol.RingWorkers): [Partitions] gives every state
//     partition 0..P-1 exactly one owner among them, which sweeps its
//     timers and leftover outbox entries (DESIGN §7 "Partition owners").
//
// # Membership in Redis
//
// Keys come from protocol.Keys(ns).Ring(group); they share the hash tag
// {ns:ring:group}, so on Redis Cluster a group's keys live in one slot:
//
//	key                           type     content
//	{ns:ring:group}:nodes         set      node names that registered
//	{ns:ring:group}:node:{n}      string   URL of live member n, expires after TTL (3s)
//	{ns:ring:group}:changes       pub/sub  a message after every join, leave or prune
//
// The Lua scripts name every key they touch in KEYS and carry the #!lua
// flag line (Redis 7); the changes channel is plain pub/sub, which Cluster
// broadcasts to every node.
//
// A member calls [Ring.Join]: one Lua script sets its key (PX TTL)
// and adds it to the set, refusing with [ErrNodeTaken] when a live member
// holds the name with another URL; the join is announced on the channel,
// and a heartbeat renews the key every second. [Ring.Leave] stops the
// heartbeat, deletes the key, removes the name and announces it. A member
// that stops heartbeating (crash, hang, partition) has left once its key
// expires.
//
// Every process reads the members with SMEMBERS then MGET ([Ring.Refresh]),
// on every change notice and every Refresh, 1 s (500ms for [Partitions])
// ([Ring.Run]). A name whose key
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
// # Partition owners
//
// [Partitions] joins the workers' ring as "worker://{node}" and reports
// the partitions the member owns ([Partitions.Owned], [Partitions.Owns],
// [Partitions.Changes]). The owners of the partitions come from a
// buraksezer/consistent ring of P partitions (the gateway's partition p
// is the library's partition p) over the sorted members, with the same
// ReplicationFactor, Load and xxhash ([OwnerOfPartition]). The load bound
// keeps shares even where hashing P keys onto the identity ring would
// not; measured on random member names, 2 to 8 members:
//
//	P     worst max/avg, bounded  hashed as identities  moved between old members on a join (mean, of P)
//	16    1.50                    3.00                  0.45
//	64    1.31                    2.08                  0.59
//	256   1.27                    1.48                  0.58
//	1024  1.25                    1.31                  0.12
//
// A member's own view decides when it starts and stops owning a
// partition: a loss at once; a gain at once when a member left (its
// partitions have no owner), and Settle (1 s) later when members only
// joined, so that the previous owner lets go first. With the workers'
// Refresh of 500ms, every partition has an owner again at once after a
// Leave, within TTL + Refresh (3.5 s) after a member went silent, and a
// joining member takes its share Settle after Join. Two owners for a
// moment remain possible and are harmless: every step on partition state
// is a compare-and-set.
//
// # Use
//
//	r := ring.New(rdb, ns, ring.Options{Logger: log})
//	err := r.Refresh(ctx) // the ring is empty until the first read
//	go r.Run(ctx)         // every process
//	err = r.Join(ctx, ring.Member{Node: id, URL: url}) // push servers only
//	defer r.Leave(shutdownCtx)
//	m, ok := r.Owner(identity)
//
// A worker:
//
//	ps := ring.NewPartitions(rdb, ns, id, partitions, ring.PartitionOptions{Ring: ring.Options{Logger: log}})
//	err := ps.Join(ctx) // ErrNodeTaken when another worker has the id
//	go ps.Run(ctx)
//	for range ps.Changes() {
//		for _, p := range ps.Owned() { ... }
//	}
//	ps.Leave(shutdownCtx) // the others take over at once
package ring
