package ringline

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// tlsTestConfig is testConfig serving TLS with the test PKI's server
// certificate.
func tlsTestConfig(be Backend) Config {
	cfg := testConfig(be)
	cfg.TLS = getPKI().serverConfig()
	return cfg
}

// dialTLS connects a crypto/tls client (trusting the test CA, naming
// localhost) to rt and completes the handshake. Safe from any goroutine.
func dialTLS(addr string, cfg *tls.Config) (*tls.Conn, error) {
	raw, err := dialTCP(addr)
	if err != nil {
		return nil, err
	}
	c := tls.Client(raw, cfg)
	if err := c.Handshake(); err != nil {
		raw.Close()
		return nil, err
	}
	return c, nil
}

// tlsEchoCheck is echoCheck over TLS.
func tlsEchoCheck(addr string, cfg *tls.Config, msg []byte) error {
	c, err := dialTLS(addr, cfg)
	if err != nil {
		return err
	}
	defer c.Close()
	werr := writeAsync(c, msg)
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		return fmt.Errorf("read echo: %w", err)
	}
	if err := <-werr; err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("echo of %d bytes differs", len(msg))
	}
	return nil
}

// TestTLSEcho: the echo handler written for plaintext runs unchanged over
// TLS 1.2 and 1.3 with crypto/tls clients, and the server's TLSInfo says
// what was negotiated.
func TestTLSEcho(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		infos := make(chan TLSInfo, 4)
		rt := serve(t, tlsTestConfig(be), func(c ConnCtx) {
			if info, ok := c.TLSInfo(); ok {
				infos <- info
			}
			echoTask(c)
		})
		for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			t.Run(tls.VersionName(v), func(t *testing.T) {
				cfg := getPKI().clientConfig()
				cfg.MinVersion, cfg.MaxVersion = v, v
				require.NoError(t, tlsEchoCheck(rt.Addr().String(), cfg, pattern(10000, 3)))
				info := <-infos
				assert.Equal(t, v, info.Version)
				assert.NotZero(t, info.CipherSuite)
				assert.Equal(t, "localhost", info.ServerName)
			})
		}
		st := Total(rt.Stats())
		assert.Equal(t, uint64(2), st.TLSHandshakes)
		assert.Zero(t, st.TLSHandshakeErrors)
	})
}

// lineEcho is a handler that echoes each line it receives and closes the
// connection after echoing a line that says "bye".
func lineEcho(c ConnCtx) {
	for {
		var line []byte
		n := c.WithData(func(b []byte) ParseResult {
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				return NeedMore()
			}
			line = append(line[:0], b[:i+1]...)
			return Consumed(i + 1)
		})
		if n == 0 {
			return
		}
		if err := c.SendNowait(line); err != nil {
			return
		}
		if string(line) == "bye\n" {
			return
		}
	}
}

// opensslPath finds openssl, which make test installs (Debian's openssl
// package): its absence is a failure, not a skip.
func opensslPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("openssl")
	require.NoError(t, err, "openssl is needed (apt-get install openssl; make test installs it)")
	return p
}

// sClient runs `openssl s_client` against addr and talks to it line by
// line: send writes to its stdin, expect waits for a line on its stdout.
type sClient struct {
	t     *testing.T
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	out   strings.Builder
	mu    sync.Mutex
}

func startSClient(t *testing.T, addr string, args ...string) *sClient {
	t.Helper()
	dir := t.TempDir()
	caFile, _, _ := getPKI().writeFiles(t, dir)
	argv := append([]string{"s_client", "-connect", addr, "-CAfile", caFile, "-verify_return_error", "-servername", "localhost"}, args...)
	cmd := exec.Command(opensslPath(t), argv...)
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	cmd.Stderr = cmd.Stdout
	require.NoError(t, cmd.Start())
	s := &sClient{t: t, cmd: cmd, stdin: stdin, lines: make(chan string, 1024)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			s.mu.Lock()
			s.out.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
			s.lines <- sc.Text()
		}
		close(s.lines)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return s
}

func (s *sClient) send(line string) {
	s.t.Helper()
	_, err := io.WriteString(s.stdin, line)
	require.NoError(s.t, err)
}

// expect waits (30 s at most) for a line that contains want.
func (s *sClient) expect(want string) {
	s.t.Helper()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case l, ok := <-s.lines:
			if !ok {
				s.t.Fatalf("openssl s_client exited before printing %q; its output:\n%s", want, s.output())
			}
			if strings.Contains(l, want) {
				return
			}
		case <-deadline:
			s.t.Fatalf("openssl s_client did not print %q within 30s; its output:\n%s", want, s.output())
		}
	}
}

func (s *sClient) output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.out.String()
}

// wait waits for s_client to exit (the server closed) and returns its
// exit error.
func (s *sClient) wait() error {
	done := make(chan error, 1)
	go func() { done <- s.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(30 * time.Second):
		_ = s.cmd.Process.Kill()
		return errors.New("openssl s_client did not exit within 30s")
	}
}

