package mailbox

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Group commit. Concurrent calls of one step on one group of partitions
// are coalesced into one batch. On one server (or Sentinel) every
// partition is one group, and a batch is one call of the library's batch
// function, which runs the step once per item. On Cluster one call may
// only name the keys of one slot, and every partition is a slot of its
// own (its hash tag), so a group is the partitions that one primary
// serves: a batch is one batch-function call per partition it holds, all
// sent in one pipeline, which reaches that primary in one network round
// trip. (Grouping by partition instead, as before, left nearly every
// batch with one item under load spread over many partitions: each step
// a round trip of its own.) The primary of a partition is go-redis's
// view of the slot map when the call joins its group; the pipeline routes
// each call by its own keys anyway (and, without the durability barrier,
// follows redirections), so a stale view costs only smaller batches.
//
// A call that finds fewer than Options.BatchInFlight batches of its
// (step, group) running starts one at once (when nothing else waits, it
// runs the plain step itself, with its own ctx); otherwise it waits in
// the queue, and the next batch to start takes everything queued (up to
// Options.BatchMax). Under light load nothing waits and nothing is
// batched; under heavy load one Redis call carries many transitions,
// which saves the per-call work of Redis, of the network and of go-redis.
//
// Each item keeps the semantics of its own call. Items run one after the
// other in Redis, each in a protected call (pcall), so an item that fails
// returns its error to its caller only, with the writes it made before
// the error kept, exactly as the plain step would have left them. The
// items of a batch in one partition see the same clock (the test clock's
// instant, or that partition's TIME). A call of a pipeline
// that fails (a redirection that could not be followed, a node down)
// fails its partition's items only, with the error classified as the
// plain step's would be. A caller whose ctx ends while its item waits or
// runs gets ctx's error, and its item may still run: the same
// uncertainty as a call whose reply was lost, which every caller already
// handles (every transition is a compare-and-set).

// batchCall is one call waiting for, or in, a batch.
type batchCall struct {
	p    int
	keys []string
	args []any
	v    any
	err  error
	done chan struct{}
}

// batcher coalesces the concurrent calls of one step on one group.
type batcher struct {
	s    *Store
	step string

	mu      sync.Mutex
	queue   []*batchCall
	running int

	coalesced atomic.Int64 // calls that ran in a batch of more than one
}

type batchKey struct {
	step string
	// group is "" on one server, the address of the partition's primary
	// on Cluster ("p" and the partition when it is not known).
	group string
}

// batcherFor returns the batcher of step on p's group.
func (s *Store) batcherFor(step string, p int) *batcher {
	k := batchKey{step: step}
	if s.cluster {
		k.group = s.groupOf(p)
	}
	s.batchMu.Lock()
	defer s.batchMu.Unlock()
	b := s.batchers[k]
	if b == nil {
		b = &batcher{s: s, step: step}
		s.batchers[k] = b
	}
	return b
}

// groupOf returns the batching group of partition p on Cluster: the
// address of the primary that serves its slot, by go-redis's last view
// of the slot map.
func (s *Store) groupOf(p int) string {
	if c, ok := s.rdb.(*redis.ClusterClient); ok {
		if n, err := c.MasterForKey(context.Background(), s.keys.Part(p).Barrier()); err == nil {
			return n.Options().Addr
		}
	}
	return "p" + strconv.Itoa(p)
}

// run runs step on partition p with keys and the step's own args,
// coalesced with concurrent calls unless batching is off.
func (s *Store) run(ctx context.Context, p int, step string, keys []string, args ...any) (any, error) {
	if s.opts.BatchInFlight > 0 {
		return s.batcherFor(step, p).do(ctx, p, keys, args)
	}
	return s.runNow(ctx, p, step, keys, args)
}

// runNow runs one plain step call.
func (s *Store) runNow(ctx context.Context, p int, step string, keys []string, args []any) (any, error) {
	return s.call(ctx, p, step, keys, append(s.commonArgs(len(args)), args...))
}

// commonArgs returns the arguments every step starts with (lib.lua's
// begin), with room for n more.
func (s *Store) commonArgs(n int) []any {
	base := make([]any, 0, 4+n)
	return append(base, s.clockMs(), s.opts.Retention.Milliseconds(), s.opts.MailboxCap, s.opts.AnswerGrace.Milliseconds())
}

