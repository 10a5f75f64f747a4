package ringline

import (
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/require"
)

// availableBackends lists the backends this build and kernel can run; every
// conformance scenario runs once per entry.
func availableBackends() []Backend {
	var out []Backend
	cfg := DefaultConfig()
	if uringUsable(&cfg) == nil {
		out = append(out, IOUring)
	}
	if epollBuilt {
		out = append(out, Epoll)
	}
	return out
}

// forEachBackend runs f as a subtest per available backend.
func forEachBackend(t *testing.T, f func(t *testing.T, be Backend)) {
	t.Helper()
	bes := availableBackends()
	require.NotEmpty(t, bes, "no backend available")
	for _, be := range bes {
		t.Run(be.String(), func(t *testing.T) { f(t, be) })
	}
}

// handlerFunc adapts a function to AsyncEventHandler.
type handlerFunc func(c ConnCtx)

func (f handlerFunc) OnAccept(c ConnCtx) { f(c) }

// testConfig is small so tests stay fast and exercise limits.
func testConfig(be Backend) Config {
	return Config{Workers: 1, Backend: be, RingEntries: 256, BufferCount: 64, BufferSize: 4096,
		MaxConnections: 1024, SendPoolSlots: 512, SendSlotSize: 4096, MaxRecvAccumulator: 1 << 20}
}

// serve launches a runtime on 127.0.0.1:0 and shuts it down (checking that
// it stops) when the test ends.
func serve(t *testing.T, cfg Config, h func(c ConnCtx)) *Runtime {
	t.Helper()
	rt, err := New(cfg).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler { return handlerFunc(h) })
	require.NoError(t, err)
	t.Cleanup(func() {
		rt.Shutdown()
		select {
		case <-rt.Done():
		case <-time.After(10 * time.Second):
			t.Errorf("runtime did not stop within 10s")
		}
	})
	return rt
}

func dial(t *testing.T, rt *Runtime) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", rt.Addr().String(), 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	return c.(*net.TCPConn)
}

// echoTask is the echo example's handler: Send with backpressure.
func echoTask(c ConnCtx) {
	for {
		var fut SendFuture
		var err error
		n := c.WithData(func(b []byte) ParseResult {
			if fut, err = c.Send(b); err != nil {
				c.Close() // WithData then returns 0 instead of waiting for more
				return Consumed(0)
			}
			return Consumed(len(b))
		})
		if n == 0 || err != nil {
			return
		}
		if _, err := fut.Await(); err != nil {
			return
		}
	}
}

func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	x := uint32(seed) + 1
	for i := range b {
		x = x*1664525 + 1013904223
		b[i] = byte(x >> 24)
	}
	return b
}

// roundTrip writes msg from one goroutine and reads len(msg) bytes back.
func roundTrip(t *testing.T, c net.Conn, msg []byte) []byte {
	t.Helper()
	errc := make(chan error, 1)
	go func() { _, err := c.Write(msg); errc <- err }()
	got := make([]byte, len(msg))
	_, err := io.ReadFull(c, got)
	require.NoError(t, err)
	require.NoError(t, <-errc)
	return got
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(ents)
}

// settle waits until cond holds or the deadline passes (for counts that
// change asynchronously, such as goroutines winding down).
func settle(d time.Duration, cond func() bool) bool {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if cond() {
			return true
		}
		runtime.Gosched()
		time.Sleep(5 * time.Millisecond)
	}
	return cond()
}
