package mailbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// The claim in the client's partition binds the client's id to one device
// and one body: the same id to another device, or with another body, is a
// conflict, even after the first command is final.
func TestClaimConflict(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{Partitions: 16})
	e.queued(cmd(t, "c1", "d1", `"k"`, `{"x":1}`))
	for name, c := range map[string]*mailbox.Command{
		"another device": cmd(t, "c1", "d2", `"k"`, `{"x":1}`),
		"another body":   cmd(t, "c1", "d1", `"k"`, `{"x":2}`),
	} {
		if _, _, err := e.s.Reserve(e.ctx, c); !errors.Is(err, mailbox.ErrConflict) {
			t.Errorf("%s: Reserve = %v, want ErrConflict", name, err)
		}
	}
	if _, err := e.s.Cancel(e.ctx, "c1", "k", ""); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.s.Reserve(e.ctx, cmd(t, "c1", "d2", `"k"`, `{"x":1}`)); !errors.Is(err, mailbox.ErrConflict) {
		t.Errorf("another device after the final: Reserve = %v, want ErrConflict", err)
	}
	if out, rec, err := e.s.Reserve(e.ctx, cmd(t, "c1", "d1", `"k"`, `{"x":1}`)); err != nil || out != mailbox.Exists || rec.Status != protocol.StatusCancelled {
		t.Errorf("same body after the final: Reserve = %v, %v, %v; want exists, cancelled", out, rec, err)
	}
}

