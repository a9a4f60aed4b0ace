package mailbox_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/iotgw/gateway/mailbox"
)

// TestDeadListPagesAcrossPartitions pages one at a time through dead
// commands spread over many partitions and ties of one partition.
func TestDeadListPagesAcrossPartitions(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		devices []string
		step    time.Duration // clock step between dead letters (0: ties)
	}{
		{"one device, distinct times", []string{"dev-1", "dev-1", "dev-1"}, 2 * time.Millisecond},
		{"one device, ties", []string{"dev-1", "dev-1", "dev-1"}, 0},
		{"many devices, ties", []string{"a", "b", "c", "d", "e", "f"}, 0},
		{"many devices, distinct times", []string{"a", "b", "c", "d", "e", "f"}, time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, mailbox.Options{Partitions: 256})
			want := map[string]bool{}
			for i, d := range tt.devices {
				id := fmt.Sprintf(`"x%d"`, i)
				c := e.queued(cmd(t, "app-1", d, id, ``))
				if _, err := e.s.MarkDead(e.ctx, d, "app-1", c.ID.Key(), "test", ""); err != nil {
					t.Fatal(err)
				}
				want[c.ID.Key()] = true
				e.clock.Add(tt.step)
			}
			seen := map[string]bool{}
			cursor := ""
			for pages := 0; ; pages++ {
				list, next, err := e.s.DeadList(e.ctx, 1, cursor)
				if err != nil {
					t.Fatalf("DeadList(1, %q) = %v", cursor, err)
				}
				for _, c := range list {
					if seen[c.ID.Key()] {
						t.Errorf("%s listed twice", c.ID.Key())
					}
					seen[c.ID.Key()] = true
				}
				if cursor = next; cursor == "" {
					break
				}
				if pages > 20 {
					t.Fatal("paging does not end")
				}
			}
			if len(seen) != len(want) {
				t.Errorf("paging saw %v, want %v", seen, want)
			}
		})
	}
}
