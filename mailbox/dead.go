package mailbox

import (
	"context"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/protocol"
)

// The dead set (protocol.Keys.Dead) holds "{client}|{idKey}" members
// scored by the time they were dead-lettered (unix ms). A dead record
// expires after Retention like any final record; DeadList prunes members
// whose record is gone.

// MarkDead sets any non-final command to dead (-32003 to the client, with
// reason) and records it in the dead set for the operator. It returns
// OutcomeDead, or OutcomeNoop when the command is already final or does
// not exist. A pending record passes through queued on the way (a dead
// letter proves the message was in the queue).
func (s *Store) MarkDead(ctx context.Context, client, idKey, reason, clientOwner string) (Outcome, error) {
	if reason == "" {
		reason = "could not be processed within the delivery limit"
	}
	v, err := s.run(ctx, deadScript, s.keys.Command(client, idKey),
		gatewayError(protocol.StatusDead, reason), reason, clientOwner)
	if err != nil {
		return "", fmt.Errorf("cannot mark command %s dead: %w", idKey, err)
	}
	return Outcome(fmt.Sprint(v)), nil
}

// DeadList returns dead-lettered commands, newest first, at most limit
// (1 to 100, clamped) per page; cursor "" starts, the returned next
// cursor continues, next "" is the end. Each command carries its Reason
// and Attempts. Members whose record expired are pruned.
func (s *Store) DeadList(ctx context.Context, limit int, cursor string) ([]*Command, string, error) {
	limit = min(max(limit, 1), 100)
	var cur zcursor
	if cursor != "" {
		var ok bool
		if cur, ok = decodeCursor(cursor); !ok {
			return nil, "", fmt.Errorf("mailbox: bad cursor %q", cursor)
		}
	}
	dk := s.keys.Dead()
	var out []*Command
	for len(out) < limit {
		zs, end, err := s.zpage(ctx, dk, cur, limit-len(out))
		if err != nil {
			return nil, "", fmt.Errorf("cannot list dead commands: %w", err)
		}
		if len(zs) == 0 {
			return out, "", nil
		}
		cmds := make([]*redis.MapStringStringCmd, len(zs))
		_, err = s.rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, z := range zs {
				client, key, _ := strings.Cut(z.Member.(string), "|")
				cmds[i] = p.HGetAll(ctx, s.keys.Command(client, key))
			}
			return nil
		})
		if err != nil {
			return nil, "", fmt.Errorf("cannot list dead commands: %w", err)
		}
		var gone []any
		for i, z := range zs {
			cur = zcursor{score: int64(z.Score), member: z.Member.(string), set: true}
			m := cmds[i].Val()
			if len(m) == 0 || m[fStatus] != string(protocol.StatusDead) {
				gone = append(gone, z.Member)
				continue
			}
			c, err := decodeRecord(m)
			if err != nil {
				s.log.Warn("skipping corrupt dead record", "member", z.Member, "err", err)
				continue
			}
			c.LeaseToken = ""
			out = append(out, c)
		}
		if len(gone) > 0 {
			if err := s.rdb.ZRem(ctx, dk, gone...).Err(); err != nil {
				s.log.Warn("cannot prune dead set", "err", err)
			}
		}
		if end {
			return out, "", nil
		}
	}
	return out, cur.encode(), nil
}

// ReplayDead puts a dead command back to queued (an operator action,
// dead → queued): the record loses its expiry, its result and its
// delivery times, gets a fresh deliver-by window (now + ExpiresIn) and
// leaves the dead set; Attempts is kept. It returns the record: the caller
// republishes it (an envelope with Attempt+1, AcceptedAt CreatedAt,
// DeliverBy from the record). If that publish fails, call MarkDead again.
// The client gets a second final result for this command after a replay.
// ErrNotFound when there is no record; ErrState (with the record) when it
// is not dead.
func (s *Store) ReplayDead(ctx context.Context, client, idKey string) (*Command, error) {
	v, err := s.run(ctx, replayScript, s.keys.Command(client, idKey), client+"|"+idKey)
	if err != nil {
		return nil, fmt.Errorf("cannot replay command %s: %w", idKey, err)
	}
	head, val := reply(v)
	rec, err := recordReply(val)
	if err != nil {
		return nil, err
	}
	if head == "notfound" || rec == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, idKey)
	}
	rec.LeaseToken = ""
	if head != "queued" {
		return rec, fmt.Errorf("%w: command %s is %s", ErrState, idKey, rec.Status)
	}
	return rec, nil
}
