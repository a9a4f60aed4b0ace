package mailbox_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// groupOf returns a group command of client c1 with id gid to n devices
// (g-d0 … g-d{n-1}), as the apiserver claims it.
func groupOf(t *testing.T, gid string, n, abortAt int) (*mailbox.Group, []string) {
	t.Helper()
	devices := make([]string, n)
	for i := range devices {
		devices[i] = fmt.Sprintf("g-d%d", i)
	}
	g := &mailbox.Group{
		Client: "c1", ID: mustID(t, gid), Method: "reboot", Timeout: 30 * time.Second, ExpiresIn: time.Hour,
		AbortAt: abortAt, Fingerprint: fmt.Sprintf("fp-%d-%d", n, abortAt),
	}
	if abortAt > 0 {
		g.AbortAfter = fmt.Sprint(abortAt)
	}
	return g, devices
}

// claimAndRun claims g and creates its children.
func (e *env) claimAndRun(g *mailbox.Group, devices []string) {
	e.t.Helper()
	created, _, err := e.s.ClaimGroup(e.ctx, g, devices)
	if err != nil || !created {
		e.t.Fatalf("ClaimGroup = %v, %v; want created", created, err)
	}
	if err := e.s.RunGroup(e.ctx, g.Client, g.ID.Key(), ""); err != nil {
		e.t.Fatalf("RunGroup: %v", err)
	}
}

// answer completes the child of g to device with a result, or an error
// when fail is set.
func (e *env) answer(g *mailbox.Group, device string, fail bool) {
	e.t.Helper()
	child, err := protocol.ChildID(g.ID, device)
	if err != nil {
		e.t.Fatal(err)
	}
	id := json.RawMessage(`"c1:` + child.Key() + `"`)
	resp := protocol.NewResult(id, json.RawMessage(`"ok"`))
	want := mailbox.OutcomeSucceeded
	if fail {
		resp = protocol.NewErrorResponse(id, &protocol.Error{Code: 7, Message: "broken"})
		want = mailbox.OutcomeFailed
	}
	if out, err := e.s.Complete(e.ctx, "c1", child.Key(), device, resp, 0, ""); err != nil || out != want {
		e.t.Fatalf("Complete(%s) = %v, %v; want %v", child.Key(), out, err, want)
	}
}

func (e *env) group(g *mailbox.Group) *mailbox.Group {
	e.t.Helper()
	got, err := e.s.GetGroup(e.ctx, g.Client, g.ID.Key())
	if err != nil {
		e.t.Fatalf("GetGroup: %v", err)
	}
	return got
}

