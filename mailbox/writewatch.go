package mailbox

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/redis/go-redis/v9"
)

// The write watch (DESIGN §7a, "Relaxed durability says so"). A Redis
// that runs appendfsync everysec can lose, in a host crash, the writes of
// its last second, and a failover can lose what a primary had not passed
// to the replica that took over: steps the gateway had acknowledged (a
// 202, a PUBACK, a result sent to its client) are then gone, and nothing
// in Redis says so. The watch makes it visible: every interval it
// increments a counter in one partition of each primary ({ns:p}:watch)
// and remembers the highest value that primary acknowledged (durably:
// after the barrier when GW_REDIS_WAIT_REPLICAS is set); a counter that
// comes back lower than that means Redis lost writes it had acknowledged,
// and Check reports when the lost span began (the last value that
// survived was written then). A Redis that lost nothing, or a new empty
// namespace, never reports.

// WriteLoss is one primary found to have lost acknowledged writes.
type WriteLoss struct {
	Partition int    // the watched partition (one per primary)
	Node      string // the primary's address
	// Had is the highest value acknowledged before; Got is what the
	// counter says now (Had − Got + 1 increments were lost).
	Had, Got int64
	// Since is when the last surviving value was written: what the
	// gateway acknowledged after it, up to the loss, may be gone.
	Since time.Time
}

func (l WriteLoss) String() string {
	return fmt.Sprintf("partition %d on %s: its watch counter was acknowledged at %d and is now %d; writes acknowledged after %s may be lost",
		l.Partition, l.Node, l.Had, l.Got, l.Since.UTC().Format(time.RFC3339Nano))
}

// WriteWatch detects Redis losing acknowledged writes; one per process.
// It is not safe for concurrent use.
type WriteWatch struct {
	s *Store
	// marks holds, by watched partition, the values acknowledged with
	// when (the latest watchMarks of them).
	marks map[int][]watchMark
}

type watchMark struct {
	v  int64
	at time.Time
}

// watchMarks bounds the history kept per watched partition: at the
// worker's interval of 250 ms, the last 30 s.
const watchMarks = 120

// NewWriteWatch returns a watch of the store's Redis.
func (s *Store) NewWriteWatch() *WriteWatch { return &WriteWatch{s: s, marks: map[int][]watchMark{}} }

// Check increments the watch counter of each primary once and returns the
// primaries found to have lost acknowledged writes since the last Check.
// An error means a primary could not be reached; the others are checked.
func (w *WriteWatch) Check(ctx context.Context) ([]WriteLoss, error) {
	parts, err := w.watched(ctx)
	if err != nil {
		return nil, err
	}
	var losses []WriteLoss
	var firstErr error
	for _, p := range parts {
		loss, err := w.checkOne(ctx, p)
		if err != nil {
			if firstErr == nil {
				firstErr = err
			}
			continue
		}
		if loss != nil {
			losses = append(losses, *loss)
		}
	}
	return losses, firstErr
}

// watched returns one partition per primary: partition 0 on one server
// or Sentinel; on a Cluster, the first partition served by each primary.
func (w *WriteWatch) watched(ctx context.Context) ([]int, error) {
	cc, ok := w.s.rdb.(*redis.ClusterClient)
	if !ok {
		return []int{0}, nil
	}
	seen := map[string]bool{}
	var parts []int
	for p := 0; p < w.s.opts.Partitions; p++ {
		n, err := cc.MasterForKey(ctx, w.s.keys.Part(p).Watch())
		if err != nil {
			return nil, fmt.Errorf("cannot find the primary of partition %d: %w", p, w.s.classify(err))
		}
		if addr := n.Options().Addr; !seen[addr] {
			seen[addr] = true
			parts = append(parts, p)
		}
	}
	sort.Ints(parts)
	return parts, nil
}

// checkOne increments partition p's watch counter (followed by the
// barrier when one is configured) and compares it with what p's primary
// acknowledged before.
func (w *WriteWatch) checkOne(ctx context.Context, p int) (*WriteLoss, error) {
	node, err := w.s.nodeOf(ctx, p)
	if err != nil {
		return nil, w.s.classify(err)
	}
	var incr *redis.IntCmd
	var wait *redis.IntCmd
	at := time.Now()
	_, err = node.Pipelined(ctx, func(pipe redis.Pipeliner) error {
		incr = pipe.Incr(ctx, w.s.keys.Part(p).Watch())
		if w.s.opts.WaitReplicas > 0 {
			wait = redis.NewIntCmd(ctx, "wait", w.s.opts.WaitReplicas, w.s.opts.WaitTimeout.Milliseconds())
			_ = pipe.Process(ctx, wait)
		}
		return nil
	})
	if err := incr.Err(); err != nil {
		return nil, fmt.Errorf("cannot increment the write watch of partition %d: %w", p, w.s.classify(err))
	}
	v := incr.Val()
	marks := w.marks[p]
	var loss *WriteLoss
	if n := len(marks); n > 0 && v <= marks[n-1].v {
		loss = &WriteLoss{Partition: p, Node: node.Options().Addr, Had: marks[n-1].v, Got: v, Since: marks[0].at}
		// The last value that survived is v−1: it was written at the
		// mark that holds it (or before the oldest one kept).
		for _, m := range marks {
			if m.v <= v-1 {
				loss.Since = m.at
			}
		}
		marks = marks[:0]
	}
	durable := err == nil && (wait == nil || wait.Val() >= int64(w.s.opts.WaitReplicas))
	if durable {
		marks = append(marks, watchMark{v: v, at: at})
		if len(marks) > watchMarks {
			marks = marks[1:]
		}
	}
	w.marks[p] = marks
	return loss, nil
}
