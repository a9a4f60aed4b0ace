package mailbox_test

// Regression tests of the review of the mailbox package; each names the
// finding it guards.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

func ownerC(string) string { return "node-c" }

// timers returns the timer members of one command.
func (e *env) timers(client, key string) []string {
	e.t.Helper()
	var out []string
	for _, kind := range []string{"d", "a"} {
		if _, ok := e.timerScore(kind, client, key); ok {
			out = append(out, kind)
		}
	}
	return out
}

func (e *env) record(client, key string) map[string]string {
	e.t.Helper()
	m, err := e.rdb.HGetAll(e.ctx, e.keys.Command(client, key)).Result()
	if err != nil {
		e.t.Fatal(err)
	}
	return m
}

func (e *env) fire() int {
	e.t.Helper()
	n, err := e.s.FireTimers(e.ctx, 1000, ownerC)
	if err != nil {
		e.t.Fatalf("FireTimers: %v", err)
	}
	return n
}

// Finding 1: a queued command whose AMQP message is lost expires at its
// deliver-by; a pending one too once past its lease; every non-final
// command has exactly one timer.
func TestWatchdogOfQueuedAndPending(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{Lease: 10 * time.Second})

	// The invariant along a full life.
	_, rec, err := e.s.Reserve(e.ctx, cmd(t, "c1", "d1", `"life"`, ``))
	if err != nil {
		t.Fatal(err)
	}
	want := func(step string, kinds ...string) {
		t.Helper()
		if got := e.timers("c1", "life"); !slices.Equal(got, kinds) {
			t.Errorf("after %s: timers %v, want %v", step, got, kinds)
		}
	}
	want("Reserve", "d")
	if sc, _ := e.timerScore("d", "c1", "life"); int64(sc) != rec.DeliverBy.UnixMilli() {
		t.Errorf("deliver-by timer at %d, want %d", int64(sc), rec.DeliverBy.UnixMilli())
	}
	if err := e.s.MarkQueued(e.ctx, "d1", "c1", "life"); err != nil {
		t.Fatal(err)
	}
	want("MarkQueued", "d")
	if out, err := e.s.Dispatch(e.ctx, envelope(t, e.get("c1", "life")), "node-d", "node-c"); err != nil || out != mailbox.OutcomeSent {
		t.Fatalf("Dispatch = %v, %v", out, err)
	}
	want("Dispatch", "d")
	es, err := e.s.Fetch(e.ctx, "d1", "", 10)
	if err != nil || len(es) != 1 {
		t.Fatalf("Fetch = %d, %v", len(es), err)
	}
	want("Fetch", "d")
	if err := e.s.Ack(e.ctx, "d1", es[0]); err != nil {
		t.Fatal(err)
	}
	want("Ack", "a")
	resp := protocol.NewResult(json.RawMessage(`"c1:life"`), json.RawMessage(`1`))
	if out, err := e.s.Complete(e.ctx, "c1", "life", "d1", resp, 0, "node-c"); err != nil || out != mailbox.OutcomeSucceeded {
		t.Fatalf("Complete = %v, %v", out, err)
	}
	want("Complete")

	// Queued, its message lost: expired at deliver-by, not before.
	e.queued(cmd(t, "c1", "d1", `"lost"`, ``))
	// A deliver-by shorter than the lease: the watchdog waits for the
	// lease to end (a message that arrives late is Dispatch's to expire).
	short := cmd(t, "c1", "d1", `"short"`, ``)
	short.ExpiresIn = time.Second
	short.Fingerprint = protocol.Fingerprint("d1", short.Method, nil, short.Timeout, short.ExpiresIn)
	_, srec, err := e.s.Reserve(e.ctx, short)
	if err != nil {
		t.Fatal(err)
	}
	if sc, ok := e.timerScore("d", "c1", "short"); !ok || int64(sc) != srec.LeaseUntil.UnixMilli() {
		t.Errorf("watchdog of a short command = %v, %v; want the lease's end %d", sc, ok, srec.LeaseUntil.UnixMilli())
	}
	// Pending past its lease and its deliver-by (a 202'd command whose
	// MarkQueued failed and whose message was lost).
	if _, _, err := e.s.Reserve(e.ctx, cmd(t, "c1", "d1", `"orphan"`, ``)); err != nil {
		t.Fatal(err)
	}
	// Dispatch turns the watchdog into the sent command's deadline.
	quick := cmd(t, "c1", "d9", `"quick"`, ``)
	quick.ExpiresIn = 5 * time.Second
	quick.Fingerprint = protocol.Fingerprint("d9", quick.Method, nil, quick.Timeout, quick.ExpiresIn)
	qrec := e.queued(quick)
	if out, err := e.s.Dispatch(e.ctx, envelope(t, qrec), "node-d", "node-c"); err != nil || out != mailbox.OutcomeSent {
		t.Fatalf("Dispatch(quick) = %v, %v", out, err)
	}
	if sc, ok := e.timerScore("d", "c1", "quick"); !ok || int64(sc) != qrec.DeliverBy.UnixMilli() {
		t.Errorf("deliver-by timer of a sent command = %v, %v; want its deliver-by %d", sc, ok, qrec.DeliverBy.UnixMilli())
	}
	if _, err := e.s.Cancel(e.ctx, "c1", "quick", "node-c"); err != nil {
		t.Fatal(err)
	}
	// A timer that fires while the lease runs waits for the lease's end.
	if err := e.rdb.ZAdd(e.ctx, e.keys.Timers(), redis.Z{Score: float64(e.clock.Now().UnixMilli()), Member: "d|c1|short"}).Err(); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(2 * time.Second)
	if n := e.fire(); n != 1 {
		t.Errorf("FireTimers within short's lease = %d, want 1 (re-armed)", n)
	}
	if got := e.get("c1", "short"); got.Status != protocol.StatusPending {
		t.Errorf("pending within its lease: %s, want still pending", got.Status)
	}
	if sc, ok := e.timerScore("d", "c1", "short"); !ok || int64(sc) != srec.LeaseUntil.UnixMilli() {
		t.Errorf("re-armed timer = %v, %v; want the lease's end", sc, ok)
	}
	e.clock.Add(9 * time.Second)
	if n := e.fire(); n != 1 {
		t.Errorf("FireTimers after short's lease = %d, want 1", n)
	}
	if got := e.get("c1", "short"); got.Status != protocol.StatusExpired {
		t.Errorf("pending past its lease and deliver-by: %s, want expired", got.Status)
	}
	e.clock.Add(59*time.Minute + 47*time.Second)
	if got := e.get("c1", "lost"); got.Status != protocol.StatusQueued {
		t.Errorf("queued command 1s before its deliver-by: %s", got.Status)
	}
	e.clock.Add(2 * time.Second)
	if n := e.fire(); n != 2 {
		t.Errorf("FireTimers at deliver-by = %d, want 2", n)
	}
	for _, k := range []string{"lost", "orphan"} {
		got := e.get("c1", k)
		if got.Status != protocol.StatusExpired || got.QueuedAt.IsZero() {
			t.Errorf("%s at deliver-by: %s (queued at %v), want expired through queued", k, got.Status, got.QueuedAt)
		}
		if d := e.pttl(e.keys.Command("c1", k)); d <= 0 || d > 24*time.Hour {
			t.Errorf("%s: PTTL %v, want the retention", k, d)
		}
	}
	// The lost message turns up after all: nothing happens.
	if out, err := e.s.Dispatch(e.ctx, envelope(t, e.get("c1", "lost")), "node-d", "node-c"); err != nil || out != mailbox.OutcomeNoop {
		t.Errorf("Dispatch after expiry = %v, %v, want noop", out, err)
	}
	codes := map[string]int{}
	for _, r := range e.results("c1") {
		if r.Error != nil {
			codes[string(r.ID)] = r.Error.Code
		}
	}
	if fmt.Sprint(codes) != fmt.Sprint(map[string]int{`"lost"`: protocol.CodeExpired, `"orphan"`: protocol.CodeExpired,
		`"quick"`: protocol.CodeCancelled, `"short"`: protocol.CodeExpired}) {
		t.Errorf("client results %v, want -32002 for lost, orphan and short", codes)
	}
	if n, _ := e.rdb.ZCard(e.ctx, e.keys.Timers()).Result(); n != 0 {
		t.Errorf("%d timers left", n)
	}
}

