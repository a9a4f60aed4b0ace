package ring

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestZZDiagSilent(t *testing.T) {
	ns := fmt.Sprintf("diag-%d", time.Now().UnixNano())
	t0 := time.Now()
	mk := func(node string) (*Partitions, context.CancelFunc, chan error) {
		rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
		h := slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{ReplaceAttr: func(g []string, a slog.Attr) slog.Attr {
			if a.Key == "time" {
				return slog.Duration("t", time.Since(t0))
			}
			return a
		}})
		ps := NewPartitions(rdb, ns, node, 64, PartitionOptions{Ring: Options{Logger: slog.New(h).With("me", node)}})
		ctx, cancel := context.WithCancel(context.Background())
		if err := ps.Join(ctx); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- ps.Run(ctx) }()
		return ps, cancel, done
	}
	a, ca, _ := mk("a")
	b, cb, _ := mk("b")
	c, cc, dc := mk("c")
	defer ca()
	defer cb()
	_ = c
	for len(a.Owned())+len(b.Owned())+len(c.Owned()) != 64 || len(c.Owned()) == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(time.Duration(time.Now().UnixNano()%1000) * time.Millisecond)
	start := time.Now()
	fmt.Fprintf(os.Stderr, "STOP at %v\n", time.Since(t0))
	cc()
	<-dc
	for len(a.Owned())+len(b.Owned()) != 64 {
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Fprintf(os.Stderr, "COVERED after %v (at %v)\n", time.Since(start), time.Since(t0))
	rdb := redis.NewClient(&redis.Options{Addr: "127.0.0.1:6379"})
	keys, _ := rdb.Keys(context.Background(), "{"+ns+":*").Result()
	rdb.Del(context.Background(), keys...)
}
