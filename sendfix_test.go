package ringline

// Regression tests for defects found in review of the zero-copy send path
// (issue 10): each reproduces one, on both backends where it applies.

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

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

// Found in review (R2): a buffer forwarded to a second connection while
// the first held it was not counted against the second ("costs the ring
// nothing more"), and stayed held by it after the first's send completed:
// a fan-out to a subscriber that does not read let that one connection
// hold far more than BufferCount/16 buffers (56 of 64 here).
func TestForwardFanoutBoundedPerConnection(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be) // 64 buffers: at most 4 per connection, 8 kept free
		cfg.SendZCThreshold = -1
		var subs []ConnCtx
		ready := make(chan struct{}, 2)
		rt := serve(t, cfg, func(c ConnCtx) {
			role := byte(0)
			c.WithData(func(b []byte) ParseResult { role = b[0]; return Consumed(1) })
			if role == 'S' {
				subs = append(subs, c)
				ready <- struct{}{}
				for c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) > 0 {
				}
				return
			}
			for c.WithData(func(b []byte) ParseResult {
				for _, s := range subs {
					_ = s.ForwardRecvBuf(b) // a subscriber past its queue cap just misses it
				}
				return Consumed(len(b))
			}) > 0 {
			}
		})
		require.NoError(t, unix.SetsockoptInt(rt.workers[0].lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, 16<<10))
		fast := dial(t, rt)
		_, err := fast.Write([]byte("S"))
		require.NoError(t, err)
		<-ready
		slow := dialRcvbuf(t, rt, 4<<10) // never reads
		_, err = slow.Write([]byte("S"))
		require.NoError(t, err)
		<-ready
		go func() { _, _ = io.Copy(io.Discard, fast) }()
		pub := dial(t, rt)
		_, err = pub.Write([]byte("P"))
		require.NoError(t, err)
		for i := 0; i < 64; i++ {
			_, err = pub.Write(pattern(4096, byte(i)))
			require.NoError(t, err)
			time.Sleep(time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond)
		w := rt.workers[0]
		held, counted, free := 0, 0, 0
		done := make(chan struct{})
		require.NoError(t, w.post(func() {
			cn := subs[1].get()
			bids := map[uint32]bool{}
			for _, s := range cn.q[cn.qHead:] {
				if s.kind == segFwd {
					bids[s.id] = true
				}
			}
			held, counted, free = len(bids), cn.fwdHolds(), w.be.buffersFree()
			close(done)
		}))
		<-done
		t.Logf("slow subscriber holds %d distinct buffers (counted %d); ring free %d of %d", held, counted, free, cfg.BufferCount)
		assert.LessOrEqual(t, held, cfg.BufferCount/16, "buffers one connection holds")
		assert.Equal(t, held, counted, "every buffer it holds is charged to it")
		assert.GreaterOrEqual(t, free, cfg.BufferCount-cfg.BufferCount/16, "only the slow subscriber's share is out of the ring")
	})
}

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

// Found in review (R6): MaxSendQueue bounds a connection's queued bytes
// so that a peer that never reads cannot take the pool from the others;
// but every copied part that followed a reference or a forwarded buffer
// started a fresh pool slot (no tail room behind a reference, and every
// SendParts batch started a slot of its own), so a connection queueing
// small header+reference replies spent a whole slot per reply while
// MaxSendQueue counted a few hundred bytes: one slow peer exhausted the
// worker's pool (512 replies, 134 KiB, all 512 slots).
func TestSmallPartsHitQueueCapBeforePool(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		// parts: the review's case, one batch per reply. nowait: the
		// header sent with SendNowait behind the previous reply's
		// reference. forward: the header forwarded (a slice of the
		// request's receive buffer) behind a reference, then a copy.
		for _, mode := range []string{"parts", "nowait", "forward"} {
			t.Run(mode, func(t *testing.T) {
				cfg := testConfig(be) // pool 512 x 4 KiB; MaxSendQueue 1 MiB
				cfg.SendZCThreshold = -1
				type res struct {
					n    int
					err  error
					used int
				}
				out := make(chan res, 1)
				value := pattern(256, 1)
				rt := serve(t, cfg, func(c ConnCtx) {
					var r res
					if c.WithData(func(b []byte) ParseResult {
						for ; r.err == nil && r.n < 100000; r.n++ {
							switch mode {
							case "parts":
								r.err = c.SendParts().Copy([]byte("$256\r\n")).Ref(value, nil).Submit()
							case "nowait":
								if r.err = c.SendNowait([]byte("$256\r\n")); r.err == nil {
									r.err = c.SendParts().Ref(value, nil).Submit()
								}
							case "forward":
								if r.err = c.ForwardRecvBuf(b[:1]); r.err == nil {
									if r.err = c.SendParts().Ref(value, nil).Submit(); r.err == nil {
										r.err = c.SendNowait([]byte("\r\n"))
									}
								}
							}
						}
						r.used = c.w.pool.inUse()
						return Consumed(len(b))
					}) == 0 {
						return
					}
					out <- r
					c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
				})
				cl := dialRcvbuf(t, rt, 4<<10) // never reads
				_, err := cl.Write([]byte("go"))
				require.NoError(t, err)
				r := <-out
				t.Logf("%d replies then %v; pool slots in use %d of %d", r.n-1, r.err, r.used, cfg.SendPoolSlots)
				assert.ErrorIs(t, r.err, ErrSendQueueFull, "the connection's cap, not the worker's pool, stops it")
				// The copies share slots: 6 bytes or fewer per reply.
				assert.LessOrEqual(t, r.used, r.n*6/cfg.SendSlotSize+2, "pool slots the copies took")
			})
		}
	})
}

