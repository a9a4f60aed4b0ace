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
