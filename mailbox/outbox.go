package mailbox

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/iotgw/gateway/internal/telemetry"
)

// The outbox (DESIGN §7). A final transition happens in the device's
// partition; the client's result belongs to the client's partition (its
// claim and its results mailbox). So the final step appends the result
// to its own partition's outbox, in the same step, and the relay applies
// it to the client's partition and then deletes it. The relay is
// idempotent (the claim remembers the final it took, by generation), so
// two relayers, or a relay repeated after a crash, change nothing. The
// Store that ran the final step relays at once; the partition's owner
// relays whatever is older than a few seconds (RelayOutbox).

// outboxEntry is one result on its way to the client's partition.
type outboxEntry struct {
	p                               int // the device's partition
	id                              string
	client, key, device             string
	gen                             int
	status, resp, finished, expires string
	// next is the lane timer the final step armed for the command now
	// at the head of the ended command's lane ("" when none): the Store
	// fires it at once (advanceLane), the partition's owner otherwise.
	next string
	// grp is the key of the group command of a child ("" for others):
	// the relay counts the child's outcome in the group's record.
	grp string
	tp  string // the W3C traceparent of the span that ended the command
	// orphan marks an answer that found no record (orphan.lua): the
	// relay applies it to an open claim only.
	orphan bool
}

// parseOutbox reads the outbox entry a final step returned
// ({id, client, key, device, gen, status, resp, finished, expires,
// traceparent}), or nil.
func parseOutbox(p int, v any) *outboxEntry {
	a, _ := v.([]any)
	if len(a) < 9 {
		return nil
	}
	str := func(i int) string { s, _ := a[i].(string); return s }
	g, _ := strconv.Atoi(str(4))
	e := &outboxEntry{p: p, id: str(0), client: str(1), key: str(2), device: str(3), gen: g,
		status: str(5), resp: str(6), finished: str(7), expires: str(8)}
	if len(a) > 9 {
		e.next = str(9)
	}
	if len(a) > 10 {
		e.grp = str(10)
	}
	if len(a) > 11 {
		e.tp = str(11)
	}
	return e
}

// outboxFromStream reads an entry of partition p's outbox stream.
func outboxFromStream(p int, m redis.XMessage) *outboxEntry {
	str := func(f string) string { v, _ := m.Values[f].(string); return v }
	g, _ := strconv.Atoi(str("g"))
	return &outboxEntry{p: p, id: m.ID, client: str("c"), key: str("k"), device: str("d"), gen: g,
		status: str("s"), resp: str("r"), finished: str("f"), expires: str("x"), grp: str("G"), tp: str("tp"),
		orphan: str("o") == "1"}
}

// relayNow relays e right after the step that wrote it and reports
// whether the client's full mailbox dropped the result; a failure leaves
// it in the outbox for the partition's owner, so it is logged, not
// returned.
func (s *Store) relayNow(ctx context.Context, e *outboxEntry, clientOwner string) (dropped bool) {
	if e == nil {
		return false
	}
	dropped, err := s.relay(ctx, e, clientOwner)
	if err != nil {
		s.log.WarnContext(ctx, "cannot relay a result now; the partition's owner will", "client_id", e.client,
			"device_id", e.device, "msg_id", e.key, "err", err)
	}
	s.advanceLane(ctx, e.p, e.next)
	return dropped
}

// relay applies e to the client's partition, deletes it from the outbox
// and wakes the client's push server. dropped reports that the client's
// full mailbox refused the result (it stays readable by GET). Its span,
// "relay", continues the trace of the step that ended the command (e.tp)
// and goes with the result into the client's mailbox.
func (s *Store) relay(ctx context.Context, e *outboxEntry, clientOwner string) (dropped bool, err error) {
	_, dropped, err = s.relayStep(ctx, e, clientOwner)
	return dropped, err
}