// Copies share the connection's copy tail across references, batches and
// a send made while a batch is open; a refused batch gives back only what
// it took. The bytes arrive in call order, and every slot is free once
// they are sent (debug builds poison a slot freed early).
func TestCopiesShareSlotsInCallOrder(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		for _, mode := range zcModes(be) {
			t.Run(mode, func(t *testing.T) {
				cfg := zcConfig(testConfig(be), mode)
				cfg.SendZCThreshold = min(cfg.SendZCThreshold, 8)
				big := make([]byte, 2*cfg.SendSlotSize)
				type res struct {
					refused error
					slots   int
				}
				out := make(chan res, 1)
				ref := []byte("<ref>")
				rt := serve(t, cfg, func(c ConnCtx) {
					if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
						return
					}
					var r res
					for i := 0; i < 100; i++ {
						must := func(err error) {
							if err != nil {
								panic(err)
							}
						}
						must(c.SendNowait([]byte("a1")))
						sb := c.SendParts().Copy([]byte("b1")).Ref(ref, nil)
						must(c.SendNowait([]byte("a2"))) // queued before the open batch
						must(sb.Copy([]byte("b2")).Submit())
						// Refused (too many parts) after taking tail room
						// and fresh slots.
						sb = c.SendParts().Copy([]byte("lost")).Ref(ref, nil).Copy(big)
						for k := 0; k < SendPartsMaxParts; k++ {
							sb.Copy([]byte("x"))
						}
						r.refused = sb.Submit()
						must(c.SendNowait([]byte("a3")))
						must(c.SendParts().Copy([]byte("b3;")).Submit())
						// Refused after another send copied behind it:
						// that send's bytes are not overwritten.
						sb = c.SendParts().Copy([]byte("l2"))
						must(c.SendNowait([]byte("a4")))
						for k := 0; k < SendPartsMaxParts; k++ {
							sb.Copy([]byte("x"))
						}
						if err := sb.Submit(); !errors.Is(err, ErrSendPartsLimit) {
							panic(err)
						}
						must(c.SendNowait([]byte("a5")))
						must(c.SendNowait([]byte("a6")))
					}
					r.slots = c.w.pool.inUse()
					out <- r
					c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
				})
				cl := dial(t, rt)
				_, err := cl.Write([]byte("go"))
				require.NoError(t, err)
				r := <-out
				assert.ErrorIs(t, r.refused, ErrSendPartsLimit)
				// 86 bytes a round take room: what was sent, and the
				// second refused batch's 66 (another send followed them).
				assert.LessOrEqual(t, r.slots, 100*86/cfg.SendSlotSize+2, "slots the 100 rounds of small copies hold")
				want := bytes.Repeat([]byte("a1a2b1<ref>b2a3b3;a4a5a6"), 100)
				got := make([]byte, len(want))
				_, err = io.ReadFull(cl, got)
				require.NoError(t, err)
				require.Equal(t, string(want), string(got))
				require.True(t, settle(10*time.Second, func() bool { return Total(rt.Stats()).SendSlotsInUse == 0 }),
					"slots in use: %d", Total(rt.Stats()).SendSlotsInUse)
			})
		}
	})
}

