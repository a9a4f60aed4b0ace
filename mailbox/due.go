package mailbox

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Next-due reports (DESIGN §7a "Costs that do not grow with P"). A
// partition's owner does not poll every partition it owns each tick: it
// keeps, per partition, when it has work next (its earliest timer, or its
// oldest outbox entry plus OutboxAge) and polls a partition only then.
// What it cannot see is work that another process's step made due
// earlier; so every step that declares its partition's timer set or
// outbox reports, in its reply, when it made the partition's work due
// earlier than anything the partition held (lib.lua's watch and report:
// a timer earlier than the earliest, or a first outbox entry). The Store
// that ran the step adds that time to the namespace's due set
// (Keys.Due, ZADD LT: only ever earlier) and the owner reads the members
// due by now each tick (TakeReported), removing them before it polls the
// partition. A step that does not make work due earlier needs no report:
// the owner already polls the partition no later than its earliest work.
//
// A report lost (the process died between the step and the ZADD, or the
// ZADD failed) delays that work until the owner's slow full sweep of its
// partitions, the backstop.

// OutboxAge is how old an outbox entry must be before the partition's
// owner relays it: the Store that ran the final step relays at once, this
// is the backstop for a relay that failed or a process that died in
// between.
const OutboxAge = 3 * time.Second

// dueMark is the first element of a reply that carries a next-due
// report (lib.lua's DUE).
const dueMark = "@DUE@"

// unwrapDue returns a step's reply without its next-due report, and the
// reported time in unix ms (0 when none).
func unwrapDue(v any) (any, int64) {
	a, ok := v.([]any)
	if !ok || len(a) != 3 {
		return v, 0
	}
	if m, _ := a[0].(string); m != dueMark {
		return v, 0
	}
	ds, _ := a[1].(string)
	due, _ := strconv.ParseInt(ds, 10, 64)
	return a[2], due
}

// noteDue tells partition p's owner that p has work due at dueMs (unix
// ms); see noteDues.
func (s *Store) noteDue(ctx context.Context, p int, dueMs int64) {
	s.noteDues(ctx, map[int]int64{p: dueMs})
}

// noteDues tells the owners of the partitions in due (partition → unix
// ms) that they have work due then, in one ZADD LT. A failure is logged
// and counted: the owners' full sweep finds the work later.
func (s *Store) noteDues(ctx context.Context, due map[int]int64) {
	if len(due) == 0 {
		return
	}
	zs := make([]redis.Z, 0, len(due))
	for p, ms := range due {
		zs = append(zs, redis.Z{Score: float64(ms), Member: strconv.Itoa(p)})
	}
	s.dueReports.Add(int64(len(zs)))
	if err := s.rdb.ZAddLT(context.WithoutCancel(ctx), s.keys.Due(), zs...).Err(); err != nil {
		s.dueLost.Add(int64(len(zs)))
		s.log.WarnContext(ctx, "cannot report partitions' next due times; their owners' full sweep will find them",
			"partitions", len(zs), "err", err)
	}
}

// DueReports is the number of next-due reports this Store sent (see
// noteDue), and of those that failed.
func (s *Store) DueReports() (sent, failed int64) { return s.dueReports.Load(), s.dueLost.Load() }

// TakeReported returns those partitions, among the ones owned reports
// true for, that a step reported due by now, and removes their reports.
// The caller polls them after this returns (a report written after the
// removal stays for the next call): one Redis call when none is due, two
// otherwise.
func (s *Store) TakeReported(ctx context.Context, owned func(p int) bool) ([]int, error) {
	ms, err := s.rdb.ZRangeByScore(ctx, s.keys.Due(), &redis.ZRangeBy{
		Min: "-inf", Max: strconv.FormatInt(s.now().UnixMilli(), 10),
	}).Result()
	if err != nil {
		return nil, fmt.Errorf("cannot read the reported partitions: %w", s.classify(err))
	}
	var parts []int
	var members []any
	for _, m := range ms {
		p, err := strconv.Atoi(m)
		if err != nil || p < 0 || p >= s.opts.Partitions {
			members = append(members, m) // not a partition of this count: drop it
			continue
		}
		if owned(p) {
			parts = append(parts, p)
			members = append(members, m)
		}
	}
	if len(members) > 0 {
		if err := s.rdb.ZRem(ctx, s.keys.Due(), members...).Err(); err != nil {
			return nil, fmt.Errorf("cannot clear the reported partitions: %w", s.classify(err))
		}
	}
	return parts, nil
}

// NextWork returns, for each of parts, when its owner has work there
// next: the due time of its earliest timer, or its oldest outbox entry's
// time plus OutboxAge, whichever is earlier; zero when it has neither.
// One pipeline of two reads per partition.
func (s *Store) NextWork(ctx context.Context, parts []int) ([]time.Time, error) {
	timers := make([]*redis.ZSliceCmd, len(parts))
	outbox := make([]*redis.XMessageSliceCmd, len(parts))
	_, err := s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		for i, p := range parts {
			pk := s.keys.Part(p)
			timers[i] = pipe.ZRangeWithScores(ctx, pk.Timers(), 0, 0)
			outbox[i] = pipe.XRangeN(ctx, pk.Outbox(), "-", "+", 1)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("cannot poll the partitions: %w", s.classify(err))
	}
	next := make([]time.Time, len(parts))
	for i := range parts {
		var at time.Time
		if zs := timers[i].Val(); len(zs) > 0 {
			at = time.UnixMilli(int64(zs[0].Score))
		}
		if es := outbox[i].Val(); len(es) > 0 {
			msPart, _, _ := strings.Cut(es[0].ID, "-")
			ms, _ := strconv.ParseInt(msPart, 10, 64)
			if t := time.UnixMilli(ms).Add(OutboxAge); at.IsZero() || t.Before(at) {
				at = t
			}
		}
		next[i] = at
	}
	return next, nil
}
