package mailbox_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
)

// CheckDurable passes on the local Cluster and Sentinel deployments
// (appendonly yes, appendfsync always on every node; on Cluster it asks
// every primary) and, with a barrier, when enough replicas are connected;
// it refuses the shared Redis, which is not durable, saying why.
func TestCheckDurable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	if err := mailbox.CheckDurable(ctx, testenv.Redis(t), 0); !errors.Is(err, mailbox.ErrRedisNotDurable) {
		t.Logf("the shared Redis is durable (%v): its case is not checked", err)
	} else {
		if !strings.Contains(err.Error(), "appendfsync") || !strings.Contains(err.Error(), "GW_DURABILITY=relaxed") {
			t.Errorf("CheckDurable(shared Redis) = %q, want it to name appendfsync and GW_DURABILITY=relaxed", err)
		}
		var nd *mailbox.NotDurableError
		if !errors.As(err, &nd) || !strings.Contains(nd.Why, "appendfsync") {
			t.Errorf("CheckDurable(shared Redis) = %#v, want a *NotDurableError whose Why names appendfsync", err)
		}
	}
	for _, tt := range []struct {
		name string
		url  func(testing.TB) string
	}{
		{"cluster", testenv.RedisClusterURL},
		{"sentinel", testenv.RedisSentinelURL},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := config.Common{RedisURL: tt.url(t)}
			rdb, err := c.NewRedis(nil)
			if err != nil {
				t.Fatal(err)
			}
			defer rdb.Close()
			for _, wait := range []int{0, 1} {
				if err := mailbox.CheckDurable(ctx, rdb, wait); err != nil {
					t.Errorf("CheckDurable(%s, wait replicas %d) = %v, want nil", tt.name, wait, err)
				}
			}
		})
	}
}
