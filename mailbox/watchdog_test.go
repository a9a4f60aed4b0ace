package mailbox_test

import (
	"context"
	"testing"
	"time"

	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// TestClaimWatchdog: a claim still open when its command cannot be open
// any more is settled by its watchdog, in the client's partition, by
// what the device's partition holds (DESIGN §7a): a record that is gone
// ends lost (-32006) with one result for the client; a final record whose
// relay was lost is relayed again; a void tombstone only drops the
// watchdog; a record still open re-arms it.
func TestClaimWatchdog(t *testing.T) {
	t.Parallel()
	// Past every deadline of cmd's commands (expires_in 1h, timeout 30s,
	// lease and grace).
	const later = 3 * time.Hour
	tests := []struct {
		name string
		// setup makes the command and breaks what a fault would break.
		setup       func(e *env, c *mailbox.Command)
		outcome     string
		status      protocol.Status // as Get sees it after the watchdog ("" for not found)
		code        int             // of the client's one result (0: no result)
		timersAfter int64
	}{
		{"record lost", func(e *env, c *mailbox.Command) {
			e.queued(c)
			must(t, e.rdb.Del(e.ctx, e.keys.Command(c.Client, c.ID.Key())).Err())
			must(t, e.rdb.ZRem(e.ctx, e.keys.Timers(), "d|"+c.Device+"|"+c.Client+"|"+c.ID.Key()).Err())
		}, "lost", protocol.StatusLost, protocol.CodeLost, 0},
		{"final, relay lost", func(e *env, c *mailbox.Command) {
			e.queued(c)
			broken := testenv.Redis(t)
			broken.AddHook(failRelay)
			s := mailbox.New(broken, e.s.Keys().NS, mailbox.Options{Partitions: 1, Now: e.clock.Now, Logger: testenv.Logger(t)})
			if _, err := s.Cancel(e.ctx, c.Client, c.ID.Key(), ""); err != nil {
				t.Fatal(err)
			}
			must(t, e.rdb.Del(e.ctx, e.keys.Outbox()).Err()) // and the outbox entry with it
		}, "relayed", protocol.StatusCancelled, protocol.CodeCancelled, 0},
		{"void", func(e *env, c *mailbox.Command) {
			_, rec, err := e.s.Reserve(e.ctx, c)
			if err != nil {
				t.Fatal(err)
			}
			must(t, e.s.Release(e.ctx, c.Device, c.Client, c.ID.Key(), rec.LeaseToken))
		}, "void", "", 0, 0},
		{"still open", func(e *env, c *mailbox.Command) {
			e.sent(c)
			// Its deliver-by timer went missing: the record stays sent.
			must(t, e.rdb.ZRem(e.ctx, e.keys.Timers(), "d|"+c.Device+"|"+c.Client+"|"+c.ID.Key()).Err())
		}, "rearmed", protocol.StatusSent, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, mailbox.Options{})
			c := cmd(t, "c1", "d1", `"w"`, ``)
			tt.setup(e, c)
			e.clock.Add(later)
			_, outcomes, err := e.s.FireTimersOutcomes(e.ctx, 100, nil)
			if err != nil || outcomes[tt.outcome] != 1 {
				t.Fatalf("FireTimers outcomes = %v, %v; want one %s", outcomes, err, tt.outcome)
			}
			e.wantGet("c1", "w", tt.status)
			rs := e.results("c1")
			switch {
			case tt.code == 0 && len(rs) != 0:
				t.Errorf("client results = %+v, want none", rs)
			case tt.code != 0 && (len(rs) != 1 || rs[0].Error == nil || rs[0].Error.Code != tt.code || string(rs[0].ID) != `"w"`):
				t.Errorf("client results = %+v, want one %d for id \"w\"", rs, tt.code)
			}
			if n, _ := e.rdb.ZCard(e.ctx, e.keys.Timers()).Result(); n != tt.timersAfter {
				t.Errorf("%d timers left, want %d", n, tt.timersAfter)
			}
			// Once more, later: nothing changes.
			e.clock.Add(later)
			if _, err := e.s.FireTimers(e.ctx, 100, nil); err != nil {
				t.Fatal(err)
			}
			if rs2 := e.results("c1"); len(rs2) != len(rs) {
				t.Errorf("client results after a second watchdog = %d, want %d", len(rs2), len(rs))
			}
		})
	}
}

// TestLostCounted: a lost command is counted, and the lost
// status is final with -32006 for GET as well as for the client.
func TestLostCounted(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	c := e.queued(cmd(t, "c1", "d1", `7`, ``))
	must(t, e.rdb.Del(e.ctx, e.keys.Command("c1", c.ID.Key())).Err())
	e.clock.Add(3 * time.Hour)
	e.fire()
	if got := e.s.Lost(); got != 1 {
		t.Errorf("Lost() = %d, want 1", got)
	}
	counts, err := e.s.StatusCounts(context.Background(), 1)
	if err != nil || counts[protocol.StatusLost] != 1 {
		t.Errorf("StatusCounts = %v, %v; want lost 1", counts, err)
	}
	got, err := e.s.Get(e.ctx, "c1", "7")
	if err != nil || !got.Status.Final() || got.Device != "d1" || string(got.ID.Raw()) != "7" {
		t.Fatalf("Get = %+v, %v; want lost, final, device d1, id 7", got, err)
	}
	r, err := protocol.ParseResponse(got.Response)
	if err != nil || r.Error == nil || r.Error.Code != protocol.CodeLost {
		t.Errorf("Get response = %s, %v; want -32006", got.Response, err)
	}
}

// wantGet checks that Get(client, key) finds the command with status, or
// (status "") does not find it.
func (e *env) wantGet(client, key string, status protocol.Status) {
	e.t.Helper()
	got, err := e.s.Get(e.ctx, client, key)
	switch {
	case status == "" && err == nil:
		e.t.Errorf("Get(%s, %s) = %s, want not found", client, key, got.Status)
	case status != "" && (err != nil || got.Status != status):
		e.t.Errorf("Get(%s, %s) = %v, %v; want %s", client, key, got, err, status)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
