package mailbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/config"
	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/protocol"
)

// One batch of Puts in which one item fails: the failing item gets its
// own error (a redis.Error, as a plain script's error would be), and the
// items before and after it succeed, in order.
func TestBatchItemErrorIsItsOwn(t *testing.T) {
	t.Parallel()
	rdb := testenv.Redis(t)
	s := New(rdb, testenv.Namespace(t), Options{})
	ctx := context.Background()
	// A mailbox key holding a string: XLEN fails with WRONGTYPE.
	if err := rdb.Set(ctx, s.part("bad").Mailbox("bad"), "x", time.Minute).Err(); err != nil {
		t.Fatal(err)
	}
	exp := time.Now().Add(time.Minute).UnixMilli()
	ids := []string{"a", "b", "bad", "c"}
	batch := putBatch(s, ids, func(i int, id string) string { return "p" + id }, exp)
	s.batcherFor(stepPut, 0).exec(batch)
	checkPutBatch(t, batch, ids)
	for i := range batch {
		if ids[i] == "bad" {
			continue
		}
		es, err := s.Fetch(ctx, ids[i], "", 10)
		if err != nil || len(es) != 1 || string(es[0].Payload) != "p"+ids[i] {
			t.Errorf("mailbox %s: got %d entries (%v), want exactly its own", ids[i], len(es), err)
		}
	}
}

