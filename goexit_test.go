package ringline

import (
	"bytes"
	"io"
	"runtime"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// A handler that calls runtime.Goexit (as t.FailNow and require.* do)
// closes its connection only: the worker keeps serving, new connections
// reach every worker, and Done does not fire before Shutdown.
func TestGoexitInHandlerKeepsWorker(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.Workers = 2
		fds0 := openFDs(t)
		deferRan := make(chan struct{}, 100)
		rt := serve(t, cfg, func(c ConnCtx) {
			var first byte
			c.WithData(func(b []byte) ParseResult { first = b[0]; return Consumed(1) })
			if first == 'x' {
				defer func() { deferRan <- struct{}{} }()
				runtime.Goexit()
			}
			c.SendNowait([]byte{first})
			echoTask(c)
		})
		// Goexit on connections until both workers have seen one.
		// (A count over both would pass with every one on the same
		// worker: the kernel spreads connections by a hash.)
		bothSaw := func() bool { st := rt.Stats(); return st[0].TaskGoexits > 0 && st[1].TaskGoexits > 0 }
		for i := 0; i < 100 && !bothSaw(); i++ {
			cl := dial(t, rt)
			_, err := cl.Write([]byte("x"))
			require.NoError(t, err)
			require.NoError(t, cl.SetReadDeadline(time.Now().Add(5*time.Second)))
			_, err = io.ReadAll(cl)
			require.NoError(t, err, "the Goexit connection is closed cleanly")
			cl.Close()
		}
		st := rt.Stats()
		require.NotZero(t, st[0].TaskGoexits, "worker 0 saw a Goexit")
		require.NotZero(t, st[1].TaskGoexits, "worker 1 saw a Goexit")
		require.Equal(t, int(Total(st).TaskGoexits), len(deferRan), "the handler's defers ran")
		select {
		case <-rt.Done():
			t.Fatal("runtime stopped after a handler's Goexit")
		default:
		}
		// Every new connection is served, whichever worker takes it.
		for i := 0; i < 20; i++ {
			cl := dial(t, rt)
			require.NoError(t, cl.SetReadDeadline(time.Now().Add(5*time.Second)))
			msg := []byte{'a' + byte(i), 'b'}
			got := roundTrip(t, cl, msg)
			require.True(t, bytes.Equal(msg, got), "connection %d: %q", i, got)
			cl.Close()
		}
		rt.Shutdown()
		select {
		case <-rt.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("shutdown hung")
		}
		assert.True(t, settle(5*time.Second, func() bool { return openFDs(t) <= fds0 }),
			"fds leaked: %d before, %d after", fds0, openFDs(t))
	})
}

// A Goexit inside a parse closure, and one while the task is being stopped
// at shutdown, are survived too.
func TestGoexitInParseClosureAndAtShutdown(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			defer func() {
				if c.w.st.taskGoexits > 0 {
					runtime.Goexit() // unwinding at shutdown: Goexit again
				}
			}()
			c.WithData(func(b []byte) ParseResult {
				if b[0] == 'x' {
					runtime.Goexit()
				}
				c.SendNowait(b)
				return Consumed(len(b))
			})
			for c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) > 0 {
			}
		})
		bad := dial(t, rt)
		_, err := bad.Write([]byte("x"))
		require.NoError(t, err)
		require.NoError(t, bad.SetReadDeadline(time.Now().Add(5*time.Second)))
		_, err = io.ReadAll(bad)
		require.NoError(t, err)
		good := dial(t, rt)
		require.Equal(t, []byte("ok"), roundTrip(t, good, []byte("ok")))
		require.Equal(t, uint64(1), Total(rt.Stats()).TaskGoexits)
		// good's task is suspended; shutdown wakes it and it Goexits in
		// its defer.
		rt.Shutdown()
		select {
		case <-rt.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("shutdown hung")
		}
	})
}