// TestTLSOpenSSLClient: openssl s_client, TLS 1.2 and 1.3, verifies the
// server's certificate, echoes lines and sees the server close; over TLS
// 1.3 it also asks for a KeyUpdate (s_client's "K" command), which the
// server answers from inside tls.Conn.Read on the loop (a write that must
// not suspend) and keeps echoing with the new keys.
func TestTLSOpenSSLClient(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		versions := make(chan uint16, 4)
		rt := serve(t, tlsTestConfig(be), func(c ConnCtx) {
			info, _ := c.TLSInfo()
			versions <- info.Version
			lineEcho(c)
		})
		for _, v := range []struct {
			flag string
			ver  uint16
		}{{"-tls1_2", tls.VersionTLS12}, {"-tls1_3", tls.VersionTLS13}} {
			t.Run(v.flag, func(t *testing.T) {
				s := startSClient(t, rt.Addr().String(), v.flag)
				s.expect("Verify return code: 0 (ok)")
				s.send("hello ringline\n")
				s.expect("hello ringline")
				if v.ver == tls.VersionTLS13 {
					s.send("K\n")
					s.expect("KEYUPDATE")
					s.send("after the key update\n")
					s.expect("after the key update")
				}
				s.send("bye\n")
				s.expect("bye")
				require.NoError(t, s.wait(), "s_client output:\n%s", s.output())
				assert.Equal(t, v.ver, <-versions)
			})
		}
	})
}

// TestTLSInfo: ALPN and SNI as the server's TLSInfo reports them, the
// client certificate it verified (mutual TLS), and false on a plaintext
// connection.
func TestTLSInfo(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := tlsTestConfig(be)
		cfg.TLS.NextProtos = []string{"h2", "http/1.1"}
		cfg.TLS.ClientAuth = tls.VerifyClientCertIfGiven
		cfg.TLS.ClientCAs = getPKI().pool
		infos := make(chan TLSInfo, 4)
		rt := serve(t, cfg, func(c ConnCtx) {
			info, ok := c.TLSInfo()
			if ok {
				infos <- info
			}
			echoTask(c)
		})
		t.Run("alpn-sni", func(t *testing.T) {
			ccfg := getPKI().clientConfig()
			ccfg.NextProtos = []string{"http/1.1"}
			require.NoError(t, tlsEchoCheck(rt.Addr().String(), ccfg, []byte("x")))
			info := <-infos
			assert.Equal(t, "http/1.1", info.NegotiatedProtocol)
			assert.Equal(t, "localhost", info.ServerName)
			assert.Empty(t, info.PeerCertificates)
			assert.Equal(t, uint16(tls.VersionTLS13), info.Version)
			assert.Equal(t, tls.CipherSuiteName(info.CipherSuite)[:4], "TLS_")
		})
		t.Run("no-sni", func(t *testing.T) {
			// An IP address is verified but never sent as SNI.
			ccfg := getPKI().clientConfig()
			ccfg.ServerName = "127.0.0.1"
			require.NoError(t, tlsEchoCheck(rt.Addr().String(), ccfg, []byte("x")))
			info := <-infos
			assert.Equal(t, "", info.ServerName)
			assert.Equal(t, "", info.NegotiatedProtocol)
		})
		t.Run("client-cert", func(t *testing.T) {
			ccfg := getPKI().clientConfig()
			ccfg.Certificates = []tls.Certificate{getPKI().client}
			require.NoError(t, tlsEchoCheck(rt.Addr().String(), ccfg, []byte("x")))
			info := <-infos
			require.Len(t, info.PeerCertificates, 1)
			assert.Equal(t, "ringline test client", info.PeerCertificates[0].Subject.CommonName)
			require.NotEmpty(t, info.VerifiedChains)
		})
		t.Run("plaintext", func(t *testing.T) {
			got := make(chan bool, 1)
			prt := serve(t, testConfig(be), func(c ConnCtx) {
				_, ok := c.TLSInfo()
				got <- ok
				echoTask(c)
			})
			require.NoError(t, echoCheck(prt.Addr().String(), []byte("x")))
			assert.False(t, <-got)
		})
	})
}

// TestTLSClientCertificates: with client certificates required, a client
// with a certificate of the trusted CA gets through; one without a
// certificate, or with another CA's, fails the handshake: OnAccept never
// runs for it, it is counted, and the server keeps serving.
func TestTLSClientCertificates(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := tlsTestConfig(be)
		cfg.TLS.ClientAuth = tls.RequireAndVerifyClientCert
		cfg.TLS.ClientCAs = getPKI().pool
		var accepted sync.WaitGroup
		var mu sync.Mutex
		names := []string{}
		rt := serve(t, cfg, func(c ConnCtx) {
			info, _ := c.TLSInfo()
			mu.Lock()
			names = append(names, info.PeerCertificates[0].Subject.CommonName)
			mu.Unlock()
			echoTask(c)
		})
		accepted.Add(1)
		good := getPKI().clientConfig()
		good.Certificates = []tls.Certificate{getPKI().client}
		require.NoError(t, tlsEchoCheck(rt.Addr().String(), good, []byte("mutual")))

		for _, tc := range []struct {
			name  string
			certs []tls.Certificate
		}{{"none", nil}, {"other-CA", []tls.Certificate{getPKI().rogue}}} {
			t.Run(tc.name, func(t *testing.T) {
				ccfg := getPKI().clientConfig()
				ccfg.Certificates = tc.certs
				// In TLS 1.3 the client finishes before the server has
				// checked its certificate: the refusal (an alert) comes
				// with the first read.
				err := tlsEchoCheck(rt.Addr().String(), ccfg, []byte("refused"))
				require.Error(t, err)
				var alert tls.AlertError
				if !errors.As(err, &alert) {
					assert.Contains(t, err.Error(), "certificate")
				}
			})
		}
		require.True(t, settle(10*time.Second, func() bool { return Total(rt.Stats()).TLSHandshakeErrors == 2 }),
			"handshake errors: %d", Total(rt.Stats()).TLSHandshakeErrors)
		mu.Lock()
		assert.Equal(t, []string{"ringline test client"}, names)
		mu.Unlock()
		require.NoError(t, tlsEchoCheck(rt.Addr().String(), good, []byte("still serving")))
	})
}

