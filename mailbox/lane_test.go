package mailbox_test

import (
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// inLane is cmd in an ordered lane.
func inLane(t *testing.T, client, device, rawID, lane string) *mailbox.Command {
	t.Helper()
	c := cmd(t, client, device, rawID, ``)
	c.Lane = lane
	c.Fingerprint = protocol.Fingerprint(device, c.Method, nil, c.Timeout, c.ExpiresIn, "lane="+lane)
	return c
}

// dispatch runs Dispatch for the queued command (client, key) and checks
// its outcome.
func (e *env) dispatch(client, key string, want mailbox.Outcome) {
	e.t.Helper()
	out, err := e.s.Dispatch(e.ctx, envelope(e.t, e.get(client, key)), "node-d", "node-c")
	if err != nil || out != want {
		e.t.Fatalf("Dispatch(%s) = %v, %v, want %v", key, out, err, want)
	}
}

// onWire returns the message keys of the command entries in device's
// mailbox, in order.
func (e *env) onWire(device string) []string {
	e.t.Helper()
	es, err := e.s.Fetch(e.ctx, device, "", 1000)
	if err != nil {
		e.t.Fatalf("Fetch(%s): %v", device, err)
	}
	var keys []string
	for _, en := range es {
		keys = append(keys, en.MsgKey)
	}
	return keys
}

// entry returns the mailbox entry of command key of device.
func (e *env) entry(device, key string) mailbox.Entry {
	e.t.Helper()
	es, err := e.s.Fetch(e.ctx, device, "", 1000)
	if err != nil {
		e.t.Fatalf("Fetch(%s): %v", device, err)
	}
	for _, en := range es {
		if en.MsgKey == key {
			return en
		}
	}
	e.t.Fatalf("no entry of %s in %s's mailbox", key, device)
	return mailbox.Entry{}
}

func answer(key string) *protocol.Response {
	return protocol.NewResult(json.RawMessage(`"c1:`+key+`"`), json.RawMessage(`{"ok":true}`))
}

// TestLaneOrder: commands of one lane reach the mailbox one at a time in
// acceptance order, whatever order the worker dispatches them in;
// commands outside the lane, and of another lane, are not held.
func TestLaneOrder(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	for _, k := range []string{"a1", "a2", "a3"} {
		e.queued(inLane(t, "c1", "d1", `"`+k+`"`, "valve"))
	}
	e.queued(cmd(t, "c1", "d1", `"free"`, ``))
	e.queued(inLane(t, "c1", "d1", `"w1"`, "pump"))

	// The worker takes them in reverse order.
	e.dispatch("c1", "a3", mailbox.OutcomeLaneWait)
	e.dispatch("c1", "a2", mailbox.OutcomeLaneWait)
	e.dispatch("c1", "free", mailbox.OutcomeSent)
	e.dispatch("c1", "w1", mailbox.OutcomeSent)
	if got := e.get("c1", "a3"); got.Status != protocol.StatusQueued || !got.LaneWait || got.Lane != "valve" {
		t.Fatalf("a3 behind its lane's head: status %s lane %q waiting %v, want queued in valve, waiting", got.Status, got.Lane, got.LaneWait)
	}
	e.dispatch("c1", "a1", mailbox.OutcomeSent)
	if got, want := e.onWire("d1"), []string{"free", "w1", "a1"}; !slices.Equal(got, want) {
		t.Fatalf("mailbox %v, want %v", got, want)
	}

	lanes, err := e.s.Lanes(e.ctx, "d1")
	if err != nil || len(lanes) != 2 {
		t.Fatalf("Lanes = %+v, %v, want pump and valve", lanes, err)
	}
	if l := lanes[1]; l.Name != "valve" || l.Commands != 3 || l.Head == nil || l.Head.ID.Key() != "a1" || l.Head.Status != protocol.StatusSent {
		t.Errorf("lane %+v, want valve with 3 commands, head a1 sent", l)
	}

	// Each answer lets the next one on the wire, and only it.
	for i, k := range []string{"a1", "a2", "a3"} {
		if out, err := e.s.Complete(e.ctx, "c1", k, "d1", answer(k), 0, ""); err != nil || out != mailbox.OutcomeSucceeded {
			t.Fatalf("Complete(%s) = %v, %v", k, out, err)
		}
		want := []string{"free", "w1"}
		if i < 2 {
			next := []string{"a2", "a3"}[i]
			want = append(want, next)
			if got := e.get("c1", next); got.Status != protocol.StatusSent || got.LaneWait {
				t.Errorf("after %s's answer, %s: %s (waiting %v), want sent", k, next, got.Status, got.LaneWait)
			}
		}
		if got := e.onWire("d1"); !slices.Equal(got, want) {
			t.Errorf("after %s's answer the mailbox holds %v, want %v", k, got, want)
		}
	}
	if lanes, err := e.s.Lanes(e.ctx, "d1"); err != nil || len(lanes) != 1 || lanes[0].Name != "pump" {
		t.Errorf("Lanes after the valve lane ended = %+v, %v, want only pump", lanes, err)
	}
}

// TestLaneReleased: whatever ends a lane's head (an answer, a cancel, its
// expiry, a timeout, a dead letter, a one-way PUBACK, a refusal, a
// released publish) lets the next command of the lane on the wire.
func TestLaneReleased(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// head is reserved (and queued unless pending); dispatched says
		// whether it is sent before the next one waits.
		oneWay, pending, dispatched bool
		end                         func(e *env)
		want                        protocol.Status
	}{
		{"answer", false, false, true, func(e *env) {
			if _, err := e.s.Complete(e.ctx, "c1", "h", "d1", answer("h"), 0, ""); err != nil {
				t.Fatal(err)
			}
		}, protocol.StatusSucceeded},
		{"cancel before dispatch", false, false, false, func(e *env) {
			if _, err := e.s.Cancel(e.ctx, "c1", "h", ""); err != nil {
				t.Fatal(err)
			}
		}, protocol.StatusCancelled},
		{"cancel in the mailbox", false, false, true, func(e *env) {
			if _, err := e.s.Cancel(e.ctx, "c1", "h", ""); err != nil {
				t.Fatal(err)
			}
		}, protocol.StatusCancelled},
		{"expired", false, false, true, func(e *env) {
			e.clock.Add(time.Hour + time.Second)
			e.fire()
		}, protocol.StatusExpired},
		{"timeout", false, false, true, func(e *env) {
			must(t, e.s.Ack(e.ctx, "d1", e.entry("d1", "h")))
			e.clock.Add(31 * time.Second)
			e.fire()
		}, protocol.StatusTimeout},
		{"dead letter", false, false, false, func(e *env) {
			if _, err := e.s.MarkDead(e.ctx, "d1", "c1", "h", "delivery_limit", ""); err != nil {
				t.Fatal(err)
			}
		}, protocol.StatusDead},
		{"one-way PUBACK", true, false, true, func(e *env) {
			must(t, e.s.Ack(e.ctx, "d1", e.entry("d1", "h")))
		}, protocol.StatusSucceeded},
		{"refused", false, false, true, func(e *env) {
			if _, err := e.s.Refuse(e.ctx, "d1", e.entry("d1", "h"), 0x80); err != nil {
				t.Fatal(err)
			}
		}, protocol.StatusRejected},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, mailbox.Options{})
			h := inLane(t, "c1", "d1", `"h"`, "L")
			if tt.oneWay {
				h.Timeout = 0
				h.Fingerprint = protocol.Fingerprint("d1", h.Method, nil, 0, h.ExpiresIn, "lane=L")
			}
			e.queued(h)
			if tt.dispatched {
				e.dispatch("c1", "h", mailbox.OutcomeSent)
			}
			n := inLane(t, "c1", "d1", `"n"`, "L")
			n.ExpiresIn = 2 * time.Hour // outlives the head's expiry
			n.Fingerprint = protocol.Fingerprint("d1", n.Method, nil, n.Timeout, n.ExpiresIn, "lane=L")
			e.queued(n)
			e.dispatch("c1", "n", mailbox.OutcomeLaneWait)
			tt.end(e)
			if got := e.get("c1", "h"); got.Status != tt.want {
				t.Fatalf("head: %s, want %s", got.Status, tt.want)
			}
			if got := e.get("c1", "n"); got.Status != protocol.StatusSent || got.LaneWait {
				t.Errorf("next: %s (waiting %v), want sent", got.Status, got.LaneWait)
			}
			if got := e.onWire("d1"); !slices.Equal(got, []string{"n"}) {
				t.Errorf("mailbox %v, want [n]", got)
			}
		})
	}
}

