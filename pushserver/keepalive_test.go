package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/auth"
)

// TestServerKeepAlive: an MQTT 5 client that asks for a longer keep alive
// than GW_MAX_KEEPALIVE (10 s) is told the maximum in CONNACK, so it
// notices within 15 s a push server that stopped answering; MQTT 3.1.1
// has no such property and keeps its own.
func TestServerKeepAlive(t *testing.T) {
	t.Parallel()
	e := newEnv(t)
	n := e.startNode()
	tests := []struct {
		version  byte
		want     uint16
		wantFlag bool
	}{
		{5, 10, true},
		{4, 0, false},
	}
	for _, tt := range tests {
		id := fmt.Sprintf("dev-ka-%d", tt.version)
		c := dialRaw(t, n.Addr(), tt.version)
		ack := c.connect(id, token(t, id, auth.RoleDevice, time.Hour)) // asks for 30 s
		require.Equal(t, byte(0), ack.ReasonCode, "MQTT %d", tt.version)
		if ack.Properties.ServerKeepAliveFlag != tt.wantFlag || ack.Properties.ServerKeepAlive != tt.want {
			t.Errorf("MQTT %d: CONNACK Server Keep Alive = %d (set %v), want %d (set %v)", tt.version,
				ack.Properties.ServerKeepAlive, ack.Properties.ServerKeepAliveFlag, tt.want, tt.wantFlag)
		}
	}
}