// TestTLSPlaintextClient: a plaintext client on the TLS port fails its
// handshake and is closed, that connection only: OnAccept never sees it,
// it is counted, and it is logged at debug level only (a scanner's garbage
// must not flood the log), while a TLS client is served meanwhile.
func TestTLSPlaintextClient(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := tlsTestConfig(be)
		logs := captureLog(&cfg)
		var handled sync.Mutex
		handlers := 0
		rt := serve(t, cfg, func(c ConnCtx) {
			handled.Lock()
			handlers++
			handled.Unlock()
			echoTask(c)
		})
		// A TLS client connected before and still served after.
		tc, err := dialTLS(rt.Addr().String(), getPKI().clientConfig())
		require.NoError(t, err)
		defer tc.Close()

		pc := dial(t, rt)
		_, err = pc.Write([]byte("GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"))
		require.NoError(t, err)
		// The server closes it: EOF, or a reset if the request was not
		// all read. Whatever it answers is no HTTP response.
		got, err := io.ReadAll(pc)
		if err != nil {
			require.ErrorIs(t, err, syscall.ECONNRESET)
		}
		assert.False(t, bytes.HasPrefix(got, []byte("HTTP/")), "got %q", got)

		assert.Equal(t, []byte("after"), roundTrip(t, tc, []byte("after")))
		require.True(t, settle(10*time.Second, func() bool { return Total(rt.Stats()).TLSHandshakeErrors == 1 }))
		handled.Lock()
		assert.Equal(t, 1, handlers)
		handled.Unlock()
		out := logs.String()
		assert.Contains(t, out, "level=DEBUG msg=\"ringline: TLS handshake failed")
		assert.Contains(t, out, "does not look like a TLS handshake")
		assert.NotContains(t, out, "level=WARN")
		assert.NotContains(t, out, "level=ERROR")
		assert.NotContains(t, out, "level=INFO")
	})
}

// tricklingConn writes one byte every 10 ms while trickle is set: a
// client whose handshake reaches the server in one-byte segments.
type tricklingConn struct {
	net.Conn
	trickle bool
}

func (c *tricklingConn) Write(p []byte) (int, error) {
	if !c.trickle {
		return c.Conn.Write(p)
	}
	for i := range p {
		if _, err := c.Conn.Write(p[i : i+1]); err != nil {
			return i, err
		}
		time.Sleep(10 * time.Millisecond)
	}
	return len(p), nil
}

// TestTLSSegmentedHandshake: a client that sends its handshake one byte
// every 10 ms (each byte its own segment) completes it and is echoed, on
// TLS 1.2 and 1.3.
func TestTLSSegmentedHandshake(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		t.Parallel() // a few seconds of sleeping clients: run side by side
		rt := serve(t, tlsTestConfig(be), echoTask)
		for _, v := range []uint16{tls.VersionTLS12, tls.VersionTLS13} {
			t.Run(tls.VersionName(v), func(t *testing.T) {
				t.Parallel()
				raw := dial(t, rt)
				tc := &tricklingConn{Conn: raw, trickle: true}
				cfg := getPKI().clientConfig()
				cfg.MinVersion, cfg.MaxVersion = v, v
				// X25519 alone keeps the ClientHello near 250 bytes
				// (a post-quantum key share is over 1 KB: 12 s at this
				// pace).
				cfg.CurvePreferences = []tls.CurveID{tls.X25519}
				c := tls.Client(tc, cfg)
				require.NoError(t, c.Handshake())
				tc.trickle = false
				msg := pattern(5000, 9)
				assert.Equal(t, msg, roundTrip(t, c, msg))
			})
		}
	})
}

// choppingConn splits every write into random pieces of 1..max bytes,
// pausing now and then so they arrive as separate receives.
type choppingConn struct {
	net.Conn
	rnd *rand.Rand
	max int
}

func (c *choppingConn) Write(p []byte) (int, error) {
	done := 0
	for done < len(p) {
		k := min(1+c.rnd.IntN(c.max), len(p)-done)
		if _, err := c.Conn.Write(p[done : done+k]); err != nil {
			return done, err
		}
		done += k
		if c.rnd.IntN(4) == 0 {
			time.Sleep(100 * time.Microsecond)
		}
	}
	return done, nil
}