// do runs the step for keys and args, in a batch when others wait.
func (b *batcher) do(ctx context.Context, p int, keys []string, args []any) (any, error) {
	c := &batchCall{p: p, keys: keys, args: args, done: make(chan struct{})}
	b.mu.Lock()
	b.queue = append(b.queue, c)
	if b.running < b.s.opts.BatchInFlight {
		b.running++
		batch := b.takeLocked()
		b.mu.Unlock()
		if len(batch) == 1 {
			c.v, c.err = b.s.runNow(ctx, p, b.step, keys, args)
			close(c.done)
			b.next()
			return c.v, c.err
		}
		go b.loop(batch)
	} else {
		b.mu.Unlock()
	}
	select {
	case <-c.done:
		return c.v, c.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func (b *batcher) takeLocked() []*batchCall {
	n := min(len(b.queue), b.s.opts.BatchMax)
	batch := make([]*batchCall, n)
	copy(batch, b.queue)
	rest := copy(b.queue, b.queue[n:])
	clear(b.queue[rest:])
	b.queue = b.queue[:rest]
	return batch
}

func (b *batcher) loop(batch []*batchCall) {
	for {
		b.exec(batch)
		b.mu.Lock()
		if len(b.queue) == 0 {
			b.running--
			b.mu.Unlock()
			return
		}
		batch = b.takeLocked()
		b.mu.Unlock()
	}
}

func (b *batcher) next() {
	b.mu.Lock()
	if len(b.queue) == 0 {
		b.running--
		b.mu.Unlock()
		return
	}
	batch := b.takeLocked()
	b.mu.Unlock()
	go b.loop(batch)
}

// exec runs one batch and hands each call its result. The calls' own
// contexts do not bound it; go-redis's read and write timeouts do.
func (b *batcher) exec(batch []*batchCall) {
	ctx := context.Background()
	defer func() {
		for _, c := range batch {
			close(c.done)
		}
	}()
	if len(batch) == 1 {
		c := batch[0]
		c.v, c.err = b.s.runNow(ctx, c.p, b.step, c.keys, c.args)
		return
	}
	b.coalesced.Add(int64(len(batch)))
	if b.s.cluster {
		b.s.runBatchPipelined(ctx, b.step, batch, true)
		return
	}
	v, err := b.s.runBatch(ctx, batch[0].p, b.step, batch)
	if err != nil {
		for _, c := range batch {
			c.err = err
		}
		return
	}
	for i, c := range batch {
		c.v, c.err = v[i].v, v[i].err
	}
}

type itemResult struct {
	v   any
	err error
}

// batchArgs returns the keys and arguments of one call of the batch
// function for items.
func (s *Store) batchArgs(step string, items []*batchCall) (keys []string, argv []any) {
	n := 1
	for _, c := range items {
		n += 2 + len(c.args)
	}
	argv = append(s.commonArgs(n), step)
	for _, c := range items {
		keys = append(keys, c.keys...)
		argv = append(argv, len(c.keys), len(c.args))
		argv = append(argv, c.args...)
	}
	return keys, argv
}

// runBatch runs the items in one call of the batch function on p's node
// and splits its reply.
func (s *Store) runBatch(ctx context.Context, p int, step string, items []*batchCall) ([]itemResult, error) {
	keys, argv := s.batchArgs(step, items)
	v, err := s.call(ctx, p, "batch", keys, argv)
	if err != nil {
		return nil, err
	}
	return s.splitBatch(ctx, items, v), nil
}

// runBatchPipelined runs a Cluster batch: the items of each partition in
// one call of the batch function (in the order they came), the calls of
// all partitions in one pipeline, and hands each item its result. With
// the durability barrier each primary's calls are followed, on the same
// connection, by a write to each partition's barrier key and one WAIT,
// which covers them all. When Redis lacks the function library it is
// loaded and the calls that found it missing (they did nothing) are sent
// again, once (reload false).
func (s *Store) runBatchPipelined(ctx context.Context, step string, batch []*batchCall, reload bool) {
	var parts []int
	byPart := map[int][]*batchCall{}
	for _, c := range batch {
		if _, ok := byPart[c.p]; !ok {
			parts = append(parts, c.p)
		}
		byPart[c.p] = append(byPart[c.p], c)
	}
	fn := theLibrary().fn("batch")
	cmds := make([]*redis.Cmd, len(parts))
	var errs []error // the pipeline's error for each partition, when not its call's
	if s.opts.WaitReplicas > 0 {
		errs = s.pipelineDurable(ctx, fn, step, parts, byPart, cmds)
	} else {
		_, _ = s.rdb.Pipelined(ctx, func(pipe redis.Pipeliner) error {
			for i, p := range parts {
				keys, argv := s.batchArgs(step, byPart[p])
				cmds[i] = pipe.FCall(ctx, fn, keys, argv...)
			}
			return nil
		})
	}
	var again []*batchCall
	for i, p := range parts {
		items := byPart[p]
		var err error
		if errs != nil && errs[i] != nil {
			err = errs[i]
		} else if err = cmds[i].Err(); err == nil {
			for j, r := range s.splitBatch(ctx, items, cmds[i].Val()) {
				items[j].v, items[j].err = r.v, r.err
			}
			continue
		}
		if reload && isRedisError(err) && strings.Contains(strings.ToLower(err.Error()), "function not found") {
			again = append(again, items...)
			continue
		}
		err = s.classify(err)
		for _, c := range items {
			c.err = err
		}
	}
	if len(again) == 0 {
		return
	}
	if err := s.loadLibrary(ctx, again[0].p); err != nil {
		for _, c := range again {
			c.err = err
		}
		return
	}
	s.runBatchPipelined(ctx, step, again, false)
}

// pipelineDurable sends the batch-function calls of parts with the
// durability barrier: one pipeline per primary, on one connection, with
// each call followed by a write to its partition's barrier key and the
// pipeline ended by one WAIT. It fills cmds and returns, for each
// partition, the error that fails it besides its call's own (no
// primary, a pipeline that failed, too few replicas).
func (s *Store) pipelineDurable(ctx context.Context, fn, step string, parts []int, byPart map[int][]*batchCall, cmds []*redis.Cmd) []error {
	errs := make([]error, len(parts))
	type nodeBatch struct {
		node *redis.Client
		idx  []int // into parts
	}
	var order []*nodeBatch
	byNode := map[*redis.Client]*nodeBatch{}
	for i, p := range parts {
		node, err := s.nodeOf(ctx, p)
		if err != nil {
			errs[i] = err
			continue
		}
		nb := byNode[node]
		if nb == nil {
			nb = &nodeBatch{node: node}
			byNode[node] = nb
			order = append(order, nb)
		}
		nb.idx = append(nb.idx, i)
	}
	var wg sync.WaitGroup
	for _, nb := range order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var wait *redis.IntCmd
			_, err := nb.node.Pipelined(ctx, func(pipe redis.Pipeliner) error {
				for _, i := range nb.idx {
					keys, argv := s.batchArgs(step, byPart[parts[i]])
					cmds[i] = pipe.FCall(ctx, fn, keys, argv...)
					pipe.Incr(ctx, s.keys.Part(parts[i]).Barrier())
				}
				wait = redis.NewIntCmd(ctx, "wait", s.opts.WaitReplicas, s.opts.WaitTimeout.Milliseconds())
				_ = pipe.Process(ctx, wait)
				return nil
			})
			for _, i := range nb.idx {
				switch {
				case cmds[i].Err() != nil:
					// Its own error, read by the caller.
				case err != nil:
					errs[i] = err
				case wait.Val() < int64(s.opts.WaitReplicas):
					errs[i] = fmt.Errorf("%w (%d of %d)", ErrNotDurable, wait.Val(), s.opts.WaitReplicas)
				}
			}
		}()
	}
	wg.Wait()
	for i := range parts {
		if cmds[i] == nil && errs[i] == nil {
			errs[i] = fmt.Errorf("%w: no call was sent for partition %d", ErrUnavailable, parts[i])
		}
	}
	return errs
}

