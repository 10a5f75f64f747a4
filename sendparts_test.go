package ringline

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// releases counts calls of the release callbacks handed to Ref, one
// counter per reference.
type releases struct{ n []atomic.Int32 }

func newReleases(n int) *releases { return &releases{n: make([]atomic.Int32, n)} }

func (r *releases) fn(i int) func() { return func() { r.n[i].Add(1) } }

// exactlyOnce checks that every release ran once.
func (r *releases) exactlyOnce(t *testing.T) {
	t.Helper()
	bad := 0
	for i := range r.n {
		if v := r.n[i].Load(); v != 1 {
			if bad < 5 {
				t.Errorf("reference %d released %d times, want exactly once", i, v)
			}
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d references not released exactly once", bad, len(r.n))
	}
}

func (r *releases) total() int {
	s := 0
	for i := range r.n {
		s += int(r.n[i].Load())
	}
	return s
}

// dialRcvbuf dials rt with the client's receive buffer set before connect
// (so a server's sends stay in the kernel while the client does not read).
func dialRcvbuf(t *testing.T, rt *Runtime, rcvbuf int) *net.TCPConn {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, Control: func(_, _ string, rc syscall.RawConn) error {
		return rc.Control(func(fd uintptr) { _ = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUF, rcvbuf) })
	}}
	nc, err := d.Dial("tcp", rt.Addr().String())
	require.NoError(t, err)
	c := nc.(*net.TCPConn)
	_ = c.SetDeadline(time.Now().Add(30 * time.Second))
	t.Cleanup(func() { c.Close() })
	return c
}

// zcModes are the send modes a SendParts scenario runs in: copied sends,
// and on io_uring zero-copy sends kept on over loopback (the kernel copies
// there and a worker would otherwise fall back at the first notification).
func zcModes(be Backend) []string {
	if be == IOUring {
		return []string{"copy", "zerocopy"}
	}
	return []string{"copy"}
}

func zcConfig(cfg Config, mode string) Config {
	if mode == "zerocopy" {
		cfg.SendZCThreshold = 1024
		cfg.zcKeepCopied = true
	} else {
		cfg.SendZCThreshold = -1
	}
	return cfg
}

// SendParts batches that mix copies and references, some awaited, reach
// the peer in call order, and every reference is released exactly once
// (after the bytes went out: each release overwrites its memory, so a
// release that came while the kernel could still read it would corrupt
// what the client checks). With zero copy on, the releases ride on the
// kernel's notifications.
func TestSendPartsOrderAndRelease(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		for _, mode := range zcModes(be) {
			t.Run(mode, func(t *testing.T) {
				cfg := zcConfig(testConfig(be), mode)
				const batches = 60
				rel := newReleases(2 * batches)
				values := make([][]byte, batches)
				var want bytes.Buffer
				for i := range values {
					values[i] = pattern(100+i*997, byte(i)) // up to ~59 KiB, beside a 4 KiB pool slot
					fmt.Fprintf(&want, "<%03d>", i)
					want.Write(values[i])
					want.WriteString("|")
					want.Write(values[i][:7])
				}
				scrub := func(b []byte, i int) func() {
					return func() {
						for k := range b {
							b[k] = 0xEE
						}
						rel.fn(i)()
					}
				}
				rt := serve(t, cfg, func(c ConnCtx) {
					if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
						return
					}
					for i := 0; i < batches; i++ {
						v := values[i]
						sb := c.SendParts().Copy(fmt.Appendf(nil, "<%03d>", i)).Ref(v, scrub(v[7:], 2*i)).
							Copy([]byte("|")).Ref(v[:7], rel.fn(2*i+1))
						f, err := sb.Send()
						if err != nil {
							panic(err)
						}
						if i%7 == 6 {
							if _, err := f.Await(); err != nil {
								panic(err)
							}
						}
					}
					c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
				})
				cl := dial(t, rt)
				_, err := cl.Write([]byte("go"))
				require.NoError(t, err)
				got := make([]byte, want.Len())
				_, err = io.ReadFull(cl, got)
				require.NoError(t, err)
				require.True(t, bytes.Equal(want.Bytes(), got), "bytes differ from the batches in call order")
				cl.Close()
				st := Total(rt.Stats())
				stop(t, rt)
				rel.exactlyOnce(t)
				if mode == "zerocopy" {
					assert.Greater(t, st.ZeroCopySends, uint64(0), "zero-copy sends made")
				} else {
					assert.Zero(t, st.ZeroCopySends)
				}
				final := Total(rt.Stats())
				assert.Zero(t, final.SendSlotsInUse, "pool slots all returned")
			})
		}
	})
}