// TestTLSRecordFraming: records of many sizes (1 byte to 20 KiB, so one
// to two full records per write), each cut into random pieces on the
// wire (record headers split across receives), are all decrypted and
// echoed in order, with the plaintext going to the accumulator and to a
// recv sink in turn.
func TestTLSRecordFraming(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, tlsTestConfig(be), func(c ConnCtx) {
			sink := make([]byte, 777)
			for round := 0; ; round++ {
				if round%3 == 2 {
					// Through the sink: whatever lands in it is echoed.
					c.SetRecvSink(sink)
					if !c.RecvReady() {
						return
					}
					n := c.TakeRecvSink()
					if _, err := c.Send(sink[:n]); err != nil {
						return
					}
					continue
				}
				var fut SendFuture
				var err error
				if c.WithData(func(b []byte) ParseResult {
					fut, err = c.Send(b)
					return Consumed(len(b))
				}) == 0 || err != nil {
					return
				}
				if _, err := fut.Await(); err != nil {
					return
				}
			}
		})
		raw := dial(t, rt)
		cc := &choppingConn{Conn: raw, rnd: rand.New(rand.NewPCG(1, 2)), max: 700}
		c := tls.Client(cc, getPKI().clientConfig())
		require.NoError(t, c.Handshake())
		// The messages are made before the writer starts, so the reader
		// knows how much to expect: waiting for the writer's "done" before
		// the last read raced with the echo (every byte could come back
		// before the writer goroutine reported, and the reader then
		// blocked in a read no byte would end).
		var want bytes.Buffer
		var msgs [][]byte
		rnd := rand.New(rand.NewPCG(3, 4))
		for i := 0; i < 300; i++ {
			n := 1 + rnd.IntN(3000)
			if i%50 == 0 {
				n = 20 << 10
			}
			msgs = append(msgs, pattern(n, byte(i)))
			want.Write(msgs[i])
		}
		errc := make(chan error, 1)
		go func() {
			for _, msg := range msgs {
				if _, err := c.Write(msg); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}()
		got := make([]byte, 0, want.Len())
		buf := make([]byte, 32<<10)
		for len(got) < want.Len() {
			n, err := c.Read(buf)
			require.NoError(t, err, "after %d of %d bytes", len(got), want.Len())
			got = append(got, buf[:n]...)
		}
		require.NoError(t, <-errc)
		assert.True(t, bytes.Equal(want.Bytes(), got), "echo of %d bytes differs", want.Len())
	})
}

// corkConn holds what is written until flush, which sends it in one
// write(2): several TLS records in one segment.
type corkConn struct {
	net.Conn
	mu  sync.Mutex
	buf []byte
}

func (c *corkConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf = append(c.buf, p...)
	return len(p), nil
}

func (c *corkConn) flush() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	_, err := c.Conn.Write(c.buf)
	c.buf = c.buf[:0]
	return err
}

// TestTLSRecordsInOneReceive: two records arrive in one receive; the first
// one's plaintext is larger than the recv sink, so it is taken in two
// reads (the sink, then the accumulator) and the second record must still
// be decrypted right away, not left inside crypto/tls until more bytes
// come (the client waits for the echo of both).
func TestTLSRecordsInOneReceive(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, tlsTestConfig(be), func(c ConnCtx) {
			sink := make([]byte, 777)
			for {
				c.SetRecvSink(sink)
				if !c.RecvReady() {
					return
				}
				n := c.TakeRecvSink()
				out := append([]byte(nil), sink[:n]...)
				c.TryWithData(func(b []byte) ParseResult { out = append(out, b...); return Consumed(len(b)) })
				if _, err := c.Send(out); err != nil {
					return
				}
			}
		})
		raw := dial(t, rt)
		cork := &corkConn{Conn: raw}
		c := tls.Client(cork, getPKI().clientConfig())
		hs := make(chan error, 1)
		go func() { hs <- c.Handshake() }()
		// Flush the handshake's flights as crypto/tls writes them.
		for done := false; !done; {
			select {
			case err := <-hs:
				require.NoError(t, err)
				done = true
			case <-time.After(time.Millisecond):
			}
			require.NoError(t, cork.flush())
		}
		for i := 0; i < 20; i++ {
			a, b := pattern(1000, byte(i)), pattern(500, byte(i+100))
			_, err := c.Write(a)
			require.NoError(t, err)
			_, err = c.Write(b)
			require.NoError(t, err)
			require.NoError(t, cork.flush())
			got := make([]byte, 1500)
			_, err = io.ReadFull(c, got)
			require.NoError(t, err, "round %d", i)
			require.Equal(t, append(a, b...), got)
		}
	})
}

// TestTLSHandshakeTimeout: a client that starts a handshake and stalls is
// closed after Config.TLSHandshakeTimeout, counted as a timeout.
func TestTLSHandshakeTimeout(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := tlsTestConfig(be)
		cfg.TLSHandshakeTimeout = 300 * time.Millisecond
		rt := serve(t, cfg, echoTask)
		c := dial(t, rt)
		// The first bytes of a ClientHello record header, then nothing.
		_, err := c.Write([]byte{0x16, 0x03, 0x01})
		require.NoError(t, err)
		start := time.Now()
		_, err = io.ReadAll(c)
		require.NoError(t, err, "the server closes the connection")
		assert.GreaterOrEqual(t, time.Since(start), 250*time.Millisecond)
		require.True(t, settle(10*time.Second, func() bool { return Total(rt.Stats()).TLSHandshakeTimeouts == 1 }))
		assert.Equal(t, uint64(1), Total(rt.Stats()).TLSHandshakeErrors)
		require.NoError(t, tlsEchoCheck(rt.Addr().String(), getPKI().clientConfig(), []byte("next")))
	})
}