// Found in review (R3): CloseDrainTimeout promises that a closed
// connection whose peer does not read is reset and its pool slots freed.
// With zero copy, the bytes were "sent" (the first completion came) while
// the kernel still read the pool slots, so Close found the queue idle,
// closed the socket at once (no drain timer, no RST) and the slots, the
// Ref memory and the connection slot stayed taken until the peer read or
// the kernel gave up on the orphaned socket (minutes).
func TestZeroCopyCloseHonoursDrainTimeout(t *testing.T) {
	onIOUring(t, func(t *testing.T) {
		cfg := zcConfig(testConfig(IOUring), "zerocopy")
		cfg.CloseDrainTimeout = 100 * time.Millisecond
		released := make(chan struct{}, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
				return
			}
			value := pattern(256<<10, 1)
			if err := c.SendParts().Copy(pattern(128<<10, 2)).Ref(value, func() { released <- struct{}{} }).Submit(); err != nil {
				panic(err)
			}
			c.Close()
		})
		require.NoError(t, unix.SetsockoptInt(rt.workers[0].lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, 2<<20))
		cl := dialRcvbuf(t, rt, 8<<10) // never reads
		_, err := cl.Write([]byte("go"))
		require.NoError(t, err)
		time.Sleep(time.Second) // ten drain timeouts
		st := Total(rt.Stats())
		t.Logf("after 10x CloseDrainTimeout: slots in use %d, closed %d, drain timeouts %d, zc sends %d", st.SendSlotsInUse, st.Closed, st.DrainTimeouts, st.ZeroCopySends)
		select {
		case <-released:
		default:
			t.Errorf("Ref not released after 10x CloseDrainTimeout")
		}
		assert.Zero(t, st.SendSlotsInUse, "pool slots freed after the drain timeout")
		assert.Equal(t, uint64(1), st.Closed, "connection slot freed after the drain timeout")
	})
}

// Found in review (R3): while a connection is open, bytes a zero-copy send
// handed to the kernel stopped counting against MaxSendQueue at its first
// completion, though their pool slots stay taken until the notification:
// a peer that does not read held MaxSendQueue plus its socket send buffer
// in pool slots (1 MiB under a 256 KiB cap here, and up to the kernel's
// send buffer limit). Sends now go zero-copy only while the bytes
// awaiting notifications stay under half of MaxSendQueue (past it the
// kernel copies, into its own memory), so one connection holds at most
// 1.5 times MaxSendQueue of the pool.
func TestZeroCopyHeldBytesBoundedByMaxSendQueue(t *testing.T) {
	onIOUring(t, func(t *testing.T) {
		cfg := zcConfig(testConfig(IOUring), "zerocopy") // pool 512 x 4 KiB
		cfg.MaxSendQueue = 256 << 10
		type res struct {
			accepted, used, held int
			zc                   uint64
		}
		out := make(chan res, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
				return
			}
			chunk := pattern(16<<10, 4)
			var r res
			for round := 0; round < 4; round++ {
				for c.SendNowait(chunk) == nil {
					r.accepted += len(chunk)
				}
				r.used = max(r.used, c.w.pool.inUse())
				// Until the kernel has taken all of it (its socket buffer
				// holds it), then try again.
				f, err := c.Send(nil)
				if err != nil {
					panic(err)
				}
				if _, err := f.Await(); err != nil {
					panic(err)
				}
			}
			r.zc, r.held = c.w.st.zcSends, heldBytesOf(c.get())
			out <- r
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
		})
		require.NoError(t, unix.SetsockoptInt(rt.workers[0].lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, 4<<20))
		cl := dialRcvbuf(t, rt, 8<<10) // never reads
		_, err := cl.Write([]byte("go"))
		require.NoError(t, err)
		r := <-out
		t.Logf("accepted %d KiB in 4 rounds (MaxSendQueue %d KiB); %d KiB held for notifications; at most %d pool slots in use; %d zero-copy sends",
			r.accepted>>10, cfg.MaxSendQueue>>10, r.held>>10, r.used, r.zc)
		assert.Greater(t, r.zc, uint64(0), "zero-copy sends made")
		// Beyond what awaits notifications, sends are copied by the
		// kernel (into its socket buffer, not the pool).
		assert.LessOrEqual(t, r.held, cfg.MaxSendQueue/2, "bytes held for notifications")
		assert.LessOrEqual(t, r.used, 3*cfg.MaxSendQueue/2/cfg.SendSlotSize+2, "pool slots one connection holds")
	})
}

