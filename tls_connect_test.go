package ringline

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// tlsEchoOver sends msg on c and reads its echo (in a task that owns c).
func tlsEchoOver(c ConnCtx, msg []byte) error {
	f, err := c.Send(msg)
	if err != nil {
		return err
	}
	if _, err := f.Await(); err != nil {
		return err
	}
	var got []byte
	for len(got) < len(msg) {
		if c.WithData(func(b []byte) ParseResult { got = append(got, b...); return Consumed(len(b)) }) == 0 {
			return errors.Join(io.ErrUnexpectedEOF, c.Err())
		}
	}
	if string(got) != string(msg) {
		return errors.New("echo differs")
	}
	return nil
}

// TestConnectTLS: ConnectTLS against a crypto/tls server and against a
// ringline TLS listener (its own), with ALPN and the server's certificate
// in TLSInfo; a certificate the client does not trust fails with an error
// that says so; ConnectTLSWithTimeout bounds a server that never answers
// the handshake; a refused connect is Connect's error.
func TestConnectTLS(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		cfg := tlsTestConfig(be)
		cfg.TLS.NextProtos = []string{"echo/1"}
		cfg.TLSClient = getPKI().clientConfig()
		cfg.TLSClient.NextProtos = []string{"echo/1"}
		rt := serve(t, cfg, echoTask)

		t.Run("crypto-tls-server", func(t *testing.T) {
			ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg.TLS)
			require.NoError(t, err)
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
			ap := netip.MustParseAddrPort(ln.Addr().String())
			require.NoError(t, inTask(t, rt, 0, func(tc TaskCtx) error {
				f, err := tc.ConnectTLS(ap, "localhost")
				if err != nil {
					return err
				}
				c, err := f.Await()
				if err != nil {
					return err
				}
				info, ok := c.TLSInfo()
				if !ok || info.NegotiatedProtocol != "echo/1" || info.PeerCertificates[0].Subject.CommonName != "localhost" {
					return errors.New("unexpected TLSInfo")
				}
				return tlsEchoOver(c, pattern(50000, 1))
			}))
		})
		t.Run("own-listener", func(t *testing.T) {
			ap := netip.MustParseAddrPort(rt.Addr().String())
			require.NoError(t, inTask(t, rt, 0, func(tc TaskCtx) error {
				f, err := tc.ConnectTLSWithTimeout(ap, "localhost", 10*time.Second)
				if err != nil {
					return err
				}
				c, err := f.Await()
				if err != nil {
					return err
				}
				return tlsEchoOver(c, []byte("to myself"))
			}))
		})
		t.Run("bad-certificate", func(t *testing.T) {
			bad := serve(t, func() Config {
				c := tlsTestConfig(be)
				c.TLSClient = &tls.Config{} // the system roots: the test CA is unknown
				return c
			}(), echoTask)
			ap := netip.MustParseAddrPort(bad.Addr().String())
			err := inTask(t, bad, 0, func(tc TaskCtx) error {
				f, err := tc.ConnectTLS(ap, "localhost")
				if err != nil {
					return err
				}
				_, err = f.Await()
				return err
			})
			var he *TLSHandshakeError
			require.ErrorAs(t, err, &he)
			var ve *tls.CertificateVerificationError
			require.ErrorAs(t, err, &ve)
			assert.Contains(t, err.Error(), "certificate signed by unknown authority")
		})
		t.Run("handshake-timeout", func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			defer ln.Close()
			go func() {
				c, err := ln.Accept()
				if err == nil {
					defer c.Close()
					_, _ = io.Copy(io.Discard, c) // reads the ClientHello, never answers
				}
			}()
			ap := netip.MustParseAddrPort(ln.Addr().String())
			start := time.Now()
			err = inTask(t, rt, 0, func(tc TaskCtx) error {
				f, err := tc.ConnectTLSWithTimeout(ap, "localhost", 300*time.Millisecond)
				if err != nil {
					return err
				}
				_, err = f.Await()
				return err
			})
			require.ErrorIs(t, err, os.ErrDeadlineExceeded)
			assert.GreaterOrEqual(t, time.Since(start), 250*time.Millisecond)
		})
		t.Run("refused", func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			require.NoError(t, err)
			ap := netip.MustParseAddrPort(ln.Addr().String())
			ln.Close()
			err = inTask(t, rt, 0, func(tc TaskCtx) error {
				f, err := tc.ConnectTLS(ap, "localhost")
				if err != nil {
					return err
				}
				_, err = f.Await()
				return err
			})
			require.ErrorIs(t, err, syscall.ECONNREFUSED)
		})
	})
}