// TestTLSLargeTransfers: a 64 KiB message (several full 16 KiB records,
// each spread over several 4 KiB receive buffers) echoed, then 4 MiB each
// way: the client uploads 4 MiB and the server answers its SHA-256; the
// server sends 4 MiB and the client checks it.
func TestTLSLargeTransfers(t *testing.T) {
	const big = 4 << 20
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, tlsTestConfig(be), func(c ConnCtx) {
			var cmd byte
			if c.WithData(func(b []byte) ParseResult { cmd = b[0]; return Consumed(1) }) == 0 {
				return
			}
			switch cmd {
			case 'e':
				echoTask(c)
			case 'u': // upload: hash big bytes, answer the hash
				h := sha256.New()
				for got := 0; got < big; {
					n := c.WithData(func(b []byte) ParseResult {
						b = b[:min(len(b), big-got)]
						h.Write(b)
						return Consumed(len(b))
					})
					if n == 0 {
						return
					}
					got += n
				}
				f, err := c.Send(h.Sum(nil))
				if err == nil {
					_, _ = f.Await()
				}
			case 'd': // download: send big bytes in 64 KiB sends
				data := pattern(big, 7)
				for off := 0; off < big; off += 64 << 10 {
					f, err := c.Send(data[off : off+64<<10])
					if err != nil {
						return
					}
					if _, err := f.Await(); err != nil {
						return
					}
				}
			}
		})
		cfg := getPKI().clientConfig()
		t.Run("echo-64KiB", func(t *testing.T) {
			c, err := dialTLS(rt.Addr().String(), cfg)
			require.NoError(t, err)
			defer c.Close()
			_, err = c.Write([]byte{'e'})
			require.NoError(t, err)
			msg := pattern(64<<10, 1)
			assert.Equal(t, msg, roundTrip(t, c, msg))
		})
		t.Run("upload-4MiB", func(t *testing.T) {
			c, err := dialTLS(rt.Addr().String(), cfg)
			require.NoError(t, err)
			defer c.Close()
			data := pattern(big, 5)
			werr := writeAsync(c, append([]byte{'u'}, data...))
			sum := make([]byte, 32)
			_, err = io.ReadFull(c, sum)
			require.NoError(t, err)
			require.NoError(t, <-werr)
			want := sha256.Sum256(data)
			assert.Equal(t, want[:], sum)
		})
		t.Run("download-4MiB", func(t *testing.T) {
			c, err := dialTLS(rt.Addr().String(), cfg)
			require.NoError(t, err)
			defer c.Close()
			_, err = c.Write([]byte{'d'})
			require.NoError(t, err)
			got := make([]byte, big)
			_, err = io.ReadFull(c, got)
			require.NoError(t, err)
			assert.True(t, bytes.Equal(pattern(big, 7), got), "4 MiB download differs")
			// Then close_notify: a clean end.
			n, err := c.Read(make([]byte, 1))
			assert.Equal(t, 0, n)
			assert.ErrorIs(t, err, io.EOF)
		})
	})
}

// TestTLSTruncation: a peer that ends with close_notify is a clean close
// (Err nil); one that sends FIN without it is reported as ErrTLSTruncated.
// Both read everything the peer sent first.
func TestTLSTruncation(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		type end struct {
			got []byte
			err error
		}
		ends := make(chan end, 2)
		rt := serve(t, tlsTestConfig(be), func(c ConnCtx) {
			// The handshake is over on this side before the client sends
			// anything: what follows comes through the loop's decrypt.
			_ = c.SendNowait([]byte("k"))
			var got []byte
			for c.WithData(func(b []byte) ParseResult { got = append(got, b...); return Consumed(len(b)) }) > 0 {
			}
			ends <- end{got, c.Err()}
		})
		t.Run("close_notify", func(t *testing.T) {
			c, err := dialTLS(rt.Addr().String(), getPKI().clientConfig())
			require.NoError(t, err)
			_, err = io.ReadFull(c, make([]byte, 1))
			require.NoError(t, err)
			_, err = c.Write([]byte("all of it"))
			require.NoError(t, err)
			require.NoError(t, c.Close()) // close_notify, then FIN
			e := <-ends
			assert.Equal(t, "all of it", string(e.got))
			assert.NoError(t, e.err)
		})
		t.Run("FIN-only", func(t *testing.T) {
			raw := dial(t, rt)
			c := tls.Client(raw, getPKI().clientConfig())
			require.NoError(t, c.Handshake())
			_, err := io.ReadFull(c, make([]byte, 1))
			require.NoError(t, err)
			_, err = c.Write([]byte("cut short"))
			require.NoError(t, err)
			require.NoError(t, raw.Close()) // FIN, no close_notify
			e := <-ends
			assert.Equal(t, "cut short", string(e.got))
			assert.ErrorIs(t, e.err, ErrTLSTruncated)
			assert.ErrorIs(t, e.err, io.ErrUnexpectedEOF)
		})
		t.Run("FIN-during-handshake", func(t *testing.T) {
			// The client's data and FIN can reach the server with its
			// Finished, before the server's handshake is over.
			rt := serve(t, tlsTestConfig(be), func(c ConnCtx) {
				var got []byte
				for c.WithData(func(b []byte) ParseResult { got = append(got, b...); return Consumed(len(b)) }) > 0 {
				}
				ends <- end{got, c.Err()}
			})
			raw := dial(t, rt)
			cork := &corkConn{Conn: raw}
			c := tls.Client(cork, getPKI().clientConfig())
			hs := make(chan error, 1)
			go func() { hs <- c.Handshake() }()
			for done := false; !done; {
				select {
				case err := <-hs:
					require.NoError(t, err)
					done = true
				case <-time.After(time.Millisecond):
					require.NoError(t, cork.flush())
				}
			}
			// The client Finished, the data, then FIN, in one go.
			_, err := c.Write([]byte("early"))
			require.NoError(t, err)
			require.NoError(t, cork.flush())
			require.NoError(t, raw.Close())
			e := <-ends
			assert.Equal(t, "early", string(e.got))
			assert.ErrorIs(t, e.err, ErrTLSTruncated)
		})
	})
}

