package mailbox_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// gatewayCode returns the code of a gateway error response, failing when
// it is not one.
func gatewayCode(t *testing.T, r protocol.Response) int {
	t.Helper()
	if r.Error == nil || r.Error.Source() != protocol.SourceGateway {
		t.Fatalf("response %+v is not a gateway error", r)
	}
	return r.Error.Code
}

func TestDispatch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{MailboxCap: 2})

	c := e.queued(cmd(t, "c1", "d1", `"s1"`, `{"a":1}`))
	env := envelope(t, c)
	got, err := e.s.Dispatch(e.ctx, env, "node-d", "node-c")
	if err != nil || got != mailbox.OutcomeSent {
		t.Fatalf("Dispatch = %v, %v, want sent", got, err)
	}
	for i := range 2 { // a redelivery of the same message
		if got, err := e.s.Dispatch(e.ctx, env, "node-d", "node-c"); err != nil || got != mailbox.OutcomeNoop {
			t.Errorf("Dispatch again #%d = %v, %v, want noop", i+1, got, err)
		}
	}
	if n, _ := e.s.Len(e.ctx, "d1"); n != 1 {
		t.Errorf("device mailbox holds %d entries after 3 dispatches, want 1", n)
	}
	rec := e.get("c1", "s1")
	if rec.Status != protocol.StatusSent || !rec.SentAt.Equal(e.clock.Now()) {
		t.Errorf("after Dispatch: status %s sent_at %v, want sent at %v", rec.Status, rec.SentAt, e.clock.Now())
	}
	if sc, ok := e.timerScore("d", "c1", "s1"); !ok || int64(sc) != rec.DeliverBy.UnixMilli() {
		t.Errorf("deliver-by timer = %v, %v; want %d", sc, ok, rec.DeliverBy.UnixMilli())
	}
	es, err := e.s.Fetch(e.ctx, "d1", "", 10)
	if err != nil || len(es) != 1 {
		t.Fatalf("Fetch = %d entries, %v", len(es), err)
	}
	var req struct {
		Method string          `json:"method"`
		Params json.RawMessage `json:"params"`
		ID     string          `json:"id"`
	}
	if err := json.Unmarshal(es[0].Payload, &req); err != nil {
		t.Fatal(err)
	}
	if req.ID != "c1:s1" || req.Method != "reboot" || string(req.Params) != `{"a":1}` {
		t.Errorf("device request = %s, want id c1:s1, method reboot, params {\"a\":1}", es[0].Payload)
	}
	if es[0].Topic != "devices/d1/commands" || es[0].Client != "c1" || es[0].MsgKey != "s1" || !es[0].Expires.Equal(rec.DeliverBy) {
		t.Errorf("entry = %+v", es[0])
	}

	// A pending record (the worker beat MarkQueued) is queued, then sent.
	_, p, err := e.s.Reserve(e.ctx, cmd(t, "c1", "d2", `"p1"`, ``))
	if err != nil {
		t.Fatal(err)
	}
	if got, err := e.s.Dispatch(e.ctx, envelope(t, p), "node-d", "node-c"); err != nil || got != mailbox.OutcomeSent {
		t.Errorf("Dispatch of a pending record = %v, %v, want sent", got, err)
	}
	if rec := e.get("c1", "p1"); rec.QueuedAt.IsZero() || e.pttl(e.keys.Command("c1", "p1")) != -1 {
		t.Errorf("pending record dispatched: queued_at %v, pttl %v; want queued and no expiry", rec.QueuedAt, e.pttl(e.keys.Command("c1", "p1")))
	}
	if err := e.s.MarkQueued(e.ctx, "d1", "c1", "p1"); err != nil {
		t.Errorf("MarkQueued after Dispatch: %v", err)
	}
	if rec := e.get("c1", "p1"); rec.Status != protocol.StatusSent {
		t.Errorf("MarkQueued after Dispatch: status %s, want sent", rec.Status)
	}

	// Unknown record, other device: noop.
	ghost := cmd(t, "c1", "d1", `"ghost"`, ``)
	if got, err := e.s.Dispatch(e.ctx, envelope(t, ghost), "node-d", "node-c"); err != nil || got != mailbox.OutcomeNoop {
		t.Errorf("Dispatch of an unknown command = %v, %v, want noop", got, err)
	}
	other := e.queued(cmd(t, "c1", "d1", `"o"`, ``))
	oenv := envelope(t, other)
	oenv.Device = "d9"
	if got, err := e.s.Dispatch(e.ctx, oenv, "node-d", "node-c"); err != nil || got != mailbox.OutcomeNoop {
		t.Errorf("Dispatch naming another device = %v, %v, want noop", got, err)
	}

	// Mailbox full (cap 2): rejected, -32005 to the client.
	if _, err := e.s.Put(e.ctx, "d1", "devices/d1/commands", []byte("x"), e.clock.Now().Add(time.Hour), ""); err != nil {
		t.Fatal(err)
	}
	if got, err := e.s.Dispatch(e.ctx, oenv, "node-d", "node-c"); err != nil || got != mailbox.OutcomeNoop {
		t.Errorf("Dispatch naming another device = %v, %v, want noop", got, err)
	}
	if got, err := e.s.Dispatch(e.ctx, envelope(t, other), "node-d", "node-c"); err != nil || got != mailbox.OutcomeRejected {
		t.Errorf("Dispatch into a full mailbox = %v, %v, want rejected", got, err)
	}
	if n, _ := e.s.Len(e.ctx, "d1"); n != 2 {
		t.Errorf("full mailbox holds %d entries, want 2", n)
	}
	if rec := e.get("c1", "o"); rec.Status != protocol.StatusRejected || rec.FinishedAt.IsZero() {
		t.Errorf("rejected record: %s finished %v", rec.Status, rec.FinishedAt)
	}
	if d := e.pttl(e.keys.Command("c1", "o")); d <= 23*time.Hour {
		t.Errorf("final record PTTL = %v, want the retention (24h)", d)
	}

	// Past deliver-by: expired, -32002.
	late := e.queued(cmd(t, "c1", "d3", `"late"`, ``))
	e.clock.Add(time.Hour)
	if got, err := e.s.Dispatch(e.ctx, envelope(t, late), "node-d", "node-c"); err != nil || got != mailbox.OutcomeExpired {
		t.Errorf("Dispatch after deliver-by = %v, %v, want expired", got, err)
	}
	if n, _ := e.s.Len(e.ctx, "d3"); n != 0 {
		t.Errorf("expired command left %d mailbox entries", n)
	}

	rs := e.results("c1")
	codes := map[string]int{}
	for _, r := range rs {
		codes[string(r.ID)] = gatewayCode(t, r)
	}
	want := map[string]int{`"o"`: protocol.CodeRejected, `"late"`: protocol.CodeExpired}
	if fmt.Sprint(codes) != fmt.Sprint(want) {
		t.Errorf("client results = %v, want %v", codes, want)
	}
}

