package ringline

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"testing"

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
