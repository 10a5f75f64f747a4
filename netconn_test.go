package ringline

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// viewModes runs f over plaintext and over TLS: the net.Conn view carries
// plaintext either way. dialer connects a client to rt in that mode.
func viewModes(t *testing.T, be Backend, f func(t *testing.T, cfg Config, dialer func(t *testing.T, rt *Runtime) net.Conn)) {
	t.Run("plain", func(t *testing.T) {
		f(t, testConfig(be), func(t *testing.T, rt *Runtime) net.Conn { return dial(t, rt) })
	})
	t.Run("tls", func(t *testing.T) {
		f(t, tlsTestConfig(be), func(t *testing.T, rt *Runtime) net.Conn {
			c, err := dialTLS(rt.Addr().String(), getPKI().clientConfig())
			require.NoError(t, err)
			_ = c.SetDeadline(time.Now().Add(30 * time.Second))
			t.Cleanup(func() { c.Close() })
			return c
		})
	})
}

// TestNetConnBufio: a handler written against net.Conn with bufio
// (lines) and encoding/binary (length-prefixed frames) runs inside its
// task, over plaintext and TLS, and sees io.EOF when the client closes.
func TestNetConnBufio(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		viewModes(t, be, func(t *testing.T, cfg Config, dialer func(*testing.T, *Runtime) net.Conn) {
			ends := make(chan error, 1)
			rt := serve(t, cfg, func(c ConnCtx) {
				v := c.NetConn()
				r := bufio.NewReader(v)
				w := bufio.NewWriter(v)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						ends <- err
						return
					}
					if line == "frame\n" {
						// A length-prefixed frame, answered reversed.
						var n uint32
						if err := binary.Read(r, binary.BigEndian, &n); err != nil {
							ends <- err
							return
						}
						body := make([]byte, n)
						if _, err := io.ReadFull(r, body); err != nil {
							ends <- err
							return
						}
						for i, j := 0, len(body)-1; i < j; i, j = i+1, j-1 {
							body[i], body[j] = body[j], body[i]
						}
						_ = binary.Write(w, binary.BigEndian, n)
						_, _ = w.Write(body)
					} else {
						_, _ = w.WriteString(strings.ToUpper(line))
					}
					if r.Buffered() == 0 {
						if err := w.Flush(); err != nil {
							ends <- err
							return
						}
					}
				}
			})
			c := dialer(t, rt)
			in := bufio.NewReader(c)
			// Lines split across writes, and several in one write.
			for _, part := range []string{"hel", "lo\nwor", "ld\n", "a\nb\nc\n"} {
				_, err := c.Write([]byte(part))
				require.NoError(t, err)
			}
			for _, want := range []string{"HELLO\n", "WORLD\n", "A\n", "B\n", "C\n"} {
				got, err := in.ReadString('\n')
				require.NoError(t, err)
				assert.Equal(t, want, got)
			}
			body := pattern(100000, 6)
			frame := binary.BigEndian.AppendUint32([]byte("frame\n"), uint32(len(body)))
			werr := writeAsync(c, append(frame, body...))
			var n uint32
			require.NoError(t, binary.Read(in, binary.BigEndian, &n))
			require.Equal(t, uint32(len(body)), n)
			got := make([]byte, n)
			_, err := io.ReadFull(in, got)
			require.NoError(t, err)
			require.NoError(t, <-werr)
			for i := range got {
				if got[i] != body[len(body)-1-i] {
					t.Fatalf("frame byte %d differs", i)
				}
			}
			require.NoError(t, c.Close())
			assert.ErrorIs(t, <-ends, io.EOF)
		})
	})
}

// TestNetConnHTTP: net/http.ReadRequest on the view parses the requests
// of a real net/http client (keep-alive: two requests on one connection),
// over plaintext and TLS.
func TestNetConnHTTP(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		for _, secure := range []bool{false, true} {
			name := map[bool]string{false: "plain", true: "tls"}[secure]
			t.Run(name, func(t *testing.T) {
				cfg := testConfig(be)
				if secure {
					cfg = tlsTestConfig(be)
				}
				rt := serve(t, cfg, func(c ConnCtx) {
					v := c.NetConn()
					r := bufio.NewReader(v)
					for i := 1; ; i++ {
						req, err := http.ReadRequest(r)
						if err != nil {
							return
						}
						body := fmt.Sprintf("%s %s, request %d of conn %d", req.Method, req.URL.Path, i, c.Index())
						resp := fmt.Sprintf("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
						if _, err := io.WriteString(v, resp); err != nil {
							return
						}
					}
				})
				tr := &http.Transport{TLSClientConfig: getPKI().clientConfig()}
				defer tr.CloseIdleConnections()
				client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
				scheme := map[bool]string{false: "http", true: "https"}[secure]
				var first string
				for i, path := range []string{"/one", "/two"} {
					resp, err := client.Get(scheme + "://" + rt.Addr().String() + path)
					require.NoError(t, err)
					b, err := io.ReadAll(resp.Body)
					resp.Body.Close()
					require.NoError(t, err)
					want := fmt.Sprintf("GET %s, request %d of conn ", path, i+1)
					require.True(t, strings.HasPrefix(string(b), want), "got %q", b)
					conn := strings.TrimPrefix(string(b), want)
					if i == 0 {
						first = conn
					} else {
						assert.Equal(t, first, conn, "keep-alive: same connection")
					}
				}
			})
		}
	})
}

