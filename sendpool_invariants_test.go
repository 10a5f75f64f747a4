package ringline

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand"
	"net"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/require"
)

// checkSlots verifies the pool's reference counts against every segment
// that refers to a slot, and that every copy tail is a live slot.
func checkSlots(w *worker) error {
	p := w.pool
	want := make([]uint32, len(p.refs))
	for _, cn := range w.conns {
		if cn == nil {
			continue
		}
		for _, segs := range [][]sendSeg{cn.q[cn.qHead:], heldSegs(cn)} {
			for _, s := range segs {
				if s.kind == segPool {
					want[s.id]++
				}
			}
		}
		if sb := builderOf(cn); sb != nil && sb.open {
			for _, s := range sb.segs {
				if s.kind == segPool {
					want[s.id]++
				}
			}
		}
	}
	isFree := make([]bool, len(p.refs))
	for _, s := range p.free {
		if isFree[s] {
			return fmt.Errorf("slot %d free twice", s)
		}
		isFree[s] = true
	}
	for s := range want {
		if want[s] != p.refs[s] {
			return fmt.Errorf("slot %d: refs %d, segments %d", s, p.refs[s], want[s])
		}
		if (want[s] == 0) != isFree[s] {
			return fmt.Errorf("slot %d: %d segments, free %v", s, want[s], isFree[s])
		}
	}
	for _, cn := range w.conns {
		if cn != nil && cn.state == connOpen && cn.ctail && isFree[cn.cslot] {
			return fmt.Errorf("conn %d: copy tail %d is a free slot", cn.idx, cn.cslot)
		}
	}
	if p.held < 0 {
		return fmt.Errorf("pool.held %d", p.held)
	}
	return nil
}

// Found in review: the send pool's bookkeeping holds under a random mix
// of sends on plaintext and TLS connections, with and without zero copy:
// SendNowait, SendParts batches of copies and references (submitted,
// abandoned, refused as too large) and plain sends between a batch's
// parts. After every step each slot's reference count equals the
// segments that name it, no slot is free twice, every copy tail is a live
// slot and no earmark is negative; the peer receives exactly the bytes
// sent, in order.
func TestSendPoolInvariantsRandomOps(t *testing.T) {
	for _, secure := range []bool{false, true} {
		forEachBackend(t, func(t *testing.T, be Backend) {
			for _, mode := range zcModes(be) {
				t.Run(fmt.Sprintf("tls=%v/%s", secure, mode), func(t *testing.T) {
					cfg := zcConfig(testConfig(be), mode)
					cfg.SendPoolSlots = 128
					cfg.MaxSendQueue = 256 << 10
					if secure {
						cfg = zcConfig(tlsTestConfig(be), mode)
						cfg.SendPoolSlots = 128
						cfg.MaxSendQueue = 256 << 10
					}
					type result struct {
						want []byte
						err  error
					}
					out := make(chan result, 1)
					rt := serve(t, cfg, func(c ConnCtx) {
						if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
							return
						}
						rng := rand.New(rand.NewSource(int64(len(cfg.Backend.String())) + 7))
						var want []byte
						seed := byte(0)
						next := func(n int) []byte { seed++; return pattern(n, seed) }
						fail := func(err error) { out <- result{want, err} }
						for op := 0; op < 3000; op++ {
							switch k := rng.Intn(10); {
							case k < 3:
								b := next(1 + rng.Intn(9000))
								if err := c.SendNowait(b); err == nil {
									want = append(want, b...)
								}
							case k < 9:
								sb := c.SendParts()
								var parts []byte
								n := 1 + rng.Intn(5)
								for i := 0; i < n; i++ {
									if rng.Intn(2) == 0 {
										b := next(1 + rng.Intn(5000))
										sb.Copy(b)
										parts = append(parts, b...)
									} else {
										b := next(1 + rng.Intn(20000))
										sb.Ref(b, nil)
										parts = append(parts, b...)
									}
								}
								switch r := rng.Intn(6); {
								case r == 0: // abandoned by the next batch
									c.SendParts().Submit()
								case r == 1: // refused: past MaxSendQueue
									sb.Ref(make([]byte, cfg.MaxSendQueue+1), nil)
									if err := sb.Submit(); err == nil {
										fail(fmt.Errorf("op %d: oversize batch accepted", op))
										return
									}
								case r == 2: // a plain send between parts, then submit
									b := next(1 + rng.Intn(3000))
									if err := c.SendNowait(b); err == nil {
										if err := sb.Submit(); err == nil {
											want = append(want, b...)
											want = append(want, parts...)
										} else {
											want = append(want, b...)
										}
									} else if err := sb.Submit(); err == nil {
										want = append(want, parts...)
									}
								default:
									if err := sb.Submit(); err == nil {
										want = append(want, parts...)
									}
								}
							default:
								f, err := c.Send(nil)
								if err == nil {
									_, err = f.Await()
								}
								if err != nil {
									fail(fmt.Errorf("op %d: await: %w", op, err))
									return
								}
							}
							if err := checkSlots(c.w); err != nil {
								fail(fmt.Errorf("op %d: %w", op, err))
								return
							}
						}
						f, err := c.Send(nil)
						if err == nil {
							_, err = f.Await()
						}
						out <- result{want, err}
					})
					var cl net.Conn = dial(t, rt)
					if secure {
						cl = tls.Client(cl, getPKI().clientConfig())
					}
					_, err := cl.Write([]byte("go"))
					require.NoError(t, err)
					got := make(chan []byte, 1)
					go func() {
						b, _ := io.ReadAll(cl)
						got <- b
					}()
					r := <-out
					require.NoError(t, r.err)
					time.Sleep(100 * time.Millisecond)
					cl.(interface{ SetReadDeadline(time.Time) error }).SetReadDeadline(time.Now())
					g := <-got
					t.Logf("%d bytes expected, %d received", len(r.want), len(g))
					require.True(t, bytes.Equal(r.want, g), "stream differs")
				})
			}
		})
	}
}

// heldSegs are the segments cn holds for zero-copy notifications.
func heldSegs(cn *conn) []sendSeg {
	if cn.sx == nil {
		return nil
	}
	return cn.sx.held[cn.sx.heldHead:]
}

// heldBytesOf is how many bytes cn holds for zero-copy notifications.
func heldBytesOf(cn *conn) int {
	if cn.sx == nil {
		return 0
	}
	return cn.sx.heldBytes
}

// builderOf is cn's SendParts builder, or nil.
func builderOf(cn *conn) *SendBuilder {
	if cn.sx == nil {
		return nil
	}
	return cn.sx.builder
}
