package mailbox_test

import (
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
)

// TestWriteWatch: the write watch reports nothing while Redis keeps what
// it acknowledged, and reports a loss, with the values and when the lost
// span began, when the counter comes back lower (what an everysec host
// crash or a failover to a replica behind does).
func TestWriteWatch(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		// breakIt emulates the loss after three checks (nil: none).
		breakIt  func(e *env)
		had, got int64
	}{
		{"nothing lost", nil, 0, 0},
		// The first check's value survives: the loss began after it.
		{"last writes lost", func(e *env) { must(t, e.rdb.Set(e.ctx, e.keys.Watch(), 1, 0).Err()) }, 3, 2},
		// Nothing survives: the loss began at the oldest check kept.
		{"everything lost", func(e *env) { must(t, e.rdb.Del(e.ctx, e.keys.Watch()).Err()) }, 3, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, mailbox.Options{})
			w := e.s.NewWriteWatch()
			var before []time.Time
			for i := range 3 {
				before = append(before, time.Now())
				losses, err := w.Check(e.ctx)
				if err != nil || len(losses) != 0 {
					t.Fatalf("check %d: %v, %v; want no loss, no error", i, losses, err)
				}
			}
			if tt.breakIt == nil {
				if losses, err := w.Check(e.ctx); err != nil || len(losses) != 0 {
					t.Errorf("fourth check: %v, %v; want no loss", losses, err)
				}
				return
			}
			tt.breakIt(e)
			losses, err := w.Check(e.ctx)
			if err != nil || len(losses) != 1 {
				t.Fatalf("after the loss: %v, %v; want one loss", losses, err)
			}
			l := losses[0]
			if l.Had != tt.had || l.Got != tt.got || l.Partition != 0 {
				t.Errorf("loss = %+v, want partition 0, had %d, got %d", l, tt.had, tt.got)
			}
			if l.Since.Before(before[0]) || !l.Since.Before(before[1]) {
				t.Errorf("loss.Since = %v, want the first check's time (between %v and %v)", l.Since, before[0], before[1])
			}
			// Once reported, a loss is not reported again.
			if losses, err := w.Check(e.ctx); err != nil || len(losses) != 0 {
				t.Errorf("the next check: %v, %v; want no loss", losses, err)
			}
		})
	}
}

// TestWriteWatchCluster: on a Redis Cluster the watch checks one
// partition per primary, and reports only the primary that lost writes.
func TestWriteWatchCluster(t *testing.T) {
	t.Parallel()
	c := config.Common{RedisURL: testenv.RedisClusterURL(t)}
	rdb, err := c.NewRedis(nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { rdb.Close() })
	cc, ok := rdb.(*redis.ClusterClient)
	if !ok {
		t.Fatalf("the Cluster URL gave a %T, want *redis.ClusterClient", rdb)
	}
	ns := testenv.Namespace(t)
	s := mailbox.New(rdb, ns, mailbox.Options{Partitions: 64, Logger: testenv.Logger(t)})
	w := s.NewWriteWatch()
	for i := range 2 {
		if losses, err := w.Check(t.Context()); err != nil || len(losses) != 0 {
			t.Fatalf("check %d: %v, %v; want no loss", i, losses, err)
		}
	}
	// The first partition is watched (it is the first its primary serves).
	key := s.Keys().Part(0).Watch()
	if err := cc.Del(t.Context(), key).Err(); err != nil {
		t.Fatal(err)
	}
	losses, err := w.Check(t.Context())
	if err != nil || len(losses) != 1 || losses[0].Partition != 0 {
		t.Fatalf("after losing partition 0's counter: %v, %v; want one loss, of partition 0", losses, err)
	}
}