// A batch whose items return a string, a table and an integer keeps
// each item's value as the plain step returns it.
func TestBatchRepliesMatchPlainScript(t *testing.T) {
	t.Parallel()
	rdb := testenv.Redis(t)
	s := New(rdb, testenv.Namespace(t), Options{BatchInFlight: -1})
	ctx := context.Background()
	if err := s.SetSession(ctx, "d1", "node-1"); err != nil {
		t.Fatal(err)
	}
	plain := func(p int, step string, keys []string, args ...any) any {
		v, err := s.runNow(ctx, p, step, keys, args)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	// mark_queued of a missing record: a string.
	p, keys := s.cmdKeys("d1", "c1", "missing")
	args := []any{s.horizonMs()}
	b := &batcher{s: s, step: stepMarkQueued}
	calls := []*batchCall{
		{p: p, keys: keys, args: args, done: make(chan struct{})},
		{p: p, keys: keys, args: args, done: make(chan struct{})},
	}
	b.exec(calls)
	want := fmt.Sprint(plain(p, stepMarkQueued, keys, args...))
	if want != "notfound" {
		t.Fatalf("plain mark_queued of a missing record = %s, want notfound", want)
	}
	for i, c := range calls {
		if c.err != nil || fmt.Sprint(c.v) != want {
			t.Errorf("call %d: got %v, %v; want %s", i, c.v, c.err, want)
		}
	}
	// session_set of the same node: the node registered before.
	pk := s.part("d1")
	skeys := []string{pk.Session("d1"), pk.SessionConn("d1"), pk.Seen("d1")}
	b = &batcher{s: s, step: stepSessionSet}
	calls = []*batchCall{
		{p: pk.P, keys: skeys, args: []any{"node-1", ""}, done: make(chan struct{})},
		{p: pk.P, keys: skeys, args: []any{"node-1", ""}, done: make(chan struct{})},
	}
	b.exec(calls)
	for i, c := range calls {
		if c.err != nil || fmt.Sprint(c.v) != "node-1" {
			t.Errorf("session_set %d: got %v, %v; want node-1", i, c.v, c.err)
		}
	}
	// Prune of a non-empty mailbox returns 0, of an empty one 1.
	if _, err := s.Put(ctx, "full", "t", []byte("p"), time.Now().Add(time.Minute), ""); err != nil {
		t.Fatal(err)
	}
	b = &batcher{s: s, step: stepPrune}
	calls = []*batchCall{
		{p: s.PartitionOf("full"), keys: []string{s.part("full").Mailbox("full"), s.part("full").Mailboxes()}, args: []any{"full"}, done: make(chan struct{})},
		{p: s.PartitionOf("empty"), keys: []string{s.part("empty").Mailbox("empty"), s.part("empty").Mailboxes()}, args: []any{"empty"}, done: make(chan struct{})},
	}
	b.exec(calls)
	for i, want := range []int64{0, 1} {
		if got, _ := calls[i].v.(int64); calls[i].err != nil || got != want {
			t.Errorf("prune %d: got %v, %v; want %d", i, calls[i].v, calls[i].err, want)
		}
	}
}

// Many concurrent Reserves of the same few commands, forced into batches
// (one batch in flight at a time): every key is reserved exactly once,
// every other call sees it exist, and batches did form.
func TestBatchedConcurrentReserves(t *testing.T) {
	t.Parallel()
	rdb := testenv.Redis(t)
	s := New(rdb, testenv.Namespace(t), Options{BatchInFlight: 1, BatchMax: 16})
	ctx := context.Background()
	const keys, per = 20, 10
	var mu sync.Mutex
	reserved := map[string]int{}
	var wg sync.WaitGroup
	for i := range keys * per {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := newTestCommand(t, "c1", "d1", fmt.Sprintf("%d", i%keys+1))
			out, rec, err := s.Reserve(ctx, c)
			if err != nil {
				t.Errorf("Reserve: %v", err)
				return
			}
			if out == Reserved && rec.LeaseToken == "" {
				t.Errorf("Reserved without a lease token")
			}
			if out == Reserved {
				mu.Lock()
				reserved[c.ID.Key()]++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if n := s.batcherFor(stepReserve, 0).coalesced.Load() + s.batcherFor(stepClaim, 0).coalesced.Load(); n == 0 {
		t.Errorf("no call ran in a batch of more than one")
	}
	if len(reserved) != keys {
		t.Errorf("reserved %d keys, want %d", len(reserved), keys)
	}
	for k, n := range reserved {
		if n != 1 {
			t.Errorf("key %s reserved %d times, want 1", k, n)
		}
	}
}

// A caller whose ctx ends while it waits gets ctx's error at once.
func TestBatchCallerContext(t *testing.T) {
	t.Parallel()
	rdb := testenv.Redis(t)
	s := New(rdb, testenv.Namespace(t), Options{BatchInFlight: 1})
	b := s.batcherFor(stepPut, s.PartitionOf("x"))
	// Occupy the only slot, so the next call waits in the queue.
	b.mu.Lock()
	b.running = 1
	b.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := s.Put(ctx, "x", "t", []byte("p"), time.Now().Add(time.Minute), "")
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Put with a waiting slot: err = %v, want context.DeadlineExceeded", err)
	}
	// Release the slot the way a finishing batch does: the waiting call
	// runs then.
	b.mu.Lock()
	batch := b.takeLocked()
	b.mu.Unlock()
	b.loop(batch)
	if n, err := s.Len(context.Background(), "x"); err != nil || n != 1 {
		t.Errorf("after the slot freed: mailbox holds %d (%v), want 1 (the abandoned call still ran)", n, err)
	}
}

func newTestCommand(t *testing.T, client, device, rawID string) *Command {
	t.Helper()
	id, err := protocol.ParseID(json.RawMessage(rawID))
	if err != nil {
		t.Fatal(err)
	}
	c := &Command{Client: client, Device: device, ID: id, Method: "reboot", Timeout: 30 * time.Second, ExpiresIn: time.Hour}
	c.Fingerprint = protocol.Fingerprint(device, c.Method, nil, c.Timeout, c.ExpiresIn)
	return c
}

// A Store loads the function library when Redis lacks it, and again
// after the library is deleted (a FUNCTION FLUSH, a restart without
// persistence).
func TestFunctionLibraryReloads(t *testing.T) {
	rdb := testenv.Redis(t)
	s := New(rdb, testenv.Namespace(t), Options{})
	ctx := context.Background()
	put := func() {
		t.Helper()
		if _, err := s.Put(ctx, "x", "t", []byte("p"), time.Now().Add(time.Minute), ""); err != nil {
			t.Fatalf("Put: %v", err)
		}
	}
	put()
	name := theLibrary().name
	if err := rdb.FunctionDelete(ctx, name).Err(); err != nil {
		t.Fatalf("FUNCTION DELETE: %v", err)
	}
	// Concurrent calls that all find it missing load it at most once per
	// call in flight (Options.BatchInFlight, 4): the calls that wait are
	// batched after a load. (Other test processes share this Redis and the
	// library: one of them may load it first, so this Store may load it
	// zero times.)
	loads := s.loads.Load()
	var wg sync.WaitGroup
	for range 20 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := s.Put(ctx, "x", "t", []byte("p"), time.Now().Add(time.Minute), ""); err != nil {
				t.Errorf("Put: %v", err)
			}
		}()
	}
	wg.Wait()
	if got := s.loads.Load() - loads; got > int64(s.opts.BatchInFlight) {
		t.Errorf("loaded the library %d times for 20 concurrent calls, want at most %d", got, s.opts.BatchInFlight)
	}
	libs, err := rdb.FunctionList(ctx, redis.FunctionListQuery{LibraryNamePattern: name}).Result()
	if err != nil || len(libs) != 1 {
		t.Errorf("after the delete and a call: %d libraries named %s (%v), want 1", len(libs), name, err)
	}
	if n, err := s.Len(ctx, "x"); err != nil || n != 21 {
		t.Errorf("mailbox holds %d (%v), want 21", n, err)
	}
}

