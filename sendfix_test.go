package ringline

// Regression tests for defects found in review of the zero-copy send path
// (issue 10): each reproduces one, on both backends where it applies.

import (
	"bytes"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// Found in review (R1): the per-buffer forward hold count was a uint16
// with its top bit used as the "receive side done" flag: 32768 forwards
// of one buffer (a fan-out of 64 messages to 512 subscribers, or here
// forwards of each byte of one 4 KiB buffer, again and again, on one
// connection) overflowed it. The buffer then went back to the ring while
// queued segments still sent from it, and a second time when they
// completed: the ring held it twice. 17 forwards per byte pass 65536
// holds, so a count of any 16 bits fails too.
func TestForwardHoldCountNoOverflow(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be) // 64 buffers of 4 KiB
		cfg.SendZCThreshold = -1
		const reps = 17
		rt := serve(t, cfg, func(c ConnCtx) {
			for c.WithData(func(b []byte) ParseResult {
				for i := range b {
					for k := 0; k < reps; k++ {
						if err := c.ForwardRecvBuf(b[i : i+1]); err != nil {
							panic(err)
						}
					}
				}
				return Consumed(len(b))
			}) > 0 {
			}
		})
		cl := dial(t, rt)
		msg := pattern(4096, 5)
		want := make([]byte, 0, len(msg)*reps)
		for _, x := range msg {
			for k := 0; k < reps; k++ {
				want = append(want, x)
			}
		}
		_, err := cl.Write(msg)
		require.NoError(t, err)
		got := make([]byte, len(want))
		_, err = io.ReadFull(cl, got)
		require.NoError(t, err)
		assert.True(t, bytes.Equal(want, got), "forwarded bytes differ")
		settle(2*time.Second, func() bool {
			free, holds := freeBuffers(t, rt)
			return free == cfg.BufferCount && holds == 0
		})
		free, holds := freeBuffers(t, rt)
		t.Logf("free %d (ring has %d), holds %d, stats fwd=%d copies=%d", free, cfg.BufferCount, holds,
			Total(rt.Stats()).ForwardedBuffers, Total(rt.Stats()).ForwardCopies)
		assert.Equal(t, cfg.BufferCount, free, "every buffer back in the ring exactly once")
		assert.Zero(t, holds, "no forward hold left")
	})
}

// len is the pool's free slot count, reserved ones included.
func (p *sendPool) len() int { return len(p.free) }

// Found in review (R1): a closure that forwards one buffer in many
// slices, in order (message by message), queued a segment (and an iovec,
// and a hold) per call: 1,152 sendmsg calls for 36 KiB. Slices that
// follow each other in the same buffer now extend one segment.
func TestForwardConsecutiveSlicesShareASegment(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.SendZCThreshold = -1
		var mu sync.Mutex
		maxAdded := 0
		rt := serve(t, cfg, func(c ConnCtx) {
			for c.WithData(func(b []byte) ParseResult {
				cn := c.get()
				before := len(cn.q)
				for i := range b {
					if err := c.ForwardRecvBuf(b[i : i+1]); err != nil {
						panic(err)
					}
				}
				mu.Lock()
				maxAdded = max(maxAdded, len(cn.q)-before)
				mu.Unlock()
				return Consumed(len(b))
			}) > 0 {
			}
		})
		cl := dial(t, rt)
		msg := pattern(64<<10, 3)
		require.True(t, bytes.Equal(msg, roundTrip(t, cl, msg)), "forwarded bytes differ")
		st := Total(rt.Stats())
		t.Logf("%d forwards, %d copies; at most %d segments added per closure run", st.ForwardedBuffers, st.ForwardCopies, maxAdded)
		assert.Equal(t, uint64(64<<10), st.ForwardedBuffers+st.ForwardCopies)
		assert.Greater(t, st.ForwardedBuffers, uint64(0))
		mu.Lock()
		defer mu.Unlock()
		assert.Equal(t, 1, maxAdded, "segments one buffer's forwarded slices take")
	})
}