// A released publish (the head's reservation becomes void) releases the
// lane too; the next command is then the head at its dispatch.
func TestLaneReleasedByVoid(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	_, rec, err := e.s.Reserve(e.ctx, inLane(t, "c1", "d1", `"h"`, "L"))
	if err != nil {
		t.Fatal(err)
	}
	e.queued(inLane(t, "c1", "d1", `"n"`, "L"))
	e.dispatch("c1", "n", mailbox.OutcomeLaneWait)
	must(t, e.s.Release(e.ctx, "d1", "c1", "h", rec.LeaseToken))
	if got := e.get("c1", "n"); got.Status != protocol.StatusSent {
		t.Errorf("next after the head's release: %s, want sent", got.Status)
	}
}

// A command waiting in the middle of a lane that expires leaves it without
// stopping it; when the step after an answer cannot send the next command
// (the Store's fast path failed), the partition's owner does.
func TestLaneExpiredInTheMiddleAndOwnerBackstop(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	e.queued(inLane(t, "c1", "d1", `"a1"`, "L"))
	short := inLane(t, "c1", "d1", `"a2"`, "L")
	short.ExpiresIn = time.Minute
	short.Fingerprint = protocol.Fingerprint("d1", short.Method, nil, short.Timeout, short.ExpiresIn, "lane=L")
	e.queued(short)
	e.queued(inLane(t, "c1", "d1", `"a3"`, "L"))
	for _, k := range []string{"a1", "a2", "a3"} {
		want := mailbox.OutcomeLaneWait
		if k == "a1" {
			want = mailbox.OutcomeSent
		}
		e.dispatch("c1", k, want)
	}
	e.clock.Add(2 * time.Minute)
	e.fire()
	if got := e.get("c1", "a2"); got.Status != protocol.StatusExpired {
		t.Fatalf("a2 past its deliver-by: %s, want expired", got.Status)
	}
	if got := e.onWire("d1"); !slices.Equal(got, []string{"a1"}) {
		t.Fatalf("mailbox %v, want [a1]: the head still holds the lane", got)
	}

	broken := testenv.Redis(t)
	broken.AddHook(failStep{"fire"})
	s := mailbox.New(broken, e.s.Keys().NS, mailbox.Options{Partitions: 1, Now: e.clock.Now, AnswerGrace: time.Millisecond, Logger: testenv.Logger(t)})
	if out, err := s.Complete(e.ctx, "c1", "a1", "d1", answer("a1"), 0, ""); err != nil || out != mailbox.OutcomeSucceeded {
		t.Fatalf("Complete(a1) = %v, %v", out, err)
	}
	if got := e.get("c1", "a3"); got.Status != protocol.StatusQueued || !got.LaneWait {
		t.Fatalf("a3 before the owner's tick: %s (waiting %v), want queued and waiting", got.Status, got.LaneWait)
	}
	e.fire()
	if got := e.get("c1", "a3"); got.Status != protocol.StatusSent {
		t.Errorf("a3 after the owner's tick: %s, want sent", got.Status)
	}
	if got := e.onWire("d1"); !slices.Equal(got, []string{"a3"}) {
		t.Errorf("mailbox %v, want [a3]", got)
	}
}

