package ringline

import (
	"net"
	"path/filepath"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/assert"
	"github.com/ringline-go/ringline/internal/require"
)

// The load generator example (examples/loadgen), built and run as a
// program on each backend against ringline's echo: it reports a rate and
// round trips with no error, over TCP and over a Unix socket; against a
// server that corrupts one byte it reports the mismatch and exits 1.
func TestLoadgenExample(t *testing.T) {
	bin := buildExample(t, "loadgen")
	forEachBackend(t, func(t *testing.T, be Backend) {
		srv := serve(t, testConfig(be), echoTask)
		path := filepath.Join(t.TempDir(), "echo.sock")
		usrv, err := New(testConfig(be)).BindUnix(path).Launch(func(int) AsyncEventHandler { return handlerFunc(echoTask) })
		require.NoError(t, err)
		t.Cleanup(func() { stop(t, usrv) })
		for _, target := range []struct {
			addr string
			rt   *Runtime
		}{{srv.Addr().String(), srv}, {"unix:" + path, usrv}} {
			addr := target.addr
			g := startChild(t, bin, "-addr", addr, "-conns", "8", "-size", "100", "-depth", "4",
				"-duration", "500ms", "-workers", "2", "-backend", be.String())
			first := g.next(t)
			assertMatch(t, `^loadgen: 8 connections to \S+, 100 B messages, pipeline depth 4, 500ms; 2 workers, backend `+be.String()+`$`, first)
			rest := g.wait(t)
			require.Len(t, rest, 2, "%q", rest)
			m := regexp.MustCompile(`^loadgen: (\d+) messages, (\d+) msgs/s, [0-9.]+ MB/s each way; round trip p50 (\S+) p99 (\S+) max (\S+)$`).FindStringSubmatch(rest[0])
			require.NotNil(t, m, "%q", rest[0])
			msgs, _ := strconv.Atoi(m[1])
			assert.Greater(t, msgs, 1000, "messages echoed")
			for _, d := range m[3:] {
				_, err := time.ParseDuration(d)
				assert.NoError(t, err, "round trip %q", d)
			}
			assert.Equal(t, "loadgen: errors: connect 0, send 0, closed early 0, mismatched 0", rest[1])
			// Every message counted went through the server, and every
			// message sent came back before loadgen ended.
			assert.True(t, settle(5*time.Second, func() bool { return Total(target.rt.Stats()).BytesOut == uint64(msgs)*100 }),
				"server echoed %d bytes, loadgen counted %d messages of 100", Total(target.rt.Stats()).BytesOut, msgs)
		}
		assert.Equal(t, uint64(8), Total(srv.Stats()).Accepted)
		assert.Equal(t, uint64(8), Total(usrv.Stats()).Accepted)
	})

	// A server that flips one byte in its 1000th: loadgen notices.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				buf := make([]byte, 4096)
				total := 0
				for {
					n, err := c.Read(buf)
					if n > 0 {
						if total <= 1000 && total+n > 1000 {
							buf[1000-total] ^= 0x20
						}
						total += n
						if _, werr := c.Write(buf[:n]); werr != nil {
							return
						}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	g := startChild(t, bin, "-addr", ln.Addr().String(), "-conns", "1", "-size", "64", "-depth", "4",
		"-duration", "300ms", "-workers", "1")
	g.next(t)
	var rest []string
	for l := range g.lines {
		rest = append(rest, l)
	}
	<-g.exited
	require.Error(t, g.waitErr, "loadgen exits non-zero on a mismatch")
	require.Len(t, rest, 2, "%q", rest)
	assert.Equal(t, "loadgen: errors: connect 0, send 0, closed early 0, mismatched 1", rest[1])
	assert.Contains(t, g.stderr.String(), "echo differs: connection 0, message 15, byte 40")
}
