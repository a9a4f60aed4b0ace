package protocol

import (
	"errors"
	"strings"
	"testing"
)

func TestParseLane(t *testing.T) {
	tests := []struct {
		in string
		ok bool
	}{
		{"valve", true},
		{"a", true},
		{"0", true},
		{"pump-1.stage_2", true},
		{strings.Repeat("l", MaxLaneLen), true},
		{strings.Repeat("l", MaxLaneLen+1), false},
		{"", false},
		{"-valve", false},
		{".valve", false},
		{"a|b", false},
		{"a b", false},
		{"a:b", false},
		{"é", false},
		{"a\x00", false},
	}
	for _, tt := range tests {
		got, err := ParseLane(tt.in)
		if (err == nil) != tt.ok {
			t.Errorf("ParseLane(%q) = %q, %v; want ok %v", tt.in, got, err, tt.ok)
			continue
		}
		if err != nil && !errors.Is(err, ErrLane) {
			t.Errorf("ParseLane(%q) error %v, want ErrLane", tt.in, err)
		}
		if err == nil && got != tt.in {
			t.Errorf("ParseLane(%q) = %q, want it unchanged", tt.in, got)
		}
	}
}

// FuzzParseLane: an accepted lane is a name that fits a Redis set member
// "{lane}|{seq}|…" (no '|', no ':', no space), within MaxLaneLen; a
// refused one is an ErrLane whose message stays short.
func FuzzParseLane(f *testing.F) {
	for _, s := range []string{"valve", "a", "", "-a", "a|b", "a:b", "a b", "é", strings.Repeat("x", 64), strings.Repeat("x", 65), "\x00", "a\n"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		got, err := ParseLane(s)
		if err != nil {
			if !errors.Is(err, ErrLane) || len(err.Error()) > 300 {
				t.Fatalf("ParseLane(%q) error %v, want a short ErrLane", s, err)
			}
			return
		}
		if got != s || len(s) == 0 || len(s) > MaxLaneLen || strings.ContainsAny(s, "|: \t\r\n{}") || !isAlnum(s[0]) {
			t.Fatalf("ParseLane(%q) = %q, which breaks the lane rules", s, got)
		}
		for i := 0; i < len(s); i++ {
			if c := s[i]; !isAlnum(c) && c != '.' && c != '_' && c != '-' {
				t.Fatalf("ParseLane(%q) accepted byte %q", s, c)
			}
		}
	})
}
