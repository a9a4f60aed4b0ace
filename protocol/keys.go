package protocol

import "strings"

// Keys derives every Redis key of one namespace. All keys start with
// "{ns}:" so that several gateways and parallel tests share one Redis.
//
// Keys that belong to one command or one client carry the client in a
// fixed position so that a later move to Redis Cluster only needs hash
// tags around the client.
type Keys struct{ NS string }

// NewKeys returns the key builder for namespace ns.
func NewKeys(ns string) Keys { return Keys{NS: ns} }

// Prefix is "{ns}:"; every key of the namespace starts with it.
func (k Keys) Prefix() string { return k.NS + ":" }

// Command is the hash holding one command record, keyed by client and the
// canonical message ID (see ID.Key).
func (k Keys) Command(client, idKey string) string {
	return k.NS + ":cmd:" + client + ":" + idKey
}

// ClientCommands is the sorted set (score: accepted-at, ms) of one client's
// commands to one device, for listing.
func (k Keys) ClientCommands(client, device string) string {
	return k.NS + ":cmds:" + client + ":" + device
}

// Mailbox is the stream that holds the messages waiting for an identity.
func (k Keys) Mailbox(identity string) string { return k.NS + ":mbox:" + identity }

// Mailboxes is the set of identities whose mailbox may be non-empty; it
// lets monitoring total the mailboxes without scanning.
func (k Keys) Mailboxes() string { return k.NS + ":mboxes" }

// Timers is the sorted set of deadlines (score: due time, ms).
func (k Keys) Timers() string { return k.NS + ":timers" }

// Dead is the sorted set (score: dead-lettered at, ms) of dead commands.
func (k Keys) Dead() string { return k.NS + ":dead" }

// RingNodes is the set of push-server node IDs that registered in the ring.
func (k Keys) RingNodes() string { return k.NS + ":ring:nodes" }

// RingNode is the expiring key (value: advertise URL) of one live member.
func (k Keys) RingNode(node string) string { return k.NS + ":ring:node:" + node }

// RingChanges is the pub/sub channel announcing ring membership changes.
func (k Keys) RingChanges() string { return k.NS + ":ring:changes" }

// Session is the key (value: node ID) naming the push server that holds
// the identity's live MQTT session.
func (k Keys) Session(identity string) string { return k.NS + ":sess:" + identity }

// NodeSessions is the set of identities connected to one push server.
func (k Keys) NodeSessions(node string) string { return k.NS + ":node:" + node + ":sessions" }

// NodePending is the set of identities of one push server that have
// mailbox entries to stream; the node's sweep reads it.
func (k Keys) NodePending(node string) string { return k.NS + ":node:" + node + ":pending" }

// NodeWake is the pub/sub channel on which a push server is told that an
// identity's mailbox has new entries.
func (k Keys) NodeWake(node string) string { return k.NS + ":node:" + node + ":wake" }

// StatusCounts is the hash of transitions into each status during one
// minute (unix minute), for the stats endpoint.
func (k Keys) StatusCounts(unixMinute int64) string {
	return k.NS + ":stats:" + itoa(unixMinute)
}

// Owns reports whether key belongs to namespace ns.
func (k Keys) Owns(key string) bool { return strings.HasPrefix(key, k.Prefix()) }

func itoa(n int64) string {
	if n == 0 {
		return "0"
	}
	neg := n < 0
	if neg {
		n = -n
	}
	var b [20]byte
	i := len(b)
	for n > 0 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	if neg {
		i--
		b[i] = '-'
	}
	return string(b[i:])
}