// TestGroupCommand: a group command's children are normal commands with
// ids derived from the group's; their outcomes are counted in the group's
// record (once, however often relayed); abort_after and a stop cancel
// the children not yet on the wire, each with a -32004 result naming the
// reason.
func TestGroupCommand(t *testing.T) {
	t.Parallel()
	t.Run("children, counts and idempotency", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, mailbox.Options{Partitions: 8})
		g, devices := groupOf(t, `"g1"`, 20, 0)
		e.claimAndRun(g, devices)
		for i, d := range devices {
			c := e.get("c1", "g1:"+d)
			if c.Status != protocol.StatusSent || c.Device != d || c.Group != "g1" {
				t.Fatalf("child %d: %s to %s group %q; want sent to %s, group g1", i, c.Status, c.Device, c.Group, d)
			}
			e.answer(g, d, i%4 == 0)
		}
		// The owner's relay of anything left changes no count.
		for p := range 8 {
			if _, err := e.s.RelayOutbox(e.ctx, p, 0, 100); err != nil {
				t.Fatal(err)
			}
		}
		got := e.group(g)
		if got.Done != 20 || got.Released != 20 || got.Failures != 5 || got.Counts["succeeded"] != 15 ||
			got.Counts["failed"] != 5 || !got.Final() || got.Stopped != "" {
			t.Errorf("group = done %d released %d failures %d counts %v stopped %q; want 20 20 5 {succeeded 15 failed 5} \"\"",
				got.Done, got.Released, got.Failures, got.Counts, got.Stopped)
		}
		if rs := e.results("c1"); len(rs) != 20 {
			t.Errorf("client has %d results, want 20", len(rs))
		}
		created, _, err := e.s.ClaimGroup(e.ctx, g, devices)
		if err != nil || created {
			t.Errorf("the same group again: created %v, %v; want false, nil", created, err)
		}
		// RunGroup again (a redelivery) creates nothing twice.
		if err := e.s.RunGroup(e.ctx, "c1", "g1", ""); err != nil {
			t.Fatal(err)
		}
		if got := e.group(g); got.Done != 20 {
			t.Errorf("after a second run: done %d, want 20", got.Done)
		}
		other := *g
		other.Fingerprint = "another body"
		if _, _, err := e.s.ClaimGroup(e.ctx, &other, devices); !errors.Is(err, mailbox.ErrConflict) {
			t.Errorf("another body under the same id: %v, want ErrConflict", err)
		}
	})
	t.Run("abort_after cancels what is not on the wire", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, mailbox.Options{Partitions: 8})
		g, devices := groupOf(t, `7`, 20, 3)
		e.claimAndRun(g, devices)
		// One child is on the wire (its entry taken by a push server).
		if es, err := e.s.Fetch(e.ctx, devices[19], "", 10); err != nil || len(es) != 1 {
			t.Fatalf("Fetch = %d, %v; want one entry", len(es), err)
		}
		for _, d := range devices[:3] {
			e.answer(g, d, true)
		}
		if got := e.group(g); got.Stopped != "aborted" || !strings.Contains(got.StopReason, "abort_after") {
			t.Fatalf("after 3 failures: stopped %q (%q), want aborted by abort_after", got.Stopped, got.StopReason)
		}
		_, outcomes, err := e.s.FireTimersOutcomes(e.ctx, 100, nil)
		if err != nil || outcomes["group_stopped"] != 1 {
			t.Fatalf("timers: %v, %v; want group_stopped once", outcomes, err)
		}
		got := e.group(g)
		if got.Done != 19 || got.Counts["cancelled"] != 16 || got.Counts["failed"] != 3 || got.Final() {
			t.Errorf("after the abort: done %d counts %v final %v; want 19 {failed 3, cancelled 16}, not final (one on the wire)",
				got.Done, got.Counts, got.Final())
		}
		if c := e.get("c1", "7:"+devices[19]); c.Status != protocol.StatusSent {
			t.Errorf("the child on the wire is %s, want sent", c.Status)
		}
		c := e.get("c1", "7:"+devices[5])
		var r protocol.Response
		if err := json.Unmarshal(c.Response, &r); err != nil || r.Error == nil || r.Error.Code != protocol.CodeCancelled ||
			!strings.Contains(string(r.Error.Data), "abort_after") {
			t.Errorf("a cancelled child's result = %s, want -32004 with the reason in data", c.Response)
		}
		e.answer(g, devices[19], false)
		if got := e.group(g); !got.Final() || got.Counts["succeeded"] != 1 {
			t.Errorf("last child answered: done %d counts %v, want final with 1 succeeded", got.Done, got.Counts)
		}
	})
	t.Run("stopped before release", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, mailbox.Options{Partitions: 4})
		g, devices := groupOf(t, `"g3"`, 10, 0)
		if _, _, err := e.s.ClaimGroup(e.ctx, g, devices); err != nil {
			t.Fatal(err)
		}
		if ok, err := e.s.StopGroup(e.ctx, "c1", "g3", "cancelled", "cancelled by the client"); err != nil || !ok {
			t.Fatalf("StopGroup = %v, %v", ok, err)
		}
		if ok, err := e.s.StopGroup(e.ctx, "c1", "g3", "aborted", "again"); err != nil || ok {
			t.Fatalf("StopGroup again = %v, %v; want false (the first stop wins)", ok, err)
		}
		if err := e.s.RunGroup(e.ctx, "c1", "g3", ""); err != nil {
			t.Fatal(err)
		}
		got := e.group(g)
		if !got.Final() || got.Counts["cancelled"] != 10 || got.Stopped != "cancelled" {
			t.Errorf("group = done %d counts %v stopped %q; want every child cancelled", got.Done, got.Counts, got.Stopped)
		}
		if rs := e.results("c1"); len(rs) != 10 {
			t.Errorf("client has %d results, want 10 (one per child)", len(rs))
		}
		for _, d := range devices {
			if n, _ := e.s.Len(e.ctx, d); n != 0 {
				t.Errorf("device %s has %d entries, want none", d, n)
			}
		}
	})
	t.Run("list", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, mailbox.Options{Partitions: 4})
		for i, id := range []string{`"l1"`, `"l2"`, `"l3"`} {
			g, devices := groupOf(t, id, 2, 0)
			g.Client = fmt.Sprintf("c%d", i) // in different partitions
			if _, _, err := e.s.ClaimGroup(e.ctx, g, devices); err != nil {
				t.Fatal(err)
			}
			e.clock.Add(time.Second)
		}
		gs, err := e.s.ListGroups(e.ctx, 2)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, g := range gs {
			got = append(got, g.Client+"/"+g.ID.Key())
		}
		if strings.Join(got, " ") != "c2/l3 c1/l2" {
			t.Errorf("ListGroups(2) = %v, want [c2/l3 c1/l2] (newest first)", got)
		}
	})
	t.Run("rate", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t, mailbox.Options{Partitions: 4})
		g, devices := groupOf(t, `"g4"`, 11, 0)
		g.Rate = 50
		start := time.Now()
		e.claimAndRun(g, devices)
		// Child i is released at i/50 s: the last one at 200 ms.
		if took := time.Since(start); took < 200*time.Millisecond {
			t.Errorf("11 children at 50/s took %v, want at least 200ms", took)
		}
		if got := e.group(g); got.Released != 11 {
			t.Errorf("released %d, want 11", got.Released)
		}
	})
}