// Found in review (R4): at shutdown, references whose zero-copy
// notification had not come were released while the (orphaned) socket
// still held their pages: what the release callback (or the allocator,
// once the memory was dropped) wrote there afterwards is what the peer
// received (248,886 of 262,144 bytes differed). Now a connection with
// notifications outstanding is reset shortly before ShutdownTimeout, so
// they come and the reference is released safely ("reset": the peer reads
// intact bytes, then the reset); and a reference whose notification still
// has not come at teardown is never released: it stays pinned and
// reachable, is logged and counted ("late notification", the reset held
// back by a test hook: the orphaned socket delivers every byte intact).
func TestZeroCopyShutdownKeepsReferencesPinned(t *testing.T) {
	onIOUring(t, func(t *testing.T) {
		for _, how := range []string{"reset", "late notification"} {
			t.Run(how, func(t *testing.T) {
				if how == "late notification" {
					testHookNoStopReset = true
					defer func() { testHookNoStopReset = false }()
				}
				cfg := zcConfig(testConfig(IOUring), "zerocopy")
				cfg.ShutdownTimeout = 100 * time.Millisecond
				logs := captureLog(&cfg)
				const size = 256 << 10
				value := pattern(size, 7)
				var released atomic.Int32
				sent := make(chan struct{})
				rt := serve(t, cfg, func(c ConnCtx) {
					if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
						return
					}
					err := c.SendParts().Ref(value, func() {
						for i := range value { // the caller reuses its buffer once released
							value[i] = 'X'
						}
						released.Add(1)
					}).Submit()
					if err != nil {
						panic(err)
					}
					close(sent)
					c.Close()
				})
				require.NoError(t, unix.SetsockoptInt(rt.workers[0].lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, 2<<20))
				cl := dialRcvbuf(t, rt, 8<<10)
				_, err := cl.Write([]byte("go"))
				require.NoError(t, err)
				<-sent
				time.Sleep(50 * time.Millisecond)
				stop(t, rt) // the notification is still outstanding
				st := Total(rt.Stats())
				got, err := io.ReadAll(cl)
				bad := 0
				want := pattern(size, 7)
				for i := range got {
					if i < len(want) && got[i] != want[i] {
						bad++
					}
				}
				t.Logf("peer got %d bytes (%v), %d differ from what was sent; released %d, leaked %d",
					len(got), err, bad, released.Load(), st.ZeroCopyRefsLeaked)
				assert.Zero(t, bad, "bytes on the wire changed after the reference was released")
				assert.Greater(t, st.ZeroCopySends, uint64(0))
				if how == "reset" {
					assert.ErrorIs(t, err, syscall.ECONNRESET, "the cut stream is reset")
					assert.Less(t, len(got), size)
					assert.Equal(t, int32(1), released.Load(), "released once its notification came")
					assert.Zero(t, st.ZeroCopyRefsLeaked)
				} else {
					require.NoError(t, err)
					assert.Equal(t, size, len(got), "the orphaned socket delivers every byte")
					assert.Zero(t, released.Load(), "released while the kernel could still send from it")
					assert.Equal(t, uint64(1), st.ZeroCopyRefsLeaked)
					assert.Contains(t, logs.String(), "kept pinned")
				}
			})
		}
	})
}

// With R3's fix, Cancel too: a connection cancelled while zero-copy bytes
// await the peer's acknowledgement is reset, so the kernel lets go of its
// memory at once rather than when an orphaned socket gives up.
func TestZeroCopyCancelResetsHeldMemory(t *testing.T) {
	onIOUring(t, func(t *testing.T) {
		cfg := zcConfig(testConfig(IOUring), "zerocopy") // CloseDrainTimeout: the default 10 s
		released := make(chan struct{}, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
				return
			}
			if err := c.SendParts().Ref(pattern(256<<10, 1), func() { released <- struct{}{} }).Submit(); err != nil {
				panic(err)
			}
			if f, err := c.Send(nil); err != nil {
				panic(err)
			} else if _, err := f.Await(); err != nil { // taken by the kernel, not acknowledged
				panic(err)
			}
			_ = c.Cancel()
		})
		require.NoError(t, unix.SetsockoptInt(rt.workers[0].lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, 2<<20))
		cl := dialRcvbuf(t, rt, 8<<10) // never reads
		_, err := cl.Write([]byte("go"))
		require.NoError(t, err)
		select {
		case <-released:
		case <-time.After(5 * time.Second):
			t.Fatal("the reference was not released after Cancel")
		}
		require.True(t, settle(5*time.Second, func() bool {
			st := Total(rt.Stats())
			return st.Closed == 1 && st.SendSlotsInUse == 0
		}), "connection slot freed")
		assert.Greater(t, Total(rt.Stats()).ZeroCopySends, uint64(0))
		_ = cl.SetReadDeadline(time.Now().Add(5 * time.Second))
		_, err = io.ReadAll(cl)
		assert.ErrorIs(t, err, syscall.ECONNRESET, "the peer sees the cut stream as a reset")
	})
}

