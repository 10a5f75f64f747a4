package ringline

import (
	"bytes"
	"io"
	"testing"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// A connection's SendBuilder handed to another goroutine is refused there
// like a ConnCtx (ErrNotInWorker, counted as a foreign call) without
// touching the batch its task has open: the foreign Ref's release runs
// once, the task's own parts are neither dropped nor released early, no
// pool slot leaks, and the task's Submit sends its batch whole.
func TestSendBuilderOffWorkerLeavesBatchAlone(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rel := newReleases(3) // 0, 2: the task's references; 1: the foreign one
		value := pattern(3000, 1)
		handoff := make(chan *SendBuilder)
		back := make(chan error)
		submitted := make(chan error, 1)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
				return
			}
			sb := c.SendParts().Copy([]byte("head")).Ref(value, rel.fn(0))
			// The worker waits here (a test only) while another goroutine
			// misuses the builder.
			handoff <- sb
			<-back
			submitted <- sb.Ref([]byte("tail"), rel.fn(2)).Submit()
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
		})
		cl := dial(t, rt)
		_, err := cl.Write([]byte("go"))
		require.NoError(t, err)
		sb := <-handoff
		sb.Copy([]byte("foreign"))
		sb.Ref([]byte("foreign"), rel.fn(1))
		ferr := sb.Submit()
		_, ferr2 := sb.Send()
		back <- nil
		require.ErrorIs(t, ferr, ErrNotInWorker)
		assert.ErrorIs(t, ferr2, ErrNotInWorker)
		assert.Equal(t, int32(1), rel.n[1].Load(), "the foreign Ref's release ran once, at once")
		assert.Zero(t, rel.n[0].Load(), "the task's reference released by the foreign goroutine")
		assert.NoError(t, <-submitted, "the task's batch survives the foreign calls")
		want := append(append([]byte("head"), value...), "tail"...)
		got := make([]byte, len(want))
		_, err = io.ReadFull(cl, got)
		require.NoError(t, err)
		require.True(t, bytes.Equal(want, got), "the peer got %q...", got[:min(16, len(got))])
		assert.GreaterOrEqual(t, Total(rt.Stats()).ForeignCalls, uint64(4))
		cl.Close()
		stop(t, rt)
		rel.exactlyOnce(t)
		assert.Zero(t, Total(rt.Stats()).SendSlotsInUse, "pool slots all returned")
	})
}
