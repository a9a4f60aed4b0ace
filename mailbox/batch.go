package mailbox

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Group commit. Every script also exists in a batched form that runs the
// same body once per item, inside one EVALSHA. Concurrent calls of one
// script are coalesced into such batches: a call that finds fewer than
// Options.BatchInFlight batches of its script running starts one at once
// (when nothing else waits, it runs the plain script itself, with its own
// ctx and no goroutine); otherwise it
// waits in the queue, and the next batch to start takes everything queued
// (up to Options.BatchMax). Under light load nothing waits and nothing is
// batched; under heavy load one Redis call carries many transitions, which
// saves the per-call work of Redis (reading, parsing, replying, waking
// up), of the network and of go-redis, and the script's prelude.
//
// Each item keeps the semantics of its own call. The items of a batch run
// one after the other in Redis, each in a protected call (pcall), so an
// item that fails returns its error to its caller only, with the writes it
// made before the error kept, exactly as the plain script would have left
// them; the other items are unaffected. All items of a batch see the same
// clock (the batch's start). A caller whose ctx ends while its item waits
// or runs gets ctx's error, and its item may still run: the same
// uncertainty as a call whose reply was lost, which every caller already
// handles (every transition is a compare-and-set).

// luaScript is one script in its plain and batched forms.
type luaScript struct {
	body       string // the script's own code, without the library
	one, batch *redis.Script
}

// batchWrapper turns a script body into the body of a batched script.
// KEYS[i] is item i's key ("" for none); ARGV[1..5] are the common
// arguments, then for each item its argument count followed by its
// arguments. The reply holds one {1, value} or {0, error text} per item.
const batchWrapperHead = `
local function one(KEYS, ARGV)
`

const batchWrapperTail = `
end
local out, pos = {}, 6
for i = 1, #KEYS do
  local n = tonumber(ARGV[pos])
  local a = {ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]}
  for j = 1, n do a[5 + j] = ARGV[pos + j] end
  pos = pos + n + 1
  local k = {}
  if KEYS[i] ~= '' then k[1] = KEYS[i] end
  local ok, v = pcall(one, k, a)
  if ok then
    if v == nil then v = false end
    out[i] = {1, v}
  elseif type(v) == 'table' and v.err then
    out[i] = {0, v.err}
  else
    out[i] = {0, tostring(v)}
  end
end
return out
`

// batchCall is one call waiting for, or in, a batch.
type batchCall struct {
	key  string
	args []any
	v    any
	err  error
	done chan struct{}
}

// batcher coalesces the concurrent calls of one script.
type batcher struct {
	s  *Store
	sc *luaScript

	mu      sync.Mutex
	queue   []*batchCall
	running int // batches in flight

	coalesced atomic.Int64 // calls that ran in a batch of more than one
}

// do runs the script for key and args, in a batch when others wait.
func (b *batcher) do(ctx context.Context, key string, args []any) (any, error) {
	c := &batchCall{key: key, args: args, done: make(chan struct{})}
	b.mu.Lock()
	b.queue = append(b.queue, c)
	if b.running < b.s.opts.BatchInFlight {
		b.running++
		batch := b.takeLocked()
		b.mu.Unlock()
		if len(batch) == 1 {
			// Nothing else waits (the usual case under light load): run
			// the call here, with its own ctx, and hand what queued up
			// meanwhile to a goroutine.
			c.v, c.err = b.s.runNow(ctx, b.sc, key, args...)
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

// takeLocked takes up to BatchMax queued calls, oldest first.
func (b *batcher) takeLocked() []*batchCall {
	n := min(len(b.queue), b.s.opts.BatchMax)
	batch := make([]*batchCall, n)
	copy(batch, b.queue)
	rest := copy(b.queue, b.queue[n:])
	clear(b.queue[rest:])
	b.queue = b.queue[:rest]
	return batch
}

// loop runs batch, then the calls queued meanwhile, until none are left.
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

// next ends a run started inline by do: the calls queued meanwhile go to
// a goroutine, which keeps the run's slot; with none, the slot is freed.
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
// contexts do not bound it (they may end while it runs); go-redis's read
// and write timeouts do.
func (b *batcher) exec(batch []*batchCall) {
	ctx := context.Background()
	defer func() {
		for _, c := range batch {
			close(c.done)
		}
	}()
	if len(batch) == 1 {
		c := batch[0]
		c.v, c.err = b.s.runNow(ctx, b.sc, c.key, c.args...)
		return
	}
	b.coalesced.Add(int64(len(batch)))
	keys := make([]string, len(batch))
	n := 0
	for _, c := range batch {
		n += 1 + len(c.args)
	}
	argv := b.s.commonArgs(n)
	for i, c := range batch {
		keys[i] = c.key
		argv = append(argv, len(c.args))
		argv = append(argv, c.args...)
	}
	v, err := b.s.scripts.call(ctx, b.sc, true, keys, argv)
	if err != nil {
		for _, c := range batch {
			c.err = err
		}
		return
	}
	rows, _ := v.([]any)
	for i, c := range batch {
		if i >= len(rows) {
			c.err = fmt.Errorf("mailbox: batched script answered %d rows for %d calls", len(rows), len(batch))
			continue
		}
		row, _ := rows[i].([]any)
		if len(row) == 0 {
			c.err = fmt.Errorf("mailbox: batched script answered %v for a call", rows[i])
			continue
		}
		if ok, _ := row[0].(int64); ok != 1 {
			msg := "unknown error"
			if len(row) > 1 {
				msg = fmt.Sprint(row[1])
			}
			c.err = scriptError(msg)
			continue
		}
		if len(row) > 1 {
			c.v = row[1]
		}
	}
}

// scriptError is the error one item of a batch raised in Redis. Like the
// errors go-redis returns for a failed script, it is a redis.Error, so
// callers classify it the same way (by its text: "OOM …", "BUSY …").
type scriptError string

func (e scriptError) Error() string { return string(e) }

// RedisError marks scriptError as a redis.Error.
func (scriptError) RedisError() {}

var _ redis.Error = scriptError("")
