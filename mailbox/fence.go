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
	want := [2]string{fmt.Sprint(s.opts.Partitions), fmt.Sprint(queues)}
	rec := "0"
	if record {
		rec = "1"
	}
	for p := 0; p < s.opts.Partitions; p++ {
		v, err := s.runNow(ctx, p, stepFence, []string{s.keys.Part(p).Meta()}, []any{want[0], want[1], rec})
		if err != nil {
			return fmt.Errorf("cannot check the partition counts: %w", err)
		}
		a, _ := v.([]any)
		if head, _ := reply(v); head == "mismatch" && len(a) == 3 {
			return fmt.Errorf("%w: GW_PARTITIONS=%s and GW_QUEUES=%s are set, but partition %d of namespace %q records partitions=%v and queues=%v; "+
				"the counts are fixed for the life of a namespace: start with the recorded counts, or use a new namespace",
				ErrCounts, want[0], want[1], p, s.keys.NS, a[1], a[2])
		}
	}
	return nil
}