// A dead command that an operator replays joins the end of its lane.
func TestLaneReplayJoinsTheEnd(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	e.queued(inLane(t, "c1", "d1", `"h"`, "L"))
	e.queued(inLane(t, "c1", "d1", `"n"`, "L"))
	if _, err := e.s.MarkDead(e.ctx, "d1", "c1", "h", "delivery_limit", ""); err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.ReplayDead(e.ctx, "c1", "h"); err != nil {
		t.Fatal(err)
	}
	e.dispatch("c1", "h", mailbox.OutcomeLaneWait)
	e.dispatch("c1", "n", mailbox.OutcomeSent)
	if _, err := e.s.Complete(e.ctx, "c1", "n", "d1", answer("n"), 0, ""); err != nil {
		t.Fatal(err)
	}
	if got := e.get("c1", "h"); got.Status != protocol.StatusSent {
		t.Errorf("replayed h after n ended: %s, want sent", got.Status)
	}
}

// A lane whose head's record is gone (Redis lost it) is released by the
// head's timer, which finds no record.
func TestLaneHeadRecordLost(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	e.queued(inLane(t, "c1", "d1", `"h"`, "L"))
	n := inLane(t, "c1", "d1", `"n"`, "L")
	n.ExpiresIn = 2 * time.Hour
	n.Fingerprint = protocol.Fingerprint("d1", n.Method, nil, n.Timeout, n.ExpiresIn, "lane=L")
	e.queued(n)
	e.dispatch("c1", "n", mailbox.OutcomeLaneWait)
	must(t, e.rdb.Del(e.ctx, e.keys.Command("c1", "h")).Err())
	e.clock.Add(time.Hour + time.Second) // h's deliver-by timer fires, finds no record
	e.fire()
	e.fire() // the owner's next tick fires n's lane timer
	if got := e.get("c1", "n"); got.Status != protocol.StatusSent {
		t.Errorf("next after its head's record was lost: %s, want sent", got.Status)
	}
}