func TestFetch(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	now := e.clock.Now()
	put := func(topic string, expires time.Time) string {
		id, err := e.s.Put(e.ctx, "d1", topic, []byte(topic), expires, "")
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	put("m1", now.Add(time.Hour))
	e.sent(cmd(t, "c1", "d1", `1`, ``))
	put("expired", now.Add(time.Second))
	e.sent(cmd(t, "c1", "d1", `2`, ``))
	e.sent(cmd(t, "c1", "d1", `3`, ``))
	put("m2", now.Add(time.Hour))
	// Command 2 becomes final behind the store's back (entry left over).
	if err := e.rdb.HSet(e.ctx, e.keys.Command("c1", "2"), "status", "succeeded").Err(); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(2 * time.Second)

	es, err := e.s.Fetch(e.ctx, "d1", "", 2)
	if err != nil {
		t.Fatal(err)
	}
	es2, err := e.s.Fetch(e.ctx, "d1", es[len(es)-1].ID, 10)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, en := range append(es, es2...) {
		name := en.Topic
		if en.MsgKey != "" {
			name = "cmd" + en.MsgKey
		}
		got = append(got, name)
	}
	if want := "[m1 cmd1 cmd3 m2]"; fmt.Sprint(got) != want {
		t.Errorf("Fetch in two pages = %v, want %s", got, want)
	}
	if n, _ := e.s.Len(e.ctx, "d1"); n != 4 {
		t.Errorf("after Fetch the mailbox holds %d entries, want 4 (expired and final ones deleted)", n)
	}
	r3 := e.get("c1", "3")
	if r3.Attempts != 1 || !r3.SendingAt.Equal(e.clock.Now()) {
		t.Errorf("after one Fetch: attempts %d sending_at %v, want 1 at %v", r3.Attempts, r3.SendingAt, e.clock.Now())
	}
	e.clock.Add(time.Second)
	if _, err := e.s.Fetch(e.ctx, "d1", "0", 10); err != nil { // a reconnect: publish again
		t.Fatal(err)
	}
	r3 = e.get("c1", "3")
	if r3.Attempts != 2 || !r3.SendingAt.Equal(e.clock.Now().Add(-time.Second)) {
		t.Errorf("after two Fetches: attempts %d sending_at %v, want 2, first stamp kept", r3.Attempts, r3.SendingAt)
	}
	if _, err := e.s.Cancel(e.ctx, "c1", "3", "node-c"); !errors.Is(err, mailbox.ErrState) {
		t.Errorf("Cancel after Fetch = %v, want ErrState (on the wire)", err)
	}
	if es, err := e.s.Fetch(e.ctx, "nobody", "", 10); err != nil || len(es) != 0 {
		t.Errorf("Fetch of an empty mailbox = %v, %v", es, err)
	}
}

func TestAckAndComplete(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	fetch := func(device string) mailbox.Entry {
		t.Helper()
		es, err := e.s.Fetch(e.ctx, device, "", 1)
		if err != nil || len(es) != 1 {
			t.Fatalf("Fetch(%s) = %d entries, %v", device, len(es), err)
		}
		return es[0]
	}

	// Ack: sent → delivered, answer-within timer, deliver-by timer gone.
	e.sent(cmd(t, "c1", "d1", `"a"`, ``))
	en := fetch("d1")
	e.clock.Add(time.Second)
	if err := e.s.Ack(e.ctx, "d1", en); err != nil {
		t.Fatal(err)
	}
	rec := e.get("c1", "a")
	if rec.Status != protocol.StatusDelivered || !rec.DeliveredAt.Equal(e.clock.Now()) {
		t.Errorf("after Ack: %s delivered_at %v", rec.Status, rec.DeliveredAt)
	}
	// The answer timer fires one grace after the timeout (newEnv's grace: 1 ms).
	if sc, ok := e.timerScore("a", "c1", "a"); !ok || int64(sc) != e.clock.Now().Add(30*time.Second+time.Millisecond).UnixMilli() {
		t.Errorf("answer-within timer = %v, %v; want now+30s+1ms", sc, ok)
	}
	if _, ok := e.timerScore("d", "c1", "a"); ok {
		t.Error("deliver-by timer still armed after Ack")
	}
	if n, _ := e.s.Len(e.ctx, "d1"); n != 1 {
		t.Errorf("mailbox holds %d entries after Ack, want 1 (it stays until the command is final)", n)
	}

	// Complete from delivered.
	resp := protocol.NewResult(json.RawMessage(`"c1:a"`), json.RawMessage(`{"ok":true}`))
	if got, err := e.s.Complete(e.ctx, "c1", "a", "d1", resp, 0, "node-c"); err != nil || got != mailbox.OutcomeSucceeded {
		t.Errorf("Complete from delivered = %v, %v, want succeeded", got, err)
	}
	if _, ok := e.timerScore("a", "c1", "a"); ok {
		t.Error("answer-within timer still armed after Complete")
	}

	// Complete from sent (answer before PUBACK): fills DeliveredAt, removes
	// the entry; the PUBACK afterwards only deletes.
	e.sent(cmd(t, "c1", "d2", `7`, ``))
	en = fetch("d2")
	e.clock.Add(time.Second)
	fail := protocol.NewErrorResponse(json.RawMessage(`"c1:7"`), &protocol.Error{Code: -1, Message: "busy"})
	if got, err := e.s.Complete(e.ctx, "c1", "7", "d2", fail, 0, "node-c"); err != nil || got != mailbox.OutcomeFailed {
		t.Errorf("Complete from sent = %v, %v, want failed", got, err)
	}
	rec = e.get("c1", "7")
	if rec.DeliveredAt.IsZero() || rec.FinishedAt.IsZero() {
		t.Errorf("Complete from sent: delivered_at %v finished_at %v, want both", rec.DeliveredAt, rec.FinishedAt)
	}
	if n, _ := e.s.Len(e.ctx, "d2"); n != 0 {
		t.Errorf("mailbox holds %d entries after Complete, want 0", n)
	}
	if err := e.s.Ack(e.ctx, "d2", en); err != nil {
		t.Fatal(err)
	}
	if rec := e.get("c1", "7"); rec.Status != protocol.StatusFailed {
		t.Errorf("PUBACK after final changed status to %s", rec.Status)
	}

	// Wrong device, unknown command, not yet sent: nothing changes, and
	// the outcome says why.
	q := e.queued(cmd(t, "c1", "d3", `"q"`, ``))
	for _, tt := range []struct {
		name, key, device string
		want              mailbox.Outcome
	}{
		{"wrong device", "a", "d9", mailbox.OutcomeOtherDevice},
		{"unknown command", "nope", "d1", mailbox.OutcomeUnknown},
		{"queued command", q.ID.Key(), "d3", mailbox.OutcomeNotSent},
	} {
		if got, err := e.s.Complete(e.ctx, "c1", tt.key, tt.device, resp, 0, "node-c"); err != nil || got != tt.want {
			t.Errorf("Complete(%s) = %v, %v, want %v", tt.name, got, err, tt.want)
		}
	}

	rs := e.results("c1")
	if len(rs) != 2 {
		t.Fatalf("client results = %d, want 2", len(rs))
	}
	if string(rs[0].ID) != `"a"` || string(rs[0].Result) != `{"ok":true}` {
		t.Errorf("first result = %+v, want id \"a\" and the device's result", rs[0])
	}
	if string(rs[1].ID) != `7` || rs[1].Error == nil || rs[1].Error.Code != -1 || rs[1].Error.Message != "busy" {
		t.Errorf("second result = %+v, want id 7 and the device's error", rs[1])
	}
	if rs[0].Error != nil || rs[1].Error.Source() == protocol.SourceGateway {
		t.Errorf("device results look like gateway errors: %+v", rs)
	}
	if rec := e.get("c1", "a"); string(rec.Response) == "" {
		t.Error("Response not recorded on the command")
	}
}

func TestLateAnswerAfterTimeout(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	e.sent(cmd(t, "c1", "d1", `"x"`, ``))
	es, _ := e.s.Fetch(e.ctx, "d1", "", 1)
	if err := e.s.Ack(e.ctx, "d1", es[0]); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(31 * time.Second)
	if n, err := e.s.FireTimers(e.ctx, 10, func(string) string { return "node-c" }); err != nil || n != 1 {
		t.Fatalf("FireTimers = %d, %v, want 1", n, err)
	}
	if rec := e.get("c1", "x"); rec.Status != protocol.StatusTimeout {
		t.Fatalf("status %s, want timeout", rec.Status)
	}
	resp := protocol.NewResult(json.RawMessage(`"c1:x"`), json.RawMessage(`1`))
	for i := range 2 {
		if got, err := e.s.Complete(e.ctx, "c1", "x", "d1", resp, 0, "node-c"); err != nil || got != mailbox.OutcomeLate {
			t.Errorf("late Complete #%d = %v, %v, want late", i+1, got, err)
		}
	}
	rec := e.get("c1", "x")
	if rec.Status != protocol.StatusTimeout || len(rec.Late) == 0 {
		t.Errorf("after a late answer: status %s late %s, want timeout with the answer recorded", rec.Status, rec.Late)
	}
	rs := e.results("c1")
	if len(rs) != 1 || gatewayCode(t, rs[0]) != protocol.CodeTimeout {
		t.Errorf("client results = %+v, want exactly one -32001", rs)
	}
}

func TestCancel(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})

	// Sent, not on the wire: cancelled, entry and timers gone, -32004.
	e.sent(cmd(t, "c1", "d1", `"a"`, ``))
	got, err := e.s.Cancel(e.ctx, "c1", "a", "node-c")
	if err != nil || got.Status != protocol.StatusCancelled {
		t.Fatalf("Cancel = %v, %v, want cancelled", got, err)
	}
	if n, _ := e.s.Len(e.ctx, "d1"); n != 0 {
		t.Errorf("device mailbox holds %d entries after Cancel, want 0", n)
	}
	if _, ok := e.timerScore("d", "c1", "a"); ok {
		t.Error("deliver-by timer still armed after Cancel")
	}
	if d := e.pttl(e.keys.Command("c1", "a")); d <= 0 {
		t.Errorf("cancelled record PTTL = %v, want retention", d)
	}
	rs := e.results("c1")
	if len(rs) != 1 || gatewayCode(t, rs[0]) != protocol.CodeCancelled || string(rs[0].ID) != `"a"` {
		t.Errorf("client results = %+v, want one -32004 for \"a\"", rs)
	}
	if string(got.Response) == "" {
		t.Error("Cancel returned no Response")
	}

	// Queued (still in RabbitMQ): cancelled, and the later Dispatch is a noop.
	q := e.queued(cmd(t, "c1", "d1", `"q"`, ``))
	if _, err := e.s.Cancel(e.ctx, "c1", "q", "node-c"); err != nil {
		t.Fatal(err)
	}
	if out, err := e.s.Dispatch(e.ctx, envelope(t, q), "node-d", "node-c"); err != nil || out != mailbox.OutcomeNoop {
		t.Errorf("Dispatch after Cancel = %v, %v, want noop", out, err)
	}

	// On the wire, final, pending, missing.
	e.sent(cmd(t, "c1", "d1", `"w"`, ``))
	if _, err := e.s.Fetch(e.ctx, "d1", "", 10); err != nil {
		t.Fatal(err)
	}
	_, _, _ = e.s.Reserve(e.ctx, cmd(t, "c1", "d1", `"p"`, ``))
	for _, tt := range []struct {
		key        string
		wantErr    error
		wantStatus protocol.Status
	}{
		{"w", mailbox.ErrState, protocol.StatusSent},
		{"a", mailbox.ErrState, protocol.StatusCancelled},
		{"p", mailbox.ErrState, protocol.StatusPending},
		{"missing", mailbox.ErrNotFound, ""},
	} {
		got, err := e.s.Cancel(e.ctx, "c1", tt.key, "node-c")
		if !errors.Is(err, tt.wantErr) {
			t.Errorf("Cancel(%s) error = %v, want %v", tt.key, err, tt.wantErr)
			continue
		}
		if tt.wantStatus != "" && (got == nil || got.Status != tt.wantStatus) {
			t.Errorf("Cancel(%s) returned %+v, want the command with status %s", tt.key, got, tt.wantStatus)
		}
	}
	if rs := e.results("c1"); len(rs) != 2 {
		t.Errorf("client results = %d, want 2 (refused cancels add none)", len(rs))
	}
}

