package mailbox

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/iotgw/gateway/protocol"
	"github.com/redis/go-redis/v9"
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
func (s *Store) MarkDead(ctx context.Context, device, client, idKey, reason, clientOwner string) (Outcome, error) {
	if reason == "" {
		reason = "could not be processed within the delivery limit"
	}
	p, keys := s.cmdKeys(device, client, idKey)
	v, err := s.run(ctx, p, stepDead, keys, gatewayError(protocol.StatusDead, reason), reason, s.horizonMs())
	if err != nil {
		return "", fmt.Errorf("cannot mark command %s dead: %w", idKey, err)
	}
	a, _ := v.([]any)
	head, _ := reply(v)
	if head == "corrupt" {
		s.log.Warn("dead letter of a corrupt record: nothing changed", "client_id", client, "msg_id", idKey)
		return OutcomeNoop, nil
	}
	if len(a) > 3 {
		s.relayNow(ctx, parseOutbox(p, a[3]), clientOwner)
	}
	return Outcome(head), nil
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
			return nil, "", fmt.Errorf("%w: %q", ErrBadCursor, cursor)
		}
	}
	// Merge the partitions' dead sets, newest first. The merged order is
	// (score, "ppppp|client|key") descending, so a cursor names one place
	// in it; each partition resumes after that place.
	type cand struct {
		p      int
		score  int64
		member string // client|key
		merged string
	}
	// One pipeline finds the partitions that have dead commands at all.
	exists := make([]*redis.IntCmd, s.opts.Partitions)
	if _, err := s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for p := range exists {
			exists[p] = pipe.Exists(ctx, s.keys.Part(p).Dead())
		}
		return nil
	}); err != nil {
		return nil, "", fmt.Errorf("cannot list dead commands: %w", s.classify(err))
	}
	var all []cand
	for p := 0; p < s.opts.Partitions; p++ {
		if exists[p].Val() == 0 {
			continue
		}
		pc := zcursor{}
		if cur.set {
			prefix := fmt.Sprintf("%05d|", p)
			switch {
			case strings.HasPrefix(cur.member, prefix):
				pc = zcursor{score: cur.score, member: strings.TrimPrefix(cur.member, prefix), set: true}
			case prefix > cur.member[:min(len(cur.member), 6)]:
				pc = zcursor{score: cur.score, member: "", set: true} // its ties came before
			default:
				pc = zcursor{score: cur.score + 1, member: "", set: true} // its ties come after
			}
		}
		dk := s.keys.Part(p).Dead()
		zs, _, err := s.zpage(ctx, dk, pc, limit+1)
		if err != nil {
			return nil, "", fmt.Errorf("cannot list dead commands: %w", s.classify(err))
		}
		for _, z := range zs {
			m, _ := z.Member.(string)
			all = append(all, cand{p: p, score: int64(z.Score), member: m, merged: fmt.Sprintf("%05d|%s", p, m)})
		}
	}
	sort.Slice(all, func(i, j int) bool {
		if all[i].score != all[j].score {
			return all[i].score > all[j].score
		}
		return all[i].merged > all[j].merged
	})
	more := len(all) > limit
	if more {
		all = all[:limit]
	}
	var out []*Command
	for _, c := range all {
		cur = zcursor{score: c.score, member: c.merged, set: true}
		client, key, _ := strings.Cut(c.member, "|")
		pk := s.keys.Part(c.p)
		m, err := s.rdb.HGetAll(ctx, pk.Command(client, key)).Result()
		if err != nil {
			return nil, "", fmt.Errorf("cannot list dead commands: %w", s.classify(err))
		}
		if st := protocol.Status(m[fStatus]); st != protocol.StatusDead && st != protocol.StatusQueued {
			if err := s.rdb.ZRem(ctx, pk.Dead(), c.member).Err(); err != nil {
				s.log.Warn("cannot prune dead set", "err", err)
			}
			continue
		}
		rec, err := decodeRecord(m)
		if err != nil {
			s.log.Warn("skipping corrupt dead record", "member", c.member, "err", err)
			continue
		}
		rec.LeaseToken = ""
		out = append(out, rec)
	}
	if !more {
		return out, "", nil
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
	return s.replay(ctx, client, idKey, "dead")
}

// RetryStatuses are the final statuses a client may retry (Retry).
var RetryStatuses = []protocol.Status{protocol.StatusFailed, protocol.StatusTimeout, protocol.StatusExpired, protocol.StatusRejected}

// Retry puts a command that ended failed, timeout, expired or rejected
// back to queued, once more under the same id (POST
// /v1/commands/{id}/retry), exactly as ReplayDead does for a dead one: a
// fresh deliver-by window, the next generation, the claim open again; the
// caller publishes it again, and the client gets a second final result.
// ErrState (with the record) for any other status.
func (s *Store) Retry(ctx context.Context, client, idKey string) (*Command, error) {
	allowed := make([]string, len(RetryStatuses))
	for i, st := range RetryStatuses {
		allowed[i] = string(st)
	}
	return s.replay(ctx, client, idKey, strings.Join(allowed, ","))
}

// replay is ReplayDead and Retry: allowed lists the statuses taken.
func (s *Store) replay(ctx context.Context, client, idKey, allowed string) (*Command, error) {
	cl, err := s.claimOf(ctx, client, idKey)
	if err != nil {
		return nil, fmt.Errorf("cannot replay command %s: %w", idKey, err)
	}
	if cl == nil {
		return nil, fmt.Errorf("%w: %s", ErrNotFound, idKey)
	}
	p, keys := s.cmdKeys(cl["device"], client, idKey)
	v, err := s.run(ctx, p, stepReplay, keys, s.horizonMs(), allowed)
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
	// The claim opens for the replay's generation, so that its final
	// reaches the client as a new result.
	cp := s.PartitionOf(client)
	watch := rec.ExpiresIn + rec.Timeout + s.opts.Lease + 2*s.opts.AnswerGrace
	lifetime := (watch + s.opts.Retention).Milliseconds()
	pk := s.keys.Part(cp)
	rkeys := []string{pk.Claim(client, idKey), pk.Timers()}
	if rec.Group != "" {
		rkeys = append(rkeys, pk.Group(client, rec.Group))
	}
	if _, err := s.run(ctx, cp, stepReopen, rkeys,
		rec.Device, rec.Replays, lifetime, watch.Milliseconds(), watchMember(client, rec.Device, idKey)); err != nil {
		return rec, fmt.Errorf("cannot reopen the claim of replayed command %s: %w", idKey, err)
	}
	return rec, nil
}