// len is the pool's free slot count, reserved ones included.
func (p *sendPool) len() int { return len(p.free) }

// Found in review (R5): a SendWait that could not be served yet earmarked
// every slot that freed, so a peer that never reads (holding its
// MaxSendQueue) plus one large SendWait left every other connection of the
// worker unable to queue even two bytes while free slots remained. Now
// earmarks leave the pool's last eighth to the others (a waiter that can
// finish takes it too), so the waiter still fills up as slots free while
// small sends go on.
func TestSendWaitLeavesRoomForOthers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be) // pool 512 x 4 KiB = 2 MiB; MaxSendQueue 1 MiB
		cfg.SendZCThreshold = -1
		cfg.ShutdownTimeout = 300 * time.Millisecond // the slow peers never read
		type res struct {
			err        error
			free, held int
		}
		out := make(chan res, 1)
		bDone := make(chan error, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			role := byte(0)
			if c.WithData(func(b []byte) ParseResult { role = b[0]; return Consumed(1) }) == 0 {
				return
			}
			switch role {
			case 'A': // its peer never reads: fill the queue to its cap
				chunk := make([]byte, 4096)
				for c.SendNowait(chunk) == nil {
				}
			case 'D': // another peer that never reads: 700 KiB
				chunk := make([]byte, 4096)
				for i := 0; i < 175 && c.SendNowait(chunk) == nil; i++ {
				}
			case 'B': // one large send that waits
				bDone <- c.SendWait(pattern(1<<20, 'B'))
			case 'C': // a small reply on an unrelated connection
				err := c.SendNowait([]byte("hi"))
				out <- res{err, c.w.pool.len(), c.w.pool.held}
			}
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
		})
		require.NoError(t, unix.SetsockoptInt(rt.workers[0].lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, 16<<10))
		a := dialRcvbuf(t, rt, 4<<10)
		_, err := a.Write([]byte("A"))
		require.NoError(t, err)
		time.Sleep(100 * time.Millisecond)
		d := dialRcvbuf(t, rt, 4<<10)
		_, err = d.Write([]byte("D"))
		require.NoError(t, err)
		time.Sleep(100 * time.Millisecond)
		b := dialRcvbuf(t, rt, 4<<10)
		_, err = b.Write([]byte("B"))
		require.NoError(t, err)
		require.True(t, settle(10*time.Second, func() bool { return Total(rt.Stats()).SendWaits == 1 }), "B waits")
		c := dial(t, rt)
		_, err = c.Write([]byte("C"))
		require.NoError(t, err)
		r := <-out
		t.Logf("C's 2-byte SendNowait: %v with %d of %d pool slots free, %d earmarked for B", r.err, r.free, cfg.SendPoolSlots, r.held)
		require.NoError(t, r.err, "a 2-byte send with free slots in the pool")
		got := make([]byte, 2)
		_, err = io.ReadFull(c, got)
		require.NoError(t, err)
		assert.Equal(t, "hi", string(got))
		assert.Greater(t, r.held, 0, "B still fills up as slots free")
		// Once A's peer reads, B is served whole.
		go func() { _, _ = io.Copy(io.Discard, a) }()
		select {
		case err := <-bDone:
			require.NoError(t, err)
		case <-time.After(20 * time.Second):
			t.Fatal("B's SendWait was not served once the pool drained")
		}
		bb := make([]byte, 1<<20)
		_, err = io.ReadFull(b, bb)
		require.NoError(t, err)
		assert.True(t, bytes.Equal(pattern(1<<20, 'B'), bb), "B's bytes")
	})
}

