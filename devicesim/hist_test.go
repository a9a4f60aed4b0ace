package main

import (
	"testing"
	"time"
)

func TestSummarize(t *testing.T) {
	var s []time.Duration
	for i := 1; i <= 1000; i++ {
		s = append(s, time.Duration(i)*time.Millisecond)
	}
	got := summarize(s)
	want := Percentiles{Count: 1000, P50: 500, P90: 900, P99: 990, P999: 999, Max: 1000, Mean: 500.5}
	if got != want {
		t.Fatalf("summarize(1..1000ms) = %+v, want %+v", got, want)
	}
	if got := summarize(nil); got != (Percentiles{}) {
		t.Fatalf("summarize(nil) = %+v, want zero", got)
	}
	if got := summarize([]time.Duration{7 * time.Millisecond}); got.P50 != 7 || got.P999 != 7 || got.Max != 7 {
		t.Fatalf("summarize(7ms) = %+v, want all 7", got)
	}
}
