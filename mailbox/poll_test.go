package mailbox_test

import (
	"testing"
	"time"

	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// TestPoll: a device polling over HTTP gets its waiting commands, stamped
// as on the wire; a fetched command is hidden for the visibility, then
// offered again unless its PUBACK (Ack) or its answer came.
func TestPoll(t *testing.T) {
	t.Parallel()
	const vis = 30 * time.Second
	e := newEnv(t, mailbox.Options{})
	e.sent(cmd(t, "c1", "d1", `"a"`, ``))
	e.sent(cmd(t, "c1", "d1", `"b"`, ``))
	poll := func(want int, what string) []mailbox.Entry {
		t.Helper()
		es, err := e.s.Poll(e.ctx, "d1", 10, vis)
		if err != nil || len(es) != want {
			t.Fatalf("%s: Poll = %d entries, %v; want %d", what, len(es), err, want)
		}
		return es
	}
	es := poll(2, "first poll")
	if got := e.get("c1", "a"); got.SendingAt.IsZero() || got.Attempts != 1 {
		t.Errorf("after the first poll: sending %v attempts %d, want on the wire, 1", got.SendingAt, got.Attempts)
	}
	poll(0, "within the visibility")
	e.clock.Add(vis + time.Second)
	es = poll(2, "after the visibility, nothing acknowledged")
	if got := e.get("c1", "a"); got.Attempts != 2 {
		t.Errorf("attempts %d, want 2", got.Attempts)
	}
	// a is acknowledged; b is answered.
	if err := e.s.Ack(e.ctx, "d1", mailbox.Entry{ID: es[0].ID}); err != nil {
		t.Fatal(err)
	}
	resp := protocol.NewResult([]byte(`"c1:b"`), []byte(`true`))
	if out, err := e.s.Complete(e.ctx, "c1", "b", "d1", resp, 0, ""); err != nil || out != mailbox.OutcomeSucceeded {
		t.Fatalf("Complete(b) = %v, %v", out, err)
	}
	e.clock.Add(vis + time.Second)
	poll(0, "after the PUBACK of a and the answer of b")
	if got := e.get("c1", "a"); got.Status != protocol.StatusDelivered {
		t.Errorf("a: %s, want delivered", got.Status)
	}
}
