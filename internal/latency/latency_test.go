package latency

import (
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	seq := func(n int) []time.Duration {
		s := make([]time.Duration, n)
		for i := range s {
			s[i] = time.Duration(n-i) * time.Millisecond // reversed: Summarize sorts
		}
		return s
	}
	tests := []struct {
		name string
		in   []time.Duration
		want Percentiles
	}{
		{"empty", nil, Percentiles{}},
		{"one", []time.Duration{1500 * time.Microsecond}, Percentiles{Count: 1, P50: 1.5, P90: 1.5, P99: 1.5, P999: 1.5, Max: 1.5, Mean: 1.5}},
		{"1..100 ms", seq(100), Percentiles{Count: 100, P50: 50, P90: 90, P99: 99, P999: 100, Max: 100, Mean: 50.5}},
		{"1..1000 ms", seq(1000), Percentiles{Count: 1000, P50: 500, P90: 900, P99: 990, P999: 999, Max: 1000, Mean: 500.5}},
		{"1..3 ms", seq(3), Percentiles{Count: 3, P50: 2, P90: 3, P99: 3, P999: 3, Max: 3, Mean: 2}},
		{"sub-microsecond rounds", []time.Duration{1234567 * time.Nanosecond}, Percentiles{Count: 1, P50: 1.235, P90: 1.235, P99: 1.235, P999: 1.235, Max: 1.235, Mean: 1.235}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Summarize(tt.in); got != tt.want {
				t.Errorf("Summarize(%s) = %+v, want %+v", tt.name, got, tt.want)
			}
		})
	}
}

func TestRecorder(t *testing.T) {
	var r Recorder
	for i := 1; i <= 10; i++ {
		r.Add(time.Duration(i) * time.Millisecond)
	}
	if got := r.Summary(); got.Count != 10 || got.P50 != 5 || got.Max != 10 {
		t.Errorf("Summary() = %+v, want count 10, p50 5, max 10", got)
	}
	if r.Len() != 10 {
		t.Errorf("Len() = %d, want 10", r.Len())
	}
}
