package ringline

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// The send paths beyond Send and SendNowait on TLS connections: each
// carries plaintext for the handler and sealed records on the wire.

// TestTLSSendParts: a SendParts batch on a TLS connection (a copied
// header, many small parts, a Ref larger than a record) reaches the
// client whole and in order, and every Ref's release runs once.
func TestTLSSendParts(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		var released atomic.Int32
		big := pattern(100<<10, 3)
		small := pattern(30*7, 4)
		errs := make(chan error, 1)
		rt := serve(t, tlsTestConfig(be), func(c ConnCtx) {
			if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
				return
			}
			sb := c.SendParts().Copy([]byte("header:"))
			for i := 0; i < 30; i++ { // SendPartsMaxRefs is 32
				sb.Ref(small[i*7:(i+1)*7], func() { released.Add(1) })
			}
			f, err := sb.Ref(big, func() { released.Add(1) }).Copy([]byte(":end")).Send()
			if err == nil {
				_, err = f.Await()
			}
			errs <- err
			for c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) > 0 {
			}
		})
		c, err := dialTLS(rt.Addr().String(), getPKI().clientConfig())
		require.NoError(t, err)
		defer c.Close()
		_, err = c.Write([]byte("go"))
		require.NoError(t, err)
		want := append(append(append([]byte("header:"), small...), big...), ":end"...)
		got := make([]byte, len(want))
		_, err = io.ReadFull(c, got)
		require.NoError(t, err)
		require.NoError(t, <-errs)
		assert.True(t, bytes.Equal(want, got), "the batch arrived differently")
		require.True(t, settle(5*time.Second, func() bool { return released.Load() == 31 }), "releases: %d", released.Load())
	})
}

// TestTLSForwardRecvBuf: bytes a plaintext connection received, forwarded
// with ForwardRecvBuf to a TLS connection (the proxy case: the lent
// kernel buffer must not be sent as it is), reach the TLS client
// decrypted.
func TestTLSForwardRecvBuf(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		// The plaintext upstream: sends data, then closes.
		data := pattern(200<<10, 9)
		up, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		defer up.Close()
		go func() {
			c, err := up.Accept()
			if err != nil {
				return
			}
			defer c.Close()
			_, _ = c.Write(data)
		}()
		upAddr := netip.MustParseAddrPort(up.Addr().String())
		errs := make(chan error, 1)
		rt := serve(t, tlsTestConfig(be), func(c ConnCtx) {
			f, err := c.Connect(upAddr)
			if err != nil {
				errs <- err
				return
			}
			u, err := f.Await()
			if err != nil {
				errs <- err
				return
			}
			for {
				var ferr error
				n := u.WithData(func(b []byte) ParseResult {
					if ferr = c.ForwardRecvBuf(b); ferr != nil {
						return Consumed(0)
					}
					return Consumed(len(b))
				})
				if ferr != nil {
					errs <- ferr
					return
				}
				if n == 0 {
					break
				}
				if f, err := c.Send(nil); err == nil {
					_, _ = f.Await()
				}
			}
			errs <- nil
			f2, _ := c.Send(nil)
			_, _ = f2.Await()
		})
		c, err := dialTLS(rt.Addr().String(), getPKI().clientConfig())
		require.NoError(t, err)
		defer c.Close()
		got := make([]byte, len(data))
		_, err = io.ReadFull(c, got)
		require.NoError(t, err)
		require.NoError(t, <-errs)
		assert.True(t, bytes.Equal(data, got), "forwarded bytes differ")
		assert.Zero(t, Total(rt.Stats()).ForwardedBuffers, "nothing forwarded as it is onto TLS")
	})
}

// TestTLSSendWait: SendWait on a TLS connection with a send pool far
// smaller than what is sent waits for room for the records (not just the
// plaintext) and everything arrives intact.
func TestTLSSendWait(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := tlsTestConfig(be)
		cfg.SendPoolSlots, cfg.SendSlotSize = 32, 4096 // 128 KiB
		cfg.MaxSendQueue = 64 << 10
		data := pattern(2<<20, 5)
		errs := make(chan error, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
				return
			}
			for off := 0; off < len(data); off += 20 << 10 {
				if err := c.SendWait(data[off:min(off+20<<10, len(data))]); err != nil {
					errs <- err
					return
				}
			}
			f, _ := c.Send(nil)
			if _, err := f.Await(); err != nil {
				errs <- err
				return
			}
			// Plaintext that fits MaxSendQueue but whose records cannot
			// never will: refused at once, not waited for (the deadline
			// only keeps a wrong wait from hanging the test).
			_ = c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if err := c.SendWait(make([]byte, 64<<10-100)); !errors.Is(err, ErrSendQueueFull) {
				errs <- fmt.Errorf("SendWait of records past MaxSendQueue: %v", err)
				return
			}
			errs <- nil
		})
		c, err := dialTLS(rt.Addr().String(), getPKI().clientConfig())
		require.NoError(t, err)
		defer c.Close()
		_, err = c.Write([]byte("go"))
		require.NoError(t, err)
		got := make([]byte, len(data))
		_, err = io.ReadFull(c, got)
		require.NoError(t, err)
		require.NoError(t, <-errs)
		assert.True(t, bytes.Equal(data, got), "2 MiB through SendWait differs")
		assert.Greater(t, Total(rt.Stats()).SendWaits, uint64(0), "the small pool made SendWait wait")
	})
}

