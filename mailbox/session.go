package mailbox

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/protocol"
)

// SetSession records that identity's live session is on node:
// Session(identity) = node, identity in NodeSessions(node) (and out of
// the set of the node it was on before). The session key has no expiry:
// the node clears it when the session ends, and the registrations of a
// node that stopped without doing so are cleared by ForgetSessions. It is
// SetSessionConn without a connection token.
func (s *Store) SetSession(ctx context.Context, identity, node string) error {
	return s.SetSessionConn(ctx, identity, node, "")
}

// ClearSession forgets identity's session on node: it leaves
// NodeSessions(node), and Session(identity) is deleted only if it still
// names node (the identity may have reconnected elsewhere meanwhile). It
// is ClearSessionConn for any connection.
func (s *Store) ClearSession(ctx context.Context, identity, node string) error {
	return s.ClearSessionConn(ctx, identity, node, "")
}

// SetSessionConn is SetSession for one connection of identity, named by
// conn (any token unique per connection on node, e.g. a counter or a
// random string; "" for none): ClearSessionConn of an older connection of
// identity on the same node then leaves this one registered, in whatever
// order the two calls reach Redis.
func (s *Store) SetSessionConn(ctx context.Context, identity, node, conn string) error {
	// The node sets are node-level keys, changed by single-key commands
	// around the step. The identity joins node's set before the step, so
	// that a registration is always in its node's set (a node killed
	// right after the step still has it cleared by ForgetSessions); a set
	// may briefly list an identity that is not registered there, which
	// ForgetSessions and ClearSessionConn tolerate (they re-check the
	// registration).
	if err := s.rdb.SAdd(ctx, s.keys.NodeSessions(node), identity).Err(); err != nil {
		return fmt.Errorf("cannot set session of %s: %w", identity, s.classify(err))
	}
	p := s.PartitionOf(identity)
	pk := s.keys.Part(p)
	v, err := s.run(ctx, p, stepSessionSet, []string{pk.Session(identity), pk.SessionConn(identity), pk.Seen(identity)}, node, conn)
	if err != nil {
		return fmt.Errorf("cannot set session of %s: %w", identity, err)
	}
	if old, _ := v.(string); old != "" && old != node {
		if err := s.rdb.SRem(ctx, s.keys.NodeSessions(old), identity).Err(); err != nil {
			return fmt.Errorf("cannot set session of %s: %w", identity, s.classify(err))
		}
	}
	return nil
}

// ClearSessionConn forgets identity's session on node only if it is the
// connection conn ("" = whichever): Session(identity) is deleted and
// identity leaves NodeSessions(node) when Session(identity) names node
// with that connection. When Session(identity) names another node (or
// none), identity only leaves NodeSessions(node); when it names node with
// another connection (a newer one), nothing changes.
func (s *Store) ClearSessionConn(ctx context.Context, identity, node, conn string) error {
	p := s.PartitionOf(identity)
	pk := s.keys.Part(p)
	v, err := s.run(ctx, p, stepSessionClear, []string{pk.Session(identity), pk.SessionConn(identity), pk.Seen(identity)}, node, conn)
	if err != nil {
		return fmt.Errorf("cannot clear session of %s: %w", identity, err)
	}
	if n, _ := v.(int64); n == 1 || conn == "" {
		if err := s.rdb.SRem(ctx, s.keys.NodeSessions(node), identity).Err(); err != nil {
			return fmt.Errorf("cannot clear session of %s: %w", identity, s.classify(err))
		}
		return nil
	}
	// A newer connection on node keeps the registration; an identity that
	// moved to another node leaves this node's set.
	if cur, err := s.SessionNode(ctx, identity); err == nil && cur != node {
		_ = s.rdb.SRem(ctx, s.keys.NodeSessions(node), identity).Err()
	}
	return nil
}

// ForgetSessions deletes the session registrations that name node, and
// its pending set: what a push server that stopped without cleaning up
// (killed, crashed) left behind. The survivor that prunes the silent node
// from the ring calls it; a node calls it with force for its own name
// when it starts, before it accepts a connection. Unless force is set it
// changes nothing while node is a live ring member, and stops (returning
// ErrNodeAlive) if the node comes back midway. It returns how many
// identities it took out of the node's session set.
func (s *Store) ForgetSessions(ctx context.Context, node string, force bool) (int, error) {
	const batch = 1000
	total := 0
	for {
		if !force {
			alive, err := s.rdb.Exists(ctx, s.keys.Ring(protocol.RingPush).Node(node)).Result()
			if err != nil {
				return total, fmt.Errorf("cannot forget the sessions of %s: %w", node, s.classify(err))
			}
			if alive == 1 {
				return total, fmt.Errorf("%w: %s", ErrNodeAlive, node)
			}
		}
		ids, err := s.rdb.SPopN(ctx, s.keys.NodeSessions(node), batch).Result()
		if err != nil && !errors.Is(err, redis.Nil) {
			return total, fmt.Errorf("cannot forget the sessions of %s: %w", node, s.classify(err))
		}
		for _, id := range ids {
			p := s.PartitionOf(id)
			pk := s.keys.Part(p)
			if _, err := s.run(ctx, p, stepSessionClear, []string{pk.Session(id), pk.SessionConn(id), pk.Seen(id)}, node, ""); err != nil {
				return total, fmt.Errorf("cannot forget the session of %s on %s: %w", id, node, err)
			}
		}
		total += len(ids)
		if len(ids) < batch {
			if err := s.rdb.Del(ctx, s.keys.NodePending(node)).Err(); err != nil {
				return total, fmt.Errorf("cannot forget the pending set of %s: %w", node, s.classify(err))
			}
			return total, nil
		}
	}
}