// recordingConn notes whether its reads reached EOF.
type recordingConn struct {
	net.Conn
	mu  sync.Mutex
	eof bool
}

func (c *recordingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err == io.EOF {
		c.mu.Lock()
		c.eof = true
		c.mu.Unlock()
	}
	return n, err
}

func (c *recordingConn) sawEOF() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.eof
}

// TestTLSCloseNotify: a handler that returns after sending sends
// close_notify behind its data, then keeps the socket open until the peer
// answers with its own close_notify (or FIN), at most
// Config.TLSCloseTimeout.
func TestTLSCloseNotify(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		data := pattern(100<<10, 4)
		server := func(t *testing.T, closeTimeout time.Duration) *Runtime {
			cfg := tlsTestConfig(be)
			cfg.TLSCloseTimeout = closeTimeout
			return serve(t, cfg, func(c ConnCtx) {
				if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
					return
				}
				_ = c.SendNowait(data)
			})
		}
		open := func(t *testing.T, rt *Runtime) (*tls.Conn, *recordingConn) {
			raw := &recordingConn{Conn: dial(t, rt)}
			c := tls.Client(raw, getPKI().clientConfig())
			_, err := c.Write([]byte("go"))
			require.NoError(t, err)
			got := make([]byte, len(data))
			_, err = io.ReadFull(c, got)
			require.NoError(t, err)
			require.True(t, bytes.Equal(data, got))
			// The next record is close_notify: EOF from TLS while the
			// TCP stream is still open.
			n, err := c.Read(make([]byte, 1))
			require.Equal(t, 0, n)
			require.ErrorIs(t, err, io.EOF)
			require.False(t, raw.sawEOF(), "close_notify came before the FIN")
			return c, raw
		}
		t.Run("answered", func(t *testing.T) {
			// A bound far longer than the test: only our answer ends
			// the wait.
			c, raw := open(t, server(t, time.Minute))
			// The server waits for us: no FIN for a while...
			require.NoError(t, raw.SetReadDeadline(time.Now().Add(150*time.Millisecond)))
			_, err := raw.Conn.Read(make([]byte, 1))
			require.ErrorIs(t, err, os.ErrDeadlineExceeded)
			// ...until our close_notify comes.
			require.NoError(t, c.CloseWrite())
			require.NoError(t, raw.SetReadDeadline(time.Now().Add(10*time.Second)))
			n, err := raw.Conn.Read(make([]byte, 1))
			assert.Equal(t, 0, n)
			assert.ErrorIs(t, err, io.EOF)
		})
		t.Run("unanswered", func(t *testing.T) {
			_, raw := open(t, server(t, 400*time.Millisecond))
			start := time.Now()
			require.NoError(t, raw.SetReadDeadline(time.Now().Add(10*time.Second)))
			n, err := raw.Conn.Read(make([]byte, 1))
			assert.Equal(t, 0, n)
			assert.ErrorIs(t, err, io.EOF)
			// It waited (a timer cannot fire early), then closed.
			assert.GreaterOrEqual(t, time.Since(start), 300*time.Millisecond)
		})
	})
}

// TestTLSManyConnections: 200 TLS clients at once, each echoing 8 KB, on
// one worker.
func TestTLSManyConnections(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, tlsTestConfig(be), echoTask)
		cfg := getPKI().clientConfig()
		runClients(t, 200, func(i int) error {
			return tlsEchoCheck(rt.Addr().String(), cfg, pattern(8000, byte(i)))
		})
		st := Total(rt.Stats())
		assert.Equal(t, uint64(200), st.TLSHandshakes)
		assert.Zero(t, st.TLSHandshakeErrors)
	})
}

// TestTLSSendPoolExhausted: a send the pool cannot hold (with room
// counted for every record it would make) is refused whole with
// ErrSendPoolExhausted before any record is sealed, so the session stays
// intact: the next send reaches the peer and decrypts.
func TestTLSSendPoolExhausted(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := tlsTestConfig(be)
		cfg.SendPoolSlots, cfg.SendSlotSize = 8, 4096 // 32 KiB
		errs := make(chan error, 1)
		rt := serve(t, cfg, func(c ConnCtx) {
			if c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) == 0 {
				return
			}
			// 30 KiB of plaintext: it would fit as plaintext, but its
			// records' overhead bound does not.
			errs <- c.SendNowait(make([]byte, 30<<10))
			f, err := c.Send([]byte("intact"))
			if err == nil {
				_, _ = f.Await()
			}
		})
		c, err := dialTLS(rt.Addr().String(), getPKI().clientConfig())
		require.NoError(t, err)
		defer c.Close()
		_, err = c.Write([]byte("go"))
		require.NoError(t, err)
		require.ErrorIs(t, <-errs, ErrSendPoolExhausted)
		got := make([]byte, 6)
		_, err = io.ReadFull(c, got)
		require.NoError(t, err)
		assert.Equal(t, "intact", string(got))
	})
}

