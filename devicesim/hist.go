package main

import (
	"math"
	"slices"
	"sync"
	"time"
)

// Percentiles summarise a latency distribution in milliseconds.
type Percentiles struct {
	Count int     `json:"count"`
	P50   float64 `json:"p50"`
	P90   float64 `json:"p90"`
	P99   float64 `json:"p99"`
	P999  float64 `json:"p999"`
	Max   float64 `json:"max"`
	Mean  float64 `json:"mean"`
}

// Recorder keeps every sample (a load run is bounded in count) so that
// percentiles are exact.
type Recorder struct {
	mu      sync.Mutex
	samples []time.Duration
}

// Add records one sample.
func (r *Recorder) Add(d time.Duration) {
	r.mu.Lock()
	r.samples = append(r.samples, d)
	r.mu.Unlock()
}

// Summary computes the percentiles (nearest rank).
func (r *Recorder) Summary() Percentiles {
	r.mu.Lock()
	s := slices.Clone(r.samples)
	r.mu.Unlock()
	return summarize(s)
}

func summarize(s []time.Duration) Percentiles {
	if len(s) == 0 {
		return Percentiles{}
	}
	slices.Sort(s)
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	ms := func(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }
	rank := func(q float64) time.Duration {
		i := int(math.Ceil(q*float64(len(s)))) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	return Percentiles{Count: len(s), P50: ms(rank(0.50)), P90: ms(rank(0.90)), P99: ms(rank(0.99)),
		P999: ms(rank(0.999)), Max: ms(s[len(s)-1]), Mean: ms(sum / time.Duration(len(s)))}
}