// A connection reset while referenced parts are queued, in flight and (on
// zero copy) awaiting notifications releases each exactly once; a batch
// queued after the reset is refused with the reset's error and released
// at once.
func TestSendPartsReleaseOnReset(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		for _, mode := range zcModes(be) {
			t.Run(mode, func(t *testing.T) {
				cfg := zcConfig(testConfig(be), mode)
				cfg.SendPoolSlots = 256
				cfg.MaxSendQueue = 256 * 4096
				const refs = 200
				rel := newReleases(refs + 1)
				value := pattern(4<<10, 9) // 200 of them fit MaxSendQueue
				queued := make(chan error, 1)
				after := make(chan error, 1)
				rt := serve(t, cfg, func(c ConnCtx) {
					if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
						return
					}
					for i := 0; i < refs; i++ {
						if err := c.SendParts().Copy([]byte("hdr")).Ref(value, rel.fn(i)).Submit(); err != nil {
							queued <- err
							return
						}
					}
					queued <- nil
					// Wait until the reset is seen.
					for c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) > 0 {
					}
					after <- c.SendParts().Ref(value, rel.fn(refs)).Submit()
				})
				cl := dialRcvbuf(t, rt, 8<<10)
				_, err := cl.Write([]byte("go"))
				require.NoError(t, err)
				require.NoError(t, <-queued)
				// Take a little, so a send is in flight and some went out.
				buf := make([]byte, 64<<10)
				_, err = io.ReadAtLeast(cl, buf, 10<<10)
				require.NoError(t, err)
				require.NoError(t, cl.SetLinger(0))
				require.NoError(t, cl.Close()) // RST
				select {
				case err := <-after:
					require.Error(t, err)
					assert.True(t, errors.Is(err, syscall.ECONNRESET) || errors.Is(err, syscall.EPIPE), "got %v", err)
				case <-time.After(20 * time.Second):
					t.Fatal("the task did not see the reset")
				}
				assert.Equal(t, int32(1), rel.n[refs].Load(), "the refused batch's release ran at Submit")
				require.True(t, settle(20*time.Second, func() bool { return rel.total() == refs+1 }),
					"%d of %d released after the reset", rel.total(), refs+1)
				stop(t, rt)
				rel.exactlyOnce(t)
				assert.Zero(t, Total(rt.Stats()).SendSlotsInUse)
			})
		}
	})
}

// Batches over the documented limits, or that the pool or the queue cap
// cannot take, are refused whole: nothing of them reaches the peer, every
// release runs once, inside Submit, and later sends go out normally.
func TestSendPartsRefusedBatch(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be) // pool: 512 slots of 4 KiB
		huge, err := unix.Mmap(-1, 0, SendPartsMaxRefBytes+1, unix.PROT_READ, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
		require.NoError(t, err)
		defer unix.Munmap(huge)
		type outcome struct {
			name   string
			err    error
			inside bool // every release ran before Submit returned
		}
		results := make(chan outcome, 16)
		rel := newReleases(200)
		next := 0
		refs := func(n int) []int {
			ids := make([]int, n)
			for i := range ids {
				ids[i] = next
				next++
			}
			return ids
		}
		rt := serve(t, cfg, func(c ConnCtx) {
			if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
				return
			}
			try := func(name string, build func(sb *SendBuilder, ids []int), n int) {
				ids := refs(n)
				err := func() error {
					sb := c.SendParts()
					build(sb, ids)
					return sb.Submit()
				}()
				inside := true
				for _, id := range ids {
					inside = inside && rel.n[id].Load() == 1
				}
				results <- outcome{name: name, err: err, inside: inside}
			}
			small := []byte("x")
			try("too many parts", func(sb *SendBuilder, ids []int) {
				sb.Ref(small, rel.fn(ids[0]))
				for i := 0; i < SendPartsMaxParts; i++ {
					sb.Copy(small)
				}
				sb.Ref(small, rel.fn(ids[1]))
			}, 2)
			try("too many refs", func(sb *SendBuilder, ids []int) {
				for _, id := range ids {
					sb.Ref(small, rel.fn(id))
				}
			}, SendPartsMaxRefs+1)
			try("reference too large", func(sb *SendBuilder, ids []int) {
				sb.Copy(small).Ref(small, rel.fn(ids[0])).Ref(huge, rel.fn(ids[1]))
			}, 2)
			try("pool exhausted", func(sb *SendBuilder, ids []int) {
				sb.Ref(small, rel.fn(ids[0])).Copy(make([]byte, 512*4096+1)).Ref(small, rel.fn(ids[1]))
			}, 2)
			try("queue taken", func(sb *SendBuilder, ids []int) {
				sb.Ref(small, rel.fn(ids[0]))
			}, 1)
			// "x" is still queued (the task has not yielded): past the cap.
			try("queue full", func(sb *SendBuilder, ids []int) {
				sb.Ref(make([]byte, c.w.cfg.MaxSendQueue), rel.fn(ids[0])) // with "x" queued: past the cap
			}, 1)
			// A builder used after Submit: Submit says so, a late Ref is
			// released at once.
			sb := c.SendParts()
			_ = sb.Copy([]byte("!")).Submit()
			ids := refs(1)
			sb.Ref(small, rel.fn(ids[0]))
			results <- outcome{name: "after submit", err: sb.Submit(), inside: rel.n[ids[0]].Load() == 1}
			_ = c.SendNowait([]byte("end"))
			close(results)
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
		})
		cl := dial(t, rt)
		_, err = cl.Write([]byte("go"))
		require.NoError(t, err)
		want := map[string]error{"too many parts": ErrSendPartsLimit, "too many refs": ErrSendPartsLimit,
			"reference too large": ErrSendPartsLimit, "pool exhausted": ErrSendPoolExhausted, "after submit": ErrSendBuilderDone,
			"queue full": ErrSendQueueFull}
		queueTests := 0
		for r := range results {
			if r.name == "queue taken" {
				require.NoError(t, r.err, "a small batch with nothing queued is taken")
				continue
			}
			if r.name == "queue full" {
				queueTests++
			}
			require.ErrorIs(t, r.err, want[r.name], r.name)
			assert.True(t, r.inside, "%s: every release ran inside Submit", r.name)
		}
		assert.Equal(t, 1, queueTests)
		// Only what was accepted reaches the peer: "x", "!" and "end".
		got := make([]byte, 5)
		_, err = io.ReadFull(cl, got)
		require.NoError(t, err)
		require.Equal(t, "x!end", string(got), "a refused batch leaked bytes")
		stop(t, rt)
		rel.n = rel.n[:next]
		rel.exactlyOnce(t)
	})
}