// Release leaves a void tombstone: Get says not found, and a Reserve with
// the same body reserves afresh (a new lease, pending again).
func TestReleaseLeavesVoid(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	c := cmd(t, "c1", "d1", `"v"`, `{"x":1}`)
	_, r, err := e.s.Reserve(e.ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.s.Release(e.ctx, "d1", "c1", "v", r.LeaseToken); err != nil {
		t.Fatal(err)
	}
	st, err := e.rdb.HGet(e.ctx, e.keys.Command("c1", "v"), "status").Result()
	if err != nil || st != string(protocol.StatusVoid) {
		t.Errorf("record status after Release = %q, %v; want void (a tombstone, not deleted)", st, err)
	}
	if _, err := e.s.Get(e.ctx, "c1", "v"); !errors.Is(err, mailbox.ErrNotFound) {
		t.Errorf("Get of a void record = %v, want ErrNotFound", err)
	}
	out, r2, err := e.s.Reserve(e.ctx, c)
	if err != nil || out != mailbox.Reserved || r2.LeaseToken == "" || r2.LeaseToken == r.LeaseToken || r2.Status != protocol.StatusPending {
		t.Fatalf("Reserve after Release = %v, %+v, %v; want reserved afresh with a new lease", out, r2, err)
	}
	if _, _, err := e.s.Reserve(e.ctx, cmd(t, "c1", "d1", `"v"`, `{"x":2}`)); !errors.Is(err, mailbox.ErrConflict) {
		t.Errorf("another body after Release = %v, want ErrConflict (the claim stays)", err)
	}
	if err := e.s.MarkQueued(e.ctx, "d1", "c1", "v"); err != nil {
		t.Fatal(err)
	}
	if got := e.get("c1", "v"); got.Status != protocol.StatusQueued {
		t.Errorf("after MarkQueued: %s, want queued", got.Status)
	}
}

// Relaying the same outbox entry twice appends one result to the client's
// mailbox.
func TestRelayIdempotent(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	e.queued(cmd(t, "c1", "d1", `"r"`, ``))
	if _, err := e.s.Cancel(e.ctx, "c1", "r", ""); err != nil {
		t.Fatal(err)
	}
	// Cancel relayed its entry at once (and deleted it); put it back as a
	// relayer that crashed before the delete would find it, and relay it
	// twice more.
	if n, _ := e.rdb.XLen(e.ctx, e.keys.Outbox()).Result(); n != 0 {
		t.Fatalf("outbox holds %d entries after the relay, want 0", n)
	}
	resp := e.get("c1", "r").Response
	if err := e.rdb.XAdd(e.ctx, &redis.XAddArgs{Stream: e.keys.Outbox(), Values: []any{
		"c", "c1", "k", "r", "d", "d1", "g", "0", "s", "cancelled", "r", string(resp),
		"f", "1", "x", e.clock.Now().Add(time.Hour).UnixMilli()}}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := mailbox.RelayTwice(e.ctx, e.s, 0); err != nil {
		t.Fatal(err)
	}
	if rs := e.results("c1"); len(rs) != 1 {
		t.Errorf("client mailbox holds %d results after relaying one entry three times, want 1", len(rs))
	}
	if n, _ := e.rdb.XLen(e.ctx, e.keys.Outbox()).Result(); n != 0 {
		t.Errorf("outbox holds %d entries after the relays, want 0", n)
	}
}

// An answer held at the edge for longer than the time since its deadline
// was received too late: the command ends as timeout with the answer kept
// as Late.
func TestCompleteHeldPastDeadline(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	e.sent(cmd(t, "c1", "d1", `"h"`, ``))
	es, err := e.s.Fetch(e.ctx, "d1", "", 1)
	if err != nil || len(es) != 1 {
		t.Fatalf("Fetch = %d, %v", len(es), err)
	}
	if err := e.s.Ack(e.ctx, "d1", es[0]); err != nil {
		t.Fatal(err)
	}
	// 40s after delivery (timeout 30s), an answer held 5s was received
	// 35s after delivery: too late.
	e.clock.Add(40 * time.Second)
	resp := &protocol.Response{JSONRPC: "2.0", Result: json.RawMessage(`{"ok":true}`), ID: json.RawMessage(`"h"`)}
	out, err := e.s.Complete(e.ctx, "c1", "h", "d1", resp, 5*time.Second, "")
	if err != nil || out != mailbox.OutcomeTimeout {
		t.Fatalf("Complete held past the deadline = %v, %v; want timeout", out, err)
	}
	got := e.get("c1", "h")
	if got.Status != protocol.StatusTimeout || len(got.Late) == 0 {
		t.Errorf("after a late answer: %s late %q; want timeout with the answer kept", got.Status, got.Late)
	}
	// In time: held long enough that it reached the edge before the
	// deadline.
	e.sent(cmd(t, "c1", "d1", `"i"`, ``))
	es, err = e.s.Fetch(e.ctx, "d1", "", 1)
	if err != nil || len(es) != 1 {
		t.Fatalf("Fetch = %d, %v", len(es), err)
	}
	if err := e.s.Ack(e.ctx, "d1", es[0]); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(40 * time.Second)
	resp.ID = json.RawMessage(`"i"`)
	if out, err := e.s.Complete(e.ctx, "c1", "i", "d1", resp, 20*time.Second, ""); err != nil || out != mailbox.OutcomeSucceeded {
		t.Errorf("Complete held from before the deadline = %v, %v; want succeeded", out, err)
	}
}

// With 16 partitions, a client and a device in different partitions still
// round-trip: reserve, dispatch, fetch, ack, complete, and the result is
// in the client's mailbox.
func TestCrossPartitionRoundTrip(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{Partitions: 16})
	client, device := "c1", "d1"
	for i := 0; e.s.PartitionOf(client) == e.s.PartitionOf(device); i++ {
		device = "d" + string(rune('a'+i))
	}
	rec := e.sent(cmd(t, client, device, `"x"`, `{"a":1}`))
	if rec.Status != protocol.StatusSent {
		t.Fatalf("status %s, want sent", rec.Status)
	}
	es, err := e.s.Fetch(e.ctx, device, "", 10)
	if err != nil || len(es) != 1 || es[0].Client != client || es[0].MsgKey != "x" {
		t.Fatalf("Fetch(%s) = %+v, %v; want the command", device, es, err)
	}
	if err := e.s.Ack(e.ctx, device, es[0]); err != nil {
		t.Fatal(err)
	}
	resp := &protocol.Response{JSONRPC: "2.0", Result: json.RawMessage(`{"ok":true}`), ID: json.RawMessage(`"x"`)}
	if out, err := e.s.Complete(e.ctx, client, "x", device, resp, 0, ""); err != nil || out != mailbox.OutcomeSucceeded {
		t.Fatalf("Complete = %v, %v; want succeeded", out, err)
	}
	rs := e.results(client)
	if len(rs) != 1 || string(rs[0].ID) != `"x"` || rs[0].Error != nil {
		t.Fatalf("client mailbox = %+v, want the one result of x", rs)
	}
	if got := e.get(client, "x"); got.Status != protocol.StatusSucceeded {
		t.Errorf("Get = %s, want succeeded", got.Status)
	}
}

// failStep makes every call of one step fail (the relay step by
// default), as a Redis that went away right after the step before it
// would.
type failStep struct{ step string }

// failRelay fails the relay step.
var failRelay = failStep{"relay"}

func (failStep) DialHook(next redis.DialHook) redis.DialHook { return next }
func (f failStep) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if f.is(cmd) {
			err := errors.New("injected: connection lost")
			cmd.SetErr(err)
			return err
		}
		return next(ctx, cmd)
	}
}
func (f failStep) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, cmd := range cmds {
			if f.is(cmd) {
				err := errors.New("injected: connection lost")
				cmd.SetErr(err)
				return err
			}
		}
		return next(ctx, cmds)
	}
}

