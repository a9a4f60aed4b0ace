package mailbox_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/gwproc"
	"github.com/iotgw/gateway/internal/telemetry"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
	"github.com/iotgw/gateway/protocol"
)

// redisCalls returns the total number of commands Redis has run (INFO
// commandstats, scripts' inner calls included), how many of them were
// FCALL/EVALSHA/EVAL, and the server time spent in those (µs, inner calls
// included).
func redisCalls(b *testing.B, rdb *redis.Client) (total, evals, evalUsec int64) {
	b.Helper()
	s, err := rdb.Info(context.Background(), "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(s, "\n") {
		name, rest, ok := strings.Cut(strings.TrimSpace(line), ":calls=")
		if !ok {
			continue
		}
		f := strings.Split(rest, ",")
		n, _ := strconv.ParseInt(f[0], 10, 64)
		total += n
		if name == "cmdstat_evalsha" || name == "cmdstat_eval" || name == "cmdstat_fcall" {
			evals += n
			if len(f) > 1 {
				us, _ := strconv.ParseInt(strings.TrimPrefix(f[1], "usec="), 10, 64)
				evalUsec += us
			}
		}
	}
	return total, evals, evalUsec
}

// lifecycle returns a function that runs the full life of command i
// (unique per call) on s.
func lifecycle(b *testing.B, s *mailbox.Store) func(i int) {
	ctx := context.Background()
	resp := protocol.NewResult(json.RawMessage(`"x"`), json.RawMessage(`{"ok":true}`))
	return func(i int) {
		client, device := fmt.Sprintf("c%d", i%50), fmt.Sprintf("d%d", i%50)
		id, err := protocol.ParseID(json.RawMessage(strconv.Itoa(i + 2)))
		if err != nil {
			b.Fatal(err)
		}
		c := &mailbox.Command{
			Client: client, Device: device, Method: "reboot",
			ID: id, Timeout: 30 * time.Second, ExpiresIn: time.Hour,
		}
		c.Fingerprint = protocol.Fingerprint(device, c.Method, nil, c.Timeout, c.ExpiresIn)
		out, rec, err := s.Reserve(ctx, c)
		if err != nil || out != mailbox.Reserved {
			b.Fatalf("Reserve = %v, %v", out, err)
		}
		if err := s.MarkQueued(ctx, device, client, id.Key()); err != nil {
			b.Fatal(err)
		}
		payload, _ := json.Marshal(map[string]any{"jsonrpc": "2.0", "method": c.Method, "id": id.Raw()})
		env := &protocol.Envelope{
			V: protocol.EnvelopeVersion, Kind: protocol.KindCommand,
			Client: client, Device: device, MsgID: id, Payload: payload,
			AcceptedAt: rec.CreatedAt, DeliverBy: rec.DeliverBy,
			AnswerWithinMS: c.Timeout.Milliseconds(), Attempt: 1,
		}
		if out, err := s.Dispatch(ctx, env, "node-d", "node-c"); err != nil || out != mailbox.OutcomeSent {
			b.Fatalf("Dispatch = %v, %v", out, err)
		}
		es, err := s.Fetch(ctx, device, "", 10)
		if err != nil || len(es) == 0 {
			b.Fatalf("Fetch(device) = %d, %v", len(es), err)
		}
		for _, e := range es {
			if e.MsgKey == id.Key() {
				if err := s.Ack(ctx, device, e); err != nil {
					b.Fatal(err)
				}
			}
		}
		if out, err := s.Complete(ctx, client, id.Key(), device, resp, 0, "node-c"); err != nil || out != mailbox.OutcomeSucceeded {
			b.Fatalf("Complete = %v, %v", out, err)
		}
		es, err = s.Fetch(ctx, client, "", 10)
		if err != nil {
			b.Fatalf("Fetch(client) = %d, %v", len(es), err)
		}
		for _, e := range es {
			if err := s.Ack(ctx, client, e); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// BenchmarkLifecycle runs the full life of one command against real
// Redis, one after the other: Reserve → MarkQueued → Dispatch → Fetch →
// Ack (device) → Complete → Fetch → Ack (client). It reports Redis
// commands per lifecycle (inner script calls included, and the EVALs
// themselves) and the server time of the scripts, as measured by INFO
// commandstats: run it alone for exact counts.
func BenchmarkLifecycle(b *testing.B) {
	rdb := testenv.Redis(b)
	s := mailbox.New(rdb, testenv.Namespace(b), mailbox.Options{})
	one := lifecycle(b, s)
	one(-1) // load the scripts
	calls0, evals0, us0 := redisCalls(b, rdb)
	b.ResetTimer()
	for i := range b.N {
		one(i)
	}
	b.StopTimer()
	calls1, evals1, us1 := redisCalls(b, rdb)
	// INFO itself is counted once.
	b.ReportMetric(float64(calls1-calls0-1)/float64(b.N), "rediscalls/op")
	b.ReportMetric(float64(evals1-evals0)/float64(b.N), "evals/op")
	b.ReportMetric(float64(us1-us0)/float64(b.N), "redis-µs/op")
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lifecycles/s")
}

// BenchmarkLifecycleParallel runs lifecycles from 8 goroutines per CPU,
// so that Redis, not the round trips, bounds the rate.
func BenchmarkLifecycleParallel(b *testing.B) {
	for _, bc := range []struct {
		name     string
		inFlight int
	}{{"batched", 0}, {"unbatched", -1}} {
		b.Run(bc.name, func(b *testing.B) { lifecycleParallel(b, bc.inFlight) })
	}
}

func lifecycleParallel(b *testing.B, inFlight int) {
	rdb := testenv.Redis(b)
	s := mailbox.New(rdb, testenv.Namespace(b), mailbox.Options{BatchInFlight: inFlight})
	one := lifecycle(b, s)
	one(-1)
	var next atomic.Int64
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			one(int(next.Add(1)))
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "lifecycles/s")
}

// BenchmarkPutParallel puts messages into 100 mailboxes from 32
// goroutines per CPU, batched (the default) and not.
func BenchmarkPutParallel(b *testing.B) {
	for _, bc := range []struct {
		name     string
		inFlight int
	}{{"batched", 0}, {"unbatched", -1}} {
		b.Run(bc.name, func(b *testing.B) {
			rdb := testenv.Redis(b)
			s := mailbox.New(rdb, testenv.Namespace(b), mailbox.Options{BatchInFlight: bc.inFlight})
			ctx := context.Background()
			payload := []byte(`{"jsonrpc":"2.0","result":{"ok":true},"id":"abc"}`)
			var next atomic.Int64
			b.SetParallelism(32)
			b.ResetTimer()
			cpu0 := processCPU(b)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := next.Add(1)
					id := fmt.Sprintf("c%d", i%100)
					if _, err := s.Put(ctx, id, "clients/"+id+"/results/d", payload, time.Now().Add(time.Minute), "node-1"); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "puts/s")
			// This process's CPU (the Puts and their wake-ups, not
			// Redis's) per Put: less noisy than the rate on a shared
			// machine.
			b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/put")
		})
	}
}

// BenchmarkLifecycleParallelCluster is BenchmarkLifecycleParallel on the
// local Redis Cluster (256 partitions, 50 clients and 50 devices, so a
// batch spans many partitions), with 64 goroutines per CPU. Besides the rate it reports the calls
// the Store sent per lifecycle (gw_redis_calls_total: a command or a
// pipeline to one primary is one call) and the CPU of the Cluster's
// redis-server processes per lifecycle (from /proc; primaries, and
// replicas apart), which other users of the Cluster also move: run it
// alone.
func BenchmarkLifecycleParallelCluster(b *testing.B) {
	c := config.Common{RedisURL: testenv.RedisClusterURL(b)}
	rdb, err := c.NewRedis(nil)
	if err != nil {
		b.Fatal(err)
	}
	defer rdb.Close()
	cc := rdb.(*redis.ClusterClient)
	ctx := context.Background()
	ns := testenv.Namespace(b)
	defer cc.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
		it := n.Scan(ctx, 0, "{"+ns+":*", 1000).Iterator()
		for it.Next(ctx) {
			n.Del(ctx, it.Val())
		}
		return it.Err()
	})
	type node struct {
		pid     int
		primary bool
	}
	var mu sync.Mutex
	var nodes []node
	collect := func(primary bool) func(context.Context, *redis.Client) error {
		return func(ctx context.Context, n *redis.Client) error {
			m, err := n.InfoMap(ctx, "server").Result()
			if err != nil {
				return err
			}
			pid, _ := strconv.Atoi(m["Server"]["process_id"])
			mu.Lock()
			nodes = append(nodes, node{pid, primary})
			mu.Unlock()
			return nil
		}
	}
	if err := cc.ForEachMaster(ctx, collect(true)); err != nil {
		b.Fatal(err)
	}
	if err := cc.ForEachSlave(ctx, collect(false)); err != nil {
		b.Fatal(err)
	}
	cpu := func() (primaries, replicas time.Duration) {
		for _, n := range nodes {
			if n.primary {
				primaries += gwproc.ProcessCPU(n.pid)
			} else {
				replicas += gwproc.ProcessCPU(n.pid)
			}
		}
		return primaries, replicas
	}
	sent := func() float64 {
		mfs, err := telemetry.NewRegistry().Gather()
		if err != nil {
			b.Fatal(err)
		}
		var n float64
		for _, mf := range mfs {
			if mf.GetName() == "gw_redis_calls_total" {
				for _, m := range mf.GetMetric() {
					n += m.GetCounter().GetValue()
				}
			}
		}
		return n
	}
	s := mailbox.New(rdb, ns, mailbox.Options{})
	one := lifecycle(b, s)
	one(-1)
	var next atomic.Int64
	// 64 goroutines per CPU, as many lifecycles at once as the round trip
	// of make bench has commands in flight (128), so that steps wait and
	// batch.
	b.SetParallelism(64)
	p0, r0 := cpu()
	sent0 := sent()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			one(int(next.Add(1)))
		}
	})
	b.StopTimer()
	p1, r1 := cpu()
	n := float64(b.N)
	b.ReportMetric(n/b.Elapsed().Seconds(), "lifecycles/s")
	b.ReportMetric((sent()-sent0)/n, "calls-sent/op")
	b.ReportMetric(float64((p1-p0).Microseconds())/n, "primaries-cpu-µs/op")
	b.ReportMetric(float64((r1-r0).Microseconds())/n, "replicas-cpu-µs/op")
}

// processCPU is the CPU time (user and system) the process has used.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
