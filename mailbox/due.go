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
// earlier; so a step that makes its partition's work due earlier than
// anything the partition held reports it in its reply (lib.lua's arm: a
// timer earlier than the timer set's earliest; finalize: its outbox
// entry, reported without checking that the outbox was empty, which it
// nearly always is since the relay follows at once). The Store that ran the step adds that time to the
// namespace's due set (Keys.Due, ZADD LT: only ever earlier) and the
// owner reads the members due by now each tick (TakeReported), removing
// them before it polls the partition. A step that does not make work due
// earlier needs no report: the owner already polls the partition no
// later than its earliest work. The fire step needs no report for the
// timer it re-arms: it runs on timers already due, so the owner polls
// that partition again anyway (a retry it starts reports what it arms,
// like any step).
//
// Work due later than ReportHorizon is not reported at all: an owner
// sweeps all its partitions at least that often (msgworker's TimerSweep
// is at most ReportHorizon), so a sweep finds it before it is due. So a
// command with the default expires_in and timeout reports only its
// outbox entry, and the reports cost little even on an idle gateway,
// where every step finds its partition empty.
//
// Reports go out after the step, off the caller's path, coalesced into
// one ZADD LT (noteDues): a report waits up to DueCoalesce for others,
// but goes out at least dueSlack before the work it reports is due (at
// once for work due sooner), so the owner still polls the partition in
// time. Without the wait every final step at a moderate rate cost its own
// ZADD (a first outbox entry is reported 3 s ahead, and relayed within
// milliseconds), a goroutine and a Redis round trip per command. A report
// lost (the process died before it went out, or the ZADD failed) delays
// that work until the owner's full sweep of its partitions, the backstop.

// ReportHorizon is how far ahead a step reports work it made due
// earlier (see above); owners must sweep all their partitions at least
// this often.
const ReportHorizon = 30 * time.Second

// OutboxAge is how old an outbox entry must be before the partition's
// owner relays it: the Store that ran the final step relays at once, this
// is the backstop for a relay that failed or a process that died in
// between.
const OutboxAge = 3 * time.Second

// DueCoalesce is the longest a next-due report waits to go out with
// others (see noteDues).
const DueCoalesce = time.Second

// dueSlack is how long before the reported work is due a report goes out
// at the latest: more than an owner's tick (msgworker's TimerInterval,
// 200 ms) and a Redis round trip.
const dueSlack = 500 * time.Millisecond

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
// ms) that they have work due then: it adds them to the pending reports,
// which flushDues sends, coalesced, off the caller's path, within
// DueCoalesce and no later than dueSlack before the earliest is due.
func (s *Store) noteDues(ctx context.Context, due map[int]int64) {
	if len(due) == 0 {
		return
	}
	s.dueMu.Lock()
	if s.duePending == nil {
		s.duePending = map[int]int64{}
	}
	var first int64
	for p, ms := range due {
		if cur, ok := s.duePending[p]; !ok || ms < cur {
			s.duePending[p] = ms
		}
		if first == 0 || ms < first {
			first = ms
		}
	}
	if !s.dueFlushing {
		s.dueFlushing = true
		s.scheduleDuesLocked(context.WithoutCancel(ctx), first)
	} else if s.dueTimer != nil {
		// Due sooner than the scheduled flush: bring it forward. (When
		// Stop fails the flush runs already; it schedules what it did
		// not take.)
		if at := s.dueFlushAt(first); at.Before(s.dueAt) && s.dueTimer.Stop() {
			s.dueAt = at
			s.dueTimer.Reset(time.Until(at))
		}
	}
	s.dueMu.Unlock()
	s.dueReports.Add(int64(len(due)))
}

// dueFlushAt is when a report of work due at first (unix ms) goes out at
// the latest: dueSlack before it, within DueCoalesce from now.
func (s *Store) dueFlushAt(first int64) time.Time {
	wait := min(max(time.UnixMilli(first).Add(-dueSlack).Sub(s.now()), 0), DueCoalesce)
	return time.Now().Add(wait)
}

// scheduleDuesLocked schedules flushDues for the pending reports, the
// earliest of them due at first (unix ms). dueMu is held.
func (s *Store) scheduleDuesLocked(ctx context.Context, first int64) {
	s.dueAt = s.dueFlushAt(first)
	s.dueTimer = time.AfterFunc(time.Until(s.dueAt), func() { s.flushDues(ctx) })
}

// flushDues sends the pending reports in one ZADD LT, then schedules the
// reports noted meanwhile (see noteDues). A failure is logged and
// counted: the owners' full sweep finds the work later.
func (s *Store) flushDues(ctx context.Context) {
	s.dueMu.Lock()
	s.dueTimer = nil
	pending := s.duePending
	s.duePending = nil
	s.dueMu.Unlock()
	if len(pending) > 0 {
		zs := make([]redis.Z, 0, len(pending))
		for p, ms := range pending {
			zs = append(zs, redis.Z{Score: float64(ms), Member: strconv.Itoa(p)})
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		err := s.rdb.ZAddLT(cctx, s.keys.Due(), zs...).Err()
		cancel()
		if err != nil {
			s.dueLost.Add(int64(len(zs)))
			s.log.WarnContext(ctx, "cannot report partitions' next due times; their owners' full sweep will find them",
				"partitions", len(zs), "err", err)
		}
	}
	s.dueMu.Lock()
	defer s.dueMu.Unlock()
	if len(s.duePending) == 0 {
		s.dueFlushing = false
		return
	}
	var first int64
	for _, ms := range s.duePending {
		if first == 0 || ms < first {
			first = ms
		}
	}
	s.scheduleDuesLocked(ctx, first)
}

// DueFlushed reports whether no next-due report waits to be sent.
func (s *Store) DueFlushed() bool {
	s.dueMu.Lock()
	defer s.dueMu.Unlock()
	return !s.dueFlushing
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