// A scheduled command of a lane waits for its head when its not_before
// comes; a head that is retried after a timeout still holds the lane
// until it is final.
func TestLaneScheduledAndRetried(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	h := inLane(t, "c1", "d1", `"h"`, "L")
	h.Retries = 1
	h.Fingerprint += "|retries=1"
	e.queued(h)
	e.dispatch("c1", "h", mailbox.OutcomeSent)
	n := inLane(t, "c1", "d1", `"n"`, "L")
	n.Delay = 10 * time.Minute
	n.Fingerprint += "|not_before=10m"
	e.queued(n)
	e.dispatch("c1", "n", mailbox.OutcomeScheduled)

	must(t, e.s.Ack(e.ctx, "d1", e.entry("d1", "h")))
	e.clock.Add(31 * time.Second) // h's answer timer: retried, same id
	e.fire()
	if got := e.get("c1", "h"); got.Status != protocol.StatusSent || got.Tries != 1 {
		t.Fatalf("h after its timeout: %s, %d tries; want sent again, 1 try", got.Status, got.Tries)
	}
	e.clock.Add(10 * time.Minute) // n's not_before: h still holds the lane
	e.fire()
	if got := e.get("c1", "n"); got.Status != protocol.StatusQueued || !got.LaneWait {
		t.Fatalf("n at its not_before behind a retried head: %s (waiting %v), want queued and waiting", got.Status, got.LaneWait)
	}
	if got := e.onWire("d1"); !slices.Equal(got, []string{"h"}) {
		t.Fatalf("mailbox %v, want [h]", got)
	}
	if _, err := e.s.Complete(e.ctx, "c1", "h", "d1", answer("h"), 0, ""); err != nil {
		t.Fatal(err)
	}
	if got := e.get("c1", "n"); got.Status != protocol.StatusSent {
		t.Errorf("n after h's answer: %s, want sent", got.Status)
	}
	if ev, err := e.s.EventCounts(e.ctx, 60); err != nil || ev["lane_wait"] != 1 {
		t.Errorf("lane_wait events = %v, %v; want 1", ev["lane_wait"], err)
	}
}

// With lane_mode=puback the lane moves on at the head's delivery (its
// PUBACK, or an HTTP poll's ack), not at its end.
func TestLanePUBACKMode(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	h := inLane(t, "c1", "d1", `"h"`, "L")
	h.LaneMode = protocol.LaneModePUBACK
	h.Fingerprint += "|lane_mode=puback"
	e.queued(h)
	e.dispatch("c1", "h", mailbox.OutcomeSent)
	e.queued(inLane(t, "c1", "d1", `"n"`, "L"))
	e.dispatch("c1", "n", mailbox.OutcomeLaneWait)
	if got := e.onWire("d1"); !slices.Equal(got, []string{"h"}) {
		t.Fatalf("before h's PUBACK the mailbox holds %v, want [h]", got)
	}
	must(t, e.s.Ack(e.ctx, "d1", e.entry("d1", "h")))
	if got := e.get("c1", "h"); got.Status != protocol.StatusDelivered || got.LaneMode != protocol.LaneModePUBACK {
		t.Fatalf("h after its PUBACK: %s, mode %q; want delivered, puback", got.Status, got.LaneMode)
	}
	if got := e.get("c1", "n"); got.Status != protocol.StatusSent {
		t.Fatalf("n after h's PUBACK: %s, want sent", got.Status)
	}
	if _, err := e.s.Complete(e.ctx, "c1", "h", "d1", answer("h"), 0, ""); err != nil {
		t.Fatal(err)
	}
	if got := e.get("c1", "n"); got.Status != protocol.StatusSent {
		t.Errorf("n after h's answer: %s, want still sent", got.Status)
	}
	if lanes, err := e.s.Lanes(e.ctx, "d1"); err != nil || len(lanes) != 1 || lanes[0].Commands != 1 || lanes[0].Head.ID.Key() != "n" {
		t.Errorf("Lanes = %+v, %v; want L with n alone", lanes, err)
	}
}