// References still queued when the runtime shuts down (a peer that does
// not read) are released exactly once, by the time Wait returns.
// serveStalledRefs serves a connection that, on its first bytes, queues
// refs SendParts references of a 16 KiB value (release(i) releases the
// i-th) to a peer that reads nothing, through small socket buffers at both
// ends, and returns once they are queued: most are still held (queued, or
// awaiting zero-copy notifications) when the runtime stops. cfg's
// MaxSendQueue must hold them (the whole pool does).
func serveStalledRefs(t *testing.T, cfg Config, refs int, release func(i int) func()) *Runtime {
	t.Helper()
	value := pattern(16<<10, 3)
	queued := make(chan error, 1)
	rt := serve(t, cfg, func(c ConnCtx) {
		if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
			return
		}
		for i := 0; i < refs; i++ {
			if err := c.SendParts().Ref(value, release(i)).Submit(); err != nil {
				queued <- err
				return
			}
		}
		queued <- nil
		c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
	})
	require.NoError(t, unix.SetsockoptInt(rt.workers[0].lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, 16<<10))
	cl := dialRcvbuf(t, rt, 8<<10)
	_, err := cl.Write([]byte("go"))
	require.NoError(t, err)
	require.NoError(t, <-queued)
	time.Sleep(50 * time.Millisecond)
	return rt
}

func TestSendPartsReleaseAtShutdown(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		for _, mode := range zcModes(be) {
			t.Run(mode, func(t *testing.T) {
				cfg := zcConfig(testConfig(be), mode)
				cfg.MaxSendQueue = cfg.SendPoolSlots * cfg.SendSlotSize
				cfg.ShutdownTimeout = 200 * time.Millisecond
				const refs = 100
				rel := newReleases(refs)
				rt := serveStalledRefs(t, cfg, refs, rel.fn)
				assert.Less(t, rel.total(), refs/2, "most references still held when the shutdown begins")
				stop(t, rt)
				rel.exactlyOnce(t)
			})
		}
	})
}

// SendParts from another goroutine sends nothing, says ErrNotInWorker and
// still releases; a second SendParts before Submit abandons the first
// batch (released, nothing of it sent).
func TestSendPartsMisuse(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rel := newReleases(2)
		ctxs := make(chan ConnCtx, 1)
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
				return
			}
			c.SendParts().Copy([]byte("lost")).Ref([]byte("lost"), rel.fn(0))
			if err := c.SendParts().Copy([]byte("kept")).Submit(); err != nil {
				panic(err)
			}
			ctxs <- c
			c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) })
		})
		cl := dial(t, rt)
		_, err := cl.Write([]byte("go"))
		require.NoError(t, err)
		c := <-ctxs
		err = c.SendParts().Copy([]byte("foreign")).Ref([]byte("foreign"), rel.fn(1)).Submit()
		require.ErrorIs(t, err, ErrNotInWorker)
		assert.Equal(t, int32(1), rel.n[1].Load(), "released by the refused Submit")
		got := make([]byte, 4)
		_, err = io.ReadFull(cl, got)
		require.NoError(t, err)
		assert.Equal(t, "kept", string(got))
		cl.Close()
		stop(t, rt)
		rel.exactlyOnce(t)
	})
}