// splitBatch splits the reply v of one call of the batch function into
// the results of its items, and reports their next-due times.
func (s *Store) splitBatch(ctx context.Context, items []*batchCall, v any) []itemResult {
	rows, _ := v.([]any)
	out := make([]itemResult, len(items))
	var due map[int]int64 // the items' next-due reports, earliest per partition
	defer func() { s.noteDues(ctx, due) }()
	for i := range items {
		if i >= len(rows) {
			out[i].err = fmt.Errorf("mailbox: batched step answered %d rows for %d calls", len(rows), len(items))
			continue
		}
		row, _ := rows[i].([]any)
		if len(row) == 0 {
			out[i].err = fmt.Errorf("mailbox: batched step answered %v for a call", rows[i])
			continue
		}
		if len(row) > 2 {
			if ds, _ := row[2].(string); ds != "" {
				d, _ := strconv.ParseInt(ds, 10, 64)
				if due == nil {
					due = map[int]int64{}
				}
				if cur, ok := due[items[i].p]; !ok || d < cur {
					due[items[i].p] = d
				}
			}
		}
		if ok, _ := row[0].(int64); ok != 1 {
			msg := "unknown error"
			if len(row) > 1 {
				msg = fmt.Sprint(row[1])
			}
			out[i].err = s.classify(scriptError(msg))
			continue
		}
		if len(row) > 1 {
			out[i].v = row[1]
		}
	}
	return out
}

// scriptError is the error one item of a batch raised in Redis. Like the
// errors go-redis returns for a failed script, it is a redis.Error, so
// callers classify it the same way.
type scriptError string

func (e scriptError) Error() string { return string(e) }

// RedisError marks scriptError as a redis.Error.
func (scriptError) RedisError() {}
