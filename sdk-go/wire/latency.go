package wire

import (
	"math"
	"sync/atomic"
	"time"
)

// LatencyBuckets are the upper bounds of the hook latency histograms that
// the daemon keeps and that hosts report for their direct calls
// (schema HookStats.latencyCounts): 100 µs to 10 s, a fixed set so that a
// report is a short list of counts and every histogram can be added to
// every other. A last, implicit bucket holds what is slower.
var LatencyBuckets = [...]time.Duration{
	100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
	time.Millisecond, 2500 * time.Microsecond, 5 * time.Millisecond,
	10 * time.Millisecond, 25 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 250 * time.Millisecond, 500 * time.Millisecond,
	time.Second, 2500 * time.Millisecond, 5 * time.Second, 10 * time.Second,
}

// NumLatencyCounts is how many counts a latency histogram has: one per
// bucket of LatencyBuckets and one for slower calls.
const NumLatencyCounts = len(LatencyBuckets) + 1

// LatencyHistogram counts call durations in the LatencyBuckets. Its size
// is fixed whatever it counts; it is safe for concurrent use, without
// locks.
type LatencyHistogram struct {
	counts [NumLatencyCounts]atomic.Uint64 // per bucket, not cumulative
	sum    atomic.Uint64                   // nanoseconds
}

// LatencyBucket returns the index of the count that d falls in.
func LatencyBucket(d time.Duration) int {
	for i, b := range LatencyBuckets {
		if d <= b {
			return i
		}
	}
	return len(LatencyBuckets)
}

// Observe counts one call that took d.
func (h *LatencyHistogram) Observe(d time.Duration) {
	d = max(d, 0)
	h.counts[LatencyBucket(d)].Add(1)
	h.sum.Add(uint64(d))
}

// Add adds counts made elsewhere: per bucket (not cumulative, as many as
// NumLatencyCounts; extra ones are ignored) and their total duration.
func (h *LatencyHistogram) Add(counts []uint64, sum time.Duration) {
	for i, n := range counts {
		if i < NumLatencyCounts && n > 0 {
			h.counts[i].Add(n)
		}
	}
	h.sum.Add(uint64(max(sum, 0)))
}

// LatencySnapshot is what a LatencyHistogram counted, at one time.
type LatencySnapshot struct {
	Counts [NumLatencyCounts]uint64 // per bucket, not cumulative
	Sum    time.Duration
}

// Snapshot returns the counts. Taken while calls are counted, the sum may
// be a call ahead of or behind the counts.
func (h *LatencyHistogram) Snapshot() LatencySnapshot {
	var s LatencySnapshot
	for i := range h.counts {
		s.Counts[i] = h.counts[i].Load()
	}
	s.Sum = time.Duration(h.sum.Load())
	return s
}

// Count returns how many calls the snapshot counts.
func (s LatencySnapshot) Count() uint64 {
	var n uint64
	for _, c := range s.Counts {
		n += c
	}
	return n
}

// Merge returns the sum of two snapshots.
func (s LatencySnapshot) Merge(o LatencySnapshot) LatencySnapshot {
	for i := range s.Counts {
		s.Counts[i] += o.Counts[i]
	}
	s.Sum += o.Sum
	return s
}

// Sub returns what s counted beyond an earlier snapshot o of the same
// histogram.
func (s LatencySnapshot) Sub(o LatencySnapshot) LatencySnapshot {
	for i := range s.Counts {
		s.Counts[i] -= o.Counts[i]
	}
	s.Sum -= o.Sum
	return s
}

// Quantile estimates the q-quantile (0 < q < 1) of the durations counted,
// as Prometheus's histogram_quantile does: linearly within the bucket it
// falls in, the first bucket starting at 0. In the last, unbounded bucket
// it answers the largest bound (10 s). It returns 0 when nothing was
// counted.
func (s LatencySnapshot) Quantile(q float64) time.Duration {
	total := s.Count()
	if total == 0 || math.IsNaN(q) {
		return 0
	}
	q = min(max(q, 0), 1)
	rank := q * float64(total)
	var seen float64
	for i, c := range s.Counts {
		if c == 0 {
			continue
		}
		if seen+float64(c) < rank {
			seen += float64(c)
			continue
		}
		if i == len(LatencyBuckets) {
			return LatencyBuckets[len(LatencyBuckets)-1]
		}
		var lo time.Duration
		if i > 0 {
			lo = LatencyBuckets[i-1]
		}
		hi := LatencyBuckets[i]
		return lo + time.Duration(float64(hi-lo)*(rank-seen)/float64(c))
	}
	return LatencyBuckets[len(LatencyBuckets)-1]
}
