package main

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
	"github.com/iotgw/gateway/protocol"
)

// TestTakeoverStorm: many connections of one identity arriving at the
// same moment (a device reconnecting in a loop, two devices with one
// identity) end with one live connection that is the node's current
// session of the identity and is registered in Redis, so that a wake
// signal reaches it at once — not only the full sweep, seconds later.
func TestTakeoverStorm(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	// Sweeps far apart: only the wake signal can deliver in time.
	n := e.startNode(func(c *Config) { c.SweepInterval = time.Minute })
	const id = "dev-storm"
	tok := token(t, id, auth.RoleDevice, time.Hour)
	for round := range 5 {
		const k = 16
		clients := make([]*v3, k)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range k {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				c, _, err := connectV3(t, n.Addr(), id, id, tok)
				if err == nil {
					clients[i] = c
				}
			}()
		}
		close(start)
		wg.Wait()
		var live *v3
		eventually(t, 5*time.Second, func() bool {
			live = nil
			alive := 0
			for _, c := range clients {
				if c != nil && c.IsConnectionOpen() {
					alive++
					live = c
				}
			}
			return alive == 1
		}, "round %d: one connection left", round)
		eventually(t, 5*time.Second, func() bool {
			s := n.current(id)
			if s == nil {
				return false
			}
			node, err := e.store.SessionNode(t.Context(), id)
			require.NoError(t, err)
			return node == n.NodeID()
		}, "round %d: the identity is the node's current session and registered", round)
		col := newCollector()
		live.subscribe(t, protocol.DeviceCommandsTopic(id), 1, col)
		want := fmt.Sprintf("round-%d", round)
		e.put(id, protocol.DeviceCommandsTopic(id), want, n.NodeID())
		col.waitDistinct(t, 1, 3*time.Second)
		require.Equal(t, []string{want}, col.list(), "round %d", round)
		// Its PUBACK removes it, so the next round starts empty.
		eventually(t, 5*time.Second, func() bool {
			l, err := e.store.Len(t.Context(), id)
			return err == nil && l == 0
		}, "round %d: entry acknowledged", round)
		live.Disconnect(0)
		eventually(t, 5*time.Second, func() bool { return n.current(id) == nil }, "round %d: session ended", round)
	}
}