// Finding 1: a replay whose republish never happens still ends, and the
// command stays in the dead set until Dispatch.
func TestReplayWatchdogAndDeadSet(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	e.queued(cmd(t, "c1", "d1", `"r"`, ``))
	if out, err := e.s.MarkDead(e.ctx, "d1", "c1", "r", "poison", "node-c"); err != nil || out != mailbox.OutcomeDead {
		t.Fatalf("MarkDead = %v, %v", out, err)
	}
	e.clock.Add(time.Minute)
	rec, err := e.s.ReplayDead(e.ctx, "c1", "r")
	if err != nil {
		t.Fatal(err)
	}
	if sc, ok := e.timerScore("d", "c1", "r"); !ok || int64(sc) != rec.DeliverBy.UnixMilli() {
		t.Errorf("deliver-by timer after replay = %v, %v; want %d", sc, ok, rec.DeliverBy.UnixMilli())
	}
	dead, _, err := e.s.DeadList(e.ctx, 10, "")
	if err != nil || len(dead) != 1 || dead[0].Status != protocol.StatusQueued {
		t.Fatalf("DeadList during the replay = %+v, %v; want r, queued", dead, err)
	}
	// The republish was lost: the operator replays again, same record.
	again, err := e.s.ReplayDead(e.ctx, "c1", "r")
	if err != nil || again.Status != protocol.StatusQueued || !again.DeliverBy.Equal(rec.DeliverBy) {
		t.Fatalf("second ReplayDead = %+v, %v; want the queued record again", again, err)
	}
	// Nobody republishes: the deliver-by timer ends it, and it leaves the
	// dead set.
	e.clock.Add(time.Hour)
	if n := e.fire(); n != 1 {
		t.Errorf("FireTimers = %d, want 1", n)
	}
	if got := e.get("c1", "r"); got.Status != protocol.StatusExpired {
		t.Errorf("replayed, never republished: %s, want expired", got.Status)
	}
	if n, _ := e.rdb.ZCard(e.ctx, e.keys.Dead()).Result(); n != 0 {
		t.Errorf("dead set holds %d members after the replayed command expired", n)
	}

	// A replay that is dispatched leaves the dead set then.
	e.queued(cmd(t, "c1", "d1", `"s"`, ``))
	if _, err := e.s.MarkDead(e.ctx, "d1", "c1", "s", "poison", "node-c"); err != nil {
		t.Fatal(err)
	}
	rec, err = e.s.ReplayDead(e.ctx, "c1", "s")
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := e.rdb.ZCard(e.ctx, e.keys.Dead()).Result(); n != 1 {
		t.Errorf("dead set holds %d members before Dispatch, want 1", n)
	}
	if out, err := e.s.Dispatch(e.ctx, envelope(t, rec), "node-d", "node-c"); err != nil || out != mailbox.OutcomeSent {
		t.Fatalf("Dispatch = %v, %v", out, err)
	}
	if n, _ := e.rdb.ZCard(e.ctx, e.keys.Dead()).Result(); n != 0 {
		t.Errorf("dead set holds %d members after Dispatch, want 0", n)
	}
}