// 100 sends on one connection, alternating SendNowait, SendParts (a copy
// and a reference) and ForwardRecvBuf of the received bytes, reach the
// peer in call order; the forwards really forward (the received buffer,
// not a copy) on both backends.
func TestInterleavedSendsInCallOrder(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		for _, mode := range zcModes(be) {
			t.Run(mode, func(t *testing.T) {
				cfg := zcConfig(testConfig(be), mode)
				cfg.SendZCThreshold = min(cfg.SendZCThreshold, 64) // every send zero-copy in that mode
				const calls, rec = 100, 8
				var mu sync.Mutex
				released := map[int]int{} // reference number -> releases
				refs := 0
				rounds := 5
				rt := serve(t, cfg, func(c ConnCtx) {
					for {
						n := c.WithData(func(b []byte) ParseResult {
							if len(b) < calls*rec {
								return NeedAtLeast(calls * rec)
							}
							for i := 0; i < calls; i++ {
								r := b[i*rec : (i+1)*rec]
								var err error
								switch i % 3 {
								case 0:
									err = c.SendNowait(r)
								case 1:
									ref := append([]byte(nil), r[3:]...)
									mu.Lock()
									id := refs
									refs++
									mu.Unlock()
									err = c.SendParts().Copy(r[:3]).Ref(ref, func() {
										mu.Lock()
										released[id]++
										mu.Unlock()
									}).Submit()
								case 2:
									err = c.ForwardRecvBuf(r)
								}
								if err != nil {
									panic(err)
								}
							}
							return Consumed(calls * rec)
						})
						if n == 0 {
							return
						}
					}
				})
				cl := dial(t, rt)
				for round := 0; round < rounds; round++ {
					var blob []byte
					for i := 0; i < calls; i++ {
						blob = fmt.Appendf(blob, "%d:%05d;", round, i)
					}
					require.Len(t, blob, calls*rec)
					require.Equal(t, blob, roundTrip(t, cl, blob), "round %d out of call order", round)
				}
				cl.Close()
				st := Total(rt.Stats())
				stop(t, rt)
				mu.Lock()
				assert.Equal(t, rounds*(calls/3), refs)
				for id := 0; id < refs; id++ {
					assert.Equal(t, 1, released[id], "reference %d", id)
				}
				mu.Unlock()
				assert.Greater(t, st.ForwardedBuffers, uint64(0), "a forward queued the received buffer itself")
				t.Logf("forwarded %d, copied %d, zero-copy sends %d", st.ForwardedBuffers, st.ForwardCopies, st.ZeroCopySends)
			})
		}
	})
}

// forwardEcho echoes by forwarding what arrives, with backpressure: once
// 256 KiB went out since it last waited, it awaits everything queued (a
// zero-byte Send's future). Bytes that arrive while it waits accumulate
// and are copied; those that arrive while it waits in WithData are
// forwarded.
func forwardEcho(c ConnCtx) {
	unawaited := 0
	for {
		n := c.WithData(func(b []byte) ParseResult {
			if err := c.ForwardRecvBuf(b); err != nil {
				c.Close()
				return Consumed(0)
			}
			return Consumed(len(b))
		})
		if n == 0 {
			return
		}
		if unawaited += n; unawaited >= 256<<10 {
			unawaited = 0
			if f, err := c.Send(nil); err != nil {
				return
			} else if _, err := f.Await(); err != nil {
				return
			}
		}
	}
}

// freeBuffers asks the worker for its free provided buffers and forward
// holds.
func freeBuffers(t *testing.T, rt *Runtime) (free int, holds int) {
	t.Helper()
	w := rt.workers[0]
	done := make(chan struct{})
	require.NoError(t, w.post(func() {
		free = w.be.buffersFree()
		for _, h := range w.bufHold {
			holds += int(h)
		}
		close(done)
	}))
	<-done
	return free, holds
}

