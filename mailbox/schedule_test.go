package mailbox_test

import (
	"context"
	"strconv"
	"testing"
	"time"

	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// TestScheduled: a command with a delay is accepted now and waits until
// its not-before: dispatch leaves it scheduled (nothing in the device's
// mailbox), its timer puts it into the mailbox at not-before with
// deliver-by counted from there; it can be cancelled while it waits; a
// worker that comes back after its deliver-by expires it.
func TestScheduled(t *testing.T) {
	t.Parallel()
	const delay = 10 * time.Minute
	sched := func(e *env, rawID string) *mailbox.Command {
		c := cmd(t, "c1", "d1", rawID, ``)
		c.Delay = delay
		c.Fingerprint = protocol.Fingerprint("d1", c.Method, nil, c.Timeout, c.ExpiresIn, "not_before=10m")
		rec := e.queued(c)
		if want := rec.CreatedAt.Add(delay); !rec.NotBefore.Equal(want) || !rec.DeliverBy.Equal(want.Add(c.ExpiresIn)) {
			t.Fatalf("not before %v, deliver by %v; want %v and %v", rec.NotBefore, rec.DeliverBy, want, want.Add(c.ExpiresIn))
		}
		out, err := e.s.Dispatch(e.ctx, envelope(t, rec), "node-d", "node-c")
		if err != nil || out != mailbox.OutcomeScheduled {
			t.Fatalf("Dispatch before not-before = %v, %v; want scheduled", out, err)
		}
		return rec
	}
	tests := []struct {
		name  string
		run   func(e *env)
		want  protocol.Status
		inBox int64
	}{
		{"due", func(e *env) {
			e.clock.Add(delay - time.Second)
			e.fire()
			if got := e.get("c1", "s"); got.Status != protocol.StatusScheduled {
				t.Errorf("a second before not-before: %s, want scheduled", got.Status)
			}
			e.clock.Add(time.Second)
			e.fire()
		}, protocol.StatusSent, 1},
		{"cancelled while it waits", func(e *env) {
			if _, err := e.s.Cancel(e.ctx, "c1", "s", ""); err != nil {
				t.Fatal(err)
			}
			e.clock.Add(delay)
			e.fire()
		}, protocol.StatusCancelled, 0},
		{"no worker until after its deliver-by", func(e *env) {
			e.clock.Add(delay + 2*time.Hour)
			e.fire()
		}, protocol.StatusExpired, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, mailbox.Options{})
			sched(e, `"s"`)
			if got := e.get("c1", "s"); got.Status != protocol.StatusScheduled {
				t.Fatalf("after Dispatch: %s, want scheduled", got.Status)
			}
			if n, _ := e.s.Len(e.ctx, "d1"); n != 0 {
				t.Fatalf("device mailbox holds %d entries before not-before, want 0", n)
			}
			tt.run(e)
			if got := e.get("c1", "s"); got.Status != tt.want {
				t.Errorf("status %s, want %s", got.Status, tt.want)
			}
			if n, _ := e.s.Len(e.ctx, "d1"); n != tt.inBox {
				t.Errorf("device mailbox holds %d entries, want %d", n, tt.inBox)
			}
		})
	}
}

// TestFireStartsIn: while a partition's owner holds its timers for the
// answer grace it fires only those that start an attempt: a scheduled
// command due now goes into the device's mailbox, a due deliver-by timer
// (which ends a command) stays due until the owner fires every kind.
func TestFireStartsIn(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	const delay = 10 * time.Minute
	s := cmd(t, "c1", "d1", `"s"`, ``)
	s.Delay = delay
	s.Fingerprint = protocol.Fingerprint("d1", s.Method, nil, s.Timeout, s.ExpiresIn, "not_before=10m")
	rec := e.queued(s)
	if out, err := e.s.Dispatch(e.ctx, envelope(t, rec), "node-d", "node-c"); err != nil || out != mailbox.OutcomeScheduled {
		t.Fatalf("Dispatch before not-before = %v, %v; want scheduled", out, err)
	}
	q := cmd(t, "c1", "d1", `"q"`, ``)
	q.ExpiresIn = time.Minute
	q.Fingerprint = protocol.Fingerprint("d1", q.Method, nil, q.Timeout, q.ExpiresIn)
	e.queued(q) // its message never dispatched: only its deliver-by timer ends it
	e.clock.Add(delay)

	p := e.s.PartitionOf("d1")
	steps := []struct {
		name          string
		fire          func(ctx context.Context, p, limit int) (int, map[string]int, error)
		wantN         int
		wantS, wantQ  protocol.Status
		wantInMailbox int64
	}{
		{"FireStartsIn", e.s.FireStartsIn, 1, protocol.StatusSent, protocol.StatusQueued, 1},
		{"FireStartsIn again", e.s.FireStartsIn, 0, protocol.StatusSent, protocol.StatusQueued, 1},
		{"FireTimersIn", e.s.FireTimersIn, 1, protocol.StatusSent, protocol.StatusExpired, 1},
	}
	for _, st := range steps {
		n, _, err := st.fire(e.ctx, p, 100)
		if err != nil || n != st.wantN {
			t.Fatalf("%s = %d, %v; want %d fired", st.name, n, err, st.wantN)
		}
		if gs, gq := e.get("c1", "s").Status, e.get("c1", "q").Status; gs != st.wantS || gq != st.wantQ {
			t.Errorf("after %s: s %s, q %s; want %s, %s", st.name, gs, gq, st.wantS, st.wantQ)
		}
		if got, _ := e.s.Len(e.ctx, "d1"); got != st.wantInMailbox {
			t.Errorf("after %s: the device's mailbox holds %d entries, want %d", st.name, got, st.wantInMailbox)
		}
	}
}

// TestFiredBackoffReportedForItsPartition: a timer whose retry waits a
// backoff (an expiry retried) arms the scheduled timer; the fire step
// reports it for the command's own partition, not partition 0.
func TestFiredBackoffReportedForItsPartition(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{Partitions: 8})
	p := e.s.PartitionOf("d1")
	if p == 0 {
		t.Fatal("d1 is in partition 0: the test cannot tell partitions apart")
	}
	c := policy(t, `"b"`, 1, "expired")
	c.Backoff = mailbox.Backoff{Initial: 10 * time.Second, Multiplier: 2, Max: time.Minute}
	e.sent(c)
	e.clock.Add(time.Hour + time.Second) // never fetched: not on the wire
	if _, outcomes, err := e.s.FireTimersIn(e.ctx, p, 100); err != nil || outcomes[string(mailbox.OutcomeRetryScheduled)] != 1 {
		t.Fatalf("FireTimersIn = %v, %v; want one retry_scheduled", outcomes, err)
	}
	for deadline := time.Now().Add(5 * time.Second); !e.s.DueFlushed(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the report was never sent")
		}
	}
	zs, err := e.rdb.ZRangeWithScores(e.ctx, e.s.Keys().Due(), 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	want := e.clock.Now().Add(10 * time.Second).UnixMilli()
	if len(zs) != 1 || zs[0].Member != strconv.Itoa(p) || int64(zs[0].Score) != want {
		t.Errorf("due set = %v, want partition %d at %d", zs, p, want)
	}
}