// TestNetConnDeadlines: the view's deadlines with net.Conn's meaning: a
// Read past its deadline returns a timeout (Timeout() true,
// os.ErrDeadlineExceeded) and the connection stays usable; a Write to a
// peer that does not read times out at its deadline; a Write whose
// deadline has passed queues nothing.
func TestNetConnDeadlines(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		viewModes(t, be, func(t *testing.T, cfg Config, dialer func(*testing.T, *Runtime) net.Conn) {
			type result struct {
				step string
				n    int
				err  error
			}
			results := make(chan result, 16)
			queued := make(chan uint64, 1)
			rt := serve(t, cfg, func(c ConnCtx) {
				v := c.NetConn()
				buf := make([]byte, 64)
				_ = v.SetReadDeadline(time.Now().Add(-time.Second))
				n, err := v.Read(buf)
				results <- result{"read-past", n, err}
				_ = v.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
				n, err = v.Read(buf)
				results <- result{"read-future", n, err}
				_ = v.SetReadDeadline(time.Time{})
				n, err = v.Read(buf)
				results <- result{"read", n, err}
				// The client reads nothing from now on.
				_ = v.SetWriteDeadline(time.Now().Add(200 * time.Millisecond))
				chunk := make([]byte, 64<<10)
				total := 0
				for {
					n, err := v.Write(chunk)
					total += n
					if err != nil {
						results <- result{"write-future", total, err}
						break
					}
				}
				n, err = v.Write(chunk)
				results <- result{"write-past", n, err}
				cn := c.get()
				queued <- cn.queued
			})
			c := dialer(t, rt)
			next := func(step string) result {
				r := <-results
				require.Equal(t, step, r.step)
				return r
			}
			timeout := func(r result) {
				t.Helper()
				var ne net.Error
				require.True(t, errors.As(r.err, &ne), "%s: %v is a net.Error", r.step, r.err)
				assert.True(t, ne.Timeout(), "%s: Timeout()", r.step)
				assert.ErrorIs(t, r.err, os.ErrDeadlineExceeded)
			}
			r := next("read-past")
			assert.Equal(t, 0, r.n)
			timeout(r)
			r = next("read-future")
			assert.Equal(t, 0, r.n)
			timeout(r)
			_, err := c.Write([]byte("ping"))
			require.NoError(t, err)
			r = next("read")
			require.NoError(t, r.err)
			assert.Equal(t, 4, r.n)
			r = next("write-future")
			timeout(r)
			assert.Greater(t, r.n, 0)
			r = next("write-past")
			assert.Equal(t, 0, r.n)
			timeout(r)
			<-queued
		})
	})
}

// TestNetConnOwnership: only the owning task may Read the view (another
// task of the worker gets an error, a foreign goroutine ErrNotInWorker);
// any task of the worker may Write; after Close, Read and Write report
// net.ErrClosed.
func TestNetConnOwnership(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		type result struct {
			who string
			err error
		}
		results := make(chan result, 8)
		var foreign net.Conn
		var mu sync.Mutex
		cfg := testConfig(be)
		logs := captureLog(&cfg)
		rt := serve(t, cfg, func(c ConnCtx) {
			v := c.NetConn()
			mu.Lock()
			foreign = v
			mu.Unlock()
			h, _ := c.Task().Spawn(func(tc TaskCtx) {
				_, err := c.NetConn().Read(make([]byte, 8))
				results <- result{"other-task-read", err}
				_, err = c.NetConn().Write([]byte("from another task\n"))
				results <- result{"other-task-write", err}
			})
			_ = h.Join()
			buf := make([]byte, 5)
			_, err := io.ReadFull(v, buf)
			results <- result{"owner-read", err}
			results <- result{"close", v.Close()}
			_, err = v.Read(buf)
			results <- result{"read-after-close", err}
			_, err = v.Write(buf)
			results <- result{"write-after-close", err}
		})
		c := dial(t, rt)
		r := <-results
		assert.Equal(t, "other-task-read", r.who)
		assert.ErrorIs(t, r.err, errViewNotOwner)
		r = <-results
		assert.Equal(t, "other-task-write", r.who)
		assert.NoError(t, r.err)
		line, err := bufio.NewReader(c).ReadString('\n')
		require.NoError(t, err)
		assert.Equal(t, "from another task\n", line)
		mu.Lock()
		_, ferr := foreign.Read(make([]byte, 1))
		mu.Unlock()
		assert.ErrorIs(t, ferr, ErrNotInWorker)
		assert.Contains(t, logs.String(), "NetConn.Read called from a goroutine that is not its worker's")
		_, err = c.Write([]byte("hello"))
		require.NoError(t, err)
		r = <-results
		assert.Equal(t, "owner-read", r.who)
		assert.NoError(t, r.err)
		r = <-results
		assert.Equal(t, "close", r.who)
		assert.NoError(t, r.err)
		for _, who := range []string{"read-after-close", "write-after-close"} {
			r = <-results
			assert.Equal(t, who, r.who)
			assert.ErrorIs(t, r.err, net.ErrClosed)
		}
	})
}