// Found in review (R5): SendWait inside a parse closure panicked (the
// closure must not suspend) only when it had to wait, so a handler that
// worked in tests broke under load. It now fails the same way every time:
// the connection closes and the panic is logged, whether or not the pool
// has room.
func TestSendWaitInsideParseClosureAlwaysFails(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		logs := captureLog(&cfg)
		rt := serve(t, cfg, func(c ConnCtx) {
			c.WithData(func(b []byte) ParseResult {
				_ = c.SendWait([]byte("room for this"))
				return Consumed(len(b))
			})
		})
		cl := dial(t, rt)
		_, err := cl.Write([]byte("go"))
		require.NoError(t, err)
		require.NoError(t, cl.SetReadDeadline(time.Now().Add(10*time.Second)))
		got, _ := io.ReadAll(cl)
		assert.Empty(t, got, "nothing queued by the misused SendWait")
		require.True(t, settle(10*time.Second, func() bool { return Total(rt.Stats()).TaskPanics == 1 }))
		assert.Contains(t, logs.String(), "SendWait")
	})
}

// Found in review (R7, a defect of R5's fix): a SendWait waiter that was granted its slots and woken, but then refused
// by its own connection's MaxSendQueue (another send on that connection
// filled it first: here a second waiter woken in the same pass, since
// servePoolWaiters checks each waiter's queue room against the current
// queue only), keeps its grant. It then waits for its peer to read, which
// may be never, and servePoolWaiters skips it (queue-blocked) while its
// earmark stays: every other connection sees those free slots as taken,
// the pool's last eighth included. A plain SendNowait on an unrelated
// connection fails with ErrSendPoolExhausted while the pool still has
// free slots that nobody can use.
func TestSendWaitQueueBlockedWaiterGivesBackEarmark(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.SendPoolSlots = 64 // 256 KiB; reserve 8 slots
		cfg.MaxSendQueue = 128 << 10
		cfg.SendZCThreshold = -1
		cfg.ShutdownTimeout = 300 * time.Millisecond
		type res struct {
			err                error
			queued, free, held int
			waiters            int
			waiterGrant        int
			waiterQueueBlocked bool
		}
		var aCtx ConnCtx
		aReady := make(chan struct{})
		wDone := make(chan error, 2)
		out := make(chan res, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			role := byte(0)
			if c.WithData(func(b []byte) ParseResult { role = b[0]; return Consumed(1) }) == 0 {
				return
			}
			switch role {
			case 'A': // fill the queue to MaxSendQueue; the peer reads only when told
				chunk := make([]byte, 4096)
				for c.SendNowait(chunk) == nil {
				}
				aCtx = c
				close(aReady)
			case 'W': // 64 KiB on A, waiting for room
				wDone <- aCtx.SendWait(pattern(64<<10, 'W'))
			case 'C': // an unrelated connection: queue what the pool lets it
				chunk := make([]byte, 4096)
				var r res
				for {
					if r.err = c.SendNowait(chunk); r.err != nil {
						break
					}
					r.queued += len(chunk)
				}
				w := c.w
				r.free, r.held, r.waiters = w.pool.len(), w.pool.held, len(w.pw)
				for _, pw := range w.pw {
					r.waiterGrant += pw.granted
					r.waiterQueueBlocked = pw.cn.queueRoom(pw.n) != nil
				}
				out <- r
			}
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
		})
		require.NoError(t, unix.SetsockoptInt(rt.workers[0].lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, 16<<10))
		a := dialRcvbuf(t, rt, 4<<10)
		_, err := a.Write([]byte("A"))
		require.NoError(t, err)
		<-aReady
		time.Sleep(200 * time.Millisecond) // the kernel's buffers are full
		for i := 0; i < 2; i++ {
			w := dialRcvbuf(t, rt, 4<<10)
			_, err = w.Write([]byte("W"))
			require.NoError(t, err)
		}
		require.True(t, settle(10*time.Second, func() bool { return Total(rt.Stats()).SendWaits == 2 }), "both wait on A's queue")
		// A's peer reads 80 KiB: A's queue gets room for one 64 KiB waiter,
		// not for both; both are granted and woken in the same pass.
		_, err = io.ReadFull(a, make([]byte, 80<<10))
		require.NoError(t, err)
		select {
		case err := <-wDone:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Fatal("no waiter was served")
		}
		time.Sleep(200 * time.Millisecond)
		c := dialRcvbuf(t, rt, 4<<10)
		_, err = c.Write([]byte("C"))
		require.NoError(t, err)
		r := <-out
		t.Logf("C queued %d KiB, then %v with %d of %d slots free, %d earmarked; %d waiter(s) left holding %d slots, blocked by its own queue cap: %v",
			r.queued>>10, r.err, r.free, cfg.SendPoolSlots, r.held, r.waiters, r.waiterGrant, r.waiterQueueBlocked)
		require.Equal(t, 1, r.waiters, "one waiter still waits")
		require.True(t, r.waiterQueueBlocked, "it waits for its own connection's queue, not for the pool")
		assert.Zero(t, r.held, "no slots earmarked for a waiter that cannot send")
		if r.err == ErrSendPoolExhausted {
			assert.Less(t, r.free, cfg.SendPoolSlots/8, "a send refused for want of slots with the pool's last eighth still free")
		}
	})
}

