package mailbox

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
)

// Group commit. Concurrent calls of one step on one group of partitions
// are coalesced into one call of the library's batch function, which
// runs the step once per item. On one server (or Sentinel) every
// partition is one group; on Cluster each partition is its own group,
// because one call may only name the keys of one slot.
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
// the error kept, exactly as the plain step would have left them. All
// items of a batch see the same clock. A caller whose ctx ends while its
// item waits or runs gets ctx's error, and its item may still run: the
// same uncertainty as a call whose reply was lost, which every caller
// already handles (every transition is a compare-and-set).

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
	step  string
	group int
}

// batcherFor returns the batcher of step on p's group.
func (s *Store) batcherFor(step string, p int) *batcher {
	k := batchKey{step: step}
	if s.cluster {
		k.group = p
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

// runBatch runs the items in one call of the batch function on p's node
// and splits its reply.
func (s *Store) runBatch(ctx context.Context, p int, step string, items []*batchCall) ([]itemResult, error) {
	var keys []string
	n := 1
	for _, c := range items {
		n += 2 + len(c.args)
	}
	argv := append(s.commonArgs(n), step)
	for _, c := range items {
		keys = append(keys, c.keys...)
		argv = append(argv, len(c.keys), len(c.args))
		argv = append(argv, c.args...)
	}
	v, err := s.call(ctx, p, "batch", keys, argv)
	if err != nil {
		return nil, err
	}
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
	return out, nil
}

// scriptError is the error one item of a batch raised in Redis. Like the
// errors go-redis returns for a failed script, it is a redis.Error, so
// callers classify it the same way.
type scriptError string

func (e scriptError) Error() string { return string(e) }

// RedisError marks scriptError as a redis.Error.
func (scriptError) RedisError() {}
