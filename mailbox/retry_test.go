package mailbox_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// TestRetries: a command with retries that gets no answer within its
// timeout is sent again (the same request, a new mailbox entry, a fresh
// expires_in window) as often as allowed, then ends timeout; an answer
// to any try ends it.
func TestRetries(t *testing.T) {
	t.Parallel()
	retried := func(e *env, retries int, rawID string) {
		c := cmd(t, "c1", "d1", rawID, ``)
		c.Retries = retries
		c.Fingerprint = protocol.Fingerprint("d1", c.Method, nil, c.Timeout, c.ExpiresIn, "retries=2")
		e.sent(c)
	}
	// deliver fetches and acks the device's one entry: delivered.
	deliver := func(e *env) {
		t.Helper()
		es, err := e.s.Fetch(e.ctx, "d1", "", 10)
		if err != nil || len(es) != 1 {
			t.Fatalf("Fetch = %d entries, %v; want 1", len(es), err)
		}
		must(t, e.s.Ack(e.ctx, "d1", es[0]))
	}
	t.Run("every try times out", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, mailbox.Options{})
		retried(e, 2, `"r"`)
		for try := 1; try <= 2; try++ {
			deliver(e)
			e.clock.Add(31 * time.Second) // past timeout + grace
			_, outcomes, err := e.s.FireTimersOutcomes(e.ctx, 100, nil)
			if err != nil || outcomes["retried"] != 1 {
				t.Fatalf("try %d: outcomes %v, %v; want one retried", try, outcomes, err)
			}
			got := e.get("c1", "r")
			if got.Status != protocol.StatusSent || got.Tries != try || !got.DeliveredAt.IsZero() {
				t.Fatalf("after retry %d: %s tries %d delivered %v; want sent, %d, not delivered", try, got.Status, got.Tries, got.DeliveredAt, try)
			}
			if n, _ := e.s.Len(e.ctx, "d1"); n != 1 {
				t.Fatalf("after retry %d: %d mailbox entries, want 1 (the new one)", try, n)
			}
		}
		deliver(e)
		e.clock.Add(31 * time.Second)
		e.fire()
		if got := e.get("c1", "r"); got.Status != protocol.StatusTimeout || got.Tries != 2 {
			t.Errorf("after the last try: %s tries %d, want timeout, 2", got.Status, got.Tries)
		}
		if rs := e.results("c1"); len(rs) != 1 || rs[0].Error == nil || rs[0].Error.Code != protocol.CodeTimeout {
			t.Errorf("client results = %+v, want one -32001", rs)
		}
	})
	t.Run("the second try is answered", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, mailbox.Options{})
		retried(e, 2, `"a"`)
		deliver(e)
		e.clock.Add(31 * time.Second)
		e.fire()
		deliver(e)
		resp := protocol.NewResult(json.RawMessage(`"c1:a"`), json.RawMessage(`"ok"`))
		if out, err := e.s.Complete(e.ctx, "c1", "a", "d1", resp, 0, ""); err != nil || out != mailbox.OutcomeSucceeded {
			t.Fatalf("Complete = %v, %v; want succeeded", out, err)
		}
		if got := e.get("c1", "a"); got.Status != protocol.StatusSucceeded || got.Tries != 1 {
			t.Errorf("%s tries %d, want succeeded, 1", got.Status, got.Tries)
		}
		if n, _ := e.s.Len(e.ctx, "d1"); n != 0 {
			t.Errorf("%d mailbox entries, want 0", n)
		}
	})
}
