package main

import "testing"

func TestCounts(t *testing.T) {
	t.Parallel()
	c := newCounts()
	steps := []struct {
		op         string // take or give
		key        string
		per, total int
		want       bool
	}{
		{"take", "a", 2, 3, true},
		{"take", "a", 2, 3, true},
		{"take", "a", 2, 3, false}, // a holds its share
		{"take", "b", 2, 3, true},
		{"take", "c", 2, 3, false}, // the total is reached
		{"give", "a", 0, 0, true},
		{"take", "c", 2, 3, true}, // a gave one back
		{"take", "c", 2, 0, true}, // no total bound
		{"take", "c", 2, 0, false},
	}
	for i, s := range steps {
		if s.op == "give" {
			c.give(s.key)
			continue
		}
		if got := c.take(s.key, s.per, s.total); got != s.want {
			t.Errorf("step %d: take(%q, %d, %d) = %v, want %v", i, s.key, s.per, s.total, got, s.want)
		}
	}
	for _, k := range []string{"a", "b", "c", "c", "nobody"} { // a give of nothing held changes nothing
		c.give(k)
	}
	if len(c.n) != 0 || c.total != 0 {
		t.Errorf("after giving everything back: %v, total %d; want empty, 0", c.n, c.total)
	}
}