func TestFireTimersOnTheWire(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	owner := func(string) string { return "node-c" }
	e.sent(cmd(t, "c1", "d1", `"w"`, ``)) // timeout 30s, expires_in 1h
	e.sent(cmd(t, "c1", "d1", `"idle"`, ``))
	es, err := e.s.Fetch(e.ctx, "d1", "", 1) // only "w" goes on the wire
	if err != nil || len(es) != 1 || es[0].MsgKey != "w" {
		t.Fatalf("Fetch = %+v, %v", es, err)
	}
	if n, err := e.s.FireTimers(e.ctx, 10, owner); err != nil || n != 0 {
		t.Errorf("FireTimers before any deadline = %d, %v, want 0", n, err)
	}
	e.clock.Add(time.Hour)
	n, outcomes, err := e.s.FireTimersOutcomes(e.ctx, 10, owner)
	if err != nil || n != 2 {
		t.Errorf("FireTimers at deliver-by = %d, %v, want 2", n, err)
	}
	if got, want := fmt.Sprint(outcomes), "map[expired:1 rearmed:1]"; got != want {
		t.Errorf("outcomes at deliver-by = %s, want %s", got, want)
	}
	if rec := e.get("c1", "idle"); rec.Status != protocol.StatusExpired {
		t.Errorf("command not on the wire: %s, want expired", rec.Status)
	}
	if rec := e.get("c1", "w"); rec.Status != protocol.StatusSent {
		t.Errorf("command on the wire: %s, want still sent", rec.Status)
	}
	e.clock.Add(29 * time.Second)
	if n, _ := e.s.FireTimers(e.ctx, 10, owner); n != 0 {
		t.Errorf("FireTimers before the re-armed deadline = %d, want 0", n)
	}
	e.clock.Add(2 * time.Second)
	if n, _ := e.s.FireTimers(e.ctx, 10, owner); n != 1 {
		t.Errorf("FireTimers after the re-armed deadline = %d, want 1", n)
	}
	if rec := e.get("c1", "w"); rec.Status != protocol.StatusTimeout {
		t.Errorf("command on the wire: %s, want timeout", rec.Status)
	}
	rs := e.results("c1")
	if len(rs) != 2 || gatewayCode(t, rs[0]) != protocol.CodeExpired || gatewayCode(t, rs[1]) != protocol.CodeTimeout {
		t.Errorf("client results = %+v, want -32002 then -32001", rs)
	}
	if n, _ := e.rdb.ZCard(e.ctx, e.keys.Timers()).Result(); n != 0 {
		t.Errorf("%d timers left", n)
	}
}

func TestFireTimersExactlyOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	const n, workers = 200, 4
	for i := range n {
		e.sent(cmd(t, "c1", fmt.Sprintf("d%d", i%7), fmt.Sprint(i+1), ``))
	}
	e.clock.Add(2 * time.Hour)
	var wg sync.WaitGroup
	fired := make([]int, workers)
	errs := make([]error, workers)
	for w := range workers {
		wg.Go(func() {
			for {
				k, err := e.s.FireTimers(e.ctx, 50, func(string) string { return "node-c" })
				fired[w] += k
				if err != nil {
					errs[w] = err
					return
				}
				if k == 0 {
					return
				}
			}
		})
	}
	wg.Wait()
	total := 0
	for w := range workers {
		if errs[w] != nil {
			t.Errorf("worker %d: %v", w, errs[w])
		}
		total += fired[w]
	}
	if total != n {
		t.Errorf("%d workers fired %d timers in total (%v), want %d", workers, total, fired, n)
	}
	if rs := e.results("c1"); len(rs) != n {
		t.Errorf("client results = %d, want %d (one per command)", len(rs), n)
	}
	if left, _ := e.rdb.ZCard(e.ctx, e.keys.Timers()).Result(); left != 0 {
		t.Errorf("%d timers left", left)
	}
}

