//go:build ringline_debug

package ringline

import (
	"bytes"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/require"
)

// In a debug build a WithData slice kept past its closure shows poison,
// never the bytes that came after it or another connection's.
func TestDebugPoisonsRetainedWithDataSlice(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		out := make(chan []byte, 1)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			var kept []byte
			c.WithData(func(b []byte) ParseResult {
				kept = b // the misuse: WithData's slice outlives the call
				return Consumed(len(b))
			})
			// More data arrives (into the same or another buffer).
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
			out <- append([]byte(nil), kept...)
		})
		cl := dial(t, rt)
		_, err := cl.Write([]byte("secret-one"))
		require.NoError(t, err)
		time.Sleep(20 * time.Millisecond)
		_, err = cl.Write([]byte("secret-two"))
		require.NoError(t, err)
		got := <-out
		require.Equal(t, bytes.Repeat([]byte{poisonByte}, len("secret-one")), got)
	})
}

// Send pool slots are poisoned once the kernel is done with them.
func TestDebugPoisonsFreedSendSlots(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, testConfig(be), echoTask)
		cl := dial(t, rt)
		msg := pattern(8<<10, 4)
		require.True(t, bytes.Equal(msg, roundTrip(t, cl, msg)))
		w := rt.workers[0]
		done := make(chan bool, 1)
		require.NoError(t, w.post(func() {
			ok := true
			for _, s := range w.pool.free {
				for _, b := range w.pool.slot(s)[:64] {
					if b != poisonByte && b != 0 {
						ok = false
					}
				}
			}
			done <- ok
		}))
		require.True(t, <-done, "a free slot still holds sent bytes")
	})
}