// A batch on one server may span partitions: each item's next-due report
// goes to its own partition.
func TestBatchReportsEachPartition(t *testing.T) {
	t.Parallel()
	rdb := testenv.Redis(t)
	s := New(rdb, testenv.Namespace(t), Options{Partitions: 8, Now: func() time.Time { return time.UnixMilli(1_000_000) }})
	b := s.batcherFor(stepClaim, 0)
	var calls []*batchCall
	want := map[string]float64{}
	for i, client := range []string{"c1", "c2", "c3"} {
		p := s.PartitionOf(client)
		pk := s.keys.Part(p)
		watch := int64(1000 * (i + 1))
		calls = append(calls, &batchCall{p: p, keys: []string{pk.Claim(client, "k"), pk.Timers()},
			args: []any{"d1", "fp", 60000, `"k"`, watch, watchMember(client, "d1", "k")}, done: make(chan struct{})})
		if cur, ok := want[strconv.Itoa(p)]; !ok || float64(1_000_000+watch) < cur {
			want[strconv.Itoa(p)] = float64(1_000_000 + watch)
		}
	}
	if len(want) < 2 {
		t.Fatalf("the clients share a partition: %v", want)
	}
	b.exec(calls)
	for _, c := range calls {
		if c.err != nil {
			t.Fatalf("claim: %v", c.err)
		}
	}
	for deadline := time.Now().Add(5 * time.Second); !s.DueFlushed(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the reports were never sent")
		}
	}
	zs, err := rdb.ZRangeWithScores(context.Background(), s.keys.Due(), 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, z := range zs {
		got[z.Member.(string)] = z.Score
	}
	if !maps.Equal(got, want) {
		t.Errorf("due set = %v, want %v", got, want)
	}
}

// clusterStore returns a Store on the local Redis Cluster in a namespace
// of its own, whose keys are deleted when t ends.
func clusterStore(t *testing.T, opts Options) (*Store, redis.UniversalClient) {
	t.Helper()
	c := config.Common{RedisURL: testenv.RedisClusterURL(t)}
	rdb, err := c.NewRedis(nil)
	if err != nil {
		t.Fatal(err)
	}
	ns := testenv.Namespace(t)
	t.Cleanup(func() {
		defer rdb.Close()
		cc := rdb.(*redis.ClusterClient)
		_ = cc.ForEachMaster(context.Background(), func(ctx context.Context, n *redis.Client) error {
			it := n.Scan(ctx, 0, "{"+ns+":*", 1000).Iterator()
			for it.Next(ctx) {
				n.Del(ctx, it.Val())
			}
			return it.Err()
		})
	})
	opts.Logger = testenv.Logger(t)
	return New(rdb, ns, opts), rdb
}