func TestMarkDeadAndReplay(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	e.queued(cmd(t, "c1", "d1", `"a"`, ``))
	e.queued(cmd(t, "c1", "d1", `"b"`, ``))
	e.clock.Add(time.Millisecond)
	if _, _, err := e.s.Reserve(e.ctx, cmd(t, "c1", "d1", `"p"`, ``)); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		key  string
		want mailbox.Outcome
	}{
		{"a", mailbox.OutcomeDead},
		{"b", mailbox.OutcomeDead},
		{"p", mailbox.OutcomeDead},
		{"a", mailbox.OutcomeNoop}, // already final
		{"missing", mailbox.OutcomeNoop},
	} {
		e.clock.Add(time.Millisecond)
		if got, err := e.s.MarkDead(e.ctx, "d1", "c1", tt.key, "delivery limit reached", "node-c"); err != nil || got != tt.want {
			t.Errorf("MarkDead(%s) = %v, %v, want %v", tt.key, got, err, tt.want)
		}
	}
	if _, ok := e.timerScore("d", "c1", "p"); ok {
		t.Error("deliver-by timer of a dead command still armed")
	}
	rs := e.results("c1")
	if len(rs) != 3 || gatewayCode(t, rs[0]) != protocol.CodeDead {
		t.Errorf("client results = %+v, want three -32003", rs)
	}

	list, next, err := e.s.DeadList(e.ctx, 2, "")
	if err != nil || len(list) != 2 || next == "" || list[0].ID.Key() != "p" || list[1].ID.Key() != "b" {
		t.Fatalf("DeadList page 1 = %d, %q, %v", len(list), next, err)
	}
	if list[0].Reason != "delivery limit reached" {
		t.Errorf("dead reason = %q", list[0].Reason)
	}
	list, next, err = e.s.DeadList(e.ctx, 2, next)
	if err != nil || len(list) != 1 || next != "" || list[0].ID.Key() != "a" {
		t.Fatalf("DeadList page 2 = %d, %q, %v", len(list), next, err)
	}

	e.clock.Add(time.Minute)
	rec, err := e.s.ReplayDead(e.ctx, "c1", "a")
	if err != nil || rec.Status != protocol.StatusQueued || !rec.SentAt.IsZero() || len(rec.Response) != 0 {
		t.Fatalf("ReplayDead = %+v, %v; want queued, cleared", rec, err)
	}
	if !rec.DeliverBy.Equal(e.clock.Now().Add(time.Hour)) {
		t.Errorf("replayed deliver-by = %v, want now+1h", rec.DeliverBy)
	}
	if d := e.pttl(e.keys.Command("c1", "a")); d != -1 {
		t.Errorf("replayed record PTTL = %v, want none", d)
	}
	if out, err := e.s.Dispatch(e.ctx, envelope(t, rec), "node-d", "node-c"); err != nil || out != mailbox.OutcomeSent {
		t.Errorf("Dispatch after replay = %v, %v, want sent", out, err)
	}
	if _, err := e.s.ReplayDead(e.ctx, "c1", "a"); !errors.Is(err, mailbox.ErrState) {
		t.Errorf("ReplayDead of a sent command = %v, want ErrState", err)
	}
	if _, err := e.s.ReplayDead(e.ctx, "c1", "missing"); !errors.Is(err, mailbox.ErrNotFound) {
		t.Errorf("ReplayDead of a missing command = %v, want ErrNotFound", err)
	}
	tot, err := e.s.Totals(e.ctx)
	if err != nil || tot.Dead != 2 {
		t.Errorf("Totals.Dead = %d, %v, want 2", tot.Dead, err)
	}
}

