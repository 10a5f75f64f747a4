package ringline

import "testing"

// BenchmarkPublishCounters: what publishing a worker's counters costs in
// the steady state, where only the traffic counters moved since the last
// publish (a worker publishes before every blocking wait: once per few
// messages when it waits often, as under TLS or ping-pong load).
func BenchmarkPublishCounters(b *testing.B) {
	var p publishedCounters
	var s counters
	for b.Loop() {
		s.bytesIn += 64
		s.bytesOut += 64
		s.loops++
		s.resumes++
		p.set(&s)
	}
}
