package main

import (
	"encoding/base64"
	"fmt"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// noneToken is an unsigned token with alg "none".
func noneToken(sub string) string {
	enc := base64.RawURLEncoding
	h := enc.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`))
	p := enc.EncodeToString(fmt.Appendf(nil, `{"sub":%q,"role":"device","exp":%d}`, sub, time.Now().Add(time.Hour).Unix()))
	return h + "." + p + "."
}

func TestAuthentication(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	otherSecret, err := auth.Mint([]byte("another-secret"), "dev-a", auth.RoleDevice, nil, time.Hour)
	require.NoError(t, err)
	expired, err := auth.Mint([]byte(testSecret), "dev-a", auth.RoleDevice, nil, -time.Minute)
	require.NoError(t, err)

	tests := []struct {
		name                         string
		clientID, username, password string
		v3Code, v5Code               byte
	}{
		{"good", "dev-a", "dev-a", token(t, "dev-a", auth.RoleDevice, time.Hour), 0x00, 0x00},
		{"client token", "cli-a", "cli-a", token(t, "cli-a", auth.RoleClient, time.Hour), 0x00, 0x00},
		{"wrong secret", "dev-a", "dev-a", otherSecret, 0x04, 0x86},
		{"expired", "dev-a", "dev-a", expired, 0x04, 0x86},
		{"alg none", "dev-a", "dev-a", noneToken("dev-a"), 0x04, 0x86},
		{"garbage", "dev-a", "dev-a", "not-a-token", 0x04, 0x86},
		{"no password", "dev-a", "dev-a", "", 0x04, 0x86},
		{"username is not the token's sub", "dev-a", "dev-a", token(t, "dev-b", auth.RoleDevice, time.Hour), 0x04, 0x86},
		{"client ID is not the identity", "dev-b", "dev-a", token(t, "dev-a", auth.RoleDevice, time.Hour), 0x02, 0x85},
	}
	for _, tt := range tests {
		t.Run("v3/"+tt.name, func(t *testing.T) {
			c, code, err := connectV3(t, n.Addr(), tt.clientID, tt.username, tt.password)
			require.Equal(t, tt.v3Code, code, "CONNACK code (err %v)", err)
			if tt.v3Code == 0 {
				require.NoError(t, err)
				c.Disconnect(0)
			} else {
				require.Error(t, err)
			}
		})
		t.Run("v5/"+tt.name, func(t *testing.T) {
			c, ca, err := connectV5(t, n.Addr(), tt.clientID, tt.username, tt.password)
			require.NotNil(t, ca, "no CONNACK: %v", err)
			require.Equal(t, tt.v5Code, ca.ReasonCode, "CONNACK reason (err %v)", err)
			require.False(t, ca.SessionPresent)
			if tt.v5Code == 0 {
				require.NoError(t, err)
				require.NotNil(t, ca.Properties)
				require.False(t, ca.Properties.RetainAvailable, "retain available")
				require.NotNil(t, ca.Properties.MaximumQoS)
				require.Equal(t, byte(1), *ca.Properties.MaximumQoS)
				require.NotNil(t, ca.Properties.MaximumPacketSize)
				require.Equal(t, uint32(DefaultMaxPacketSize), *ca.Properties.MaximumPacketSize)
				_ = c
			} else {
				require.Error(t, err)
			}
		})
	}
}

// TestTakeoverByAnotherIdentity: an identity cannot take over (or
// inherit) another's session, whatever client ID it claims.
func TestTakeoverByAnotherIdentity(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	victim := mustV3(t, n.Addr(), "dev-victim")
	col := newCollector()
	require.Equal(t, byte(1), victim.subscribe(t, protocol.DeviceCommandsTopic("dev-victim"), 1, col))

	// dev-evil presents its own valid token with the victim's client ID.
	_, code, err := connectV3(t, n.Addr(), "dev-victim", "dev-evil", token(t, "dev-evil", auth.RoleDevice, time.Hour))
	require.Error(t, err)
	require.Equal(t, byte(0x02), code)
	// ... or the victim's username with its own token.
	_, code, err = connectV3(t, n.Addr(), "dev-victim", "dev-victim", token(t, "dev-evil", auth.RoleDevice, time.Hour))
	require.Error(t, err)
	require.Equal(t, byte(0x04), code)
	_, ca, err := connectV5(t, n.Addr(), "dev-victim", "dev-evil", token(t, "dev-evil", auth.RoleDevice, time.Hour),
		func(c *paho.Connect) { c.CleanStart = false })
	require.Error(t, err)
	require.Equal(t, byte(0x85), ca.ReasonCode)

	// The victim's session is untouched and still receives.
	require.True(t, victim.IsConnectionOpen())
	e.put("dev-victim", protocol.DeviceCommandsTopic("dev-victim"), "still-mine", n.NodeID())
	col.waitDistinct(t, 1, 5*time.Second)
	require.Equal(t, []string{"still-mine"}, col.list())
}

// TestSessionsAreFresh: a second connection of the same identity takes
// the session over, but inherits nothing: session present 0 and no
// subscription, even without clean start.
func TestSessionsAreFresh(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	id := "dev-fresh"
	topic := protocol.DeviceCommandsTopic(id)
	persistent := func(c *paho.Connect) {
		c.CleanStart = false
		sei := uint32(3600)
		c.Properties = &paho.ConnectProperties{SessionExpiryInterval: &sei}
	}
	first, ca, err := connectV5(t, n.Addr(), id, id, token(t, id, auth.RoleDevice, time.Hour), persistent)
	require.NoError(t, err)
	require.False(t, ca.SessionPresent)
	require.Equal(t, byte(1), first.subscribe(t, topic, 1))
	old := n.current(id)
	require.NotNil(t, old, "the first session")

	second, ca, err := connectV5(t, n.Addr(), id, id, token(t, id, auth.RoleDevice, time.Hour), persistent)
	require.NoError(t, err)
	require.False(t, ca.SessionPresent, "session present")
	select {
	case d := <-first.disconnects:
		require.Equal(t, byte(0x8E), d.ReasonCode) // session taken over
	case <-time.After(5 * time.Second):
		t.Fatal("first connection was not taken over")
	}

	// The old connection's end does not unregister the new session: once
	// the old session has ended (its unregister done), the registration
	// is still the node's.
	select {
	case <-old.finished:
	case <-time.After(5 * time.Second):
		t.Fatal("the old session did not end within 5s of its takeover")
	}
	node, err := e.store.SessionNode(t.Context(), id)
	require.NoError(t, err)
	require.Equal(t, n.NodeID(), node)
	// The two connections of a takeover start and end on their own
	// goroutines: the gauge is waited for, not read once (a session
	// counted too many would never go).
	eventually(t, 5*time.Second, func() bool { return value(t, n.m.sessions) == 1 },
		"gw_push_sessions never came back to 1 after the takeover")

	// No inherited subscription: nothing is streamed before subscribing.
	// The evidence that the session took the wake of m1: a step consumed
	// it (more is set, for the first subscription) and the session is
	// idle again.
	s2 := n.current(id)
	require.NotNil(t, s2, "the second session")
	e.put(id, topic, "m1", n.NodeID())
	eventually(t, 5*time.Second, func() bool {
		s2.mu.Lock()
		defer s2.mu.Unlock()
		// more is the runner's; with the run state idle it is not
		// running, and the next run starts by taking mu.
		return s2.run == runIdle && s2.more
	}, "the second session took the wake of m1")
	require.Empty(t, second.col.list())
	require.Equal(t, int64(1), e.mailboxLen(id))
	require.Equal(t, byte(1), second.subscribe(t, topic, 1))
	second.col.waitDistinct(t, 1, 5*time.Second)
	require.Empty(t, first.col.list())
}

func TestTokenExpiryEndsSession(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	// JWT expiry has whole seconds: the session ends within ~2s.
	c5, _, err := connectV5(t, n.Addr(), "dev-exp5", "dev-exp5", token(t, "dev-exp5", auth.RoleDevice, 2*time.Second))
	require.NoError(t, err)
	c3, _, err := connectV3(t, n.Addr(), "dev-exp3", "dev-exp3", token(t, "dev-exp3", auth.RoleDevice, 2*time.Second))
	require.NoError(t, err)
	select {
	case d := <-c5.disconnects:
		require.Equal(t, byte(0xA0), d.ReasonCode) // maximum connect time
	case <-time.After(5 * time.Second):
		t.Fatal("MQTT 5 session not closed when its token expired")
	}
	select {
	case <-c3.lost:
	case <-time.After(5 * time.Second):
		t.Fatal("MQTT 3.1.1 session not closed when its token expired")
	}
}