func TestSignals(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	ps := subscribeWake(t, e, "owner")
	live := subscribeWake(t, e, "live")
	recv := func(p *redis.PubSub) string {
		t.Helper()
		// The identities of its records (a Put's carries its entry).
		ws, ok := receiveWake(t, p, 3*time.Second)
		if !ok {
			return "(nothing)"
		}
		var ids []string
		for _, w := range ws {
			ids = append(ids, w.Identity)
		}
		return strings.Join(ids, ",")
	}
	put := func(identity, owner string) {
		t.Helper()
		if _, err := e.s.Put(e.ctx, identity, "t", []byte("p"), time.Time{}, owner); err != nil {
			t.Fatal(err)
		}
	}
	pending := func(node string) []string {
		t.Helper()
		ids, err := e.s.TakePending(e.ctx, node, 100)
		if err != nil {
			t.Fatal(err)
		}
		return ids
	}

	// No session: the owner.
	put("d1", "owner")
	if got := recv(ps); got != "d1" {
		t.Errorf("owner woken for %q, want d1", got)
	}
	if got := pending("owner"); fmt.Sprint(got) != "[d1]" {
		t.Errorf("owner pending = %v, want [d1]", got)
	}
	if got := pending("owner"); len(got) != 0 {
		t.Errorf("owner pending after TakePending = %v, want empty", got)
	}

	// A live session on another node than the owner: both are signalled
	// (a ring change may be under way).
	if err := e.rdb.Set(e.ctx, e.keys.RingNode("live"), "mqtt://x", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.s.SetSession(e.ctx, "d1", "live"); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.s.SessionNode(e.ctx, "d1"); n != "live" {
		t.Errorf("SessionNode = %q, want live", n)
	}
	put("d1", "owner")
	if got := recv(live); got != "d1" {
		t.Errorf("live node woken for %q, want d1", got)
	}
	if got := recv(ps); got != "d1" {
		t.Errorf("owner woken for %q, want d1", got)
	}
	if got := pending("live"); fmt.Sprint(got) != "[d1]" {
		t.Errorf("live pending = %v, want [d1]", got)
	}
	if got := pending("owner"); fmt.Sprint(got) != "[d1]" {
		t.Errorf("owner pending = %v, want [d1]", got)
	}

	// The session's node lost its ring key (a heartbeat gap): it still
	// holds the session, so it is still signalled, and so is the owner.
	if err := e.rdb.Del(e.ctx, e.keys.RingNode("live")).Err(); err != nil {
		t.Fatal(err)
	}
	put("d1", "owner")
	if got := recv(live); got != "d1" {
		t.Errorf("session node without ring key woken for %q, want d1", got)
	}
	if got := recv(ps); got != "d1" {
		t.Errorf("owner woken for %q, want d1", got)
	}
	if got := pending("live"); fmt.Sprint(got) != "[d1]" {
		t.Errorf("live pending = %v, want [d1]", got)
	}
	_ = pending("owner")

	// The session is on the owner: one signal, not two. No owner given:
	// the session node alone.
	put("d1", "live")
	if got := recv(live); got != "d1" {
		t.Errorf("live node woken for %q, want d1", got)
	}
	put("d1", "")
	if got := recv(live); got != "d1" {
		t.Errorf("live node woken for %q, want d1", got)
	}
	put("d2", "owner") // a sentinel: the next message on live must be nothing
	if got := recv(ps); got != "d2" {
		t.Errorf("owner woken for %q, want d2", got)
	}
	// A sentinel on live: messages of one channel arrive in order, so the
	// next one must be the sentinel, not d1 again.
	if err := e.s.SetSession(e.ctx, "d9", "live"); err != nil {
		t.Fatal(err)
	}
	put("d9", "")
	if got := recv(live); got != "d9" {
		t.Errorf("live node woken for %q before the sentinel d9: one signal per node", got)
	}
	_ = pending("live")
	_ = pending("owner")

	// Sessions move and clear only on their own node.
	if err := e.s.SetSession(e.ctx, "d1", "other"); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.rdb.SIsMember(e.ctx, e.keys.NodeSessions("live"), "d1").Result(); n {
		t.Error("d1 still in the old node's sessions after moving")
	}
	if err := e.s.ClearSession(e.ctx, "d1", "live"); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.s.SessionNode(e.ctx, "d1"); n != "other" {
		t.Errorf("ClearSession by a stale node removed the session: %q", n)
	}
	if err := e.s.ClearSession(e.ctx, "d1", "other"); err != nil {
		t.Fatal(err)
	}
	if n, err := e.s.SessionNode(e.ctx, "d1"); n != "" || err != nil {
		t.Errorf("SessionNode after ClearSession = %q, %v", n, err)
	}

	// Dispatch signals the device's node; a final transition the client's.
	c := e.queued(cmd(t, "c1", "d2", `"s"`, ``))
	if _, err := e.s.Dispatch(e.ctx, envelope(t, c), "owner", "owner"); err != nil {
		t.Fatal(err)
	}
	if got := recv(ps); got != "d2" {
		t.Errorf("Dispatch woke the owner for %q, want d2", got)
	}
	if _, err := e.s.Cancel(e.ctx, "c1", "s", "owner"); err != nil {
		t.Fatal(err)
	}
	if got := recv(ps); got != "c1" {
		t.Errorf("Cancel woke the owner for %q, want c1", got)
	}
}

func TestPutFullAndTotals(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{MailboxCap: 3})
	now := e.clock.Now()
	for i := range 3 {
		exp := now.Add(time.Hour)
		if i == 0 {
			exp = now.Add(time.Second)
		}
		if _, err := e.s.Put(e.ctx, "d1", "t", []byte("p"), exp, ""); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.s.Put(e.ctx, "d1", "t", []byte("p"), now.Add(time.Hour), ""); !errors.Is(err, mailbox.ErrFull) {
		t.Errorf("Put into a full mailbox = %v, want ErrFull", err)
	}
	e.clock.Add(2 * time.Second) // the first entry expires: room again
	if _, err := e.s.Put(e.ctx, "d1", "t", []byte("p"), now.Add(time.Hour), ""); err != nil {
		t.Errorf("Put after an entry expired = %v, want room", err)
	}
	if d := e.pttl(e.keys.Mailbox("d1")); d <= 0 || d > time.Hour {
		t.Errorf("mailbox PTTL = %v, want about the latest entry's expiry", d)
	}
	if _, err := e.s.Put(e.ctx, "d2", "t", []byte("p"), time.Time{}, ""); err != nil {
		t.Fatal(err)
	}
	e.sent(cmd(t, "c1", "d3", `1`, ``))
	if _, err := e.s.Put(e.ctx, "d4", "t", []byte("p"), time.Time{}, ""); err != nil {
		t.Fatal(err)
	}
	es, _ := e.s.Fetch(e.ctx, "d4", "", 1)
	if err := e.s.Ack(e.ctx, "d4", es[0]); err != nil {
		t.Fatal(err)
	}
	got, err := e.s.Totals(e.ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Timers: the sent command's deliver-by timer and its claim's watchdog.
	want := mailbox.Totals{Mailboxes: 3, Entries: 5, Timers: 2, Dead: 0}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Totals = %+v, want %+v", got, want)
	}
	counts, err := e.s.StatusCounts(e.ctx, 5)
	if err != nil {
		t.Fatal(err)
	}
	if counts[protocol.StatusSent] != 1 || counts[protocol.StatusQueued] != 1 || counts[protocol.StatusPending] != 1 {
		t.Errorf("StatusCounts = %v, want pending, queued and sent 1", counts)
	}
}

func TestDispatchConcurrentRedeliveries(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	c := e.queued(cmd(t, "c1", "d1", `"x"`, ``))
	env := envelope(t, c)
	const n = 10
	var wg sync.WaitGroup
	outs := make([]mailbox.Outcome, n)
	for i := range n {
		wg.Go(func() {
			var err error
			if outs[i], err = e.s.Dispatch(e.ctx, env, "node-d", "node-c"); err != nil {
				t.Errorf("Dispatch: %v", err)
			}
		})
	}
	wg.Wait()
	count := map[mailbox.Outcome]int{}
	for _, o := range outs {
		count[o]++
	}
	if count[mailbox.OutcomeSent] != 1 || count[mailbox.OutcomeNoop] != n-1 {
		t.Errorf("%d concurrent Dispatch calls gave %v, want 1 sent and %d noop", n, count, n-1)
	}
	if l, _ := e.s.Len(e.ctx, "d1"); l != 1 {
		t.Errorf("device mailbox holds %d entries, want 1", l)
	}
}

func TestResultDroppedByFullClientMailbox(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{MailboxCap: 1})
	e.sent(cmd(t, "c1", "d1", `"x"`, ``))
	if _, err := e.s.Put(e.ctx, "c1", "clients/c1/results/d0", []byte("{}"), time.Time{}, ""); err != nil {
		t.Fatal(err)
	}
	got, err := e.s.Cancel(e.ctx, "c1", "x", "node-c")
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != protocol.StatusCancelled || !got.ResultDropped || len(got.Response) == 0 {
		t.Errorf("Cancel with a full client mailbox: status %s dropped %v response %s; want cancelled, dropped, response kept",
			got.Status, got.ResultDropped, got.Response)
	}
	if n, _ := e.s.Len(e.ctx, "c1"); n != 1 {
		t.Errorf("client mailbox holds %d entries, want 1 (the result was dropped)", n)
	}
	ev, err := e.s.EventCounts(e.ctx, 1)
	if err != nil || ev["result_dropped"] != 1 {
		t.Errorf("EventCounts = %v, %v; want result_dropped 1", ev, err)
	}
}