// TestRetryCommand: a command that ended failed, timeout, expired or
// rejected can be retried once more under the same id: queued again with
// a fresh window, dispatched, and its new final reaches the client as a
// second result; any other status is ErrState. A retried child of a
// group leaves the group's final counts until its new final.
func TestRetryCommand(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{Partitions: 4})
	g, devices := groupOf(t, `"rg"`, 2, 0)
	e.claimAndRun(g, devices)
	e.answer(g, devices[0], true)
	e.answer(g, devices[1], false)
	if got := e.group(g); got.Counts["failed"] != 1 || !got.Final() {
		t.Fatalf("before the retry: counts %v done %d", got.Counts, got.Done)
	}
	if _, err := e.s.Retry(e.ctx, "c1", "rg:"+devices[1]); !errors.Is(err, mailbox.ErrState) {
		t.Errorf("Retry of a succeeded command: %v, want ErrState", err)
	}
	if _, err := e.s.Retry(e.ctx, "c1", "nope"); !errors.Is(err, mailbox.ErrNotFound) {
		t.Errorf("Retry of an unknown command: %v, want ErrNotFound", err)
	}
	rec, err := e.s.Retry(e.ctx, "c1", "rg:"+devices[0])
	if err != nil || rec.Status != protocol.StatusQueued {
		t.Fatalf("Retry = %v, %v; want queued", rec, err)
	}
	if got := e.group(g); got.Final() || got.Done != 1 || got.Failures != 0 || got.Counts["failed"] != 0 {
		t.Errorf("during the retry: done %d failures %d counts %v; want 1, 0, {succeeded 1}", got.Done, got.Failures, got.Counts)
	}
	if out, err := e.s.Dispatch(e.ctx, envelope(t, rec), "", ""); err != nil || out != mailbox.OutcomeSent {
		t.Fatalf("Dispatch of the retry = %v, %v; want sent", out, err)
	}
	e.answer(g, devices[0], false)
	c := e.get("c1", "rg:"+devices[0])
	if c.Status != protocol.StatusSucceeded || c.Replays != 1 {
		t.Errorf("after the retry: %s, generation %d; want succeeded, 1", c.Status, c.Replays)
	}
	if got := e.group(g); !got.Final() || got.Counts["succeeded"] != 2 || got.Failures != 0 {
		t.Errorf("after the retry: done %d counts %v failures %d; want final, {succeeded 2}, 0", got.Done, got.Counts, got.Failures)
	}
	n := 0
	for _, r := range e.results("c1") {
		if string(r.ID) == `"rg:`+devices[0]+`"` {
			n++
		}
	}
	if n != 2 {
		t.Errorf("the client got %d results for the retried command, want 2 (the failure, then the retry's)", n)
	}
}

