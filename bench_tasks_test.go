package ringline

import (
	"fmt"
	"net"
	"os"
	"slices"
	"testing"
	"time"
)

// benchInTask runs body as a task on a one-worker runtime of backend be and
// waits for it; the watchdog is off (body runs b.N iterations without
// yielding, on purpose).
func benchInTask(b *testing.B, be Backend, body func(tc TaskCtx)) {
	cfg := testConfig(be)
	cfg.StallThreshold = -1
	rt, err := New(cfg).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
	if err != nil {
		b.Fatal(err)
	}
	defer func() { rt.Shutdown(); rt.Wait() }()
	done := make(chan struct{})
	if err := rt.Post(0, func(tc TaskCtx) { defer close(done); body(tc) }); err != nil {
		b.Fatal(err)
	}
	<-done
}

// BenchmarkTimerArmCancel: a Timer future armed and stopped (the pattern
// of Select against a timeout that data wins), with 0, 10,000 and 100,000
// other timers in the worker's heap. ns/op and allocs/op (-benchmem) are
// the figures; no syscall is involved by construction (the heap is plain
// Go memory read by the loop).
func BenchmarkTimerArmCancel(b *testing.B) {
	for _, others := range []int{0, 10_000, 100_000} {
		b.Run(fmt.Sprintf("others=%d", others), func(b *testing.B) {
			benchInTask(b, Epoll, func(tc TaskCtx) {
				for i := 0; i < others; i++ {
					tc.After(time.Hour + time.Duration(i))
				}
				b.ReportAllocs()
				b.ResetTimer()
				for b.Loop() {
					tm := tc.After(30 * time.Minute)
					tm.Stop()
				}
			})
		})
	}
}

// BenchmarkDeadlineRenew: SetReadDeadline pushed later after every parse
// (an idle timeout), the lazy path: a store, no heap operation.
func BenchmarkDeadlineRenew(b *testing.B) {
	cfg := testConfig(Epoll)
	cfg.StallThreshold = -1
	done := make(chan struct{})
	rt, err := New(cfg).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler {
		return handlerFunc(func(c ConnCtx) {
			defer close(done)
			base := time.Now().Add(time.Hour)
			b.ReportAllocs()
			b.ResetTimer()
			i := 0
			for b.Loop() {
				i++
				_ = c.SetReadDeadline(base.Add(time.Duration(i)))
			}
		})
	})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { rt.Shutdown(); rt.Wait() }()
	cl := benchDialOnce(b, rt)
	defer cl.Close()
	<-done
}

// BenchmarkPostRoundTrip: an ordinary goroutine posts a task to a worker,
// which answers on a channel; against a goroutine-to-goroutine channel
// round trip in the same run. Reports p50 and p99 in µs. Run it with -cpu
// 1,2: with GOMAXPROCS=1 the worker's P is the only one, and the reply's
// goroutine runs only when the worker lets it (readyCheck).
// RINGLINE_BENCH_HOLDWAIT sets Config.HoldWait, as for the echo benchmarks.
func BenchmarkPostRoundTrip(b *testing.B) {
	report := func(b *testing.B, rtt []time.Duration) {
		slices.Sort(rtt)
		b.ReportMetric(float64(rtt[len(rtt)/2].Nanoseconds())/1e3, "p50-µs")
		b.ReportMetric(float64(rtt[len(rtt)*99/100].Nanoseconds())/1e3, "p99-µs")
	}
	for _, be := range availableBackends() {
		b.Run("post/"+be.String(), func(b *testing.B) {
			cfg := testConfig(be)
			cfg.HoldWait, _ = time.ParseDuration(os.Getenv("RINGLINE_BENCH_HOLDWAIT"))
			rt, err := New(cfg).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
			if err != nil {
				b.Fatal(err)
			}
			defer func() { rt.Shutdown(); rt.Wait() }()
			reply := make(chan struct{}, 1)
			f := func(TaskCtx) { reply <- struct{}{} }
			rtt := make([]time.Duration, 0, b.N)
			for b.Loop() {
				start := time.Now()
				if err := rt.Post(0, f); err != nil {
					b.Fatal(err)
				}
				<-reply
				rtt = append(rtt, time.Since(start))
			}
			report(b, rtt)
		})
	}
	b.Run("channel-goroutine", func(b *testing.B) {
		req, reply := make(chan struct{}), make(chan struct{})
		go func() {
			for range req {
				reply <- struct{}{}
			}
		}()
		defer close(req)
		rtt := make([]time.Duration, 0, b.N)
		for b.Loop() {
			start := time.Now()
			req <- struct{}{}
			<-reply
			rtt = append(rtt, time.Since(start))
		}
		report(b, rtt)
	})
}

// BenchmarkPostBurstWakeups: 1,000 posts made back to back from one
// goroutine; reports eventfd wake-ups per burst (WorkerStats.Wakeups).
func BenchmarkPostBurstWakeups(b *testing.B) {
	for _, be := range availableBackends() {
		b.Run(be.String(), func(b *testing.B) {
			rt, err := New(testConfig(be)).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
			if err != nil {
				b.Fatal(err)
			}
			defer func() { rt.Shutdown(); rt.Wait() }()
			done := make(chan struct{}, 1)
			var wakes uint64
			for b.Loop() {
				w0 := rt.Stats()[0].Wakeups
				n := 0
				for i := 0; i < 1000; i++ {
					_ = rt.Post(0, func(TaskCtx) {
						if n++; n == 1000 {
							done <- struct{}{}
						}
					})
				}
				<-done
				wakes += rt.Stats()[0].Wakeups - w0
			}
			b.ReportMetric(float64(wakes)/float64(b.N), "wakeups/1000-posts")
		})
	}
}

// benchDialOnce connects one client to rt.
func benchDialOnce(b *testing.B, rt *Runtime) net.Conn {
	c, err := net.DialTimeout("tcp", rt.Addr().String(), 5*time.Second)
	if err != nil {
		b.Fatal(err)
	}
	return c
}
