package mailbox

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// SetSession records that identity's live session is on node:
// Session(identity) = node, identity in NodeSessions(node) (and out of
// the set of the node it was on before). The session key has no expiry:
// signals check that the node is still a ring member, so a session left
// behind by a crashed node only costs a fallback to the ring owner.
func (s *Store) SetSession(ctx context.Context, identity, node string) error {
	if _, err := s.run(ctx, setSessionScript, s.keys.Session(identity), identity, node); err != nil {
		return fmt.Errorf("cannot set session of %s: %w", identity, err)
	}
	return nil
}

// ClearSession forgets identity's session on node: it leaves
// NodeSessions(node), and Session(identity) is deleted only if it still
// names node (the identity may have reconnected elsewhere meanwhile).
func (s *Store) ClearSession(ctx context.Context, identity, node string) error {
	if _, err := s.run(ctx, clearSessionScript, s.keys.Session(identity), identity, node); err != nil {
		return fmt.Errorf("cannot clear session of %s: %w", identity, err)
	}
	return nil
}

// SessionNode returns the node holding identity's live session, "" when
// none is registered.
func (s *Store) SessionNode(ctx context.Context, identity string) (string, error) {
	n, err := s.rdb.Get(ctx, s.keys.Session(identity)).Result()
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
// stream. An identity taken here and not drained must be put back by the
// caller (or it will be signalled again by the next append).
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

// Wake subscribes to NodeWake(node): each message's payload is an
// identity whose mailbox got a new entry. The caller closes the PubSub.
// Messages are lost while the subscription is down; TakePending is the
// backstop.
func (s *Store) Wake(ctx context.Context, node string) *redis.PubSub {
	return s.rdb.Subscribe(ctx, s.keys.NodeWake(node))
}
