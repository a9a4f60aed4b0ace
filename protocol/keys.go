package protocol

import (
	"strconv"
	"strings"
)

// Keys derives every Redis key of one namespace (DESIGN §7).
//
// The keys of partition p (Keys.Part) start with the hash tag "{ns:p}:",
// so that all of them live in one Redis Cluster slot and one script may
// touch them together. Node-level keys (a push server's session and
// pending sets, its wake channel) start with "ns:" and are touched only by
// single-key commands; the keys of one ring share the tag "{ns:ring:g}".
type Keys struct{ NS string }

// NewKeys returns the key builder for namespace ns.
func NewKeys(ns string) Keys { return Keys{NS: ns} }

// Prefix is "{ns}:", the start of every node-level key of the namespace.
func (k Keys) Prefix() string { return k.NS + ":" }

// Owns reports whether key belongs to namespace ns: a node-level key
// ("ns:…"), a partition key ("{ns:p}:…") or a ring key ("{ns:ring:g}:…").
func (k Keys) Owns(key string) bool {
	if strings.HasPrefix(key, k.NS+":") {
		return true
	}
	rest, ok := strings.CutPrefix(key, "{"+k.NS+":")
	return ok && strings.Contains(rest, "}:")
}

// Part returns the keys of partition p.
func (k Keys) Part(p int) PartKeys { return PartKeys{P: p, prefix: Tag(k.NS, p) + ":"} }

// PartKeys are the keys of one partition; every one starts with the
// partition's hash tag "{ns:p}:".
type PartKeys struct {
	P      int
	prefix string
}

// Prefix is "{ns:p}:".
func (pk PartKeys) Prefix() string { return pk.prefix }

// Command is the hash holding one command record, in the device's
// partition, keyed by client and the canonical message ID (ID.Key).
func (pk PartKeys) Command(client, idKey string) string {
	return pk.prefix + "cmd:" + client + ":" + idKey
}

// Claim is the hash of one id claim, in the client's partition: the
// client's ledger of the command (device, fingerprint, generation, state,
// and the final status and response once relayed).
func (pk PartKeys) Claim(client, idKey string) string {
	return pk.prefix + "claim:" + client + ":" + idKey
}

// ClientCommands is the sorted set (score: accepted-at, ms) of one
// client's commands to one device, in the device's partition.
func (pk PartKeys) ClientCommands(client, device string) string {
	return pk.prefix + "cmds:" + client + ":" + device
}

// Mailbox is the stream that holds the messages waiting for an identity,
// in the identity's partition.
func (pk PartKeys) Mailbox(identity string) string { return pk.prefix + "mbox:" + identity }

// Mailboxes is the set of the partition's identities whose mailbox may be
// non-empty; it lets monitoring total the mailboxes without scanning.
func (pk PartKeys) Mailboxes() string { return pk.prefix + "mboxes" }

// Timers is the partition's sorted set of deadlines (score: due, ms).
func (pk PartKeys) Timers() string { return pk.prefix + "timers" }

// Dead is the partition's sorted set (score: dead-lettered at, ms) of dead
// commands.
func (pk PartKeys) Dead() string { return pk.prefix + "dead" }

// Outbox is the partition's stream of final results on their way to the
// clients' partitions.
func (pk PartKeys) Outbox() string { return pk.prefix + "outbox" }

// Queued is the partition's sorted set of its queued commands (member
// "{client}|{key}", score: accepted at, ms; a replay counts from the
// replay): the steps that make a command queued add it, every step that
// takes it on remove it. Its oldest member is the age of the oldest
// command waiting in a command queue, which RabbitMQ does not report for
// quorum queues.
func (pk PartKeys) Queued() string { return pk.prefix + "queued" }

// Meta is the partition's hash of fixed settings (partitions, queues):
// the fence that refuses a process configured with other counts.
func (pk PartKeys) Meta() string { return pk.prefix + "meta" }

// Barrier is the key every step writes when a durability barrier follows
// (GW_REDIS_WAIT_REPLICAS ≥ 1).
func (pk PartKeys) Barrier() string { return pk.prefix + "barrier" }

// Watch is the counter of the write watch (mailbox.WriteWatch): a
// value lower than one Redis acknowledged means it lost writes.
func (pk PartKeys) Watch() string { return pk.prefix + "watch" }

