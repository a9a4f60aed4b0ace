package config

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/iotgw/gateway/internal/testenv"
)

// TestRedisForms runs the same commands through NewRedis against one
// server, the Redis Cluster and the Sentinel deployment: keys in many
// slots, EVAL and FCALL on hash-tagged keys, a write and its WAIT pipelined
// on the primary that owns the key, and pub/sub (sharded on the Cluster).
func TestRedisForms(t *testing.T) {
	t.Parallel()
	forms := []struct {
		name     string
		url      func(t *testing.T) string
		kind     RedisKind
		replicas int64 // what WAIT must count
	}{
		{"one server", func(t *testing.T) string { return testenv.RedisServerURL(t) }, RedisSingle, 0},
		{"cluster", func(t *testing.T) string { return testenv.RedisClusterURL(t) }, RedisCluster, 1},
		{"sentinel", func(t *testing.T) string { return testenv.RedisSentinelURL(t) }, RedisSentinel, 1},
	}
	for _, form := range forms {
		t.Run(form.name, func(t *testing.T) {
			t.Parallel()
			u := form.url(t)
			if _, kind, err := ParseRedisURL(u); err != nil || kind != form.kind {
				t.Fatalf("ParseRedisURL(%q) = %v, %v; want %v", u, kind, err, form.kind)
			}
			c := Common{RedisURL: u}
			rdb, err := c.NewRedis(func(o *redis.UniversalOptions) { o.DialTimeout = 2 * time.Second })
			require.NoError(t, err)
			t.Cleanup(func() { rdb.Close() })
			require.Equal(t, form.kind == RedisCluster, IsCluster(rdb))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			exercise(ctx, t, rdb, testName(t), form.replicas)
		})
	}
}

func exercise(ctx context.Context, t *testing.T, rdb redis.UniversalClient, ns string, replicas int64) {
	t.Helper()
	cluster := IsCluster(rdb)
	var keys []string
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for _, k := range keys { // one DEL per key: they are in many slots
			rdb.Del(ctx, k)
		}
	})

	// Keys in many slots; on the Cluster they reach every primary.
	primaries := map[string]bool{}
	for i := 0; i < 200; i++ {
		k := fmt.Sprintf("%s:k:%d", ns, i)
		keys = append(keys, k)
		require.NoError(t, rdb.Set(ctx, k, i, 5*time.Minute).Err())
		if cluster {
			p, err := PrimaryForKey(ctx, rdb, k)
			require.NoError(t, err)
			primaries[p.Options().Addr] = true
		}
	}
	for i, k := range keys {
		got, err := rdb.Get(ctx, k).Int()
		require.NoError(t, err)
		require.Equal(t, i, got, "GET %s", k)
	}
	if cluster {
		require.GreaterOrEqual(t, len(primaries), 3, "200 keys should reach every primary, reached %v", primaries)
	}

	// EVAL of a script on two keys of one partition (one hash tag), the
	// second time with the #!lua flags line the design asks for.
	tag := "{" + ns + ":p7}"
	a, b := tag+"a", tag+"b"
	keys = append(keys, a, b)
	n, err := rdb.Eval(ctx, "redis.call('SET', KEYS[1], ARGV[1], 'EX', 300); return redis.call('INCR', KEYS[2])", []string{a, b}, "x").Int()
	require.NoError(t, err)
	require.Equal(t, 1, n)
	n, err = rdb.Eval(ctx, "#!lua\nredis.call('EXPIRE', KEYS[1], 300); return redis.call('INCR', KEYS[1])", []string{b}).Int()
	require.NoError(t, err)
	require.Equal(t, 2, n)
	got, err := rdb.Get(ctx, a).Result()
	require.NoError(t, err)
	require.Equal(t, "x", got)

	// FCALL of a function loaded on every primary.
	lib := "gwt_" + strings.NewReplacer("-", "_", ":", "_").Replace(ns)
	code := "#!lua name=" + lib + "\n" +
		"redis.register_function('" + lib + "_add', function(keys, args)\n" +
		"  local n = redis.call('INCRBY', keys[1], args[1]); redis.call('EXPIRE', keys[1], 300); return n\n" +
		"end)"
	eachPrimary := func(fn func(*redis.Client) error) error {
		if cc, ok := rdb.(*redis.ClusterClient); ok {
			return cc.ForEachMaster(ctx, func(_ context.Context, c *redis.Client) error { return fn(c) })
		}
		return fn(rdb.(*redis.Client))
	}
	require.NoError(t, eachPrimary(func(c *redis.Client) error { return c.FunctionLoadReplace(ctx, code).Err() }))
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		eachPrimary(func(c *redis.Client) error { return c.FunctionDelete(ctx, lib).Err() }) //nolint:errcheck // best effort
	})
	counter := "{" + ns + ":p3}n"
	keys = append(keys, counter)
	for _, want := range []int{5, 10} {
		n, err := rdb.FCall(ctx, lib+"_add", []string{counter}, 5).Int()
		require.NoError(t, err)
		require.Equal(t, want, n)
	}

	// The durability barrier: the write and its WAIT in one pipeline, on the
	// connection of the primary that owns the key.
	wk := "{" + ns + ":p9}w"
	keys = append(keys, wk)
	primary, err := PrimaryForKey(ctx, rdb, wk)
	require.NoError(t, err)
	var role *redis.Cmd
	var wait *redis.IntCmd
	_, err = primary.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, wk, "v", 5*time.Minute)
		wait = redis.NewIntCmd(ctx, "WAIT", replicas, 1000)
		p.Process(ctx, wait) //nolint:errcheck // read below
		role = p.Do(ctx, "ROLE")
		return nil
	})
	require.NoError(t, err)
	require.GreaterOrEqual(t, wait.Val(), replicas, "WAIT %d 1000", replicas)
	r, err := role.Slice()
	require.NoError(t, err)
	require.Equal(t, "master", r[0], "the pipeline ran on %s", primary.Options().Addr)

	// Pub/sub: sharded on the Cluster (SSUBSCRIBE, SPUBLISH), plain elsewhere.
	ch := "{" + ns + ":p1}wake"
	var ps *redis.PubSub
	if cluster {
		ps = rdb.SSubscribe(ctx, ch)
	} else {
		ps = rdb.Subscribe(ctx, ch)
	}
	defer ps.Close()
	sub, err := ps.Receive(ctx) // the confirmation: we are subscribed
	require.NoError(t, err)
	require.IsType(t, &redis.Subscription{}, sub)
	var receivers int64
	if cluster {
		receivers, err = rdb.SPublish(ctx, ch, "hello").Result()
	} else {
		receivers, err = rdb.Publish(ctx, ch, "hello").Result()
	}
	require.NoError(t, err)
	require.Equal(t, int64(1), receivers)
	msg, err := ps.ReceiveMessage(ctx)
	require.NoError(t, err)
	require.Equal(t, ch, msg.Channel)
	require.Equal(t, "hello", msg.Payload)
}

