package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
)

// TestOneClientCannotTakeTheGateway: one client floods the apiserver with
// slow request bodies, or with long-polls (DESIGN §8.5). It gets its share
// (64 places in flight of the default 512; 64 waiting polls) and 429
// beyond it, while another client's commands are still accepted promptly.
func TestOneClientCannotTakeTheGateway(t *testing.T) {
	t.Parallel()
	const share = 64 // DefaultMaxInFlight / clientShareDivisor, and maxPollsPerClient
	tests := []struct {
		name  string
		n     int
		flood func(t *testing.T, g *gw, tok string, n int, refused *atomic.Int64)
	}{
		{"slow bodies", 200, floodSlowBodies},
		{"long-polls", 300, floodLongPolls},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			g := newGW(t, func(c *Config, _ *Deps) { c.MaxWait = 30 * time.Second })
			attacker := token(t, "attacker", auth.RoleClient, "dev-*")
			var refused atomic.Int64
			tt.flood(t, g, attacker, tt.n, &refused)
			// Everything beyond the share is refused (429) at once, the
			// share is held.
			require.Eventually(t, func() bool { return refused.Load() == int64(tt.n-share) }, 20*time.Second, 20*time.Millisecond,
				"%d of the flood's %d requests refused, want all beyond the share of %d", refused.Load(), tt.n, share)

			victim := token(t, "victim", auth.RoleClient, "dev-*")
			var took []time.Duration
			for i := range 50 {
				start := time.Now()
				r := g.post(victim, "dev-1", cmd(fmt.Sprintf("v%d", i), "reboot", nil))
				took = append(took, time.Since(start))
				require.Equal(t, http.StatusAccepted, r.Status, "the victim's command %d during the flood: %s", i, r.Body)
			}
			slices.Sort(took)
			p99 := took[len(took)*99/100]
			t.Logf("victim's POST during the flood: p50 %v, p99 %v", took[len(took)/2], p99)
			assert.Less(t, p99, time.Second, "the victim's p99 (DESIGN wants 100 ms on an idle machine; -race on 2 busy cores is slower)")
			assert.Equal(t, int64(tt.n-share), refused.Load(), "refusals after the victim's run")
		})
	}
}

// floodSlowBodies opens n connections that each send a POST's headers
// and one byte of its body, then nothing; refused counts the 429s.
func floodSlowBodies(t *testing.T, g *gw, tok string, n int, refused *atomic.Int64) {
	addr := g.ts.Listener.Addr().String()
	for range n {
		c, err := net.Dial("tcp", addr)
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		_, err = fmt.Fprintf(c, "POST /v1/devices/dev-1/commands HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"+
			"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{", tok)
		require.NoError(t, err)
		go func() {
			line, _ := bufio.NewReader(c).ReadString('\n')
			if strings.HasPrefix(line, "HTTP/1.1 429 ") {
				refused.Add(1)
			}
		}()
	}
}

// floodLongPolls starts n long-polls of a command that does not end;
// refused counts the 429s.
func floodLongPolls(t *testing.T, g *gw, tok string, n int, refused *atomic.Int64) {
	r := g.post(tok, "dev-1", cmd("held", "reboot", nil))
	require.Equal(t, http.StatusAccepted, r.Status, "%s", r.Body)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: n}}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() { cancel(); client.CloseIdleConnections() })
	for range n {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, g.ts.URL+"/v1/commands/held?wait=30s", nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+tok)
		go func() {
			resp, err := client.Do(req)
			if err != nil {
				return
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusTooManyRequests {
				refused.Add(1)
			}
		}()
	}
}
