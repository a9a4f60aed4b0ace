package protocol

import (
	"errors"
	"strings"
	"testing"

	"github.com/cespare/xxhash/v2"
)

// TestXXH64MatchesLibrary checks the hand-written xxHash against the
// library the ring uses, for every length that takes a different path.
func TestXXH64MatchesLibrary(t *testing.T) {
	base := "dev-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMNOPQRSTUVWXYZ-0123456789"
	for n := 0; n <= len(base); n++ {
		s := base[:n]
		if got, want := XXH64(s), xxhash.Sum64String(s); got != want {
			t.Errorf("XXH64(%q) = %#x, want %#x", s, got, want)
		}
	}
}

// TestPartitionVectors pins partition(identity) (DESIGN §7): outside tools
// that route by partition must compute the same numbers.
func TestPartitionVectors(t *testing.T) {
	tests := []struct {
		identity string
		n        int
		want     int
	}{
		{"", 256, 153},
		{"abc", 256, 153},
		{"dev-1", 256, 248},
		{"dev-1", 1, 0},
		{"app-1", 256, 253},
		{"app-1", 16384, 9213},
	}
	for _, tt := range tests {
		if got := Partition(tt.identity, tt.n); got != tt.want {
			t.Errorf("Partition(%q, %d) = %d, want %d", tt.identity, tt.n, got, tt.want)
		}
	}
}

func TestCheckPartitions(t *testing.T) {
	for _, n := range []int{1, 2, 4, 256, 16384} {
		if err := CheckPartitions(n); err != nil {
			t.Errorf("CheckPartitions(%d) = %v, want nil", n, err)
		}
	}
	for _, n := range []int{0, -1, 3, 100, 32768} {
		if err := CheckPartitions(n); !errors.Is(err, ErrPartitions) {
			t.Errorf("CheckPartitions(%d) = %v, want ErrPartitions", n, err)
		}
	}
	for _, n := range []int{0, 257} {
		if err := CheckQueues(n); err == nil {
			t.Errorf("CheckQueues(%d) = nil, want an error", n)
		}
	}
}

func TestTag(t *testing.T) {
	if got, want := Tag("gw", 17), "{gw:17}"; got != want {
		t.Errorf("Tag(gw, 17) = %q, want %q", got, want)
	}
	if !strings.HasPrefix(NewKeys("gw").Part(17).Mailbox("d"), "{gw:17}:") {
		t.Errorf("a partition key does not start with its tag")
	}
}