// Session is the key (value: node ID) naming the push server that holds
// the identity's live MQTT session, in the identity's partition.
func (pk PartKeys) Session(identity string) string { return pk.prefix + "sess:" + identity }

// SessionConn is the key holding the connection token of the identity's
// live session (identities cannot contain ':', so it never collides).
func (pk PartKeys) SessionConn(identity string) string {
	return pk.prefix + "sess:" + identity + ":conn"
}

// Seen is the key (value: unix ms) of the last time the identity
// connected, disconnected or polled over HTTP, in its partition; it
// expires after the retention.
func (pk PartKeys) Seen(identity string) string { return pk.prefix + "seen:" + identity }

// Polled is the key (value: unix ms) of the last time the device polled
// over HTTP, in its partition; it expires after the retention.
func (pk PartKeys) Polled(identity string) string { return pk.prefix + "polled:" + identity }

// Lanes is the sorted set of a device's ordered lanes, in the device's
// partition: one member "{lane}|{seq}|{client}|{id}" per command of a
// lane that is not final yet, all scored 0 so that they sort by name:
// the first member of a lane (seq is zero-padded, assigned at reserve in
// acceptance order) is the command that may be on the wire.
func (pk PartKeys) Lanes(device string) string { return pk.prefix + "lanes:" + device }

// StatusCounts is the partition's hash of transitions into each status
// during one minute (unix minute), for the stats endpoint.
func (pk PartKeys) StatusCounts(unixMinute int64) string {
	return pk.prefix + "stats:" + strconv.FormatInt(unixMinute, 10)
}

// Ring returns the keys of the ring of one group of processes ("push"
// for the push servers, "workers" for the partition owners).
func (k Keys) Ring(group string) RingKeys {
	return RingKeys{prefix: "{" + k.NS + ":ring:" + group + "}:"}
}

// RingKeys are the keys of one ring; all share one hash tag so that a
// script may change a member and the member set together.
type RingKeys struct{ prefix string }

// Nodes is the set of node IDs that registered in the ring.
func (rk RingKeys) Nodes() string { return rk.prefix + "nodes" }

// Node is the expiring key (value: advertise URL) of one live member.
func (rk RingKeys) Node(node string) string { return rk.prefix + "node:" + node }

// Changes is the pub/sub channel announcing membership changes.
func (rk RingKeys) Changes() string { return rk.prefix + "changes" }

// RingPush and RingWorkers name the two rings.
const (
	RingPush    = "push"
	RingWorkers = "workers"
)

// NodeSessions is the set of identities connected to one push server.
func (k Keys) NodeSessions(node string) string { return k.NS + ":node:" + node + ":sessions" }

// NodePending is the set of identities of one push server that have
// mailbox entries to stream; the node's sweep reads it.
func (k Keys) NodePending(node string) string { return k.NS + ":node:" + node + ":pending" }

// NodeWake is the (sharded, on Cluster) pub/sub channel on which a push
// server is told that an identity's mailbox has new entries.
func (k Keys) NodeWake(node string) string { return k.NS + ":node:" + node + ":wake" }

// Due is the sorted set of partitions that a step made due earlier than
// anything they held (member: the partition number, score: the due time
// in unix ms). The processes that run steps write it (ZADD LT); the
// partitions' owners read and clear the members of their partitions
// (DESIGN §7a "Costs that do not grow with P").
func (k Keys) Due() string { return k.NS + ":due" }

// Queues holds the command queue count the namespace publishes to once a
// resize of GW_QUEUES has switched (a decimal string; absent before the
// first resize). The worker that finds every worker consuming the new
// count sets it; apiservers that take part in the resize read it.
func (k Keys) Queues() string { return k.NS + ":queues" }

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

// Group is the hash of one group command (issue 14), in the client's
// partition (the partition of its claims, whose relay steps count the
// children's outcomes in it): the group's identity, options, target,
// release cursor and counters (mailbox/group.go lists the fields).
func (pk PartKeys) Group(client, idKey string) string {
	return pk.prefix + "grp:" + client + ":" + idKey
}

// Groups is the partition's sorted set (score: accepted at, ms) of its
// group commands, members "{client}|{id}", for the operators' list.
func (pk PartKeys) Groups() string { return pk.prefix + "grps" }

// DeviceGroup is the hash of a named device group (PUT /v1/groups/{name}),
// in the partition of its name: its device list and when it was set.
func (pk PartKeys) DeviceGroup(name string) string { return pk.prefix + "devgrp:" + name }
