package mailbox_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/iotgw/gateway/internal/testenv"
	"github.com/iotgw/gateway/mailbox"
)

// TestCheckCounts: the first start records the counts; a start with the
// same counts passes; one with another partition or queue count is
// refused with both counts named, and changes nothing.
func TestCheckCounts(t *testing.T) {
	t.Parallel()
	rdb := testenv.Redis(t)
	ns := testenv.Namespace(t)
	store := func(partitions int) *mailbox.Store {
		return mailbox.New(rdb, ns, mailbox.Options{Partitions: partitions, Logger: testenv.Logger(t)})
	}
	// Checking without recording leaves a fresh namespace fresh.
	if err := store(8).CheckCounts(t.Context(), 2, false); err != nil {
		t.Fatalf("fresh namespace: CheckCounts(record false) = %v, want nil", err)
	}
	if err := store(16).CheckCounts(t.Context(), 4, true); err != nil {
		t.Fatalf("first start: CheckCounts = %v, want nil", err)
	}
	tests := []struct {
		name       string
		partitions int
		queues     int
		want       string // "" for no error, else a part of the message
	}{
		{"same counts", 16, 4, ""},
		{"other queue count", 16, 8, "GW_QUEUES=8"},
		{"fewer partitions", 8, 4, "GW_PARTITIONS=8"},
		{"more partitions", 32, 4, "records partitions=16"},
	}
	for _, tt := range tests {
		err := store(tt.partitions).CheckCounts(t.Context(), tt.queues, tt.want == "")
		switch {
		case tt.want == "" && err != nil:
			t.Errorf("%s: CheckCounts = %v, want nil", tt.name, err)
		case tt.want != "" && (!errors.Is(err, mailbox.ErrCounts) || !strings.Contains(err.Error(), tt.want)):
			t.Errorf("%s: CheckCounts = %v, want ErrCounts mentioning %q", tt.name, err, tt.want)
		}
	}
	// The refusals recorded nothing: the first counts still stand.
	if err := store(16).CheckCounts(t.Context(), 4, false); err != nil {
		t.Errorf("after the refusals: CheckCounts = %v, want nil", err)
	}
}

// TestResizeFence: a resizing process (from 2 to 4 queues) records the
// count still in effect, 2, and passes whether 2 or 4 is recorded; the
// switch (MoveQueues) records 4 in every partition, after which a plain 2
// is refused and a plain 4 passes.
func TestResizeFence(t *testing.T) {
	t.Parallel()
	s := mailbox.New(testenv.Redis(t), testenv.Namespace(t), mailbox.Options{Partitions: 8, Logger: testenv.Logger(t)})
	ctx := t.Context()
	if err := s.CheckResize(ctx, 2, 4, true); err != nil {
		t.Fatalf("first start, resizing 2 → 4: CheckResize = %v", err)
	}
	type step struct {
		name         string
		from, queues int
		ok           bool
	}
	steps := []step{
		{"plain 2 before the switch", 0, 2, true},
		{"plain 4 before the switch", 0, 4, false},
		{"resizing 8 → 4", 8, 4, false},
	}
	check := func(when string) {
		t.Helper()
		for _, st := range steps {
			err := s.CheckResize(ctx, st.from, st.queues, false)
			if (err == nil) != st.ok || (err != nil && !errors.Is(err, mailbox.ErrCounts)) {
				t.Errorf("%s, %s: CheckResize(%d, %d) = %v, want ok %v", when, st.name, st.from, st.queues, err, st.ok)
			}
		}
	}
	check("before the switch")
	if err := s.MoveQueues(ctx, 2, 4); err != nil {
		t.Fatalf("MoveQueues(2, 4) = %v", err)
	}
	if err := s.MoveQueues(ctx, 2, 4); err != nil {
		t.Fatalf("MoveQueues(2, 4) again = %v, want nil (nothing to change)", err)
	}
	steps = []step{
		{"plain 2 after the switch", 0, 2, false},
		{"plain 4 after the switch", 0, 4, true},
		{"resizing 2 → 4 after the switch", 2, 4, true},
		{"resizing 8 → 4 after the switch", 8, 4, true},
	}
	check("after the switch")
}