// TestRedisClusterFailover kills the primary of a key with SIGKILL, and
// checks that the client keeps working once its replica takes over, after
// transient errors only, that a write the barrier confirmed survives, and
// that the script brings the cluster back to healthy, the killed node a
// replica.
func TestRedisClusterFailover(t *testing.T) {
	ctl := testenv.NewClusterControl(t)
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Second)
	defer cancel()
	rdb := failoverClient(t, ctl.URL())
	ns := testName(t)
	before, after := "{"+ns+"}before", "{"+ns+"}after"
	t.Cleanup(func() { rdb.Del(context.Background(), before, after) })

	barrier(ctx, t, rdb, before, "kept")
	old, err := ctl.PrimaryFor(ctx, before)
	require.NoError(t, err)
	start := time.Now()
	killed, err := ctl.KillPrimaryFor(ctx, before)
	require.NoError(t, err)
	require.Equal(t, old, killed.Addr)

	transient := keepWriting(ctx, t, rdb, after)
	recovered := time.Since(start)
	promoted, err := ctl.WaitPrimaryChange(ctx, before, old)
	require.NoError(t, err)
	t.Logf("killed %s (pid %d); the client wrote again after %v and %d transient errors; %s is the primary now",
		old, killed.PID, recovered.Round(time.Millisecond), transient, promoted)

	got, err := rdb.Get(ctx, before).Result()
	require.NoError(t, err, "a write confirmed by WAIT before the failover")
	require.Equal(t, "kept", got)
	node, err := PrimaryForKey(ctx, rdb, after)
	require.NoError(t, err)
	require.Equal(t, promoted, node.Options().Addr)

	restoreStart := time.Now()
	require.NoError(t, ctl.Restore(ctx))
	t.Logf("restored in %v", time.Since(restoreStart).Round(time.Millisecond))
	requireReplica(ctx, t, killed.Addr)
	barrier(ctx, t, rdb, after, "again") // the new primary has its replica back
}

// TestRedisSentinelFailover kills the primary with SIGKILL, and checks that
// the sentinels promote the replica, that the client follows them after
// transient errors only, that a write the barrier confirmed survives, and
// that the script brings the deployment back to healthy, the killed node a
// replica.
func TestRedisSentinelFailover(t *testing.T) {
	ctl := testenv.NewSentinelControl(t)
	ctx, cancel := context.WithTimeout(context.Background(), 55*time.Second)
	defer cancel()
	rdb := failoverClient(t, ctl.URL())
	ns := testName(t)
	before, after := ns+":before", ns+":after"
	t.Cleanup(func() { rdb.Del(context.Background(), before, after) })

	barrier(ctx, t, rdb, before, "kept")
	old, err := ctl.Primary(ctx)
	require.NoError(t, err)
	start := time.Now()
	killed, err := ctl.KillPrimary(ctx)
	require.NoError(t, err)
	require.Equal(t, old, killed.Addr)

	transient := keepWriting(ctx, t, rdb, after)
	recovered := time.Since(start)
	promoted, err := ctl.WaitFailover(ctx, old)
	require.NoError(t, err)
	t.Logf("killed %s (pid %d); the client wrote again after %v and %d transient errors; the sentinels name %s now",
		old, killed.PID, recovered.Round(time.Millisecond), transient, promoted)

	got, err := rdb.Get(ctx, before).Result()
	require.NoError(t, err, "a write confirmed by WAIT before the failover")
	require.Equal(t, "kept", got)

	restoreStart := time.Now()
	require.NoError(t, ctl.Restore(ctx))
	t.Logf("restored in %v", time.Since(restoreStart).Round(time.Millisecond))
	requireReplica(ctx, t, killed.Addr)
	barrier(ctx, t, rdb, after, "again")
}