// On Cluster one batch holds the items of many partitions: each
// partition's items run in one call of the batch function, all calls in
// one pipeline (with the durability barrier, one per primary, ended by
// one WAIT). Each item gets its own result, an item that fails fails
// alone, and two items of one partition both run, in order.
func TestBatchOnClusterSpansPartitions(t *testing.T) {
	t.Parallel()
	for _, wait := range []int{0, 1} {
		t.Run(fmt.Sprintf("wait replicas %d", wait), func(t *testing.T) {
			t.Parallel()
			s, rdb := clusterStore(t, Options{Partitions: 64, WaitReplicas: wait})
			ctx := context.Background()
			// A mailbox key holding a string: XLEN fails with WRONGTYPE.
			if err := rdb.Set(ctx, s.part("bad").Mailbox("bad"), "x", time.Minute).Err(); err != nil {
				t.Fatal(err)
			}
			exp := time.Now().Add(time.Minute).UnixMilli()
			var ids []string
			parts, nodes := map[int]bool{}, map[string]bool{}
			for i := range 16 {
				ids = append(ids, fmt.Sprintf("d%d", i))
			}
			ids = append(ids, "bad", "d3") // d3 twice: two items of one partition
			for _, id := range ids {
				parts[s.PartitionOf(id)] = true
				nodes[s.groupOf(s.PartitionOf(id))] = true
			}
			if len(parts) < 8 || len(nodes) < 2 {
				t.Fatalf("the items reach %d partitions on %d primaries, want at least 8 on 2", len(parts), len(nodes))
			}
			batch := putBatch(s, ids, func(i int, id string) string { return fmt.Sprintf("p%s-%d", id, i) }, exp)
			s.batcherFor(stepPut, 0).exec(batch)
			checkPutBatch(t, batch, ids)
			for i, id := range ids {
				if id == "bad" {
					continue
				}
				es, err := s.Fetch(ctx, id, "", 10)
				var got []string
				for _, e := range es {
					got = append(got, string(e.Payload))
				}
				want := []string{fmt.Sprintf("p%s-%d", id, i)}
				if id == "d3" {
					want = []string{"pd3-3", fmt.Sprintf("pd3-%d", len(ids)-1)}
				}
				if err != nil || strings.Join(got, ",") != strings.Join(want, ",") {
					t.Errorf("mailbox %s: got %v (%v), want %v", id, got, err, want)
				}
			}
		})
	}
}

// Concurrent Puts on Cluster over many partitions form batches (one
// batch in flight per primary and step) and every Put lands once.
func TestBatchedConcurrentPutsOnCluster(t *testing.T) {
	t.Parallel()
	s, _ := clusterStore(t, Options{Partitions: 64, BatchInFlight: 1, BatchMax: 16})
	ctx := context.Background()
	const devices, per = 40, 5
	var wg sync.WaitGroup
	for i := range devices * per {
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := fmt.Sprintf("d%d", i%devices)
			if _, err := s.Put(ctx, id, "t", []byte(strconv.Itoa(i)), time.Now().Add(time.Minute), ""); err != nil {
				t.Errorf("Put %s: %v", id, err)
			}
		}()
	}
	wg.Wait()
	var coalesced int64
	groups := map[string]bool{}
	s.batchMu.Lock()
	for k, b := range s.batchers {
		coalesced += b.coalesced.Load()
		groups[k.group] = true
	}
	s.batchMu.Unlock()
	if coalesced == 0 {
		t.Errorf("no call ran in a batch of more than one")
	}
	if len(groups) < 2 || len(groups) > 3 {
		t.Errorf("batching groups %v, want one per primary of the local Cluster (3)", groups)
	}
	for d := range devices {
		id := fmt.Sprintf("d%d", d)
		if n, err := s.Len(ctx, id); err != nil || n != per {
			t.Errorf("mailbox %s holds %d (%v), want %d", id, n, err, per)
		}
	}
}

// putBatch is a batch of Puts, one per identity of ids (an identity may
// come twice), item i with payload(i, id).
func putBatch(s *Store, ids []string, payload func(i int, id string) string, exp int64) []*batchCall {
	batch := make([]*batchCall, len(ids))
	for i, id := range ids {
		pk := s.part(id)
		batch[i] = &batchCall{p: s.PartitionOf(id), keys: []string{pk.Mailbox(id), pk.Mailboxes(), pk.Session(id)},
			args: []any{id, "t/" + id, payload(i, id), exp}, done: make(chan struct{})}
	}
	return batch
}

// checkPutBatch checks a batch of putBatch after exec: every item is
// done, the one for "bad" (whose mailbox key holds a string) failed alone
// with its own redis.Error, and every other one put its entry.
func checkPutBatch(t *testing.T, batch []*batchCall, ids []string) {
	t.Helper()
	for i, c := range batch {
		select {
		case <-c.done:
		default:
			t.Fatalf("call %d not done after exec", i)
		}
		if ids[i] == "bad" {
			var re redis.Error
			if c.err == nil || !errors.As(c.err, &re) || !strings.Contains(c.err.Error(), "WRONGTYPE") {
				t.Errorf("bad item: err = %v, want a redis.Error with WRONGTYPE", c.err)
			}
			continue
		}
		if head, id := reply(c.v); c.err != nil || head != "ok" || id == nil {
			t.Errorf("item %d (%s): got %v, %v; want ok and an entry id", i, ids[i], c.v, c.err)
		}
	}
}
