// Package latency summarises latency samples as exact nearest-rank
// percentiles in milliseconds, for devicesim's load report and the
// benchmark's report (their JSON keys are the same type).
package latency

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

// Recorder keeps every sample so that percentiles are exact; callers
// bound the sample count. It is safe for concurrent use.
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

// Len returns the number of samples.
func (r *Recorder) Len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.samples)
}

// Summary computes the percentiles of the samples so far.
func (r *Recorder) Summary() Percentiles {
	r.mu.Lock()
	s := slices.Clone(r.samples)
	r.mu.Unlock()
	return Summarize(s)
}

// Summarize computes nearest-rank percentiles of s (which it sorts):
// the q-quantile is the smallest sample with at least q·n samples at or
// below it. Values are milliseconds rounded to the microsecond. An empty
// s gives the zero Percentiles.
func Summarize(s []time.Duration) Percentiles {
	if len(s) == 0 {
		return Percentiles{}
	}
	slices.Sort(s)
	var sum float64
	for _, d := range s {
		sum += float64(d)
	}
	return Percentiles{
		Count: len(s),
		P50:   ms(rank(s, 0.50)),
		P90:   ms(rank(s, 0.90)),
		P99:   ms(rank(s, 0.99)),
		P999:  ms(rank(s, 0.999)),
		Max:   ms(s[len(s)-1]),
		Mean:  ms(time.Duration(sum / float64(len(s)))),
	}
}

// rank returns the nearest-rank q-quantile of the sorted, non-empty s.
func rank(s []time.Duration, q float64) time.Duration {
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// ms converts d to milliseconds, rounded to the microsecond.
func ms(d time.Duration) float64 { return math.Round(float64(d)/1e3) / 1e3 }