// Found in review (R10): a closing TLS connection whose peer does not read is reset at
// CloseDrainTimeout only when no send is in flight: reset() closes at once
// then, but with a send in flight it cancels it and leaves the close to
// onSendCQE, whose closeReady() still waits for the peer's close_notify
// (awaitPeer), which a peer that does not read never sends. The reset
// socket (SO_LINGER 0, its queue dropped, Err ErrDrainTimeout) stays open
// until TLSCloseTimeout, here 25 times the drain timeout.
func TestTLSResetDoesNotWaitForCloseNotify(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := tlsTestConfig(be)
		cfg.CloseDrainTimeout = 200 * time.Millisecond
		cfg.TLSCloseTimeout = 5 * time.Second
		cfg.SendZCThreshold = -1
		rt := serve(t, cfg, func(c ConnCtx) {
			if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
				return
			}
			_ = c.SendNowait(pattern(512<<10, 3))
			// returning closes: close_notify behind the data, then the wait
		})
		require.NoError(t, unix.SetsockoptInt(rt.workers[0].lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, 16<<10))
		raw := dialRcvbuf(t, rt, 4<<10)
		c := tls.Client(raw, getPKI().clientConfig())
		_, err := c.Write([]byte("go")) // handshake, then never read
		require.NoError(t, err)
		start := time.Now()
		require.True(t, settle(10*time.Second, func() bool { return Total(rt.Stats()).DrainTimeouts == 1 }), "drain timeout")
		t.Logf("drain timeout after %v", time.Since(start))
		closed := settle(2*time.Second, func() bool { return Total(rt.Stats()).Closed == 1 })
		st := Total(rt.Stats())
		t.Logf("%v after the close: closed %d, drain timeouts %d, slots in use %d", time.Since(start), st.Closed, st.DrainTimeouts, st.SendSlotsInUse)
		assert.True(t, closed, "the connection reset at the drain timeout is closed well before TLSCloseTimeout")
	})
}

// Found in review (R8): Cancel while a zero-copy send is in flight: abort() cancels the send by
// user_data packUD(udSend, idx, gen, 0), but a zero-copy send was staged
// as packUD(udSendZC, idx, gen, seq) (conn.sendInFlightUD, which reset() uses), so
// the cancel matches nothing. The send stays in the kernel waiting for a
// peer that does not read, and abort left the close to its completion:
// the connection (fd, slot, pool slots) stays open until the peer reads
// or the runtime shuts down, though Err already reports the cancel.
func TestCancelDuringZeroCopySend(t *testing.T) {
	onIOUring(t, func(t *testing.T) {
		cfg := zcConfig(testConfig(IOUring), "zerocopy")
		type res struct {
			zc      bool
			sending bool
		}
		out := make(chan res, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
				return
			}
			for i := 0; i < 4; i++ {
				if err := c.SendNowait(pattern(128<<10, byte(i))); err != nil {
					panic(err)
				}
			}
			_ = c.Task().Sleep(200 * time.Millisecond) // the peer does not read: a send waits in the kernel
			cn := c.get()
			out <- res{zc: udKind(cn.sendInFlightUD()) == udSendZC, sending: cn.sending}
			_ = c.Cancel()
		})
		require.NoError(t, unix.SetsockoptInt(rt.workers[0].lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, 16<<10))
		cl := dialRcvbuf(t, rt, 4<<10) // never reads
		_, err := cl.Write([]byte("go"))
		require.NoError(t, err)
		r := <-out
		t.Logf("at Cancel: a send in flight %v, zero-copy %v", r.sending, r.zc)
		require.True(t, r.sending && r.zc, "a zero-copy send is in flight")
		closed := settle(3*time.Second, func() bool { return Total(rt.Stats()).Closed == 1 })
		st := Total(rt.Stats())
		t.Logf("3s after Cancel: closed %d, slots in use %d", st.Closed, st.SendSlotsInUse)
		assert.True(t, closed, "a cancelled connection is closed")
		assert.Zero(t, st.SendSlotsInUse, "its pool slots freed")
	})
}

