package mailbox_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// oneWay is a one-way command: answer timeout 0.
func oneWay(t *testing.T, client, device, rawID string) *mailbox.Command {
	t.Helper()
	c := cmd(t, client, device, rawID, ``)
	c.Timeout = 0
	c.Fingerprint = protocol.Fingerprint(device, c.Method, nil, 0, c.ExpiresIn)
	return c
}

// TestOneWay: a one-way command succeeds by its PUBACK, with the
// documented result; an answer the device sends anyway (before or after
// the PUBACK) is kept as late and changes nothing else; if the step after
// the PUBACK never runs, its timer ends it the same way one grace later;
// expiry before delivery is as for any command.
func TestOneWay(t *testing.T) {
	t.Parallel()
	answer := protocol.NewResult(json.RawMessage(`"c1:w"`), json.RawMessage(`{"done":true}`))
	tests := []struct {
		name string
		// run takes the sent command from its PUBACK (or not) to its end.
		run        func(e *env, en mailbox.Entry)
		want       protocol.Status
		late       bool // the device's answer is kept as late
		wantResult string
	}{
		{"PUBACK", func(e *env, en mailbox.Entry) {
			must(t, e.s.Ack(e.ctx, "d1", en))
		}, protocol.StatusSucceeded, false, protocol.OneWayResult},
		{"PUBACK, then an answer anyway", func(e *env, en mailbox.Entry) {
			must(t, e.s.Ack(e.ctx, "d1", en))
			if out, err := e.s.Complete(e.ctx, "c1", "w", "d1", answer, 0, ""); err != nil || out != mailbox.OutcomeLate {
				t.Errorf("Complete after the one-way success = %v, %v; want late", out, err)
			}
		}, protocol.StatusSucceeded, true, protocol.OneWayResult},
		{"an answer before the PUBACK", func(e *env, en mailbox.Entry) {
			if out, err := e.s.Complete(e.ctx, "c1", "w", "d1", answer, 0, ""); err != nil || out != mailbox.OutcomeSucceeded {
				t.Errorf("Complete of a one-way command = %v, %v; want succeeded", out, err)
			}
			must(t, e.s.Ack(e.ctx, "d1", en)) // the PUBACK of an ended command only deletes its entry
		}, protocol.StatusSucceeded, true, protocol.OneWayResult},
		{"the step after the PUBACK failed", func(e *env, en mailbox.Entry) {
			broken := testenv.Redis(t)
			broken.AddHook(failStep{"oneway"})
			s := mailbox.New(broken, e.s.Keys().NS, mailbox.Options{Partitions: 1, Now: e.clock.Now, AnswerGrace: time.Second, Logger: testenv.Logger(t)})
			must(t, s.Ack(e.ctx, "d1", en))
			if got := e.get("c1", "w"); got.Status != protocol.StatusDelivered {
				t.Fatalf("after a PUBACK whose one-way step failed: %s, want delivered", got.Status)
			}
			e.clock.Add(2 * time.Second)
			e.fire()
		}, protocol.StatusSucceeded, false, protocol.OneWayResult},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, mailbox.Options{})
			e.sent(oneWay(t, "c1", "d1", `"w"`))
			es, err := e.s.Fetch(e.ctx, "d1", "", 1)
			if err != nil || len(es) != 1 {
				t.Fatalf("Fetch = %d, %v", len(es), err)
			}
			tt.run(e, es[0])
			got := e.get("c1", "w")
			if got.Status != tt.want || got.DeliveredAt.IsZero() {
				t.Errorf("status %s delivered_at %v, want %s and delivered", got.Status, got.DeliveredAt, tt.want)
			}
			if (got.Late != nil) != tt.late {
				t.Errorf("late answer kept: %v, want %v", got.Late != nil, tt.late)
			}
			rs := e.results("c1")
			if len(rs) != 1 || string(rs[0].Result) != tt.wantResult || rs[0].Error != nil {
				t.Errorf("client results = %+v, want one with result %s", rs, tt.wantResult)
			}
			if n, _ := e.s.Len(e.ctx, "d1"); n != 0 {
				t.Errorf("device mailbox holds %d entries, want 0", n)
			}
			if n, _ := e.rdb.ZCard(e.ctx, e.keys.Timers()).Result(); n != 0 {
				t.Errorf("%d timers left, want 0", n)
			}
		})
	}
}

// A one-way command nobody fetches expires at its deliver-by like any.
func TestOneWayExpires(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	e.sent(oneWay(t, "c1", "d1", `"x"`))
	e.clock.Add(2 * time.Hour)
	e.fire()
	if got := e.get("c1", "x"); got.Status != protocol.StatusExpired {
		t.Errorf("an unfetched one-way command at its deliver-by: %s, want expired", got.Status)
	}
}
