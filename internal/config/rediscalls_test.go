package config

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/internal/testenv"
)

// redisCalls reads the process's gw_redis_calls_total and
// gw_redis_pipelined_commands_total through a registry of NewRegistry.
func redisCalls(t *testing.T) (command, pipeline, pipelined float64) {
	t.Helper()
	mfs, err := telemetry.NewRegistry().Gather()
	require.NoError(t, err)
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			switch mf.GetName() {
			case "gw_redis_calls_total":
				for _, l := range m.GetLabel() {
					if l.GetName() != "kind" {
						continue
					}
					switch l.GetValue() {
					case "command":
						command = m.GetCounter().GetValue()
					case "pipeline":
						pipeline = m.GetCounter().GetValue()
					}
				}
			case "gw_redis_pipelined_commands_total":
				pipelined = m.GetCounter().GetValue()
			}
		}
	}
	return command, pipeline, pipelined
}

// TestRedisCallsCounted checks gw_redis_calls_total on one server and on
// the Cluster: a script is one call however many commands it runs, a
// pipeline is one call per server it reaches. Each step runs once before
// it is counted, so that the client has dialed its connections and
// loaded the slot map (calls of their own). Not parallel: the counters
// are the process's.
func TestRedisCallsCounted(t *testing.T) {
	forms := []struct {
		name string
		url  func(t *testing.T) string
	}{
		{"one server", func(t *testing.T) string { return testenv.RedisServerURL(t) }},
		{"cluster", func(t *testing.T) string { return testenv.RedisClusterURL(t) }},
	}
	for _, form := range forms {
		t.Run(form.name, func(t *testing.T) {
			c := Common{RedisURL: form.url(t)}
			// One connection per server: a new connection's handshake
			// (HELLO, CLIENT SETINFO) is sent through the hooks as well.
			rdb, err := c.NewRedis(func(o *redis.UniversalOptions) { o.PoolSize = 1 })
			require.NoError(t, err)
			t.Cleanup(func() { rdb.Close() })
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			ns := testName(t)
			tag := "{" + ns + ":p1}"
			// Keys in many slots, one DEL each at the end.
			var spread []string
			nodes := map[string]bool{}
			for i := range 30 {
				k := fmt.Sprintf("%s:s:%d", ns, i)
				spread = append(spread, k)
				p, err := PrimaryForKey(ctx, rdb, k)
				require.NoError(t, err)
				nodes[p.Options().Addr] = true
			}
			t.Cleanup(func() {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				for _, k := range append(spread, tag+"a", tag+"b") {
					rdb.Del(ctx, k)
				}
			})
			steps := []struct {
				name                     string
				run                      func() error
				command, pipeline, inner float64 // the counters' growth
			}{
				{"one command", func() error { return rdb.Set(ctx, tag+"a", 1, time.Minute).Err() }, 1, 0, 0},
				{"a script running 20 commands", func() error {
					return rdb.Eval(ctx, "for i = 1, 20 do redis.call('INCR', KEYS[1]) end return 1", []string{tag + "b"}).Err()
				}, 1, 0, 0},
				{"a pipeline of 3 commands on one slot", func() error {
					_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
						p.Incr(ctx, tag+"a")
						p.Incr(ctx, tag+"b")
						p.Get(ctx, tag+"a")
						return nil
					})
					return err
				}, 0, 1, 3},
				{"a pipeline over every slot's server", func() error {
					_, err := rdb.Pipelined(ctx, func(p redis.Pipeliner) error {
						for _, k := range spread {
							p.Set(ctx, k, 1, time.Minute)
						}
						return nil
					})
					return err
				}, 0, float64(len(nodes)), float64(len(spread))},
			}
			for _, st := range steps {
				require.NoError(t, st.run(), st.name) // every connection it needs dialed
				c0, p0, i0 := redisCalls(t)
				require.NoError(t, st.run(), st.name)
				c1, p1, i1 := redisCalls(t)
				if c1-c0 != st.command || p1-p0 != st.pipeline || i1-i0 != st.inner {
					t.Errorf("%s: counted %v commands, %v pipelines carrying %v; want %v, %v, %v",
						st.name, c1-c0, p1-p0, i1-i0, st.command, st.pipeline, st.inner)
				}
			}
		})
	}
}