// Found in review (R9): a connection that fails while a zero-copy send's bytes await the peer's
// acknowledgement (here ErrRecvLimit: a peer that sends without reading)
// closes at once: drained() counts held bytes only while c.err == nil,
// and startClose closes the socket with a FIN, not a reset. The socket
// lives on orphaned, still sending from the pool slots and the Ref, so
// the notification (and the Ref's release, the pool slots, the
// connection slot) waits for a peer that never reads, for as long as the
// kernel keeps the orphan; at shutdown the Ref is leaked pinned. Cancel
// and the drain timeout reset in this state so the kernel lets go at
// once; a failure does not.
func TestFailedZeroCopyConnectionResets(t *testing.T) {
	onIOUring(t, func(t *testing.T) {
		cfg := zcConfig(testConfig(IOUring), "zerocopy")
		cfg.MaxRecvAccumulator = 64 << 10
		cfg.MaxSendQueue = 1 << 20
		released := make(chan struct{}, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			if c.WithData(func(b []byte) ParseResult { return Consumed(1) }) == 0 {
				return
			}
			if err := c.SendParts().Ref(pattern(256<<10, 1), func() { released <- struct{}{} }).Submit(); err != nil {
				panic(err)
			}
			if f, err := c.Send(nil); err != nil {
				panic(err)
			} else if _, err := f.Await(); err != nil { // taken by the kernel, not acknowledged
				panic(err)
			}
			// The peer now sends what never parses: ErrRecvLimit.
			c.WithData(func(b []byte) ParseResult { return NeedMore() })
		})
		require.NoError(t, unix.SetsockoptInt(rt.workers[0].lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, 2<<20))
		cl := dialRcvbuf(t, rt, 8<<10) // never reads
		_, err := cl.Write([]byte("g"))
		require.NoError(t, err)
		time.Sleep(200 * time.Millisecond)
		_, err = cl.Write(make([]byte, 128<<10))
		require.NoError(t, err)
		require.True(t, settle(5*time.Second, func() bool { return Total(rt.Stats()).LimitCloses == 1 }), "ErrRecvLimit")
		select {
		case <-released:
		case <-time.After(3 * time.Second):
			t.Errorf("the Ref was not released 3s after the connection failed")
		}
		// The close completes after the notification that released the
		// Ref, and counters are published by the loop: wait for it.
		closed := settle(5*time.Second, func() bool { return Total(rt.Stats()).Closed == 1 })
		st := Total(rt.Stats())
		t.Logf("closed %d, slots in use %d, zc sends %d", st.Closed, st.SendSlotsInUse, st.ZeroCopySends)
		assert.True(t, closed, "connection slot freed")
	})
}

// Found in review: a connection that fails with ErrRecvLimit while sends are
// still queued drops them (onSendCQE: cn.err != nil -> dropQueue) and then
// closes with a plain FIN (startClose resets only for held zero-copy
// bytes). The peer reads a truncated stream followed by a clean EOF and
// cannot tell it was cut: exactly what Cancel and cut avoid by resetting
// when queued bytes are dropped. Either every queued byte must arrive, or
// the peer must see an error (RST).
func TestFailedConnectionDroppingQueueResets(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.SendZCThreshold = -1 // plain copied sends: nothing held
		cfg.MaxRecvAccumulator = 64 << 10
		msg := pattern(400<<10, 7)
		rt := serve(t, cfg, func(c ConnCtx) {
			if c.WithData(func(b []byte) ParseResult { return Consumed(1) }) == 0 {
				return
			}
			if err := c.SendNowait(msg); err != nil {
				panic(err)
			}
			// The peer now sends what never parses: ErrRecvLimit.
			c.WithData(func(b []byte) ParseResult { return NeedMore() })
		})
		require.NoError(t, unix.SetsockoptInt(rt.workers[0].lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, 16<<10))
		cl := dialRcvbuf(t, rt, 8<<10) // does not read yet: the reply stays queued
		_, err := cl.Write([]byte("g"))
		require.NoError(t, err)
		time.Sleep(200 * time.Millisecond)
		_, err = cl.Write(make([]byte, 64<<10))
		require.NoError(t, err)
		require.True(t, settle(5*time.Second, func() bool { return Total(rt.Stats()).LimitCloses == 1 }), "ErrRecvLimit")
		got, err := io.ReadAll(cl)
		t.Logf("peer read %d of %d queued bytes, then err=%v", len(got), len(msg), err)
		if len(got) < len(msg) {
			assert.Error(t, err, "bytes were dropped but the stream ended with a clean FIN")
		}
	})
}