// SessionNode returns the node holding identity's live session, "" when
// none is registered.
func (s *Store) SessionNode(ctx context.Context, identity string) (string, error) {
	n, err := s.rdb.Get(ctx, s.part(identity).Session(identity)).Result()
	if errors.Is(err, redis.Nil) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("cannot read session of %s: %w", identity, err)
	}
	return n, nil
}

// TakePending removes and returns up to max identities signalled to node
// (SPOP of NodePending(node)): the mailboxes the node's sweep should
// stream. An identity taken here and not drained (its stream failed, the
// node is stopping) is put back with Repend, or it waits for the next
// append's signal.
func (s *Store) TakePending(ctx context.Context, node string, max int) ([]string, error) {
	if max <= 0 {
		max = 100
	}
	ids, err := s.rdb.SPopN(ctx, s.keys.NodePending(node), int64(max)).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("cannot take pending identities of %s: %w", node, err)
	}
	return ids, nil
}

// Wake subscribes to NodeWake(node): each message holds the wake-ups of
// one or more identities whose mailboxes got new entries (ParseWake
// reads them). The caller closes the PubSub.
// Messages are lost while the subscription is down; TakePending is the
// backstop.
func (s *Store) Wake(ctx context.Context, node string) *redis.PubSub {
	if s.cluster {
		return s.rdb.SSubscribe(ctx, s.keys.NodeWake(node))
	}
	return s.rdb.Subscribe(ctx, s.keys.NodeWake(node))
}

// Repend puts identities back into node's pending set (the inverse of
// TakePending), for the node's next sweep. No identities: nothing.
func (s *Store) Repend(ctx context.Context, node string, identities ...string) error {
	if len(identities) == 0 {
		return nil
	}
	members := make([]any, len(identities))
	for i, id := range identities {
		members[i] = id
	}
	pk := s.keys.NodePending(node)
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.SAdd(ctx, pk, members...)
		p.PExpire(ctx, pk, pendingTTL)
		return nil
	})
	if err != nil {
		return fmt.Errorf("cannot put back pending identities of %s: %w", node, err)
	}
	return nil
}

// Listed reports, for each identity, whether its mailbox is in the
// namespace's set of non-empty mailboxes (Keys.Mailboxes). The set may
// still list a mailbox whose entries have all gone another way (expired,
// or removed with their command), never the other way round: an append to
// an empty mailbox lists it, and only an acknowledgement or a prune that
// leaves it empty unlists it. So an identity reported false has nothing
// to read, and a periodic read of every session's mailbox can skip it.
func (s *Store) Listed(ctx context.Context, identities []string) ([]bool, error) {
	out := make([]bool, len(identities))
	const chunk = 1000
	for start := 0; start < len(identities); start += chunk {
		ids := identities[start:min(start+chunk, len(identities))]
		cmds := make([]*redis.BoolCmd, len(ids))
		_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, id := range ids {
				cmds[i] = p.SIsMember(ctx, s.part(id).Mailboxes(), id)
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("cannot read the set of mailboxes: %w", err)
		}
		for i, c := range cmds {
			out[start+i] = c.Val()
		}
	}
	return out, nil
}

// Seen records that identity was seen now (a poll over HTTP: an MQTT
// session records it when it starts and ends).
func (s *Store) Seen(ctx context.Context, identity string) error {
	err := s.rdb.Set(ctx, s.part(identity).Seen(identity), s.now().UnixMilli(), s.opts.Retention).Err()
	return s.classify(err)
}

// SeenPolling records that device polled over HTTP now: its last-seen
// and last-poll times (both expire after the retention).
func (s *Store) SeenPolling(ctx context.Context, device string) error {
	pk := s.part(device)
	now := s.now().UnixMilli()
	_, err := s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, pk.Seen(device), now, s.opts.Retention)
		p.Set(ctx, pk.Polled(device), now, s.opts.Retention)
		return nil
	})
	return s.classify(err)
}

// LastPolled is the last time device polled over HTTP within the
// retention; zero when never.
func (s *Store) LastPolled(ctx context.Context, device string) (time.Time, error) {
	v, err := s.rdb.Get(ctx, s.part(device).Polled(device)).Result()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("cannot read when %s polled: %w", device, s.classify(err))
	}
	return msTime(v), nil
}

// LastSeen is the last time identity connected, disconnected or polled
// over HTTP within the retention; zero when never.
func (s *Store) LastSeen(ctx context.Context, identity string) (time.Time, error) {
	v, err := s.rdb.Get(ctx, s.part(identity).Seen(identity)).Result()
	if errors.Is(err, redis.Nil) {
		return time.Time{}, nil
	}
	if err != nil {
		return time.Time{}, fmt.Errorf("cannot read when %s was seen: %w", identity, s.classify(err))
	}
	return msTime(v), nil
}