// is reports whether cmd calls the step (alone, or batched: the step's
// name is then an argument).
func (f failStep) is(cmd redis.Cmder) bool {
	if !strings.HasPrefix(strings.ToLower(cmd.Name()), "fcall") {
		return false
	}
	for _, a := range cmd.Args() {
		if s, ok := a.(string); ok && (s == f.step || strings.HasSuffix(s, "_"+f.step)) {
			return true
		}
	}
	return false
}

// A relay that fails right after the final step leaves the result in the
// device partition's outbox: Totals reports it with its age, and the
// partition owner's RelayOutbox delivers it once it is older than the
// given age, exactly once.
func TestOutboxLeftoverRelayedByOwner(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	e.queued(cmd(t, "c1", "d1", `"o"`, ``))

	broken := testenv.Redis(t)
	broken.AddHook(failRelay)
	s := mailbox.New(broken, e.s.Keys().NS, mailbox.Options{Partitions: 1, Now: e.clock.Now, Logger: testenv.Logger(t)})
	if _, err := s.Cancel(e.ctx, "c1", "o", ""); err != nil {
		t.Fatalf("Cancel = %v, want nil (the relay failure is logged, not returned)", err)
	}
	if rs := e.results("c1"); len(rs) != 0 {
		t.Fatalf("client results = %d before any relay, want 0", len(rs))
	}

	e.clock.Add(5 * time.Second)
	tot, err := e.s.Totals(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The entry's ID is Redis's time at the step, a few ms before the
	// test clock's instant.
	if len(tot.Outbox) != 1 || tot.Outbox[0].Partition != 0 || tot.Outbox[0].Entries != 1 ||
		tot.Outbox[0].Oldest < 4*time.Second || tot.Outbox[0].Oldest > 5*time.Second {
		t.Errorf("Totals.Outbox = %+v, want partition 0 with 1 entry about 5s old", tot.Outbox)
	}
	if n, err := e.s.RelayOutbox(e.ctx, 0, 10*time.Second, 100); err != nil || n != 0 {
		t.Errorf("RelayOutbox(age 10s) = %d, %v; want 0 (the entry is younger)", n, err)
	}
	if n, err := e.s.RelayOutbox(e.ctx, 0, 3*time.Second, 100); err != nil || n != 1 {
		t.Errorf("RelayOutbox(age 3s) = %d, %v; want 1", n, err)
	}
	rs := e.results("c1")
	if len(rs) != 1 || rs[0].Error == nil || rs[0].Error.Code != protocol.CodeCancelled {
		t.Errorf("client results = %+v, want one -32004", rs)
	}
	if n, err := e.s.RelayOutbox(e.ctx, 0, 0, 100); err != nil || n != 0 {
		t.Errorf("RelayOutbox again = %d, %v; want 0", n, err)
	}
	if tot, _ := e.s.Totals(e.ctx); len(tot.Outbox) != 0 {
		t.Errorf("Totals.Outbox after the relay = %+v, want none", tot.Outbox)
	}
}
