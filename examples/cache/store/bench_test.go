package store

import (
	"bytes"
	"fmt"
	"sync/atomic"
	"testing"
)

// BenchmarkStore measures a GET/SET mix (80/20, 64-byte values, 100,000
// keys) from all Ps at once, for several shard counts: the measurement
// behind the choice of 256 shards (see the example's README). Run with
// -cpu 1,2 to see contention appear.
func BenchmarkStore(b *testing.B) {
	const keys = 100000
	val := bytes.Repeat([]byte("x"), 64)
	names := make([][]byte, keys)
	for i := range names {
		names[i] = []byte(fmt.Sprintf("key:%012d", i))
	}
	for _, shards := range []int{1, 16, 256, 4096} {
		b.Run(fmt.Sprintf("shards=%d", shards), func(b *testing.B) {
			s := New(Options{Shards: shards})
			for _, k := range names {
				s.Set(k, val, 0, 1, 0)
			}
			var seed atomic.Uint64
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				x := seed.Add(0x9E3779B97F4A7C15)
				dst := make([]byte, 0, 128)
				for pb.Next() {
					x ^= x << 13
					x ^= x >> 7
					x ^= x << 17
					k := names[x%keys]
					if x&7 < 2 {
						s.Set(k, val, 0, 1, 0)
					} else {
						dst, _, _ = s.Get(dst[:0], k, 1, bulk)
					}
				}
			})
		})
	}
}