// TestFetchPageBehindStaleRun: more stale entries than one Fetch may skip
// lie in front of a live one. The first page comes back empty with more
// set (the stale entries it scanned are deleted); the next page has the
// live entry and more unset.
func TestFetchPageBehindStaleRun(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{MailboxCap: 5000})
	now := e.clock.Now()
	const stale = 1100 // above fetchScanMax + count
	_, err := e.rdb.Pipelined(e.ctx, func(p redis.Pipeliner) error {
		for range stale {
			p.XAdd(e.ctx, &redis.XAddArgs{
				Stream: e.keys.Mailbox("d1"),
				Values: []any{"t", "old", "p", "x", "x", now.Add(-time.Second).UnixMilli()},
			})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.Put(e.ctx, "d1", "live", []byte("live"), now.Add(time.Hour), ""); err != nil {
		t.Fatal(err)
	}

	var pages []string
	after := ""
	for range 5 {
		es, more, err := e.s.FetchPage(e.ctx, "d1", after, 32)
		if err != nil {
			t.Fatal(err)
		}
		var topics []string
		for _, en := range es {
			topics = append(topics, en.Topic)
			after = en.ID
		}
		pages = append(pages, fmt.Sprintf("%v more=%v", topics, more))
		if !more && len(es) < 32 {
			break
		}
	}
	if got, want := fmt.Sprint(pages), "[[] more=true [live] more=false]"; got != want {
		t.Errorf("pages = %s, want %s", got, want)
	}
	if n, _ := e.s.Len(e.ctx, "d1"); n != 1 {
		t.Errorf("mailbox holds %d entries after the pages, want 1 (the stale ones deleted)", n)
	}
}

// TestFireTimersUnsentAfterRearm: a command on the wire at its deliver-by
// gets an answer-within timer; handed back before it reached the device
// (Unsend), it ends as expired, not timeout, when that timer fires.
func TestFireTimersUnsentAfterRearm(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	owner := func(string) string { return "node-c" }
	e.sent(cmd(t, "c1", "d1", `"u"`, ``)) // timeout 30s, expires_in 1h
	es, err := e.s.Fetch(e.ctx, "d1", "", 1)
	if err != nil || len(es) != 1 {
		t.Fatalf("Fetch = %+v, %v", es, err)
	}
	e.clock.Add(time.Hour)
	if n, err := e.s.FireTimers(e.ctx, 10, owner); err != nil || n != 1 {
		t.Fatalf("FireTimers at deliver-by = %d, %v, want 1 (re-armed)", n, err)
	}
	if err := e.s.Unsend(e.ctx, "d1", es[0]); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(31 * time.Second)
	if n, err := e.s.FireTimers(e.ctx, 10, owner); err != nil || n != 1 {
		t.Fatalf("FireTimers at the re-armed deadline = %d, %v, want 1", n, err)
	}
	if rec := e.get("c1", "u"); rec.Status != protocol.StatusExpired {
		t.Errorf("status = %s, want expired (it never reached the device)", rec.Status)
	}
	if rs := e.results("c1"); len(rs) != 1 || gatewayCode(t, rs[0]) != protocol.CodeExpired {
		t.Errorf("client results = %+v, want one -32002", rs)
	}
	if n, _ := e.s.Len(e.ctx, "d1"); n != 0 {
		t.Errorf("device mailbox holds %d entries, want 0", n)
	}
	if n, _ := e.rdb.ZCard(e.ctx, e.keys.Timers()).Result(); n != 0 {
		t.Errorf("%d timers left", n)
	}
}

// Concurrent wake-ups are group-committed: every identity put reaches the
// node's wake channel (in messages that may carry many records) and its
// pending set, and the identities of one mailbox arrive in the order of
// their Puts.
func TestWakeCoalesced(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	ps := subscribeWake(t, e, "n1")
	const identities, each = 50, 4
	var wg sync.WaitGroup
	for i := range identities {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("d%d", i)
			for range each {
				if _, err := e.s.Put(e.ctx, id, "t", []byte("p"), time.Time{}, "n1"); err != nil {
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	seen := map[string]int{}
	last := map[string]string{} // the entry of each identity's latest wake-up
	records, messages := 0, 0
	for records < identities*each {
		ws, ok := receiveWake(t, ps, 5*time.Second)
		if !ok {
			t.Fatalf("got %d wake-ups of %d", records, identities*each)
		}
		messages++
		for _, w := range ws {
			seen[w.Identity]++
			records++
			if !w.Carried {
				t.Fatalf("the wake-up of a Put of %s carries no entry", w.Identity)
			}
			if mailbox.CompareIDs(w.Entry.ID, last[w.Identity]) <= 0 {
				t.Errorf("%s: wake-up of entry %s after that of %s, want the order of the Puts", w.Identity, w.Entry.ID, last[w.Identity])
			}
			last[w.Identity] = w.Entry.ID
		}
	}
	for i := range identities {
		if id := fmt.Sprintf("d%d", i); seen[id] != each {
			t.Errorf("%s woken %d times, want %d", id, seen[id], each)
		}
	}
	pending, err := e.s.TakePending(e.ctx, "n1", 1000)
	if err != nil || len(pending) != identities {
		t.Errorf("pending = %d identities, %v; want %d", len(pending), err, identities)
	}
	t.Logf("%d wake-ups in %d messages", records, messages)
}

// A Put's wake-up carries its entry and the mailbox's last entry before
// it, so that a session that has read up to there sends it without a
// read (mailbox.Wake.Next).
func TestPutWakeCarries(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	ps := subscribeWake(t, e, "n1")
	next := func() mailbox.Wake {
		t.Helper()
		ws, ok := receiveWake(t, ps, 3*time.Second)
		if !ok {
			t.Fatal("no wake-up")
		}
		if len(ws) != 1 {
			t.Fatalf("got %d records in a wake message, want 1", len(ws))
		}
		return ws[0]
	}
	exp := e.clock.Now().Add(time.Hour)
	tests := []struct {
		topic, payload string
		prev           int // index of the entry before it; -1: the mailbox was empty
	}{
		{"clients/c1/results/d", `{"a":1}`, -1},
		{"clients/c1/results/d", "two words\nand a line", 0},
		{"t", "", 1},
	}
	var ids []string
	var carried []mailbox.Entry
	for i, tt := range tests {
		id, err := e.s.Put(e.ctx, "c1", tt.topic, []byte(tt.payload), exp, "n1")
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
		w := next()
		carried = append(carried, w.Entry)
		want := mailbox.Wake{Identity: "c1", Carried: true,
			Entry: mailbox.AsRead(mailbox.Entry{ID: id, Topic: tt.topic, Payload: []byte(tt.payload), Expires: time.UnixMilli(exp.UnixMilli())})}
		if tt.prev >= 0 {
			want.Prev = ids[tt.prev]
		}
		if !reflect.DeepEqual(w, want) {
			t.Errorf("put %d: wake-up %+v, want %+v", i, w, want)
		}
		fetched, err := e.s.Fetch(e.ctx, "c1", w.Prev, 10)
		if err != nil || len(fetched) != 1 || fetched[0].ID != id || fetched[0].Topic != tt.topic || string(fetched[0].Payload) != tt.payload {
			t.Errorf("put %d: Fetch after Prev = %+v, %v; want the carried entry alone", i, fetched, err)
		}
	}
	// Emptied by the acks of the carried entries (deleted unread, as a
	// session acks what it sent from its wake-ups), the mailbox's next
	// entry has no entry before it.
	for _, c := range carried {
		if err := e.s.Ack(e.ctx, "c1", c); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := e.s.Put(e.ctx, "c1", "t", []byte("p"), exp, "n1"); err != nil {
		t.Fatal(err)
	}
	if w := next(); !w.Carried || w.Prev != "" {
		t.Errorf("wake-up after the mailbox emptied: carried %v, prev %q; want carried, prev \"\"", w.Carried, w.Prev)
	}
}

// Tails reads the last entry ID of each mailbox, "" for an empty one.
func TestTails(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{Partitions: 4})
	exp := e.clock.Now().Add(time.Hour)
	var last string
	for range 3 {
		id, err := e.s.Put(e.ctx, "t1", "t", []byte("p"), exp, "")
		if err != nil {
			t.Fatal(err)
		}
		last = id
	}
	one, err := e.s.Put(e.ctx, "t2", "t", []byte("p"), exp, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := e.s.Ack(e.ctx, "t2", mailbox.Entry{ID: one}); err != nil {
		t.Fatal(err)
	}
	got, err := e.s.Tails(e.ctx, []string{"t1", "t2", "t3"})
	if want := []string{last, "", ""}; err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("Tails = %q, %v; want %q", got, err, want)
	}
}

// An entry larger than a wake-up carries gets a plain wake-up.
func TestPutWakeLargeEntry(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	ps := subscribeWake(t, e, "n1")
	tests := []struct {
		size    int
		carried bool
	}{{8<<10 - 1, true}, {8 << 10, false}, {64 << 10, false}}
	for _, tt := range tests {
		if _, err := e.s.Put(e.ctx, "c1", "t", bytes.Repeat([]byte("x"), tt.size), time.Time{}, "n1"); err != nil {
			t.Fatal(err)
		}
		ws, ok := receiveWake(t, ps, 3*time.Second)
		if !ok {
			t.Fatalf("payload of %d bytes: no wake-up", tt.size)
		}
		if len(ws) != 1 || ws[0].Carried != tt.carried || ws[0].Identity != "c1" {
			t.Errorf("payload of %d bytes: %d records; want one for c1, carried %v", tt.size, len(ws), tt.carried)
		}
	}
}

// subscribeWake subscribes to node's wake channel, once Redis confirmed
// the subscription; it is closed when the test ends.
func subscribeWake(t *testing.T, e *env, node string) *redis.PubSub {
	t.Helper()
	ps := e.s.Wake(e.ctx, node)
	t.Cleanup(func() { ps.Close() })
	if _, err := ps.Receive(e.ctx); err != nil {
		t.Fatal(err)
	}
	return ps
}

// receiveWake returns the records of the next wake message on ps, or
// false when none comes within timeout; a malformed message fails the
// test.
func receiveWake(t *testing.T, ps *redis.PubSub, timeout time.Duration) ([]mailbox.Wake, bool) {
	t.Helper()
	select {
	case m := <-ps.Channel():
		ws, err := mailbox.ParseWake(m.Payload)
		if err != nil {
			t.Fatalf("ParseWake(%q): %v", m.Payload, err)
		}
		return ws, true
	case <-time.After(timeout):
		return nil, false
	}
}
