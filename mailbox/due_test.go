package mailbox_test

import (
	"slices"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// TestNextDueReports: a step reports its partition's next due time when
// it made work due earlier than anything the partition held (a first or
// earlier timer, a first outbox entry) and sooner than ReportHorizon, and
// only then; the owner takes the reports due by now for the partitions it
// owns, once.
func TestNextDueReports(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{Lease: time.Second})
	due := e.s.Keys().Due()
	score := func() (float64, bool) {
		t.Helper()
		require.Eventually(t, e.s.DueFlushed, 5*time.Second, time.Millisecond, "the reports were never sent")
		v, err := e.rdb.ZScore(e.ctx, due, "0").Result()
		if err == redis.Nil {
			return 0, false
		}
		require.NoError(t, err)
		return v, true
	}
	sent := func() int64 { n, _ := e.s.DueReports(); return n }
	earliest := func() float64 {
		t.Helper()
		zs, err := e.rdb.ZRangeWithScores(e.ctx, e.keys.Timers(), 0, 0).Result()
		require.NoError(t, err)
		require.Len(t, zs, 1, "timers")
		return zs[0].Score
	}
	// expiring is cmd with expires_in in.
	expiring := func(rawID string, in time.Duration) *mailbox.Command {
		c := cmd(t, "c1", "d1", rawID, "")
		c.ExpiresIn = in
		c.Fingerprint = protocol.Fingerprint(c.Device, c.Method, c.Params, c.Timeout, in)
		return c
	}

	// Timers beyond the horizon (expires_in 1h, the claim's watchdog
	// later still): no report, an owner's sweep finds them first.
	e.queued(cmd(t, "c1", "d1", `1`, ""))
	if _, ok := score(); ok || sent() != 0 {
		t.Fatalf("timers an hour away were reported (%d reports)", sent())
	}

	// A timer within the horizon, earlier than the partition's earliest:
	// reported at its due time.
	c2 := e.queued(expiring(`2`, 10*time.Second))
	d2, ok := e.timerScore("d", "c1", c2.ID.Key())
	require.True(t, ok, "no deliver-by timer for c2")
	require.Equal(t, d2, earliest(), "the earliest timer is c2's deliver-by")
	got, ok := score()
	require.True(t, ok, "the earlier timer was not reported")
	require.Equal(t, d2, got, "reported due time")
	n := sent()

	// A later timer makes nothing due earlier: no report.
	e.clock.Add(time.Second)
	e.queued(expiring(`3`, 20*time.Second))
	require.Equal(t, n, sent(), "reports after a later timer")
	c1 := c2

	// A final transition writes the first outbox entry: reported OutboxAge
	// after the step's clock (the entry's relay follows at once and
	// empties the outbox again).
	_, err := e.s.Cancel(e.ctx, "c1", c1.ID.Key(), "")
	require.NoError(t, err)
	require.Equal(t, n+1, sent(), "reports after the first outbox entry")
	got, _ = score()
	at := time.UnixMilli(int64(got))
	require.Equal(t, e.clock.Now().Add(mailbox.OutboxAge), at, "reported due time of the outbox entry")

	// Not due yet, or not owned: not taken.
	mine := func(p int) bool { return p == 0 }
	ps, err := e.s.TakeReported(e.ctx, mine)
	require.NoError(t, err)
	require.Empty(t, ps, "taken before it is due")
	e.clock.Add(at.Sub(e.clock.Now()) + time.Millisecond)
	ps, err = e.s.TakeReported(e.ctx, func(int) bool { return false })
	require.NoError(t, err)
	require.Empty(t, ps, "taken by a worker that does not own it")
	ps, err = e.s.TakeReported(e.ctx, mine)
	require.NoError(t, err)
	require.Equal(t, []int{0}, ps, "taken when due")
	ps, err = e.s.TakeReported(e.ctx, mine)
	require.NoError(t, err)
	require.Empty(t, ps, "taken twice")

	// NextWork: the earliest timer (the outbox is empty again).
	next, err := e.s.NextWork(e.ctx, []int{0})
	require.NoError(t, err)
	require.Equal(t, []time.Time{time.UnixMilli(int64(earliest()))}, next, "NextWork")
}

// TestNextWorkEmpty: a partition with neither timers nor outbox entries
// has no next work.
func TestNextWorkEmpty(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{Partitions: 4})
	next, err := e.s.NextWork(e.ctx, []int{0, 3})
	require.NoError(t, err)
	require.True(t, !slices.ContainsFunc(next, func(t time.Time) bool { return !t.IsZero() }), "NextWork = %v, want zero times", next)
}