// ForwardRecvBuf echoes small messages, messages larger than one receive
// buffer, and 200 concurrent connections on a small ring, without
// stalling any connection; every buffer goes back to the ring.
func TestForwardRecvBuf(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		for _, mode := range zcModes(be) {
			t.Run(mode, func(t *testing.T) {
				t.Run("small", func(t *testing.T) {
					rt := serve(t, zcConfig(testConfig(be), mode), forwardEcho)
					cl := dial(t, rt)
					for i := 0; i < 50; i++ {
						msg := pattern(1+i*37, byte(i))
						require.Equal(t, msg, roundTrip(t, cl, msg))
					}
					assert.Greater(t, Total(rt.Stats()).ForwardedBuffers, uint64(0))
				})
				t.Run("larger than a buffer", func(t *testing.T) {
					rt := serve(t, zcConfig(testConfig(be), mode), forwardEcho) // 4 KiB buffers
					cl := dial(t, rt)
					msg := pattern(1<<20, 7)
					require.True(t, bytes.Equal(msg, roundTrip(t, cl, msg)))
					st := Total(rt.Stats())
					assert.Greater(t, st.ForwardedBuffers, uint64(0))
					t.Logf("forwarded %d buffers, copied %d times", st.ForwardedBuffers, st.ForwardCopies)
					cl.Close()
					require.True(t, settle(10*time.Second, func() bool {
						free, holds := freeBuffers(t, rt)
						return free == 64 && holds == 0
					}), "buffers back to the ring")
				})
				t.Run("200 connections small ring", func(t *testing.T) {
					cfg := zcConfig(testConfig(be), mode)
					cfg.BufferCount = 16
					cfg.BufferSize = 1024
					rt := serve(t, cfg, forwardEcho)
					runClients(t, 200, func(i int) error {
						return echoCheck(rt.Addr().String(), pattern(16<<10+i, byte(i)))
					})
					st := Total(rt.Stats())
					assert.Greater(t, st.ForwardedBuffers, uint64(0))
					t.Logf("forwarded %d, copied %d, ENOBUFS %d", st.ForwardedBuffers, st.ForwardCopies, st.ENOBUFS)
					require.True(t, settle(10*time.Second, func() bool {
						free, holds := freeBuffers(t, rt)
						return free == 16 && holds == 0
					}), "buffers back to the ring")
				})
			})
		}
	})
}

// A forwarding connection never holds more than its share of the ring, so
// with a peer that does not read, other connections keep receiving.
func TestForwardRecvBufBoundedPerConnection(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.BufferCount = 32
		cfg.BufferSize = 1024
		cfg.SendZCThreshold = -1
		maxHeld := 0
		var mu sync.Mutex
		rt := serve(t, cfg, func(c ConnCtx) {
			for c.WithData(func(b []byte) ParseResult {
				if err := c.ForwardRecvBuf(b); err != nil {
					return Consumed(0)
				}
				if cn := c.get(); cn != nil {
					mu.Lock()
					maxHeld = max(maxHeld, cn.fwdHolds())
					mu.Unlock()
				}
				return Consumed(len(b))
			}) > 0 {
			}
		})
		hog := dialRcvbuf(t, rt, 4<<10) // never reads
		go func() { _, _ = hog.Write(make([]byte, 4<<20)) }()
		time.Sleep(200 * time.Millisecond)
		for i := 0; i < 10; i++ {
			require.NoError(t, echoCheck(rt.Addr().String(), pattern(8<<10, byte(i))))
		}
		mu.Lock()
		defer mu.Unlock()
		assert.LessOrEqual(t, maxHeld, cfg.BufferCount/16, "buffers one connection held")
		assert.Greater(t, maxHeld, 0)
	})
}

// Zero copy (io_uring): a connection closed while its zero-copy sends
// still await notifications (the peer has not read the bytes) keeps its
// socket open until they come, within CloseDrainTimeout (see
// TestZeroCopyCloseHonoursDrainTimeout for a peer that never reads); the
// reference is released only then (its release scrubs the memory, and the
// peer still reads the original bytes), the socket closes with a FIN
// behind them, and the slot is reused afterwards.
func TestZeroCopyNotificationAfterClose(t *testing.T) {
	onIOUring(t, func(t *testing.T) {
		cfg := zcConfig(testConfig(IOUring), "zerocopy")
		const size = 256 << 10
		rel := newReleases(2)
		var conns atomic.Int32
		closed := make(chan struct{}, 2)
		rt := serve(t, cfg, func(c ConnCtx) {
			id := int(conns.Add(1)) - 1
			if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
				return
			}
			value := pattern(size, byte(id))
			err := c.SendParts().Copy([]byte("head")).Ref(value, func() {
				for i := range value {
					value[i] = 0
				}
				rel.n[id].Add(1)
			}).Submit()
			if err != nil {
				panic(err)
			}
			c.Close()
			closed <- struct{}{}
		})
		// The server's socket buffer takes the whole value while the
		// client's window holds little of it: the sends complete, the
		// connection closes, and the bytes wait in the server's socket,
		// so the notifications wait for the client to read.
		require.NoError(t, unix.SetsockoptInt(rt.workers[0].lfd, unix.SOL_SOCKET, unix.SO_SNDBUF, 2<<20))
		for id := 0; id < 2; id++ {
			cl := dialRcvbuf(t, rt, 8<<10)
			_, err := cl.Write([]byte("go"))
			require.NoError(t, err)
			<-closed
			// The task has closed: the socket stays open while the
			// notifications are outstanding.
			var state uint8
			var closeWanted bool
			var held, pending int
			w := rt.workers[0]
			done := make(chan struct{})
			require.NoError(t, w.post(func() {
				cn := w.conns[0] // one connection at a time: always slot 0
				state, closeWanted, held, pending = cn.state, cn.closeWanted, len(heldSegs(cn)), int(cn.pending)
				close(done)
			}))
			<-done
			assert.Equal(t, uint8(connOpen), state, "socket closed before its notifications came")
			assert.True(t, closeWanted)
			assert.Greater(t, held, 0, "segments awaiting notifications")
			assert.Greater(t, pending, 0, "notifications outstanding")
			st := Total(rt.Stats())
			assert.Greater(t, st.ZeroCopySends, uint64(0))
			assert.Zero(t, rel.n[id].Load(), "released before the kernel was done with it")
			assert.Equal(t, uint64(id), st.Closed, "slot freed before its notifications came")
			got, err := io.ReadAll(cl)
			require.NoError(t, err)
			require.True(t, bytes.Equal(append([]byte("head"), pattern(size, byte(id))...), got), "peer got %d bytes", len(got))
			require.True(t, settle(10*time.Second, func() bool { return Total(rt.Stats()).Closed == uint64(id+1) }),
				"slot freed after the notifications")
			assert.Equal(t, int32(1), rel.n[id].Load())
		}
		assert.Equal(t, uint64(2), Total(rt.Stats()).Accepted)
		stop(t, rt)
		rel.exactlyOnce(t)
	})
}

