package mailbox_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
)

// TestFetchStampsOnlyWhatNeedsIt: a read of a mailbox that holds no
// command entry and nothing near its expiry runs no stamp step (there is
// nothing it could drop); an entry within a minute of its expiry, or any
// read with a durability barrier, leaves the decision to the step, which
// drops what expired by the partition's clock.
func TestFetchStampsOnlyWhatNeedsIt(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		expiresIn time.Duration
		wait      int // Options.WaitReplicas (0: no barrier)
		advance   time.Duration
		wantStep  bool
		wantKept  int
	}{
		{name: "far from expiry", expiresIn: time.Hour, wantStep: false, wantKept: 1},
		{name: "within the margin", expiresIn: 30 * time.Second, wantStep: true, wantKept: 1},
		{name: "expired", expiresIn: 30 * time.Second, advance: 31 * time.Second, wantStep: true, wantKept: 0},
		// No replica acknowledges the barrier: the step ran, and says so.
		{name: "with a barrier", expiresIn: time.Hour, wait: 1, wantStep: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rdb := testenv.Redis(t)
			counted := redis.NewClient(rdb.Options())
			t.Cleanup(func() { counted.Close() })
			hook := &topCounter{n: map[string]int64{}}
			counted.AddHook(hook)
			c := newClock()
			ns := testenv.Namespace(t)
			opts := mailbox.Options{Now: c.Now, Partitions: 1, Logger: testenv.Logger(t)}
			put := mailbox.New(rdb, ns, opts)
			opts.WaitReplicas, opts.WaitTimeout = tc.wait, 10*time.Millisecond
			s := mailbox.New(counted, ns, opts)
			ctx := context.Background()
			if _, err := put.Put(ctx, "c1", "clients/c1/results/d1", []byte(`{"jsonrpc":"2.0","result":1,"id":1}`),
				c.Now().Add(tc.expiresIn), ""); err != nil {
				t.Fatal(err)
			}
			c.Add(tc.advance)
			hook.take()
			es, err := s.Fetch(ctx, "c1", "", 10)
			if tc.wait > 0 {
				if !errors.Is(err, mailbox.ErrNotDurable) {
					t.Errorf("Fetch with an unacknowledged barrier: %v, want ErrNotDurable", err)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if len(es) != tc.wantKept {
				t.Errorf("Fetch returned %d entries, want %d", len(es), tc.wantKept)
			}
			if got := hook.take()["fcall"] > 0; got != tc.wantStep {
				t.Errorf("stamp step ran = %v, want %v", got, tc.wantStep)
			}
		})
	}
}
