package mailbox_test

import (
	"encoding/json"
	"testing"

	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// TestRefuse: a device's refusal (an MQTT 5 PUBACK with a reason code of
// 0x80 or more) of a command on the wire ends it rejected (sent →
// rejected), and the client gets exactly one -32005 result with the
// reason code; a refusal that comes after the command left sent (an
// answer, a PUBACK) or a second one changes nothing, and every refused
// entry leaves the mailbox.
func TestRefuse(t *testing.T) {
	t.Parallel()
	answer := protocol.NewResult(json.RawMessage(`"c1:r"`), json.RawMessage(`{"done":true}`))
	tests := []struct {
		name    string
		oneWay  bool
		before  func(e *env, en mailbox.Entry) // what happens before the refusal
		want    protocol.Status
		outcome mailbox.Outcome
	}{
		{"on the wire", false, nil, protocol.StatusRejected, mailbox.OutcomeRejected},
		{"one-way", true, nil, protocol.StatusRejected, mailbox.OutcomeRejected},
		{"refused twice", false, func(e *env, en mailbox.Entry) {
			if out, err := e.s.Refuse(e.ctx, "d1", en, 0x87); err != nil || out != mailbox.OutcomeRejected {
				t.Errorf("first Refuse = %v, %v; want rejected", out, err)
			}
		}, protocol.StatusRejected, mailbox.OutcomeNoop},
		{"after the answer", false, func(e *env, en mailbox.Entry) {
			if out, err := e.s.Complete(e.ctx, "c1", "r", "d1", answer, 0, ""); err != nil || out != mailbox.OutcomeSucceeded {
				t.Errorf("Complete = %v, %v; want succeeded", out, err)
			}
		}, protocol.StatusSucceeded, mailbox.OutcomeNoop},
		{"after a PUBACK", false, func(e *env, en mailbox.Entry) {
			must(t, e.s.Ack(e.ctx, "d1", en))
		}, protocol.StatusDelivered, mailbox.OutcomeNoop},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, mailbox.Options{})
			c := cmd(t, "c1", "d1", `"r"`, ``)
			if tt.oneWay {
				c = oneWay(t, "c1", "d1", `"r"`)
			}
			e.sent(c)
			es, err := e.s.Fetch(e.ctx, "d1", "", 1)
			if err != nil || len(es) != 1 {
				t.Fatalf("Fetch = %d, %v", len(es), err)
			}
			if tt.before != nil {
				tt.before(e, es[0])
			}
			out, err := e.s.Refuse(e.ctx, "d1", es[0], 0x87)
			if err != nil || out != tt.outcome {
				t.Errorf("Refuse = %v, %v; want %v", out, err, tt.outcome)
			}
			got := e.get("c1", "r")
			if got.Status != tt.want {
				t.Errorf("status %s, want %s", got.Status, tt.want)
			}
			if n, _ := e.s.Len(e.ctx, "d1"); n != 0 {
				t.Errorf("device mailbox holds %d entries, want 0", n)
			}
			if listed, _ := e.rdb.SIsMember(e.ctx, e.keys.Mailboxes(), "d1").Result(); listed && tt.before == nil {
				t.Errorf("d1 still listed as having a mailbox after the refusal emptied it")
			}
			if tt.want != protocol.StatusRejected {
				return
			}
			if got.Reason != "refused by the device" {
				t.Errorf("reason %q, want %q", got.Reason, "refused by the device")
			}
			if n, _ := e.rdb.ZCard(e.ctx, e.keys.Timers()).Result(); n != 0 {
				t.Errorf("%d timers left, want 0", n)
			}
			rs := e.results("c1")
			if len(rs) != 1 || rs[0].Error == nil {
				t.Fatalf("client results = %+v, want one error", rs)
			}
			if rs[0].Error.Code != protocol.CodeRejected || string(rs[0].ID) != `"r"` {
				t.Errorf("client result = %+v, want code %d and id \"r\"", rs[0], protocol.CodeRejected)
			}
			var data map[string]any
			if err := json.Unmarshal(rs[0].Error.Data, &data); err != nil {
				t.Fatal(err)
			}
			want := map[string]any{"source": "gateway", "status": "rejected", "mqtt_reason_code": float64(0x87)}
			for k, v := range want {
				if data[k] != v {
					t.Errorf("result data %s = %v, want %v (data %s)", k, data[k], v, rs[0].Error.Data)
				}
			}
			var resp map[string]any
			if err := json.Unmarshal(got.Response, &resp); err != nil || resp["error"] == nil {
				t.Errorf("record's response %s, want the -32005 error", got.Response)
			}
		})
	}
}

// TestRefuseResultEntry: a client that refuses a result entry only
// removes it (it will never take it), as a PUBACK would.
func TestRefuseResultEntry(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	e.sent(cmd(t, "c1", "d1", `"r"`, ``))
	if _, err := e.s.Cancel(e.ctx, "c1", "r", ""); err != nil {
		t.Fatalf("Cancel: %v", err)
	}
	es, err := e.s.Fetch(e.ctx, "c1", "", 10)
	if err != nil || len(es) != 1 {
		t.Fatalf("Fetch(c1) = %d, %v; want the cancelled result", len(es), err)
	}
	if out, err := e.s.Refuse(e.ctx, "c1", es[0], 0x80); err != nil || out != mailbox.OutcomeNoop {
		t.Errorf("Refuse of a result entry = %v, %v; want noop", out, err)
	}
	if n, _ := e.s.Len(e.ctx, "c1"); n != 0 {
		t.Errorf("client mailbox holds %d entries, want 0", n)
	}
}