// TestTLSSendByToken: Runtime.Send to a TLS connection's token is
// encrypted like any send.
func TestTLSSendByToken(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		toks := make(chan ConnToken, 1)
		rt := serve(t, tlsTestConfig(be), func(c ConnCtx) {
			toks <- c.Token()
			for c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }) > 0 {
			}
		})
		c, err := dialTLS(rt.Addr().String(), getPKI().clientConfig())
		require.NoError(t, err)
		defer c.Close()
		tok := <-toks
		require.NoError(t, rt.Send(tok, []byte("by token")))
		got := make([]byte, 8)
		_, err = io.ReadFull(c, got)
		require.NoError(t, err)
		assert.Equal(t, "by token", string(got))
	})
}

// TestTLSReceiveMethods: the recv sink, WithBytes (retained across
// receives) and TryWithData see plaintext on a TLS connection.
func TestTLSReceiveMethods(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, tlsTestConfig(be), func(c ConnCtx) {
			// 1000 bytes into a sink, set before they arrive, echoed.
			sink := make([]byte, 1000)
			c.SetRecvSink(sink)
			_ = c.SendNowait([]byte("k"))
			for c.RecvReady() {
				if c.TakeRecvSink() == len(sink) {
					break
				}
				c.SetRecvSink(sink) // more to come: keep filling from the start
			}
			_ = c.SendNowait(sink)
			// Two messages kept with WithBytes, echoed together.
			var kept []Bytes
			for len(kept) < 2 {
				if c.WithBytes(func(b Bytes) ParseResult {
					if len(b) < 5 {
						return NeedAtLeast(5)
					}
					kept = append(kept, b[:5])
					return Consumed(5)
				}) == 0 {
					return
				}
			}
			_ = c.SendNowait(append(append([]byte(nil), kept[0]...), kept[1]...))
			// TryWithData never waits.
			for {
				r, ok := c.TryWithData(func(b []byte) ParseResult { return Consumed(len(b)) })
				_ = r
				if !ok {
					break
				}
			}
			f, _ := c.Send([]byte("done"))
			_, _ = f.Await()
		})
		c, err := dialTLS(rt.Addr().String(), getPKI().clientConfig())
		require.NoError(t, err)
		defer c.Close()
		_, err = io.ReadFull(c, make([]byte, 1))
		require.NoError(t, err)
		msg := pattern(1000, 2)
		assert.Equal(t, msg, roundTrip(t, c, msg))
		_, err = c.Write([]byte("firstsecnd"))
		require.NoError(t, err)
		got := make([]byte, 14)
		_, err = io.ReadFull(c, got)
		require.NoError(t, err)
		assert.Equal(t, "firstsecnddone", string(got))
	})
}

// TestTLSClientHandshake: the client side of TLS (what ConnectTLS runs
// once connected) on an accepted connection, against a crypto/tls server
// on the dialing side: the handshake completes in the owning task,
// TLSInfo describes the server, the TLS 1.3 session tickets the server
// sends after the handshake are taken in on the loop (a second connection
// resumes with them), and a server certificate the client does not trust
// fails with an error that says so.
func TestTLSClientHandshake(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		type result struct {
			info TLSInfo
			err  error
		}
		results := make(chan result, 1)
		var ccfg *tls.Config
		var mu sync.Mutex
		rt := serve(t, testConfig(be), func(c ConnCtx) {
			mu.Lock()
			cfg := ccfg
			mu.Unlock()
			err := c.clientHandshake(cfg, time.Time{})
			info, _ := c.TLSInfo()
			results <- result{info, err}
			if err == nil {
				echoTask(c)
			}
		})
		cache := tls.NewLRUClientSessionCache(4)
		srvCfg := getPKI().serverConfig() // one ticket key for both connections
		server := func(t *testing.T) (*tls.Conn, chan error) {
			raw := dial(t, rt)
			s := tls.Server(raw, srvCfg)
			hs := make(chan error, 1)
			go func() { hs <- s.Handshake() }()
			return s, hs
		}
		for i, name := range []string{"full", "resumed"} {
			t.Run(name, func(t *testing.T) {
				mu.Lock()
				ccfg = getPKI().clientConfig()
				ccfg.ClientSessionCache = cache
				mu.Unlock()
				s, hs := server(t)
				r := <-results
				require.NoError(t, r.err)
				require.NoError(t, <-hs)
				assert.Equal(t, i == 1, r.info.DidResume)
				assert.Equal(t, uint16(tls.VersionTLS13), r.info.Version)
				if i == 0 {
					require.Len(t, r.info.PeerCertificates, 1)
					assert.Equal(t, "localhost", r.info.PeerCertificates[0].Subject.CommonName)
				}
				msg := pattern(30000, byte(i))
				assert.Equal(t, msg, roundTrip(t, s, msg))
			})
		}
		t.Run("untrusted", func(t *testing.T) {
			mu.Lock()
			ccfg = &tls.Config{ServerName: "localhost"} // system roots only
			mu.Unlock()
			_, hs := server(t)
			r := <-results
			var he *TLSHandshakeError
			require.ErrorAs(t, r.err, &he)
			var ve *tls.CertificateVerificationError
			require.ErrorAs(t, r.err, &ve)
			assert.Contains(t, r.err.Error(), "certificate signed by unknown authority")
			assert.Error(t, <-hs)
		})
	})
}

var echoExample struct {
	once sync.Once
	path string
	err  error
}

