package mailbox_test

import (
	"errors"
	"fmt"
	"testing"

	"github.com/iotgw/gateway/mailbox"
)

// TestForgetSessions: the registrations a silent node left are deleted,
// those of identities that moved to another node are kept; nothing
// changes while the node is a live ring member unless forced.
func TestForgetSessions(t *testing.T) {
	t.Parallel()
	e := newEnv(t, mailbox.Options{})
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	const dead, live = "node-dead", "node-live"
	const n = 2500 // more than one batch
	for i := range n {
		must(e.s.SetSessionConn(e.ctx, fmt.Sprintf("d-%d", i), dead, "c"))
	}
	must(e.s.SetSessionConn(e.ctx, "d-0", live, "c2")) // reconnected elsewhere
	must(e.s.Repend(e.ctx, dead, "d-1"))

	// Alive: nothing changes.
	must(e.rdb.Set(e.ctx, e.keys.RingNode(dead), "mqtt://x", 0).Err())
	if _, err := e.s.ForgetSessions(e.ctx, dead, false); !errors.Is(err, mailbox.ErrNodeAlive) {
		t.Fatalf("ForgetSessions of a live node = %v, want ErrNodeAlive", err)
	}
	if got, _ := e.s.SessionNode(e.ctx, "d-1"); got != dead {
		t.Fatalf("a live node's session was forgotten: node %q", got)
	}

	must(e.rdb.Del(e.ctx, e.keys.RingNode(dead)).Err())
	got, err := e.s.ForgetSessions(e.ctx, dead, false)
	must(err)
	if got != n-1 {
		t.Errorf("ForgetSessions took %d identities, want %d", got, n-1)
	}
	for _, tt := range []struct{ id, want string }{{"d-0", live}, {"d-1", ""}, {fmt.Sprintf("d-%d", n-1), ""}} {
		if node, _ := e.s.SessionNode(e.ctx, tt.id); node != tt.want {
			t.Errorf("SessionNode(%s) = %q, want %q", tt.id, node, tt.want)
		}
	}
	for _, k := range []string{e.keys.NodeSessions(dead), e.keys.NodePending(dead), e.keys.Session("d-1") + ":conn"} {
		if x, _ := e.rdb.Exists(e.ctx, k).Result(); x != 0 {
			t.Errorf("%s left behind", k)
		}
	}
	if x, _ := e.rdb.Exists(e.ctx, e.keys.Session("d-0")+":conn").Result(); x != 1 {
		t.Error("the moved identity lost its connection token")
	}

	// Forced, for a node's own name at start.
	must(e.s.SetSessionConn(e.ctx, "d-9", live, "c3"))
	must(e.rdb.Set(e.ctx, e.keys.RingNode(live), "mqtt://y", 0).Err())
	if got, err := e.s.ForgetSessions(e.ctx, live, true); err != nil || got != 2 {
		t.Errorf("forced ForgetSessions = %d, %v; want 2, nil", got, err)
	}
	if node, _ := e.s.SessionNode(e.ctx, "d-9"); node != "" {
		t.Errorf("forced: SessionNode(d-9) = %q, want none", node)
	}
}