// relayStep is relay, which also returns what the relay step did:
// "relayed", "dup", "conflict", "mismatch" or "stale".
func (s *Store) relayStep(ctx context.Context, e *outboxEntry, clientOwner string) (what string, dropped bool, err error) {
	ctx, span := telemetry.Tracer().Start(telemetry.ContextWithTraceParent(ctx, e.tp), "relay",
		trace.WithAttributes(attribute.String("client_id", e.client), attribute.String("device_id", e.device),
			attribute.String("msg_id", e.key), attribute.String("status", e.status)))
	defer func() {
		if err != nil {
			span.SetStatus(codes.Error, err.Error())
		}
		span.End()
	}()
	cp := s.PartitionOf(e.client)
	pk := s.keys.Part(cp)
	exp, _ := strconv.ParseInt(e.expires, 10, 64)
	keys := []string{pk.Claim(e.client, e.key), pk.Mailbox(e.client), pk.Mailboxes(), pk.Session(e.client),
		pk.StatusCounts(s.now().Unix() / 60), pk.Timers()}
	args := []any{e.client, e.device, e.gen, e.status, e.resp, e.finished, exp, watchMember(e.client, e.device, e.key),
		telemetry.TraceParent(ctx)}
	if e.grp != "" {
		keys = append(keys, pk.Group(e.client, e.grp))
		args = append(args, groupMember(e.client, e.grp), groupAbortReason)
	} else if e.orphan {
		args = append(args, "", "")
	}
	if e.orphan {
		args = append(args, "1")
	}
	v, err := s.run(ctx, cp, stepRelay, keys, args...)
	if err != nil {
		return "", false, fmt.Errorf("cannot relay the result of %s: %w", e.key, err)
	}
	a, _ := v.([]any)
	sess, drop := "", ""
	if len(a) == 3 {
		what, _ = a[0].(string)
		sess, _ = a[1].(string)
		drop, _ = a[2].(string)
	}
	switch what {
	case "relayed":
		if dropped = drop == "1"; dropped {
			s.log.WarnContext(ctx, "client mailbox full: result dropped (readable by GET)", "client_id", e.client, "msg_id", e.key)
		}
		if clientOwner == "" && s.opts.OwnerOf != nil {
			clientOwner = s.opts.OwnerOf(e.client)
		}
		// Group-committed with the process's other wake-ups (wake.go).
		if err := s.wake(ctx, e.client, sess, clientOwner); err != nil {
			s.log.WarnContext(ctx, "cannot wake the client's push server", "client_id", e.client, "err", err)
		}
	case "conflict":
		s.finalConflicts.Add(1)
		s.log.WarnContext(ctx, "a different final for a command whose client already has one: not delivered",
			"client_id", e.client, "device_id", e.device, "msg_id", e.key, "status", e.status)
	case "mismatch":
		s.log.WarnContext(ctx, "a result whose claim names another device: not delivered",
			"client_id", e.client, "device_id", e.device, "msg_id", e.key)
	}
	if e.id == "" {
		return what, dropped, nil // not from an outbox: the claim's watchdog
	}
	if err := s.rdb.XDel(ctx, s.keys.Part(e.p).Outbox(), e.id).Err(); err != nil {
		return what, dropped, fmt.Errorf("cannot delete a relayed outbox entry: %w", s.classify(err))
	}
	return what, dropped, nil
}

// FinalConflicts is how many relays found a different final already in
// the client's claim (gw_final_conflicts_total).
func (s *Store) FinalConflicts() int64 { return s.finalConflicts.Load() }

// RelayOutbox relays the entries of partition p's outbox older than age
// (at most limit), for the partition's owner: what a step's own relay
// could not do. It returns how many it relayed.
func (s *Store) RelayOutbox(ctx context.Context, p int, age time.Duration, limit int) (int, error) {
	ok := s.keys.Part(p).Outbox()
	maxID := strconv.FormatInt(s.now().Add(-age).UnixMilli(), 10)
	es, err := s.rdb.XRangeN(ctx, ok, "-", maxID, int64(limit)).Result()
	if err != nil {
		return 0, fmt.Errorf("cannot read outbox %d: %w", p, s.classify(err))
	}
	n := 0
	for _, m := range es {
		if _, err := s.relay(ctx, outboxFromStream(p, m), ""); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// OutboxStats is the length of partition p's outbox and the age of its
// oldest entry (0 when empty).
func (s *Store) OutboxStats(ctx context.Context, p int) (int64, time.Duration, error) {
	var c outboxCmds
	_, err := s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		c = s.queueOutboxStats(ctx, pipe, p)
		return nil
	})
	if err != nil {
		return 0, 0, s.classify(err)
	}
	o := c.read(p, s.now())
	return o.Entries, o.Oldest, nil
}

// outboxCmds are the pipelined reads of one partition's outbox stats.
type outboxCmds struct {
	n     *redis.IntCmd
	first *redis.XMessageSliceCmd
}

// queueOutboxStats adds the reads of partition p's outbox stats to pipe.
func (s *Store) queueOutboxStats(ctx context.Context, pipe redis.Pipeliner, p int) outboxCmds {
	ok := s.keys.Part(p).Outbox()
	return outboxCmds{n: pipe.XLen(ctx, ok), first: pipe.XRangeN(ctx, ok, "-", "+", 1)}
}

// read returns the stats once the pipeline ran; the age comes from the
// oldest entry's stream ID (its partition's clock, in ms).
func (c outboxCmds) read(p int, now time.Time) PartitionOutbox {
	o := PartitionOutbox{Partition: p, Entries: c.n.Val()}
	if es := c.first.Val(); len(es) > 0 {
		id := es[0].ID
		if t, err := strconv.ParseInt(id[:len(id)-len(idSeq(id))], 10, 64); err == nil {
			o.Oldest = max(now.Sub(time.UnixMilli(t)), 0)
		}
	}
	return o
}

// idSeq returns the "-seq" suffix of a stream ID.
func idSeq(id string) string {
	for i := len(id) - 1; i >= 0; i-- {
		if id[i] == '-' {
			return id[i:]
		}
	}
	return ""
}

// pendingTTL is the expiry of a node's pending set, renewed when it
// gains a member.
const pendingTTL = 24 * time.Hour
