package mailbox_test

import (
	"reflect"
	"testing"
	"time"

	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// TestQueuedSet: the partition's queued set holds exactly the commands
// whose status is queued, scored by acceptance (a replay: the replay), so
// Totals reports how many wait in the command queues and the age of the
// oldest, whichever step takes them on: dispatch (sent or scheduled),
// cancel, dead letter, expiry.
func TestQueuedSet(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	queued := func(what string, want ...mailbox.PartitionQueued) {
		t.Helper()
		tot, err := e.s.Totals(e.ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(want) == 0 {
			want = nil
		}
		if !reflect.DeepEqual(tot.Queued, want) {
			t.Errorf("%s: Totals.Queued = %+v, want %+v", what, tot.Queued, want)
		}
	}
	queued("at first")

	a := e.queued(cmd(t, "c1", "d1", `1`, ``))
	e.clock.Add(3 * time.Second)
	queued("one queued 3s ago", mailbox.PartitionQueued{Commands: 1, Oldest: 3 * time.Second})
	b := e.queued(cmd(t, "c1", "d2", `"b"`, ``))
	e.clock.Add(time.Second)
	queued("two queued", mailbox.PartitionQueued{Commands: 2, Oldest: 4 * time.Second})

	if out, err := e.s.Dispatch(e.ctx, envelope(t, a), "node-d", "node-c"); err != nil || out != mailbox.OutcomeSent {
		t.Fatalf("Dispatch(a) = %v, %v, want sent", out, err)
	}
	queued("a sent", mailbox.PartitionQueued{Commands: 1, Oldest: time.Second})
	if _, err := e.s.Cancel(e.ctx, "c1", b.ID.Key(), ""); err != nil {
		t.Fatal(err)
	}
	queued("b cancelled")

	// A dead letter leaves the set; its replay enters it, dated the replay.
	c := e.queued(cmd(t, "c2", "d1", `3`, ``))
	if out, err := e.s.MarkDead(e.ctx, "d1", "c2", c.ID.Key(), "", ""); err != nil || out != mailbox.OutcomeDead {
		t.Fatalf("MarkDead = %v, %v, want dead", out, err)
	}
	queued("c dead")
	e.clock.Add(2 * time.Second)
	if _, err := e.s.ReplayDead(e.ctx, "c2", c.ID.Key()); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(time.Second)
	queued("c replayed 1s ago", mailbox.PartitionQueued{Commands: 1, Oldest: time.Second})
	if out, err := e.s.Dispatch(e.ctx, envelope(t, e.get("c2", c.ID.Key())), "node-d", "node-c"); err != nil || out != mailbox.OutcomeSent {
		t.Fatalf("Dispatch(replayed c) = %v, %v, want sent", out, err)
	}
	queued("replayed c sent")

	// A scheduled command leaves the set when a worker takes it.
	s := cmd(t, "c3", "d1", `4`, ``)
	s.Delay = time.Hour
	s = e.queued(s)
	queued("s queued", mailbox.PartitionQueued{Commands: 1, Oldest: 0})
	if out, err := e.s.Dispatch(e.ctx, envelope(t, s), "node-d", "node-c"); err != nil || out != mailbox.OutcomeScheduled {
		t.Fatalf("Dispatch(s) = %v, %v, want scheduled", out, err)
	}
	if st := e.get("c3", s.ID.Key()).Status; st != protocol.StatusScheduled {
		t.Fatalf("status = %s, want scheduled", st)
	}
	queued("s scheduled")

	// A command of an ordered lane behind another waits in Redis: a
	// worker took it from its queue, so it leaves the set.
	l1, l2 := cmd(t, "c5", "d1", `6`, ``), cmd(t, "c5", "d1", `7`, ``)
	l1.Lane, l2.Lane = "fw", "fw"
	l1, l2 = e.queued(l1), e.queued(l2)
	queued("two of a lane queued", mailbox.PartitionQueued{Commands: 2, Oldest: 0})
	if out, err := e.s.Dispatch(e.ctx, envelope(t, l1), "node-d", "node-c"); err != nil || out != mailbox.OutcomeSent {
		t.Fatalf("Dispatch(l1) = %v, %v, want sent", out, err)
	}
	if out, err := e.s.Dispatch(e.ctx, envelope(t, l2), "node-d", "node-c"); err != nil || out != mailbox.OutcomeLaneWait {
		t.Fatalf("Dispatch(l2) = %v, %v, want lane_wait", out, err)
	}
	if st := e.get("c5", l2.ID.Key()).Status; st != protocol.StatusQueued {
		t.Fatalf("l2's status = %s, want queued (behind l1)", st)
	}
	queued("l1 sent, l2 waiting for its lane")

	// A dispatch that finds the deliver-by passed ends it expired.
	x := e.queued(cmd(t, "c4", "d1", `5`, ``))
	e.clock.Add(2 * time.Hour)
	if out, err := e.s.Dispatch(e.ctx, envelope(t, x), "node-d", "node-c"); err != nil || out != mailbox.OutcomeExpired {
		t.Fatalf("Dispatch(x) = %v, %v, want expired", out, err)
	}
	queued("x expired")
}