// failoverClient returns a client for u with short timeouts, so that a dead
// node shows as errors within a second or two.
func failoverClient(t *testing.T, u string) redis.UniversalClient {
	t.Helper()
	c := Common{RedisURL: u}
	rdb, err := c.NewRedis(func(o *redis.UniversalOptions) {
		o.DialTimeout = 500 * time.Millisecond
		o.ReadTimeout = time.Second
		o.WriteTimeout = time.Second
		o.MaxRetries = 1
	})
	require.NoError(t, err)
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// barrier writes key and waits, on the same connection of the key's
// primary, until a replica has the write.
func barrier(ctx context.Context, t *testing.T, rdb redis.UniversalClient, key, value string) {
	t.Helper()
	primary, err := PrimaryForKey(ctx, rdb, key)
	require.NoError(t, err)
	var wait *redis.IntCmd
	_, err = primary.Pipelined(ctx, func(p redis.Pipeliner) error {
		p.Set(ctx, key, value, 5*time.Minute)
		wait = redis.NewIntCmd(ctx, "WAIT", 1, 2000)
		return p.Process(ctx, wait)
	})
	require.NoError(t, err)
	require.GreaterOrEqual(t, wait.Val(), int64(1), "WAIT 1 2000 after SET %s on %s", key, primary.Options().Addr)
}

// keepWriting writes and reads key back until both succeed, and returns how
// many transient errors it met; any other error fails t.
func keepWriting(ctx context.Context, t *testing.T, rdb redis.UniversalClient, key string) int {
	t.Helper()
	transient := 0
	for i := 0; ; i++ {
		value := fmt.Sprint(i)
		opCtx, cancel := context.WithTimeout(ctx, 3*time.Second)
		err := rdb.Set(opCtx, key, value, 5*time.Minute).Err()
		var got string
		if err == nil {
			got, err = rdb.Get(opCtx, key).Result()
		}
		cancel()
		if err == nil {
			require.Equal(t, value, got)
			return transient
		}
		if ctx.Err() != nil {
			t.Fatalf("the client did not recover: %v (after %d transient errors)", err, transient)
		}
		if !isTransient(err) {
			t.Fatalf("attempt %d: %v is not a transient error", i, err)
		}
		if transient == 0 || transient%20 == 0 {
			t.Logf("transient: %v", err)
		}
		transient++
		select {
		case <-ctx.Done():
		case <-time.After(50 * time.Millisecond): // back off between attempts
		}
	}
}

// isTransient tells the errors of a failover (DESIGN §7a: TRYAGAIN, ASK,
// MOVED, CLUSTERDOWN and LOADING are transient; so are a dead node's
// connection errors and a replica's READONLY until the client follows the
// promotion).
func isTransient(err error) bool {
	var ne net.Error
	switch {
	case errors.As(err, &ne), errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF),
		errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET),
		errors.Is(err, context.DeadlineExceeded), errors.Is(err, redis.ErrPoolTimeout):
		return true
	}
	msg := err.Error()
	for _, p := range []string{"CLUSTERDOWN", "TRYAGAIN", "MOVED", "ASK", "LOADING", "READONLY", "MASTERDOWN", "redis: all sentinels", "connection refused"} {
		if strings.HasPrefix(msg, p) || strings.Contains(msg, p) {
			return true
		}
	}
	return false
}

// requireReplica checks that the node at addr is a replica in sync.
func requireReplica(ctx context.Context, t *testing.T, addr string) {
	t.Helper()
	c := redis.NewClient(&redis.Options{Addr: addr, DialTimeout: time.Second, MaxRetries: -1})
	defer c.Close()
	info, err := c.Info(ctx, "replication").Result()
	require.NoError(t, err)
	require.Contains(t, info, "role:slave", "%s after the restore", addr)
	require.Contains(t, info, "master_link_status:up", "%s after the restore", addr)
}

// testName returns a prefix of its own for a test's keys on the Cluster
// and Sentinel deployments, in the form of testenv.Namespace (whose
// cleanup knows only the one server).
func testName(t *testing.T) string {
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("gwt-%d-%s", time.Now().Unix(), hex.EncodeToString(b[:]))
}
