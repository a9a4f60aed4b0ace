package protocol

import (
	"strings"
	"testing"
)

func TestKeys(t *testing.T) {
	k := NewKeys("gw")
	tests := []struct {
		name, got, want string
	}{
		{"Prefix", k.Prefix(), "gw:"},
		{"Command", k.Command("app-1", "r-42"), "gw:cmd:app-1:r-42"},
		{"Command with a colon in the id", k.Command("app-1", "a:b"), "gw:cmd:app-1:a:b"},
		{"ClientCommands", k.ClientCommands("app-1", "dev-1"), "gw:cmds:app-1:dev-1"},
		{"Mailbox", k.Mailbox("dev-1"), "gw:mbox:dev-1"},
		{"Mailboxes", k.Mailboxes(), "gw:mboxes"},
		{"Timers", k.Timers(), "gw:timers"},
		{"Dead", k.Dead(), "gw:dead"},
		{"RingNodes", k.RingNodes(), "gw:ring:nodes"},
		{"RingNode", k.RingNode("push-1"), "gw:ring:node:push-1"},
		{"RingChanges", k.RingChanges(), "gw:ring:changes"},
		{"Session", k.Session("dev-1"), "gw:sess:dev-1"},
		{"NodeSessions", k.NodeSessions("push-1"), "gw:node:push-1:sessions"},
		{"NodePending", k.NodePending("push-1"), "gw:node:push-1:pending"},
		{"NodeWake", k.NodeWake("push-1"), "gw:node:push-1:wake"},
		{"StatusCounts", k.StatusCounts(29_000_000), "gw:stats:29000000"},
	}
	seen := map[string]string{}
	for _, tt := range tests {
		if tt.got != tt.want {
			t.Errorf("Keys{%q}.%s(…) = %q, want %q", k.NS, tt.name, tt.got, tt.want)
		}
		if !strings.HasPrefix(tt.got, "gw:") || !k.Owns(tt.got) {
			t.Errorf("Keys{%q}.Owns(%q) = false, want true", k.NS, tt.got)
		}
		if other, dup := seen[tt.got]; dup {
			t.Errorf("Keys{%q}.%s(…) = %q, the same key as %s", k.NS, tt.name, tt.got, other)
		}
		seen[tt.got] = tt.name
	}
}

// TestKeysNamespace checks that every key of one namespace starts with it
// and no key of another namespace is owned by it.
func TestKeysNamespace(t *testing.T) {
	all := func(k Keys) []string {
		return []string{
			k.Command("c", "1"), k.ClientCommands("c", "d"), k.Mailbox("d"), k.Mailboxes(),
			k.Timers(), k.Dead(), k.RingNodes(), k.RingNode("n"), k.RingChanges(),
			k.Session("d"), k.NodeSessions("n"), k.NodePending("n"), k.NodeWake("n"),
			k.StatusCounts(1), k.StatusCounts(0), k.StatusCounts(-1),
		}
	}
	for _, ns := range []string{"gw", "test-1", "t.2"} {
		k := NewKeys(ns)
		for _, key := range all(k) {
			if !strings.HasPrefix(key, ns+":") || !k.Owns(key) {
				t.Errorf("NewKeys(%q).Owns(%q) = false, want true", ns, key)
			}
		}
	}
	a, b := NewKeys("gw"), NewKeys("gw2")
	for _, key := range all(b) {
		if a.Owns(key) {
			t.Errorf("NewKeys(%q).Owns(%q) = true, want false", a.NS, key)
		}
	}
	for _, key := range all(a) {
		if b.Owns(key) {
			t.Errorf("NewKeys(%q).Owns(%q) = true, want false", b.NS, key)
		}
	}
	for _, key := range []string{"gw", "gw.commands", "gwx:cmd:c:1", ""} {
		if a.Owns(key) {
			t.Errorf("NewKeys(%q).Owns(%q) = true, want false", a.NS, key)
		}
	}
}

// TestCommandKeyUnambiguous checks that (client, id key) pairs map to
// distinct keys: identities have no colon, so the first colon after the
// prefix ends the client.
func TestCommandKeyUnambiguous(t *testing.T) {
	k := NewKeys("gw")
	pairs := [][2]string{{"a", "b:c"}, {"a.b", "c"}, {"a", "1"}, {"a1", "1"}, {"a", "11"}}
	seen := map[string][2]string{}
	for _, p := range pairs {
		if !ValidIdentity(p[0]) {
			t.Fatalf("ValidIdentity(%q) = false", p[0])
		}
		key := k.Command(p[0], p[1])
		if q, dup := seen[key]; dup {
			t.Errorf("Command(%q, %q) = Command(%q, %q) = %q", p[0], p[1], q[0], q[1], key)
		}
		seen[key] = p
	}
}
