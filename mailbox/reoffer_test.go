package mailbox_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// TestReoffer: a delivered command that is not answered stays in the
// mailbox and is offered again to a new connection (a Fetch from the
// start) with the same id, not to the connection that read past it (a
// Fetch after its entry); its PUBACK then changes nothing; its answer
// ends it and takes the entry away; a poll over HTTP does not offer it.
func TestReoffer(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	e.sent(cmd(t, "c1", "d1", `"r"`, ``))
	first, err := e.s.Fetch(e.ctx, "d1", "", 10)
	if err != nil || len(first) != 1 {
		t.Fatalf("Fetch = %d, %v", len(first), err)
	}
	must(t, e.s.Ack(e.ctx, "d1", first[0]))
	delivered := e.get("c1", "r")

	if es, _ := e.s.Fetch(e.ctx, "d1", first[0].ID, 10); len(es) != 0 {
		t.Errorf("the same connection, reading on: %d entries, want 0", len(es))
	}
	again, err := e.s.Fetch(e.ctx, "d1", "", 10)
	if err != nil || len(again) != 1 || again[0].ID != first[0].ID || string(again[0].Payload) != string(first[0].Payload) {
		t.Fatalf("a new connection: Fetch = %+v, %v; want the same entry again", again, err)
	}
	if es, _ := e.s.Poll(e.ctx, "d1", 10, 30*time.Second); len(es) != 0 {
		t.Errorf("a poll over HTTP: %d entries, want 0 (acknowledged already)", len(es))
	}
	must(t, e.s.Ack(e.ctx, "d1", again[0]))
	if got := e.get("c1", "r"); got.Status != protocol.StatusDelivered || !got.DeliveredAt.Equal(delivered.DeliveredAt) {
		t.Errorf("after the re-offer's PUBACK: %s delivered %v, want delivered at %v", got.Status, got.DeliveredAt, delivered.DeliveredAt)
	}
	resp := protocol.NewResult(json.RawMessage(`"c1:r"`), json.RawMessage(`1`))
	if out, err := e.s.Complete(e.ctx, "c1", "r", "d1", resp, 0, ""); err != nil || out != mailbox.OutcomeSucceeded {
		t.Fatalf("Complete = %v, %v", out, err)
	}
	if n, _ := e.s.Len(e.ctx, "d1"); n != 0 {
		t.Errorf("after the answer: %d mailbox entries, want 0", n)
	}
}

// TestFinalEmptiesTheListing: the step that ends a command and empties
// its device's mailbox also takes the device out of the partition's set
// of non-empty mailboxes.
func TestFinalEmptiesTheListing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	e.sent(cmd(t, "c1", "d1", `"f"`, ``))
	if ok, _ := e.rdb.SIsMember(e.ctx, e.keys.Mailboxes(), "d1").Result(); !ok {
		t.Fatal("a device with a waiting command is not listed")
	}
	if _, err := e.s.Cancel(e.ctx, "c1", "f", ""); err != nil {
		t.Fatal(err)
	}
	if ok, _ := e.rdb.SIsMember(e.ctx, e.keys.Mailboxes(), "d1").Result(); ok {
		t.Error("the emptied mailbox is still listed")
	}
}
