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
// expires after Retention like any final record. A replayed command stays
// in the set, queued, until Dispatch sends it (or it ends otherwise), so
// an interrupted replay stays visible. DeadList prunes members whose
// record is gone or neither dead nor queued.

// MarkDead handles a COMMAND dead letter: a command that was never handed
// to a device (pending or queued) becomes dead (-32003 to the client, with
// reason) and enters the dead set for the operator. It returns
// OutcomeDead, or OutcomeNoop when the command is sent, delivered, final,
// gone or corrupt (logged): once a command is in the device's mailbox its
// timers decide how it ends (a dead letter of an already dispatched
// message must not kill a command the device may be answering). A pending
// record passes through queued on the way (a dead letter proves the
// message was in the queue).
//
// A RESULT dead letter (a device answer the worker could not apply) needs
// no operation of its own: offer it once more to Complete, whose
// compare-and-set makes that harmless (a final command records it as
// late, a redelivery is a duplicate), and otherwise leave the command to
// its answer-within timer, which ends it as timeout.
func (s *Store) MarkDead(ctx context.Context, client, idKey, reason, clientOwner string) (Outcome, error) {
	if reason == "" {
		reason = "could not be processed within the delivery limit"
	}
	v, err := s.run(ctx, deadScript, s.keys.Command(client, idKey),
		gatewayError(protocol.StatusDead, reason), reason, clientOwner)
	if err != nil {
		return "", fmt.Errorf("cannot mark command %s dead: %w", idKey, err)
	}
	if v == "corrupt" {
		s.log.Warn("dead letter of a corrupt record: nothing changed", "client_id", client, "msg_id", idKey)
		return OutcomeNoop, nil
	}
	return Outcome(fmt.Sprint(v)), nil
}

// DeadList returns dead-lettered commands, newest first, at most limit
// (1 to 100, clamped) per page; cursor "" starts, the returned next
// cursor continues, next "" is the end. Each command carries its Reason
// and Attempts. A command replayed but not dispatched yet is listed with
// status queued. Members whose record expired, or that ended otherwise,
// are pruned.
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
			if st := protocol.Status(m[fStatus]); st != protocol.StatusDead && st != protocol.StatusQueued {
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
// dead → queued, in protocol.Transitions): the record loses its expiry,
// its result and its delivery times, gets a fresh deliver-by window (now +
// ExpiresIn) with its deliver-by timer, and stays in the dead set until
// Dispatch sends it; Attempts is kept. It returns the record: the caller
// republishes it (an envelope with Attempt+1, AcceptedAt CreatedAt,
// DeliverBy from the record). If that publish fails, call MarkDead again
// (or let the deliver-by timer expire it). A command replayed earlier and
// not dispatched yet (the republish may have been lost) is returned again
// as it is, queued, to republish: a duplicate message is harmless. The
// client gets a second final result for this command after a replay.
// ErrNotFound when there is no record; ErrState (with the record) when it
// is neither dead nor such a replay.
func (s *Store) ReplayDead(ctx context.Context, client, idKey string) (*Command, error) {
	v, err := s.run(ctx, replayScript, s.keys.Command(client, idKey), client+"|"+idKey)
	if err != nil {
		return nil, fmt.Errorf("cannot replay command %s: %w", idKey, err)
	}
	head, val := reply(v)
	if head == "corrupt" {
		return nil, fmt.Errorf("cannot replay command %s: corrupt record", idKey)
	}
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