// buildEchoExample builds examples/echo once per test binary, as this
// binary was built (io_uring compiled in or not), into a fixed path under
// the user's cache directory (so runs leave nothing behind), for the tests
// that run it.
func buildEchoExample(t *testing.T) string {
	e := &echoExample
	e.once.Do(func() {
		goBin, err := exec.LookPath("go")
		if err != nil {
			goBin = "/usr/local/go/bin/go"
		}
		cache, err := os.UserCacheDir()
		if err != nil {
			e.err = err
			return
		}
		name := "echo-iouring"
		args := []string{"build"}
		if !uringCompiled {
			name = "echo-epoll"
			args = append(args, "-tags", "ringline_epoll")
		}
		e.path = filepath.Join(cache, "ringline", "test", name)
		out, err := exec.Command(goBin, append(args, "-o", e.path, "./examples/echo")...).CombinedOutput()
		if err != nil {
			e.err = fmt.Errorf("build examples/echo: %v: %s", err, out)
		}
	})
	require.NoError(t, e.err)
	return e.path
}

// TestEchoExampleTLS: the echo example serves TLS with -tls-self-signed
// (a client pinning the printed fingerprint gets its echo; -mode parts)
// and with -tls-cert/-tls-key (a client verifying against the CA; -mode
// forward), then reports its handshakes when stopped.
func TestEchoExampleTLS(t *testing.T) {
	bin := buildEchoExample(t)
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "server.pem"), filepath.Join(dir, "server.key")
	srv := getPKI().server
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate[0]}), 0o600))
	der, err := x509.MarshalPKCS8PrivateKey(srv.PrivateKey)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))

	forEachBackend(t, func(t *testing.T, be Backend) {
		for _, mode := range []string{"self-signed", "cert-key"} {
			t.Run(mode, func(t *testing.T) {
				// The echo's send modes ride along: SendParts with one
				// certificate, ForwardRecvBuf with the other.
				sendMode := map[string]string{"self-signed": "parts", "cert-key": "forward"}[mode]
				args := []string{"-addr", "127.0.0.1:0", "-workers", "1", "-backend", be.String(), "-mode", sendMode}
				if mode == "self-signed" {
					args = append(args, "-tls-self-signed")
				} else {
					args = append(args, "-tls-cert", certFile, "-tls-key", keyFile)
				}
				cmd := exec.Command(bin, args...)
				stdout, err := cmd.StdoutPipe()
				require.NoError(t, err)
				var stderr logSink
				cmd.Stderr = &stderr
				require.NoError(t, cmd.Start())
				t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
				lines := make(chan string, 16)
				go func() {
					sc := bufio.NewScanner(stdout)
					for sc.Scan() {
						lines <- sc.Text()
					}
					close(lines)
				}()
				next := func() string {
					select {
					case l, ok := <-lines:
						require.True(t, ok, "echo ended early; stderr: %s", stderr.String())
						return l
					case <-time.After(10 * time.Second):
						t.Fatalf("no output from echo; stderr: %s", stderr.String())
					}
					return ""
				}
				cfg := getPKI().clientConfig()
				line := next()
				if mode == "self-signed" {
					m := regexp.MustCompile(`SHA-256 fingerprint ([0-9A-F]{64})$`).FindStringSubmatch(line)
					require.NotNil(t, m, "line: %q", line)
					cfg = &tls.Config{InsecureSkipVerify: true, VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
						if sum := sha256.Sum256(raw[0]); fmt.Sprintf("%X", sum) != m[1] {
							return errors.New("not the certificate echo printed")
						}
						return nil
					}}
					line = next()
				}
				m := regexp.MustCompile(`^echo: listening on (\S+) with 1 workers; backend (\w+)`).FindStringSubmatch(line)
				require.NotNil(t, m, "line: %q", line)
				require.NoError(t, tlsEchoCheck(m[1], cfg, pattern(5000, 2)))
				require.NoError(t, cmd.Process.Signal(syscall.SIGTERM))
				var rest []string
				for l := range lines {
					rest = append(rest, l)
				}
				require.NotEmpty(t, rest)
				assert.Equal(t, "echo: TLS handshakes 1, failed 0 (timed out 0)", rest[len(rest)-1])
			})
		}
	})
}

// TestTLSRecordFramingCount: the record framer that tells decrypt whether
// a complete record is buffered counts exactly the records whose last byte
// has arrived, however the stream is cut (headers split across receives,
// empty records, records up to the maximum length). A pure function over
// bytes: no I/O.
func TestTLSRecordFramingCount(t *testing.T) {
	rnd := rand.New(rand.NewPCG(5, 6))
	var stream []byte
	var ends []int // stream offset just past each record
	for i := 0; i < 400; i++ {
		n := rnd.IntN(300)
		switch i % 50 {
		case 0:
			n = 0
		case 1:
			n = 16384 + 256
		}
		stream = append(stream, 0x17, 0x03, 0x03, byte(n>>8), byte(n))
		stream = append(stream, pattern(n, byte(i))...)
		ends = append(ends, len(stream))
	}
	for _, maxPiece := range []int{1, 2, 3, 7, 700, 20000} {
		var f tlsConn
		off, done := 0, 0
		for off < len(stream) {
			k := min(1+rnd.IntN(maxPiece), len(stream)-off)
			f.frame(stream[off : off+k])
			off += k
			for done < len(ends) && ends[done] <= off {
				done++
			}
			require.Equal(t, uint64(done), f.complete, "pieces of at most %d bytes, at offset %d", maxPiece, off)
		}
	}
}
