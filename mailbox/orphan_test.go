package mailbox_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// TestOrphanAnswers: an answer that finds no record (a Redis failover
// lost it) goes to the outbox as an orphan and becomes the final of the
// client's claim only while that claim is open and names the answering
// device (DESIGN §7a); otherwise nothing changes and no entry is left.
func TestOrphanAnswers(t *testing.T) {
	t.Parallel()
	ok := protocol.NewResult(json.RawMessage(`"c1:w"`), json.RawMessage(`{"ok":true}`))
	busy := protocol.NewErrorResponse(json.RawMessage(`"c1:w"`), &protocol.Error{Code: -1, Message: "busy"})
	tests := []struct {
		name string
		// setup makes command w of c1 to d1 and breaks what a fault would.
		setup   func(e *env, c *mailbox.Command)
		device  string
		resp    *protocol.Response
		want    mailbox.Outcome
		status  protocol.Status // of Get afterwards ("" for not found)
		results int             // the client's results
		orphans int64
	}{
		{"record lost, claim open: the answer wins", func(e *env, c *mailbox.Command) {
			e.sent(c)
			e.dropRecord(c)
		}, "d1", ok, mailbox.OutcomeSucceeded, protocol.StatusSucceeded, 1, 1},
		{"an error answer", func(e *env, c *mailbox.Command) {
			e.sent(c)
			e.dropRecord(c)
		}, "d1", busy, mailbox.OutcomeFailed, protocol.StatusFailed, 1, 1},
		{"another device's claim", func(e *env, c *mailbox.Command) {
			e.sent(c)
			e.dropRecord(c)
		}, "d2", ok, mailbox.OutcomeOtherDevice, "", 0, 0},
		{"claim already final", func(e *env, c *mailbox.Command) {
			e.queued(c)
			if _, err := e.s.Cancel(e.ctx, c.Client, c.ID.Key(), ""); err != nil {
				t.Fatal(err)
			}
			e.dropRecord(c)
		}, "d1", ok, mailbox.OutcomeUnknown, protocol.StatusCancelled, 1, 0},
		{"no claim", func(e *env, c *mailbox.Command) {}, "d1", ok, mailbox.OutcomeUnknown, "", 0, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, mailbox.Options{Partitions: 8})
			c := cmd(t, "c1", "d1", `"w"`, ``)
			tt.setup(e, c)
			got, err := e.s.Complete(e.ctx, "c1", "w", tt.device, tt.resp, 0, "")
			if err != nil || got != tt.want {
				t.Fatalf("Complete = %v, %v; want %v", got, err, tt.want)
			}
			if n := e.s.Orphans(); n != tt.orphans {
				t.Errorf("Orphans() = %d, want %d", n, tt.orphans)
			}
			e.wantGet("c1", "w", tt.status)
			rs := e.results("c1")
			if len(rs) != tt.results {
				t.Fatalf("client results = %+v, want %d", rs, tt.results)
			}
			if tt.orphans > 0 {
				r := rs[0]
				if string(r.ID) != `"w"` || string(r.Result) != string(tt.resp.Result) || (r.Error == nil) != (tt.resp.Error == nil) {
					t.Errorf("client result = %+v, want id \"w\" and the device's answer %+v", r, tt.resp)
				}
			}
			p := e.s.PartitionOf("d1")
			if n, err := e.rdb.XLen(e.ctx, e.s.Keys().Part(p).Outbox()).Result(); err != nil || n != 0 {
				t.Errorf("outbox of d1's partition holds %d entries (%v), want 0", n, err)
			}

			// The same answer again changes nothing: the claim is final.
			if tt.orphans > 0 {
				if got, err := e.s.Complete(e.ctx, "c1", "w", "d1", ok, 0, ""); err != nil || got != mailbox.OutcomeUnknown {
					t.Errorf("Complete again = %v, %v; want unknown", got, err)
				}
				if rs := e.results("c1"); len(rs) != 1 {
					t.Errorf("client results after the answer again = %d, want 1", len(rs))
				}
			}
		})
	}
}

// TestOrphanRelayedByOwner: an orphan whose relay failed stays in the
// outbox and is applied by the partition owner's relay, only to a claim
// still open.
func TestOrphanRelayedByOwner(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{Partitions: 8})
	c := cmd(t, "c1", "d1", `"w"`, ``)
	e.sent(c)
	e.dropRecord(c)
	broken := e.brokenRelayStore()
	ok := protocol.NewResult(json.RawMessage(`"c1:w"`), json.RawMessage(`{"ok":true}`))
	if got, err := broken.Complete(e.ctx, "c1", "w", "d1", ok, 0, ""); err != nil || got != mailbox.OutcomeSucceeded {
		t.Fatalf("Complete with the relay failing = %v, %v; want succeeded (kept in the outbox)", got, err)
	}
	if rec, err := e.s.Get(e.ctx, "c1", "w"); !errors.Is(err, mailbox.ErrNotFound) {
		t.Fatalf("Get before the owner's relay = %v, %v; want not found (the claim still open, the record gone)", rec, err)
	}
	e.clock.Add(time.Minute)
	p := e.s.PartitionOf("d1")
	if n, err := e.s.RelayOutbox(e.ctx, p, mailbox.OutboxAge, 100); err != nil || n != 1 {
		t.Fatalf("RelayOutbox = %d, %v; want 1", n, err)
	}
	if rec := e.get("c1", "w"); rec.Status != protocol.StatusSucceeded {
		t.Errorf("status after the owner's relay = %s, want succeeded", rec.Status)
	}
	if rs := e.results("c1"); len(rs) != 1 || string(rs[0].Result) != `{"ok":true}` {
		t.Errorf("client results = %+v, want the device's answer once", rs)
	}
}

// dropRecord deletes c's record, as a Redis failover that lost the last
// writes would.
func (e *env) dropRecord(c *mailbox.Command) {
	e.t.Helper()
	pk := e.s.Keys().Part(e.s.PartitionOf(c.Device))
	must(e.t, e.rdb.Del(e.ctx, pk.Command(c.Client, c.ID.Key())).Err())
}

// brokenRelayStore is a Store of e's namespace (and partition count) whose
// relay step always fails.
func (e *env) brokenRelayStore() *mailbox.Store {
	broken := testenv.Redis(e.t)
	broken.AddHook(failRelay)
	return mailbox.New(broken, e.s.Keys().NS, mailbox.Options{Partitions: e.s.Partitions(), Now: e.clock.Now,
		Logger: testenv.Logger(e.t)})
}