// TestTLSShutdownWrite: ShutdownWrite on a TLS connection sends
// close_notify behind the queued bytes and then the FIN; the read side
// stays open and receives what the client sends after.
func TestTLSShutdownWrite(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		type result struct {
			got []byte
			err error
		}
		results := make(chan result, 1)
		rt := serve(t, tlsTestConfig(be), func(c ConnCtx) {
			if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
				return
			}
			_ = c.SendNowait(pattern(50000, 1))
			if err := c.ShutdownWrite(); err != nil {
				results <- result{nil, err}
				return
			}
			if err := c.SendNowait([]byte("late")); !errors.Is(err, ErrWriteShutdown) {
				results <- result{nil, errors.New("a send after ShutdownWrite was not refused")}
				return
			}
			var got []byte
			for c.WithData(func(b []byte) ParseResult { got = append(got, b...); return Consumed(len(b)) }) > 0 {
			}
			results <- result{got, c.Err()}
		})
		raw := &recordingConn{Conn: dial(t, rt)}
		c := tls.Client(raw, getPKI().clientConfig())
		_, err := c.Write([]byte("go"))
		require.NoError(t, err)
		got := make([]byte, 50000)
		_, err = io.ReadFull(c, got)
		require.NoError(t, err)
		assert.Equal(t, pattern(50000, 1), got)
		n, err := c.Read(make([]byte, 1))
		assert.Equal(t, 0, n)
		require.ErrorIs(t, err, io.EOF)
		require.False(t, raw.sawEOF(), "close_notify came before the FIN")
		// The server still reads.
		_, err = c.Write([]byte("after the half-close"))
		require.NoError(t, err)
		require.NoError(t, c.Close())
		r := <-results
		require.NoError(t, r.err)
		assert.Equal(t, "after the half-close", string(r.got))
	})
}

// TestTLSShutdownSendsCloseNotify: at shutdown a TLS connection's task
// returns and the connection ends with close_notify (a clean end for the
// client, not a truncation), without waiting for the client's answer.
func TestTLSShutdownSendsCloseNotify(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt, err := New(tlsTestConfig(be)).Bind("127.0.0.1:0").Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		require.NoError(t, err)
		raw := &recordingConn{Conn: dial(t, rt)}
		c := tls.Client(raw, getPKI().clientConfig())
		assert.Equal(t, []byte("hello"), roundTrip(t, c, []byte("hello")))
		rt.Shutdown()
		n, err := c.Read(make([]byte, 1))
		assert.Equal(t, 0, n)
		require.ErrorIs(t, err, io.EOF)
		assert.False(t, raw.sawEOF(), "close_notify came before the FIN")
		select {
		case <-rt.Done():
		case <-time.After(10 * time.Second):
			t.Fatal("the runtime did not stop")
		}
	})
}

// TestTLSForwardCountersOnlyQueued: ForwardRecvBuf onto a TLS connection
// always copies (the bytes are sealed), and counts a copy only when the
// records were queued: one refused for want of room (nothing queued)
// moves neither ForwardCopies nor ForwardedBuffers.
func TestTLSForwardCountersOnlyQueued(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := tlsTestConfig(be)
		cfg.SendPoolSlots, cfg.SendSlotSize = 8, 4096
		cfg.MaxSendQueue = 8 * 4096
		calls := make(chan []fwdCall, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			c.WithData(func(b []byte) ParseResult {
				var got []fwdCall
				call := func(name string, p []byte) { got = append(got, forwardCounted(c, name, p)) }
				call("accepted", b[:1])
				// No room left for another record: chunks until one is
				// refused, then single bytes.
				var err error
				for err == nil {
					err = c.SendNowait(pattern(4096, 'f'))
				}
				for err = nil; err == nil; {
					err = c.SendNowait([]byte{'f'})
				}
				got = append(got, fwdCall{name: "fill", err: err})
				call("refused", b[1:2])
				calls <- got
				return Consumed(len(b))
			})
			for c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) > 0 {
			}
		})
		c, err := dialTLS(rt.Addr().String(), getPKI().clientConfig())
		require.NoError(t, err)
		defer c.Close()
		got := sendAndReport(t, c, calls)
		require.Len(t, got, 3)
		acc, fill, ref := got[0], got[1], got[2]
		assert.NoError(t, acc.err)
		assert.Equal(t, [2]uint64{0, 1}, [2]uint64{acc.fwd, acc.copies}, "accepted: ForwardedBuffers and ForwardCopies moved by")
		require.True(t, errors.Is(fill.err, ErrSendPoolExhausted) || errors.Is(fill.err, ErrSendQueueFull), "fill: %v", fill.err)
		assert.ErrorIs(t, ref.err, fill.err, "a forward needs the room a 1-byte send found missing")
		assert.Equal(t, [2]uint64{0, 0}, [2]uint64{ref.fwd, ref.copies}, "refused: ForwardedBuffers and ForwardCopies moved by")
	})
}
