package protocol

import "testing"

func TestKeys(t *testing.T) {
	k := NewKeys("gw")
	p := k.Part(7)
	r := k.Ring(RingPush)
	tests := []struct {
		name, got, want string
	}{
		{"Prefix", k.Prefix(), "gw:"},
		{"Part.Prefix", p.Prefix(), "{gw:7}:"},
		{"Command", p.Command("app-1", "r-42"), "{gw:7}:cmd:app-1:r-42"},
		{"Command with a colon in the id", p.Command("app-1", "a:b"), "{gw:7}:cmd:app-1:a:b"},
		{"Claim", p.Claim("app-1", "r-42"), "{gw:7}:claim:app-1:r-42"},
		{"ClientCommands", p.ClientCommands("app-1", "dev-1"), "{gw:7}:cmds:app-1:dev-1"},
		{"Mailbox", p.Mailbox("dev-1"), "{gw:7}:mbox:dev-1"},
		{"Lanes", p.Lanes("dev-1"), "{gw:7}:lanes:dev-1"},
		{"Polled", p.Polled("dev-1"), "{gw:7}:polled:dev-1"},
		{"Mailboxes", p.Mailboxes(), "{gw:7}:mboxes"},
		{"Timers", p.Timers(), "{gw:7}:timers"},
		{"Dead", p.Dead(), "{gw:7}:dead"},
		{"Outbox", p.Outbox(), "{gw:7}:outbox"},
		{"Queued", p.Queued(), "{gw:7}:queued"},
		{"Meta", p.Meta(), "{gw:7}:meta"},
		{"Barrier", p.Barrier(), "{gw:7}:barrier"},
		{"Session", p.Session("dev-1"), "{gw:7}:sess:dev-1"},
		{"SessionConn", p.SessionConn("dev-1"), "{gw:7}:sess:dev-1:conn"},
		{"StatusCounts", p.StatusCounts(29_000_000), "{gw:7}:stats:29000000"},
		{"Ring.Nodes", r.Nodes(), "{gw:ring:push}:nodes"},
		{"Ring.Node", r.Node("push-1"), "{gw:ring:push}:node:push-1"},
		{"Ring.Changes", r.Changes(), "{gw:ring:push}:changes"},
		{"NodeSessions", k.NodeSessions("push-1"), "gw:node:push-1:sessions"},
		{"NodePending", k.NodePending("push-1"), "gw:node:push-1:pending"},
		{"NodeWake", k.NodeWake("push-1"), "gw:node:push-1:wake"},
	}
	seen := map[string]string{}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("Keys{%q}.%s(…) = %q, want %q", k.NS, tt.name, tt.got, tt.want)
		}
		if !k.Owns(tt.got) {
			t.Errorf("Keys{%q}.Owns(%q) = false, want true", k.NS, tt.got)
		}
		if other, dup := seen[tt.got]; dup {
			t.Errorf("Keys{%q}.%s(…) = %q, the same key as %s", k.NS, tt.name, tt.got, other)
		}
		seen[tt.got] = tt.name
	}
}

// TestKeysNamespace checks that no key of one namespace is owned by
// another, even when one namespace's name starts with the other's.
func TestKeysNamespace(t *testing.T) {
	all := func(k Keys) []string {
		p := k.Part(3)
		return []string{
			p.Command("c", "1"), p.Claim("c", "1"), p.ClientCommands("c", "d"), p.Mailbox("d"),
			p.Mailboxes(), p.Timers(), p.Dead(), p.Outbox(), p.Queued(), p.Session("d"), p.StatusCounts(1),
			k.Ring(RingWorkers).Nodes(), k.NodeSessions("n"), k.NodePending("n"), k.NodeWake("n"),
		}
	}
	spaces := []string{"gw", "gw2", "test-1", "t.2"}
	for _, ns := range spaces {
		k := NewKeys(ns)
		for _, key := range all(k) {
			if !k.Owns(key) {
				t.Errorf("NewKeys(%q).Owns(%q) = false, want true", ns, key)
			}
			for _, other := range spaces {
				if other != ns && NewKeys(other).Owns(key) {
					t.Errorf("NewKeys(%q).Owns(%q) = true, want false", other, key)
				}
			}
		}
	}
}