// TestGroupCommandOnCluster: a group's steps each touch one partition
// (one hash slot), so a rollout, its abort and the cancelling of its
// children run on Redis Cluster, the group's record in the client's
// slot and its children all over the others.
func TestGroupCommandOnCluster(t *testing.T) {
	t.Parallel()
	url := testenv.RedisClusterURL(t)
	c := config.Common{RedisURL: url}
	rdb, err := c.NewRedis(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	ns := testenv.Namespace(t)
	ctx := context.Background()
	t.Cleanup(func() {
		cc, ok := rdb.(*redis.ClusterClient)
		if !ok {
			return
		}
		_ = cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
			it := n.Scan(ctx, 0, "{"+ns+":*", 1000).Iterator()
			for it.Next(ctx) {
				n.Del(ctx, it.Val())
			}
			return it.Err()
		})
	})
	s := mailbox.New(rdb, ns, mailbox.Options{Partitions: 64, AnswerGrace: time.Millisecond, Logger: testenv.Logger(t)})
	e := &env{t: t, ctx: ctx, s: s}
	g, devices := groupOf(t, `"cg"`, 40, 4)
	e.claimAndRun(g, devices)
	for _, d := range devices[:4] {
		e.answer(g, d, true)
	}
	if got := e.group(g); got.Stopped != "aborted" {
		t.Fatalf("after 4 failures: stopped %q, want aborted", got.Stopped)
	}
	_, outcomes, err := s.FireTimersOutcomes(ctx, 100, nil)
	if err != nil || outcomes["group_stopped"] != 1 {
		t.Fatalf("timers: %v, %v; want group_stopped once", outcomes, err)
	}
	got := e.group(g)
	if !got.Final() || got.Counts["failed"] != 4 || got.Counts["cancelled"] != 36 {
		t.Errorf("group = done %d counts %v; want final, {failed 4, cancelled 36}", got.Done, got.Counts)
	}
	if gs, err := s.ListGroups(ctx, 5); err != nil || len(gs) != 1 {
		t.Errorf("ListGroups = %d, %v; want the one group", len(gs), err)
	}
}