// Zero copy falls back to copied sends, for good and once per worker,
// when the kernel refuses it (forced here with a zero-copy flag the kernel
// rejects: EINVAL) and when the kernel reports it copied (always over
// loopback); no byte is lost or reordered either way.
func TestZeroCopyFallback(t *testing.T) {
	onIOUring(t, func(t *testing.T) {
		for _, how := range []string{"refused", "copied"} {
			t.Run(how, func(t *testing.T) {
				cfg := testConfig(IOUring)
				cfg.SendZCThreshold = 1024
				if how == "refused" {
					testHookZCFlags = 1 << 15
					defer func() { testHookZCFlags = 0 }()
				}
				logs := captureLog(&cfg)
				rt := serve(t, cfg, echoTask)
				cl := dial(t, rt)
				for i := 0; i < 20; i++ {
					msg := pattern(8<<10+i, byte(i))
					require.True(t, bytes.Equal(msg, roundTrip(t, cl, msg)), "round %d", i)
				}
				st := Total(rt.Stats())
				assert.Equal(t, uint64(1), st.ZeroCopyFallbacks)
				assert.GreaterOrEqual(t, st.ZeroCopySends, uint64(1))
				// Once off, it stays off: few zero-copy sends for 20 rounds.
				assert.Less(t, st.ZeroCopySends, uint64(4), "zero copy kept being tried")
				if how == "copied" {
					assert.Greater(t, st.ZeroCopyCopied, uint64(0))
				}
				assert.Contains(t, logs.String(), "zero-copy sends off")
			})
		}
	})
}

// Epoll copies: zero copy happens on io_uring only, whatever the
// threshold.
func TestZeroCopyOnlyOnIOUring(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.SendZCThreshold = 1024
		cfg.zcKeepCopied = true
		rt := serve(t, cfg, echoTask)
		cl := dial(t, rt)
		msg := pattern(64<<10, 1)
		require.True(t, bytes.Equal(msg, roundTrip(t, cl, msg)))
		if be == Epoll {
			assert.Zero(t, Total(rt.Stats()).ZeroCopySends)
		} else {
			assert.Greater(t, Total(rt.Stats()).ZeroCopySends, uint64(0))
		}
	})
}

// Debug builds poison what ringline takes back, including the bytes a
// WithData closure consumed; forwarded bytes must be spared until the
// kernel has sent them. Run with -tags ringline_debug (make test-debug).
func TestDebugForwardedBytesNotPoisoned(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, testConfig(be), forwardEcho)
		cl := dial(t, rt)
		for i := 0; i < 20; i++ {
			msg := pattern(3000+i, byte(i))
			require.True(t, bytes.Equal(msg, roundTrip(t, cl, msg)), "round %d", i)
		}
		assert.Greater(t, Total(rt.Stats()).ForwardedBuffers, uint64(0))
	})
}

