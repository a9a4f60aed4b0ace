package mailbox

import (
	"context"
	"errors"
	"fmt"
)

// ErrCounts means the namespace's Redis recorded other partition or queue
// counts than this process was started with (DESIGN §7a): every key would
// land in another partition, so the process must not run.
var ErrCounts = errors.New("mailbox: the namespace was started with other counts")

// CheckCounts checks that Options.Partitions and queues (GW_QUEUES) are
// the counts recorded in every partition's meta key, and with record set
// records them where none are recorded yet (the namespace's first start).
// It returns an error wrapping ErrCounts, naming both counts, when they
// differ. The AMQP fence queue (package amqpx) checks the same counts
// against RabbitMQ: record only after that fence let the process in, so
// that a refused process never records its counts.
func (s *Store) CheckCounts(ctx context.Context, queues int, record bool) error {
	mode := "0"
	if record {
		mode = "1"
	}
	return s.fence(ctx, 0, queues, mode)
}

// CheckResize is CheckCounts for a process that takes part in a resize of
// GW_QUEUES from from to queues: a partition may record either count.
func (s *Store) CheckResize(ctx context.Context, from, queues int, record bool) error {
	mode := "0"
	if record {
		mode = "1"
	}
	return s.fence(ctx, from, queues, mode)
}

// MoveQueues is the switch of a resize in Redis: every partition that
// records from then records queues (one that already does is left).
func (s *Store) MoveQueues(ctx context.Context, from, queues int) error {
	return s.fence(ctx, from, queues, "2")
}

// fence runs the fence step on every partition.
func (s *Store) fence(ctx context.Context, from, queues int, mode string) error {
	want := [2]string{fmt.Sprint(s.opts.Partitions), fmt.Sprint(queues)}
	old := ""
	if from > 0 && from != queues {
		old = fmt.Sprint(from)
	}
	for p := 0; p < s.opts.Partitions; p++ {
		v, err := s.runNow(ctx, p, stepFence, []string{s.keys.Part(p).Meta()}, []any{want[0], want[1], mode, old})
		if err != nil {
			return fmt.Errorf("cannot check the partition counts: %w", err)
		}
		a, _ := v.([]any)
		if head, _ := reply(v); head == "mismatch" && len(a) == 3 {
			also := ""
			if old != "" {
				also = " (resized from " + old + ")"
			}
			return fmt.Errorf("%w: GW_PARTITIONS=%s and GW_QUEUES=%s%s are set, but partition %d of namespace %q records partitions=%v and queues=%v; "+
				"the counts are fixed for the life of a namespace: start with the recorded counts, resize GW_QUEUES as the README says, or use a new namespace",
				ErrCounts, want[0], want[1], also, p, s.keys.NS, a[1], a[2])
		}
	}
	return nil
}