// ConnectTLS presents the client certificate of the Config.TLSClient
// template to a server that requires one (outbound mutual TLS), and the
// server sees it; without one, the server refuses the connection and the
// client learns so with an error naming the certificate, from Await or
// from its first receive (in TLS 1.3 the server judges the client's
// certificate after the client's handshake has completed).
func TestConnectTLSClientCertificate(t *testing.T) {
	pki := getPKI()
	forEachBackend(t, func(t *testing.T, be Backend) {
		srvCfg := pki.serverConfig()
		srvCfg.ClientAuth = tls.RequireAndVerifyClientCert
		srvCfg.ClientCAs = pki.pool
		ln, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
		require.NoError(t, err)
		defer ln.Close()
		peers := make(chan string, 4)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					tc := c.(*tls.Conn)
					if err := tc.Handshake(); err != nil {
						peers <- "refused: " + err.Error()
						return
					}
					peers <- tc.ConnectionState().PeerCertificates[0].Subject.CommonName
					_, _ = io.Copy(c, c)
				}()
			}
		}()
		ap := netip.MustParseAddrPort(ln.Addr().String())

		t.Run("with-certificate", func(t *testing.T) {
			cfg := testConfig(be)
			cfg.TLSClient = pki.clientConfig()
			cfg.TLSClient.Certificates = []tls.Certificate{pki.client}
			rt := clientRuntime(t, cfg, nil)
			require.NoError(t, inTask(t, rt, 0, func(tc TaskCtx) error {
				f, err := tc.ConnectTLS(ap, "localhost")
				if err != nil {
					return err
				}
				c, err := f.Await()
				if err != nil {
					return err
				}
				return tlsEchoOver(c, pattern(20000, 3))
			}))
			assert.Equal(t, pki.client.Leaf.Subject.CommonName, <-peers, "the server saw the template's client certificate")
		})

		t.Run("without-certificate", func(t *testing.T) {
			cfg := testConfig(be)
			cfg.TLSClient = pki.clientConfig()
			rt := clientRuntime(t, cfg, nil)
			err := inTask(t, rt, 0, func(tc TaskCtx) error {
				f, err := tc.ConnectTLS(ap, "localhost")
				if err != nil {
					return err
				}
				c, err := f.Await()
				if err != nil {
					return err
				}
				if _, err := c.Send([]byte("hello")); err != nil {
					return err
				}
				if n := c.WithData(func(b []byte) ParseResult { return Consumed(len(b)) }); n != 0 {
					return fmt.Errorf("%d bytes from a server that refused the client", n)
				}
				return c.Err()
			})
			require.Error(t, err, "a server requiring a client certificate accepted none")
			assert.Contains(t, err.Error(), "certificate")
			assert.Contains(t, <-peers, "refused")
		})
	})
}

// A TLS connection that its task closed just before the runtime shuts
// down, and that is still awaiting the peer's close_notify, does not hold
// the shutdown for Config.TLSCloseTimeout: shutdown stops receives, so
// the answer could never be read; the connection closes at once instead.
func TestShutdownDoesNotAwaitCloseNotify(t *testing.T) {
	pki := getPKI()
	forEachBackend(t, func(t *testing.T, be Backend) {
		ln, err := tls.Listen("tcp", "127.0.0.1:0", pki.serverConfig())
		require.NoError(t, err)
		defer ln.Close()
		hold := make(chan struct{})
		defer close(hold)
		go func() {
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer c.Close()
					// Echo until the client's close_notify, then do not
					// answer it until the test ends.
					_, _ = io.Copy(c, c)
					<-hold
				}()
			}
		}()
		ap := netip.MustParseAddrPort(ln.Addr().String())
		cfg := testConfig(be)
		cfg.TLSClient = pki.clientConfig()
		cfg.TLSCloseTimeout = 10 * time.Second
		cfg.ShutdownTimeout = 10 * time.Second
		rt, err := New(cfg).Launch(func(int) AsyncEventHandler { return handlerFunc(func(ConnCtx) {}) })
		require.NoError(t, err)
		require.NoError(t, inTask(t, rt, 0, func(tc TaskCtx) error {
			f, err := tc.ConnectTLS(ap, "localhost")
			if err != nil {
				return err
			}
			c, err := f.Await()
			if err != nil {
				return err
			}
			return tlsEchoOver(c, []byte("bye"))
		}))
		// The task has ended: its connection sent close_notify and awaits
		// the answer the peer withholds.
		require.True(t, settle(5*time.Second, func() bool {
			var waiting bool
			onWorker(t, rt, 0, func(w *worker) {
				for _, cn := range w.conns {
					if cn != nil && cn.tls != nil && cn.tls.awaitPeer {
						waiting = true
					}
				}
			})
			return waiting
		}), "the connection never waited for close_notify")
		start := time.Now()
		rt.Shutdown()
		rt.Wait()
		took := time.Since(start)
		t.Logf("shutdown took %v", took)
		assert.Less(t, took, 3*time.Second, "shutdown waited for a close_notify it could not read (TLSCloseTimeout 10 s)")
	})
}