// The echo example in each -mode echoes exactly, on each backend, and its
// final line's counters show the mode at work: copy copies every byte into
// the send pool, forward forwards receive buffers, parts copies only the
// first 16 bytes of each read.
func TestEchoExampleModes(t *testing.T) {
	goBin, err := exec.LookPath("go")
	if err != nil {
		goBin = "/usr/local/go/bin/go"
	}
	bin := filepath.Join(t.TempDir(), "echo")
	args := []string{"build", "-o", bin}
	if !uringCompiled {
		args = append(args, "-tags", "ringline_epoll")
	}
	out, err := exec.Command(goBin, append(args, "./examples/echo")...).CombinedOutput()
	require.NoError(t, err, "build examples/echo: %s", out)
	final := regexp.MustCompile(`^echo: stopped; accepted 1, closed 1, bytes in (\d+) out (\d+), copied into the send pool (\d+), buffers forwarded (\d+)$`)

	forEachBackend(t, func(t *testing.T, be Backend) {
		for _, mode := range []string{"copy", "forward", "parts"} {
			t.Run(mode, func(t *testing.T) {
				cmd := exec.Command(bin, "-addr", "127.0.0.1:0", "-workers", "1", "-backend", be.String(), "-mode", mode)
				stdout, err := cmd.StdoutPipe()
				require.NoError(t, err)
				require.NoError(t, cmd.Start())
				defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
				sc := bufio.NewScanner(stdout)
				require.True(t, sc.Scan(), "no listening line")
				m := regexp.MustCompile(`listening on (\S+) with`).FindStringSubmatch(sc.Text())
				require.NotNil(t, m, "first line: %q", sc.Text())

				c, err := dialTCP(m[1])
				require.NoError(t, err)
				total := 0
				for _, size := range []int{1, 100, 5000, 1 << 20} {
					msg := pattern(size, byte(size))
					require.True(t, bytes.Equal(msg, roundTrip(t, c, msg)), "%d bytes", size)
					total += size
				}
				c.Close()
				require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
				var last string
				for sc.Scan() {
					last = sc.Text()
				}
				f := final.FindStringSubmatch(last)
				require.NotNil(t, f, "final line: %q", last)
				in, _ := strconv.Atoi(f[1])
				copied, _ := strconv.Atoi(f[3])
				forwarded, _ := strconv.Atoi(f[4])
				assert.Equal(t, total, in)
				assert.Equal(t, f[1], f[2], "bytes out")
				switch mode {
				case "copy":
					assert.Equal(t, total, copied)
					assert.Zero(t, forwarded)
				case "forward":
					assert.Greater(t, forwarded, 0)
					assert.Less(t, copied, total)
				case "parts":
					assert.Less(t, copied, total/2, "parts copies 16 bytes per read")
					assert.Zero(t, forwarded)
				}
			})
		}
	})
}

// A burst of several receive buffers reaches a task that consumes whole
// buffers without a copy: the buffers behind the lent one wait for it
// (the lent queue), so each is forwarded as it is; a closure that needs
// bytes across them still gets them joined.
func TestLentQueueBurst(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.BufferCount = 256 // forwarding bounds: 16 per connection, 32 kept free
		cfg.SendZCThreshold = -1
		rt := serve(t, cfg, func(c ConnCtx) {
			// First a 32 KiB frame, which needs its buffers joined; then
			// forward whatever comes.
			if c.WithData(func(b []byte) ParseResult {
				if len(b) < 32<<10 {
					return NeedAtLeast(32 << 10)
				}
				if err := c.SendNowait(b[:32<<10]); err != nil {
					panic(err)
				}
				return Consumed(32 << 10)
			}) == 0 {
				return
			}
			forwardEcho(c)
		})
		cl := dial(t, rt)
		frame := pattern(32<<10, 1)
		require.True(t, bytes.Equal(frame, roundTrip(t, cl, frame)), "the joined frame")
		before := Total(rt.Stats())
		burst := pattern(32<<10, 2) // 8 buffers, in one write
		require.True(t, bytes.Equal(burst, roundTrip(t, cl, burst)))
		st := Total(rt.Stats())
		fwd, cp := st.ForwardedBuffers-before.ForwardedBuffers, st.ForwardCopies-before.ForwardCopies
		t.Logf("burst: %d buffers forwarded, %d copies", fwd, cp)
		assert.GreaterOrEqual(t, fwd, uint64(8), "every buffer of the burst forwarded")
		assert.Zero(t, cp, "no part of the burst copied")
	})
}

// Probe runs a real zero-copy send over TCP loopback: where the kernel has
// SEND_ZC with usage reports (6.2+) it works and reports that loopback
// copied; where it lacks them, ZeroCopy says why, wrapping the errno.
func TestProbeZeroCopy(t *testing.T) {
	p := Probe()
	if !p.IOUringCompiled || p.RingSetup != nil {
		assert.Nil(t, p.ZeroCopy)
		assert.False(t, p.ZeroCopyLoopbackCopies)
		return
	}
	if !p.SendZC {
		require.Error(t, p.ZeroCopy)
		return
	}
	if p.ZeroCopy != nil {
		assert.ErrorIs(t, p.ZeroCopy, syscall.EINVAL, "a kernel with SEND_ZC but no usage reports")
		return
	}
	assert.True(t, p.ZeroCopyLoopbackCopies, "the kernel copies for loopback receivers and says so")
	assert.Contains(t, p.String(), "zero-copy sends: yes")
}