// Finding 2: a pending record lives as long as its message may wait in
// RabbitMQ (expires_in + timeout + lease + retention).
func TestPendingRecordOutlivesQueueWait(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{Lease: 10 * time.Second, Retention: time.Hour})
	c := cmd(t, "c1", "d1", `"p"`, ``) // expires_in 1h, timeout 30s
	if _, _, err := e.s.Reserve(e.ctx, c); err != nil {
		t.Fatal(err)
	}
	min := time.Hour + 30*time.Second + 10*time.Second + time.Hour - 5*time.Second
	if d := e.pttl(e.keys.Command("c1", "p")); d < min {
		t.Errorf("pending record PTTL = %v, want about %v", d, min+5*time.Second)
	}
	e.clock.Add(11 * time.Second)
	if out, _, err := e.s.Reserve(e.ctx, c); err != nil || out != mailbox.Retake {
		t.Fatalf("Reserve after the lease = %v, %v, want retake", out, err)
	}
	if d := e.pttl(e.keys.Command("c1", "p")); d < min {
		t.Errorf("retaken record PTTL = %v, want about %v", d, min+5*time.Second)
	}
	if sc, _ := e.timerScore("d", "c1", "p"); int64(sc) != e.get("c1", "p").DeliverBy.UnixMilli() {
		t.Errorf("Retake left the deliver-by timer at %d, want the new deliver-by", int64(sc))
	}
}

// Finding 3: the node that holds the live session is signalled even when
// its ring key lapsed, and so is the owner. (TestSignals covers Put; this
// covers a final transition's result.)
func TestSignalBothSessionNodeAndOwner(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	if err := e.s.SetSession(e.ctx, "c1", "gap-node"); err != nil { // no ring key at all
		t.Fatal(err)
	}
	e.queued(cmd(t, "c1", "d1", `"x"`, ``))
	if _, err := e.s.Cancel(e.ctx, "c1", "x", "node-c"); err != nil {
		t.Fatal(err)
	}
	for _, node := range []string{"gap-node", "node-c"} {
		ids, err := e.s.TakePending(e.ctx, node, 10)
		if err != nil || fmt.Sprint(ids) != "[c1]" {
			t.Errorf("pending of %s = %v, %v; want [c1]", node, ids, err)
		}
	}
}

// Finding 4: an entry fetched but not published can be given back.
func TestUnsend(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	e.sent(cmd(t, "c1", "d1", `"u"`, ``))
	es, err := e.s.Fetch(e.ctx, "d1", "", 1)
	if err != nil || len(es) != 1 {
		t.Fatalf("Fetch = %d, %v", len(es), err)
	}
	if _, err := e.s.Cancel(e.ctx, "c1", "u", "node-c"); !errors.Is(err, mailbox.ErrState) {
		t.Fatalf("Cancel after Fetch = %v, want ErrState", err)
	}
	if err := e.s.Unsend(e.ctx, "d1", mailbox.Entry{ID: es[0].ID}); err != nil {
		t.Fatal(err)
	}
	if got := e.get("c1", "u"); !got.SendingAt.IsZero() || got.Attempts != 0 || got.Status != protocol.StatusSent {
		t.Errorf("after Unsend: sending %v attempts %d status %s; want not sending, 0, sent", got.SendingAt, got.Attempts, got.Status)
	}
	// Not on the wire: deliver-by expires it (no extra timeout).
	e.clock.Add(time.Hour)
	if n := e.fire(); n != 1 {
		t.Errorf("FireTimers = %d, want 1", n)
	}
	if got := e.get("c1", "u"); got.Status != protocol.StatusExpired {
		t.Errorf("unsent command at deliver-by: %s, want expired", got.Status)
	}

	// Published once, fetched again and not published: still on the wire.
	e.sent(cmd(t, "c1", "d1", `"w"`, ``))
	first, _ := e.s.Fetch(e.ctx, "d1", "", 1)
	second, _ := e.s.Fetch(e.ctx, "d1", "", 1)
	if len(first) != 1 || len(second) != 1 {
		t.Fatal("Fetch found nothing")
	}
	if err := e.s.Unsend(e.ctx, "d1", second[0]); err != nil {
		t.Fatal(err)
	}
	if got := e.get("c1", "w"); got.SendingAt.IsZero() || got.Attempts != 1 {
		t.Errorf("Unsend of a second fetch: sending %v attempts %d; want still sending, 1", got.SendingAt, got.Attempts)
	}
	if _, err := e.s.Cancel(e.ctx, "c1", "w", "node-c"); !errors.Is(err, mailbox.ErrState) {
		t.Errorf("Cancel = %v, want ErrState (it was published once)", err)
	}
	// After the PUBACK, Unsend changes nothing.
	if err := e.s.Ack(e.ctx, "d1", first[0]); err != nil {
		t.Fatal(err)
	}
	before := e.record("c1", "w")
	if err := e.s.Unsend(e.ctx, "d1", first[0]); err != nil {
		t.Fatal(err)
	}
	if after := e.record("c1", "w"); !reflect.DeepEqual(before, after) {
		t.Errorf("Unsend after Ack changed the record:\n%v\n%v", before, after)
	}
}

