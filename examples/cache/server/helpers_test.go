package server

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log/slog"
	"net"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/ringline-go/ringline"
	"github.com/ringline-go/ringline/internal/require"
)

// backends lists the backends this build and kernel can run: io_uring
// where the probe says it works (not in -tags ringline_epoll or
// CGO_ENABLED=0 builds), and epoll always.
func backends() []ringline.Backend {
	if ringline.Probe().AutoReason == nil {
		return []ringline.Backend{ringline.IOUring, ringline.Epoll}
	}
	return []ringline.Backend{ringline.Epoll}
}

func forEachBackend(t *testing.T, f func(t *testing.T, be ringline.Backend)) {
	for _, be := range backends() {
		t.Run(be.String(), func(t *testing.T) { f(t, be) })
	}
}

// start launches a server on a free loopback port and stops it (checking
// that it stops) when the test ends.
func start(t testing.TB, o Options) *Server {
	t.Helper()
	if o.Addr == "" {
		o.Addr = "127.0.0.1:0"
	}
	if o.Workers == 0 {
		o.Workers = 1
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Ring.MaxConnections == 0 {
		o.Ring.MaxConnections = 1024
	}
	srv, err := Start(o)
	require.NoError(t, err)
	t.Cleanup(func() {
		srv.Shutdown()
		select {
		case <-srv.Done():
		case <-time.After(20 * time.Second):
			t.Errorf("server did not stop within 20s")
		}
	})
	return srv
}

type client struct {
	t testing.TB
	c net.Conn
	r *bufio.Reader
}

func dial(t testing.TB, srv *Server) *client {
	t.Helper()
	c, err := net.DialTimeout("tcp", srv.Addr().String(), 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, r: bufio.NewReaderSize(c, 64<<10)}
}

func (c *client) write(s string) {
	c.t.Helper()
	_ = c.c.SetWriteDeadline(time.Now().Add(30 * time.Second))
	_, err := c.c.Write([]byte(s))
	require.NoError(c.t, err)
}

// expect reads exactly len(want) bytes and compares them.
func (c *client) expect(want string, msgAndArgs ...any) {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	got := make([]byte, len(want))
	n, err := io.ReadFull(c.r, got)
	if err != nil {
		c.t.Fatalf("reading %q: got %q then %v %v", want, got[:n], err, msgAndArgs)
	}
	require.Equal(c.t, want, string(got), msgAndArgs...)
}

// do sends a request and checks the whole reply.
func (c *client) do(req, want string) {
	c.t.Helper()
	c.write(req)
	c.expect(want, "request %q", req)
}

// expectClosed checks that the server closed the connection (and sent
// nothing more).
func (c *client) expectClosed() {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b, err := c.r.ReadByte()
	if err == nil {
		rest, _ := c.r.Peek(c.r.Buffered())
		c.t.Fatalf("expected the server to close; got %q", append([]byte{b}, rest...))
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("expected the server to close; the connection is still open")
	}
}

// expectOpen checks that the connection still works.
func (c *client) expectOpen() {
	c.t.Helper()
	c.do("PING\r\n", "+PONG\r\n")
}

// readReply reads one RESP reply and returns its raw bytes.
func (c *client) readReply() string {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var out bytes.Buffer
	readOne(c.t, c.r, &out)
	return out.String()
}

func readOne(t testing.TB, r *bufio.Reader, out *bytes.Buffer) {
	t.Helper()
	line, err := r.ReadString('\n')
	require.NoError(t, err)
	out.WriteString(line)
	require.True(t, strings.HasSuffix(line, "\r\n"), "line %q", line)
	body := line[1 : len(line)-2]
	switch line[0] {
	case '+', '-', ':':
	case '$':
		n := atoi(t, body)
		if n >= 0 {
			buf := make([]byte, n+2)
			_, err := io.ReadFull(r, buf)
			require.NoError(t, err)
			out.Write(buf)
		}
	case '*':
		n := atoi(t, body)
		for i := 0; i < n; i++ {
			readOne(t, r, out)
		}
	default:
		t.Fatalf("bad reply line %q", line)
	}
}

func atoi(t testing.TB, s string) int {
	n := 0
	neg := strings.HasPrefix(s, "-")
	for _, c := range strings.TrimPrefix(s, "-") {
		require.True(t, c >= '0' && c <= '9', "number %q", s)
		n = n*10 + int(c-'0')
	}
	if neg {
		return -n
	}
	return n
}

// cmd encodes a multi-bulk request.
func cmd(args ...string) string {
	var b strings.Builder
	b.WriteString("*")
	b.WriteString(itoa(len(args)))
	b.WriteString("\r\n")
	for _, a := range args {
		b.WriteString("$")
		b.WriteString(itoa(len(a)))
		b.WriteString("\r\n")
		b.WriteString(a)
		b.WriteString("\r\n")
	}
	return b.String()
}

func bulk(s string) string { return "$" + itoa(len(s)) + "\r\n" + s + "\r\n" }

func itoa(n int) string {
	if n == 0 {
		return "0"
	}
	neg := n < 0
	if neg {
		n = -n
	}
	var b []byte
	for n > 0 {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
	}
	if neg {
		b = append([]byte{'-'}, b...)
	}
	return string(b)
}

// eventually polls cond until it holds or a generous deadline passes.
func eventually(t testing.TB, d time.Duration, cond func() bool, msg string) {
	t.Helper()
	end := time.Now().Add(d)
	for !cond() {
		if time.Now().After(end) {
			t.Fatalf("not within %v: %s", d, msg)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func memStats() runtime.MemStats {
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m
}

func totalAlloc() uint64 { m := memStats(); return m.TotalAlloc }
func mallocs() uint64    { m := memStats(); return m.Mallocs }

// heapInUse is the live heap after a collection.
func heapInUse() int64 {
	runtime.GC()
	m := memStats()
	return int64(m.HeapInuse)
}