// fwdCall is one ForwardRecvBuf call of TestForwardCountersOnlyQueued:
// its error and how much it moved ForwardedBuffers and ForwardCopies.
type fwdCall struct {
	name        string
	err         error
	fwd, copies uint64
}

// forwardCounted calls c.ForwardRecvBuf(p) and records what it returned
// and how far it moved the worker's forward and copy counters.
func forwardCounted(c ConnCtx, name string, p []byte) fwdCall {
	w := c.w
	f0, c0 := w.st.forwarded, w.st.forwardCopies
	err := c.ForwardRecvBuf(p)
	return fwdCall{name, err, w.st.forwarded - f0, w.st.forwardCopies - c0}
}

// sendAndReport writes "forward me" on cl, reads whatever comes back, and
// returns what the forwarding task reports on calls (20 s at most).
func sendAndReport(t *testing.T, cl net.Conn, calls <-chan []fwdCall) []fwdCall {
	t.Helper()
	_, err := cl.Write([]byte("forward me"))
	require.NoError(t, err)
	go func() { _, _ = io.Copy(io.Discard, cl) }()
	select {
	case got := <-calls:
		return got
	case <-time.After(20 * time.Second):
		t.Fatal("the forwarding task did not report")
		return nil
	}
}

// ForwardedBuffers and ForwardCopies count only forwards that queued
// their bytes: a call refused with ErrSendQueueFull, ErrSendPoolExhausted
// or ErrClosed (nothing queued) moves neither, and an accepted call moves
// exactly one of them by one. The connection's queue limit is the whole
// pool, and a forwarded byte counts against the queue but not the pool,
// so after one forward the copies fill the queue with one pool byte
// left: a 1-byte copy then meets the queue limit, a 2-byte one the pool.
func TestForwardCountersOnlyQueued(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := testConfig(be)
		cfg.SendPoolSlots, cfg.SendSlotSize = 8, 4096
		cfg.MaxSendQueue = 8 * 4096
		cfg.SendZCThreshold = -1
		calls := make(chan []fwdCall, 1)
		fills := make(chan [2]error, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			other := pattern(100, 'o') // not received bytes: a forward copies them
			c.WithData(func(b []byte) ParseResult {
				var got []fwdCall
				call := func(name string, p []byte) { got = append(got, forwardCounted(c, name, p)) }
				call("copy", other)
				call("forward", b[:1])
				// Fill the queue: chunks until one is refused, then bytes.
				var fill [2]error
				for fill[0] == nil {
					fill[0] = c.SendNowait(pattern(4096, 'f'))
				}
				for fill[1] == nil {
					fill[1] = c.SendNowait([]byte{'f'})
				}
				fills <- fill
				call("copy, queue full", other[:1])
				call("copy, pool exhausted", other[:2])
				call("forward, queue full", b[1:2])
				c.Close()
				call("copy, closed", other[:1])
				call("forward, closed", b[2:3])
				calls <- got
				return Consumed(len(b))
			})
		})
		got := sendAndReport(t, dial(t, rt), calls)
		fill := <-fills
		require.ErrorIs(t, fill[1], ErrSendQueueFull, "the queue filled before the pool (chunks: %v)", fill[0])
		want := []fwdCall{
			{"copy", nil, 0, 1},
			{"forward", nil, 1, 0},
			{"copy, queue full", ErrSendQueueFull, 0, 0},
			{"copy, pool exhausted", ErrSendPoolExhausted, 0, 0},
			{"forward, queue full", ErrSendQueueFull, 0, 0},
			{"copy, closed", ErrClosed, 0, 0},
			{"forward, closed", ErrClosed, 0, 0},
		}
		require.Len(t, got, len(want))
		for i, c := range got {
			if want[i].err == nil {
				assert.NoError(t, c.err, c.name)
			} else {
				assert.ErrorIs(t, c.err, want[i].err, c.name)
			}
			assert.Equal(t, [2]uint64{want[i].fwd, want[i].copies}, [2]uint64{c.fwd, c.copies},
				"%s: ForwardedBuffers and ForwardCopies moved by", c.name)
		}
		// The published counters say the same: one of each. (A worker
		// publishes all its counters at once, so once the refusals show,
		// so do the forwards of the same closure.)
		var st WorkerStats
		require.True(t, settle(5*time.Second, func() bool {
			st = Total(rt.Stats())
			return st.SendPoolExhausted > 0
		}), "the refusals were never published")
		assert.Equal(t, uint64(1), st.ForwardedBuffers, "ForwardedBuffers")
		assert.Equal(t, uint64(1), st.ForwardCopies, "ForwardCopies")
	})
}