// Finding 5: a COMMAND dead letter only kills a command that never
// reached a device's mailbox; sent and delivered ones are left to their
// timers.
func TestMarkDeadLeavesSentToTimers(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	e.sent(cmd(t, "c1", "d1", `"s"`, ``))
	e.sent(cmd(t, "c1", "d1", `"d"`, ``))
	es, _ := e.s.Fetch(e.ctx, "d1", "", 10)
	for _, en := range es {
		if en.MsgKey == "d" {
			if err := e.s.Ack(e.ctx, "d1", en); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, k := range []string{"s", "d"} {
		before := e.record("c1", k)
		if out, err := e.s.MarkDead(e.ctx, "d1", "c1", k, "delivery_limit", "node-c"); err != nil || out != mailbox.OutcomeNoop {
			t.Errorf("MarkDead(%s) = %v, %v, want noop", k, out, err)
		}
		if after := e.record("c1", k); !reflect.DeepEqual(before, after) {
			t.Errorf("MarkDead(%s) changed the record", k)
		}
	}
	if n, _ := e.s.Len(e.ctx, "d1"); n != 2 {
		t.Errorf("device mailbox holds %d entries, want 2 (s, and d until it is final)", n)
	}
	if got := e.timers("c1", "s"); !slices.Equal(got, []string{"d"}) {
		t.Errorf("timers of s = %v, want [d]", got)
	}
	if got := e.timers("c1", "d"); !slices.Equal(got, []string{"a"}) {
		t.Errorf("timers of d = %v, want [a]", got)
	}
	if rs := e.results("c1"); len(rs) != 0 {
		t.Errorf("client got %d results, want none", len(rs))
	}
	e.clock.Add(time.Hour)
	if n := e.fire(); n != 2 {
		t.Errorf("FireTimers = %d, want 2 (d's timeout, s re-armed: on the wire)", n)
	}
	e.clock.Add(31 * time.Second)
	if n := e.fire(); n != 1 {
		t.Errorf("FireTimers = %d, want 1", n)
	}
	if a, b := e.get("c1", "s").Status, e.get("c1", "d").Status; a != protocol.StatusTimeout || b != protocol.StatusTimeout {
		t.Errorf("statuses after the timers: s %s, d %s; want timeout, timeout", a, b)
	}
}

// Finding 6: an AMQP redelivery of the answer that made a command final
// is a duplicate, not a late answer.
func TestCompleteRedeliveryIsDuplicate(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	e.sent(cmd(t, "c1", "d1", `"x"`, ``))
	e.sent(cmd(t, "c1", "d1", `"y"`, ``))
	ok := protocol.NewResult(json.RawMessage(`"c1:x"`), json.RawMessage(`{"v":1}`))
	bad := protocol.NewErrorResponse(json.RawMessage(`"c1:y"`), &protocol.Error{Code: -5, Message: "no"})
	for _, tt := range []struct {
		key  string
		resp *protocol.Response
		want mailbox.Outcome
	}{
		{"x", ok, mailbox.OutcomeSucceeded},
		{"x", ok, mailbox.OutcomeDuplicate},
		{"x", ok, mailbox.OutcomeDuplicate},
		{"y", bad, mailbox.OutcomeFailed},
		{"y", bad, mailbox.OutcomeDuplicate},
	} {
		before := e.record("c1", tt.key)
		got, err := e.s.Complete(e.ctx, "c1", tt.key, "d1", tt.resp, 0, "node-c")
		if err != nil || got != tt.want {
			t.Errorf("Complete(%s) = %v, %v, want %v", tt.key, got, err, tt.want)
		}
		if tt.want == mailbox.OutcomeDuplicate && !reflect.DeepEqual(before, e.record("c1", tt.key)) {
			t.Errorf("a duplicate Complete(%s) changed the record", tt.key)
		}
	}
	if rs := e.results("c1"); len(rs) != 2 {
		t.Errorf("client results = %d, want 2", len(rs))
	}
	ev, _ := e.s.EventCounts(e.ctx, 1)
	if ev["late"] != 0 {
		t.Errorf("late count = %d, want 0", ev["late"])
	}
	// Another answer after final is late, counted once however often it
	// is redelivered.
	other := protocol.NewResult(json.RawMessage(`"c1:x"`), json.RawMessage(`{"v":2}`))
	for range 2 {
		if got, err := e.s.Complete(e.ctx, "c1", "x", "d1", other, 0, "node-c"); err != nil || got != mailbox.OutcomeLate {
			t.Errorf("a different answer = %v, %v, want late", got, err)
		}
	}
	if ev, _ := e.s.EventCounts(e.ctx, 1); ev["late"] != 1 {
		t.Errorf("late count = %d, want 1", ev["late"])
	}
	if got := e.get("c1", "x"); got.Status != protocol.StatusSucceeded || !strings.Contains(string(got.Late), `"v":2`) {
		t.Errorf("after a late answer: %s late %s", got.Status, got.Late)
	}
}

// Finding 7: numbers go to Redis as integer strings (ms()), never as bare
// Lua numbers, in every command that takes a time or a duration.
func TestScriptsPassIntegerStrings(t *testing.T) {
	t.Parallel()
	call := regexp.MustCompile(`redis\.call\('(PEXPIRE|ZADD|ZRANGEBYSCORE|ZREMRANGEBYSCORE)', [^,]+, ([^,)]+)`)
	ok := regexp.MustCompile(`^(ms\(|'|r\.created$|unpack\()`)
	n := 0
	_, code := mailbox.Library()
	for _, src := range []string{code} {
		for _, m := range call.FindAllStringSubmatch(src, -1) {
			n++
			if !ok.MatchString(strings.TrimSpace(m[2])) {
				t.Errorf("script passes a bare number to %s: %s", m[1], m[0])
			}
		}
	}
	if n < 10 {
		t.Errorf("found only %d calls to check: the pattern is stale", n)
	}
}

// Finding 8: a corrupt record is never half-changed.
func TestCorruptRecordsAreNotTouched(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	type snapshot struct {
		rec     map[string]string
		timers  int64
		results int64
		device  int64
	}
	snap := func(key string) snapshot {
		t.Helper()
		tn, _ := e.rdb.ZCard(e.ctx, e.keys.Timers()).Result()
		rn, _ := e.s.Len(e.ctx, "c1")
		dn, _ := e.s.Len(e.ctx, "d1")
		return snapshot{e.record("c1", key), tn, rn, dn}
	}
	corrupt := func(key string, f string, v *string) {
		t.Helper()
		ck := e.keys.Command("c1", key)
		var err error
		if v == nil {
			err = e.rdb.HDel(e.ctx, ck, f).Err()
		} else {
			err = e.rdb.HSet(e.ctx, ck, f, *v).Err()
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	garbage := `not json`

	// Dispatch of a queued record without its client field.
	q := e.queued(cmd(t, "c1", "d1", `"q"`, ``))
	corrupt("q", "client", nil)
	before := snap("q")
	if out, err := e.s.Dispatch(e.ctx, envelope(t, q), "node-d", "node-c"); err != nil || out != mailbox.OutcomeNoop {
		t.Errorf("Dispatch of a corrupt record = %v, %v, want noop", out, err)
	}
	if after := snap("q"); !reflect.DeepEqual(before, after) {
		t.Errorf("Dispatch changed a corrupt record:\n%+v\n%+v", before, after)
	}

	// MarkDead of a pending record without its created time (the old
	// script queued it, then failed).
	if _, _, err := e.s.Reserve(e.ctx, cmd(t, "c1", "d1", `"p"`, ``)); err != nil {
		t.Fatal(err)
	}
	corrupt("p", "created", nil)
	before = snap("p")
	if out, err := e.s.MarkDead(e.ctx, "d1", "c1", "p", "x", "node-c"); err != nil || out != mailbox.OutcomeNoop {
		t.Errorf("MarkDead of a corrupt record = %v, %v, want noop", out, err)
	}
	if after := snap("p"); !reflect.DeepEqual(before, after) {
		t.Errorf("MarkDead changed a corrupt record:\n%+v\n%+v", before, after)
	}

	// Cancel and Complete of a sent record whose id is not JSON (the old
	// script wrote a result that is not JSON), or without its key (the old
	// script deleted the mailbox entry, then failed).
	e.sent(cmd(t, "c1", "d1", `"s"`, ``))
	corrupt("s", "id", &garbage)
	before = snap("s")
	if _, err := e.s.Cancel(e.ctx, "c1", "s", "node-c"); err == nil || errors.Is(err, mailbox.ErrState) {
		t.Errorf("Cancel of a corrupt record = %v, want an error", err)
	}
	if after := snap("s"); !reflect.DeepEqual(before, after) {
		t.Errorf("Cancel changed a corrupt record:\n%+v\n%+v", before, after)
	}
	e.sent(cmd(t, "c1", "d1", `"k"`, ``))
	corrupt("k", "key", nil)
	before = snap("k")
	resp := protocol.NewResult(json.RawMessage(`"c1:k"`), json.RawMessage(`1`))
	if out, err := e.s.Complete(e.ctx, "c1", "k", "d1", resp, 0, "node-c"); err != nil || out != mailbox.OutcomeNoop {
		t.Errorf("Complete of a corrupt record = %v, %v, want noop", out, err)
	}
	if after := snap("k"); !reflect.DeepEqual(before, after) {
		t.Errorf("Complete changed a corrupt record:\n%+v\n%+v", before, after)
	}

	// An id the client wrote with escapes is no corruption.
	esc := e.sent(cmd(t, "c1", "d1", `"\u0041b"`, ``))
	if esc.ID.Key() != "Ab" {
		t.Fatalf("escaped id key = %q", esc.ID.Key())
	}
	if got, err := e.s.Cancel(e.ctx, "c1", "Ab", "node-c"); err != nil || got.Status != protocol.StatusCancelled {
		t.Errorf("Cancel of a command with an escaped id = %v, %v; want cancelled", got, err)
	}
	if n, _ := e.s.Len(e.ctx, "c1"); n != 1 {
		t.Errorf("client mailbox holds %d results, want 1", n)
	}
	if err := e.rdb.Del(e.ctx, e.keys.Mailbox("c1")).Err(); err != nil {
		t.Fatal(err)
	}

	// Timers of corrupt records are dropped, the records untouched.
	recs := map[string]map[string]string{}
	for _, k := range []string{"q", "p", "s", "k"} {
		recs[k] = e.record("c1", k)
	}
	e.clock.Add(2 * time.Hour)
	if n := e.fire(); n != 4 {
		t.Errorf("FireTimers = %d, want 4", n)
	}
	for k, m := range recs {
		if !reflect.DeepEqual(m, e.record("c1", k)) {
			t.Errorf("FireTimers changed corrupt record %s", k)
		}
	}
	if n, _ := e.s.Len(e.ctx, "c1"); n != 0 {
		t.Errorf("client mailbox holds %d results, want none", n)
	}
}

// Finding 9: the (client, device) index is pruned, a reused id gets a
// fresh score, and CancelAll looks only at recent commands.
func TestIndexBounded(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{Retention: time.Hour, MaxLifetime: 2 * time.Hour, Lease: 10 * time.Second})
	ik := e.keys.ClientCommands("c1", "d1")
	e.queued(cmd(t, "c1", "d1", `"old"`, ``))
	e.queued(cmd(t, "c1", "d1", `"reused"`, ``))
	if err := e.rdb.Del(e.ctx, e.keys.Command("c1", "reused")).Err(); err != nil { // its retention ran out
		t.Fatal(err)
	}
	e.clock.Add(time.Minute)
	r := e.queued(cmd(t, "c1", "d1", `"reused"`, ``))
	if sc, err := e.rdb.ZScore(e.ctx, ik, "reused").Result(); err != nil || int64(sc) != r.CreatedAt.UnixMilli() {
		t.Errorf("reused id scored %d, %v; want its new creation %d", int64(sc), err, r.CreatedAt.UnixMilli())
	}
	e.clock.Add(3*time.Hour + 10*time.Second) // past retention + max lifetime + lease of "old"
	e.queued(cmd(t, "c1", "d1", `"new"`, ``))
	members, err := e.rdb.ZRange(e.ctx, ik, 0, -1).Result()
	if err != nil || fmt.Sprint(members) != "[reused new]" {
		t.Errorf("index = %v, %v; want [reused new]", members, err)
	}

	// CancelAll: only commands created within MaxLifetime + Lease.
	e.clock.Add(time.Minute)
	// The partition's clock sets accepted-at: accept "ancient" in the past.
	ancient := cmd(t, "c1", "d1", `"ancient"`, ``)
	ancient.ExpiresIn = 3 * time.Hour
	ancient.Fingerprint = protocol.Fingerprint("d1", ancient.Method, nil, ancient.Timeout, ancient.ExpiresIn)
	e.clock.Add(-2*time.Hour - 11*time.Second)
	e.queued(ancient)
	e.clock.Add(2*time.Hour + 11*time.Second)
	n, err := e.s.CancelAll(e.ctx, "c1", "d1", "node-c")
	if err != nil || n != 1 {
		t.Errorf("CancelAll = %d, %v; want 1 (new; reused is older than the window, ancient too)", n, err)
	}
	if got := e.get("c1", "ancient"); got.Status != protocol.StatusQueued {
		t.Errorf("ancient: %s, want queued (outside CancelAll's window)", got.Status)
	}
}

// Finding 9: CancelAll pages through many commands.
func TestCancelAllPages(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	const n = 450
	for i := range n {
		if i%7 == 0 {
			e.clock.Add(time.Millisecond)
		}
		e.queued(cmd(t, "c1", "d1", fmt.Sprint(i+1), ``))
	}
	e.sent(cmd(t, "c1", "d1", `"wire"`, ``))
	if _, err := e.s.Fetch(e.ctx, "d1", "", 1); err != nil {
		t.Fatal(err)
	}
	got, err := e.s.CancelAll(e.ctx, "c1", "d1", "node-c")
	if err != nil || got != n {
		t.Errorf("CancelAll = %d, %v; want %d", got, err, n)
	}
	if again, err := e.s.CancelAll(e.ctx, "c1", "d1", "node-c"); err != nil || again != 0 {
		t.Errorf("CancelAll again = %d, %v; want 0", again, err)
	}
	if n, _ := e.s.Len(e.ctx, "c1"); n != 450 {
		t.Errorf("client results = %d, want %d", n, 450)
	}
}

// Finding 10: several PUBACKs in one round trip.
func TestAckMany(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	for i := range 5 {
		e.sent(cmd(t, "c1", "d1", fmt.Sprint(i+1), ``))
	}
	if _, err := e.s.Put(e.ctx, "d1", "devices/d1/commands", []byte("x"), time.Time{}, ""); err != nil {
		t.Fatal(err)
	}
	es, err := e.s.Fetch(e.ctx, "d1", "", 10)
	if err != nil || len(es) != 6 {
		t.Fatalf("Fetch = %d, %v", len(es), err)
	}
	if err := e.s.AckMany(e.ctx, "d1", append(es, mailbox.Entry{ID: "1-1"})); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if got := e.get("c1", fmt.Sprint(i+1)); got.Status != protocol.StatusDelivered {
			t.Errorf("command %d: %s, want delivered", i+1, got.Status)
		}
	}
	// The non-command entry left; the delivered commands stay until they
	// are final (re-offered to a new connection).
	if n, _ := e.s.Len(e.ctx, "d1"); n != 5 {
		t.Errorf("mailbox holds %d entries, want 5 (the delivered commands)", n)
	}
	if err := e.s.AckMany(e.ctx, "d1", nil); err != nil {
		t.Errorf("AckMany(nil) = %v", err)
	}
}

// Finding 11: a full mailbox frees its stale head in one step, and only
// the head tells whether there is room.
func TestFullMailboxHead(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{MailboxCap: 150})
	now := e.clock.Now()
	put := func(identity string, exp time.Time) error {
		_, err := e.s.Put(e.ctx, identity, "t", []byte("p"), exp, "")
		return err
	}
	// Results: 120 expire soon, then 30 later; all expire in id order.
	for i := range 150 {
		exp := now.Add(time.Hour)
		if i < 120 {
			exp = now.Add(time.Second)
		}
		if err := put("c1", exp); err != nil {
			t.Fatal(err)
		}
	}
	if err := put("c1", now.Add(time.Hour)); !errors.Is(err, mailbox.ErrFull) {
		t.Fatalf("Put into a full mailbox = %v, want ErrFull", err)
	}
	e.clock.Add(2 * time.Second)
	if err := put("c1", now.Add(time.Hour)); err != nil {
		t.Fatalf("Put with an expired head = %v", err)
	}
	// The first 100 went in one XTRIM (at most 100 per append).
	if n, _ := e.s.Len(e.ctx, "c1"); n != 51 {
		t.Errorf("after one append: %d entries, want 51 (100 stale removed)", n)
	}
	if err := put("c1", now.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n, _ := e.s.Len(e.ctx, "c1"); n != 52 {
		t.Errorf("after two appends: %d entries, want 52", n)
	}
	for range 98 {
		if err := put("c1", now.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	if n, _ := e.s.Len(e.ctx, "c1"); n != 150 {
		t.Errorf("full again: %d entries, want 150", n)
	}
	if err := put("c1", now.Add(time.Hour)); err != nil {
		t.Errorf("Put with 20 stale entries at the head = %v, want room", err)
	}
	if n, _ := e.s.Len(e.ctx, "c1"); n != 131 {
		t.Errorf("%d entries, want 131 (the 20 stale ones gone)", n)
	}

	// A device mailbox full of live commands refuses the next; a command
	// that ends leaves the mailbox in the step that ends it, so the room
	// it frees is there at once.
	e2 := newEnv(t, mailbox.Options{MailboxCap: 3})
	e2.sent(cmd(t, "c1", "d1", `"live"`, ``))
	e2.sent(cmd(t, "c1", "d1", `"mid"`, ``))
	e2.sent(cmd(t, "c1", "d1", `"third"`, ``))
	q := e2.queued(cmd(t, "c1", "d1", `"q"`, ``))
	if out, err := e2.s.Dispatch(e2.ctx, envelope(t, q), "node-d", "node-c"); err != nil || out != mailbox.OutcomeRejected {
		t.Errorf("Dispatch into a full mailbox = %v, %v, want rejected", out, err)
	}
	if _, err := e2.s.Cancel(e2.ctx, "c1", "live", "node-c"); err != nil {
		t.Fatal(err)
	}
	q = e2.queued(cmd(t, "c1", "d1", `"q2"`, ``))
	if out, err := e2.s.Dispatch(e2.ctx, envelope(t, q), "node-d", "node-c"); err != nil || out != mailbox.OutcomeSent {
		t.Errorf("Dispatch after the head was cancelled = %v, %v, want sent", out, err)
	}
	if n, _ := e2.s.Len(e2.ctx, "d1"); n != 3 {
		t.Errorf("device mailbox holds %d entries, want 3 (mid, third, q2)", n)
	}
}

// Finding 12: FireTimers pops and applies in batches; the ring owner is
// signalled after the script.
func TestFireTimersBatches(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	const n = 250
	for i := range n {
		e.queued(cmd(t, "c1", "d1", fmt.Sprint(i+1), ``))
	}
	if err := e.rdb.ZAdd(e.ctx, e.keys.Timers(), redis.Z{Score: 1, Member: "garbage"}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := e.s.SetSession(e.ctx, "c1", "live"); err != nil {
		t.Fatal(err)
	}
	e.clock.Add(2 * time.Hour)
	got, err := e.s.FireTimers(e.ctx, 1000, ownerC)
	if err != nil || got != n+1 {
		t.Errorf("FireTimers = %d, %v; want %d", got, err, n+1)
	}
	if left, _ := e.rdb.ZCard(e.ctx, e.keys.Timers()).Result(); left != 0 {
		t.Errorf("%d timers left", left)
	}
	if c, _ := e.s.StatusCounts(e.ctx, 1); c[protocol.StatusExpired] != n {
		t.Errorf("expired count = %d, want %d", c[protocol.StatusExpired], n)
	}
	for _, node := range []string{"live", "node-c"} {
		if ids, err := e.s.TakePending(e.ctx, node, 10); err != nil || fmt.Sprint(ids) != "[c1]" {
			t.Errorf("pending of %s = %v, %v; want [c1]", node, ids, err)
		}
	}
	// limit bounds one call.
	for i := range 5 {
		e.queued(cmd(t, "c1", "d1", fmt.Sprintf(`"x%d"`, i), ``))
	}
	e.clock.Add(2 * time.Hour)
	if got, err := e.s.FireTimers(e.ctx, 3, nil); err != nil || got != 3 {
		t.Errorf("FireTimers(limit 3) = %d, %v, want 3", got, err)
	}
	if got, err := e.s.FireTimers(e.ctx, 3, nil); err != nil || got != 2 {
		t.Errorf("FireTimers(limit 3) again = %d, %v, want 2", got, err)
	}
}

// Finding 13: Ack trusts the stored entry, not the caller's Client and
// MsgKey.
func TestAckReadsTheEntry(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	e.sent(cmd(t, "c1", "d1", `"a"`, ``))
	e.sent(cmd(t, "c1", "d2", `"b"`, ``))
	es, _ := e.s.Fetch(e.ctx, "d1", "", 1)
	eb, _ := e.s.Fetch(e.ctx, "d2", "", 1)
	if len(es) != 1 || len(eb) != 1 {
		t.Fatal("Fetch found nothing")
	}
	// The caller names b but acks a's entry.
	lie := mailbox.Entry{ID: es[0].ID, Client: "c1", MsgKey: "b"}
	if err := e.s.Ack(e.ctx, "d1", lie); err != nil {
		t.Fatal(err)
	}
	if got := e.get("c1", "a"); got.Status != protocol.StatusDelivered {
		t.Errorf("a: %s, want delivered", got.Status)
	}
	if got := e.get("c1", "b"); got.Status != protocol.StatusSent {
		t.Errorf("b: %s, want still sent", got.Status)
	}
	// An entry ID alone is enough.
	if err := e.s.Ack(e.ctx, "d2", mailbox.Entry{ID: eb[0].ID}); err != nil {
		t.Fatal(err)
	}
	if got := e.get("c1", "b"); got.Status != protocol.StatusDelivered {
		t.Errorf("b: %s, want delivered", got.Status)
	}
}

// Finding 14: identities taken from the pending set can be put back.
func TestRepend(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	for _, id := range []string{"d1", "d2"} {
		if _, err := e.s.Put(e.ctx, id, "t", []byte("p"), time.Time{}, "n1"); err != nil {
			t.Fatal(err)
		}
	}
	ids, err := e.s.TakePending(e.ctx, "n1", 10)
	if err != nil || len(ids) != 2 {
		t.Fatalf("TakePending = %v, %v", ids, err)
	}
	if err := e.s.Repend(e.ctx, "n1", ids...); err != nil {
		t.Fatal(err)
	}
	if err := e.s.Repend(e.ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	again, err := e.s.TakePending(e.ctx, "n1", 10)
	slices.Sort(again)
	if err != nil || fmt.Sprint(again) != "[d1 d2]" {
		t.Errorf("TakePending after Repend = %v, %v; want [d1 d2]", again, err)
	}
	if d := e.pttl(e.keys.NodePending("n1")); d != -2 {
		t.Errorf("pending set PTTL after taking all = %v, want gone", d)
	}
}

// Finding 15: clearing an older connection's session keeps the newer one.
func TestSessionConnections(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	node := func() string {
		t.Helper()
		n, err := e.s.SessionNode(e.ctx, "d1")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	member := func(n string) bool {
		ok, _ := e.rdb.SIsMember(e.ctx, e.keys.NodeSessions(n), "d1").Result()
		return ok
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	// Reconnect on the same node; the old connection's cleanup arrives last.
	must(e.s.SetSessionConn(e.ctx, "d1", "A", "conn-1"))
	must(e.s.SetSessionConn(e.ctx, "d1", "A", "conn-2"))
	must(e.s.ClearSessionConn(e.ctx, "d1", "A", "conn-1"))
	if node() != "A" || !member("A") {
		t.Errorf("a stale clear removed the live session: node %q, member %v", node(), member("A"))
	}
	must(e.s.ClearSessionConn(e.ctx, "d1", "A", "conn-2"))
	if node() != "" || member("A") {
		t.Errorf("clear of the live connection: node %q, member %v; want gone", node(), member("A"))
	}
	// Moving nodes; the old node's clear leaves the new registration.
	must(e.s.SetSessionConn(e.ctx, "d1", "A", "conn-3"))
	must(e.s.SetSessionConn(e.ctx, "d1", "B", "conn-4"))
	must(e.s.ClearSessionConn(e.ctx, "d1", "A", "conn-3"))
	if node() != "B" || !member("B") || member("A") {
		t.Errorf("after moving to B: node %q, in A %v, in B %v", node(), member("A"), member("B"))
	}
	// The old API clears whatever connection is on the node.
	must(e.s.ClearSession(e.ctx, "d1", "B"))
	if node() != "" || member("B") {
		t.Errorf("ClearSession: node %q, member %v; want gone", node(), member("B"))
	}
	if n, _ := e.rdb.Exists(e.ctx, e.keys.Session("d1")+":conn").Result(); n != 0 {
		t.Error("connection token left behind")
	}
	must(e.s.SetSessionConn(e.ctx, "d1", "C", "conn-5"))
	must(e.s.SetSession(e.ctx, "d1", "C")) // old API: no token
	must(e.s.ClearSessionConn(e.ctx, "d1", "C", "conn-5"))
	if node() != "C" {
		t.Errorf("a clear with a token removed a session registered without one")
	}
}

// configHook answers CONFIG GET from a map, without Redis.
type configHook map[string]string

func (h configHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h configHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h configHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := cmd.Args()
		if c, ok := cmd.(*redis.MapStringStringCmd); ok && len(args) == 3 && cmd.Name() == "config" {
			name := fmt.Sprint(args[2])
			c.SetVal(map[string]string{name: h[name]})
			return nil
		}
		return next(ctx, cmd)
	}
}

// Finding 16: an evicting Redis is not durable.
func TestCheckDurabilityEviction(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		policy string
		ok     bool
	}{
		{"noeviction", true},
		{"allkeys-lru", false},
		{"volatile-ttl", false},
	} {
		rdb := testenv.Redis(t)
		rdb.AddHook(configHook{"appendonly": "yes", "appendfsync": "always", "maxmemory-policy": tt.policy})
		w := mailbox.CheckDurability(context.Background(), rdb)
		if tt.ok != (w == "") || !tt.ok && !strings.Contains(w, "maxmemory-policy") {
			t.Errorf("CheckDurability with maxmemory-policy %s = %q", tt.policy, w)
		}
	}
}