// TestRetryBackoff: with a backoff, a command that got no answer waits as
// scheduled (cancellable) before each retry, 5 s then min(10 s, 8 s),
// each retry with a fresh expires_in window from its send; the last one
// that times out ends timeout.
func TestRetryBackoff(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	c := cmd(t, "c1", "d1", `"b"`, ``)
	c.Retries = 2
	c.Backoff = mailbox.Backoff{Initial: 5 * time.Second, Multiplier: 2, Max: 8 * time.Second}
	c.Fingerprint = "backoff"
	e.sent(c)
	deliver := func() {
		t.Helper()
		es, err := e.s.Fetch(e.ctx, "d1", "", 10)
		if err != nil || len(es) != 1 {
			t.Fatalf("Fetch = %d entries, %v; want 1", len(es), err)
		}
		must(t, e.s.Ack(e.ctx, "d1", es[0]))
	}
	for try, wait := range []time.Duration{5 * time.Second, 8 * time.Second} {
		deliver()
		e.clock.Add(31 * time.Second) // past timeout + grace
		_, outcomes, err := e.s.FireTimersOutcomes(e.ctx, 100, nil)
		if err != nil || outcomes["retry_scheduled"] != 1 {
			t.Fatalf("try %d: outcomes %v, %v; want one retry_scheduled", try+1, outcomes, err)
		}
		got := e.get("c1", "b")
		if got.Status != protocol.StatusScheduled || got.Tries != try+1 || !got.NotBefore.Equal(e.clock.Now().Add(wait)) {
			t.Fatalf("try %d: %s tries %d not before %v; want scheduled, %d, %v", try+1, got.Status, got.Tries,
				got.NotBefore, try+1, e.clock.Now().Add(wait))
		}
		if n, _ := e.s.Len(e.ctx, "d1"); n != 0 {
			t.Fatalf("try %d: %d mailbox entries while waiting, want 0", try+1, n)
		}
		e.clock.Add(wait - time.Millisecond)
		if _, outcomes, _ := e.s.FireTimersOutcomes(e.ctx, 100, nil); outcomes["sent"] != 0 {
			t.Fatalf("try %d: sent before its backoff ended: %v", try+1, outcomes)
		}
		e.clock.Add(time.Millisecond)
		if _, outcomes, err := e.s.FireTimersOutcomes(e.ctx, 100, nil); err != nil || outcomes["sent"] != 1 {
			t.Fatalf("try %d: outcomes %v, %v at the end of the backoff; want sent", try+1, outcomes, err)
		}
		if got := e.get("c1", "b"); got.Status != protocol.StatusSent || !got.DeliverBy.Equal(e.clock.Now().Add(time.Hour)) {
			t.Fatalf("try %d: %s deliver by %v; want sent, deliver by an hour from now", try+1, got.Status, got.DeliverBy)
		}
	}
	deliver()
	e.clock.Add(31 * time.Second)
	e.fire()
	if got := e.get("c1", "b"); got.Status != protocol.StatusTimeout || got.Tries != 2 {
		t.Errorf("after the last try: %s tries %d, want timeout, 2", got.Status, got.Tries)
	}
	if rs := e.results("c1"); len(rs) != 1 || rs[0].Error == nil || rs[0].Error.Code != protocol.CodeTimeout {
		t.Errorf("client results = %+v, want one -32001", rs)
	}

	// A command waiting out its backoff can be cancelled.
	c2 := cmd(t, "c1", "d1", `"b2"`, ``)
	c2.Retries, c2.Backoff, c2.Fingerprint = 1, mailbox.Backoff{Initial: time.Minute, Multiplier: 2, Max: time.Minute}, "backoff"
	e.sent(c2)
	deliver()
	e.clock.Add(31 * time.Second)
	e.fire()
	if got, err := e.s.Cancel(e.ctx, "c1", "b2", ""); err != nil || got.Status != protocol.StatusCancelled {
		t.Errorf("Cancel during the backoff = %v, %v; want cancelled", got, err)
	}
}

// TestBackoffWait: the wait before retry n.
func TestBackoffWait(t *testing.T) {
	b := mailbox.Backoff{Initial: time.Second, Multiplier: 3, Max: 20 * time.Second}
	for n, want := range map[int]time.Duration{1: time.Second, 2: 3 * time.Second, 3: 9 * time.Second, 4: 20 * time.Second, 10: 20 * time.Second} {
		if got := b.Wait(n); got != want {
			t.Errorf("Wait(%d) = %v, want %v", n, got, want)
		}
	}
	if got := (mailbox.Backoff{}).Wait(3); got != 0 {
		t.Errorf("no backoff: Wait(3) = %v, want 0", got)
	}
}
