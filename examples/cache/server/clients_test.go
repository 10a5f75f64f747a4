//go:build redistools

// These tests drive the server with redis's own programs: redis-cli,
// redis-benchmark, and redis-server itself as the reference for replies.
// They need Debian's redis-tools and redis-server packages, which `make
// test` installs when missing; the build tag keeps them out of plain `go
// test` runs on machines without those programs (they fail, never skip,
// when the tag is given and a program is missing).
//
//	go test -tags redistools ./examples/cache/server
package server

import (
	"bufio"
	"bytes"
	"encoding/csv"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ringline-go/ringline"
	"github.com/ringline-go/ringline/internal/require"
)

func tool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	require.NoError(t, err, "%s is needed (Debian package redis-tools or redis-server; `make test` installs them)", name)
	return p
}

func hostPort(t *testing.T, srv *Server) (string, string) {
	host, port, err := net.SplitHostPort(srv.Addr().String())
	require.NoError(t, err)
	return host, port
}

func run(t *testing.T, stdin []byte, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(tool(t, name), args...)
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	done := make(chan error, 1)
	require.NoError(t, cmd.Start())
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err, "%s %q: stdout %q stderr %q", name, args, out.String(), errb.String())
	case <-time.After(120 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatalf("%s %q did not finish within 120s", name, args)
	}
	return out.String() + errb.String()
}

// TestRedisCLI: redis-cli in command mode, binary values through -x, and
// an interactive session (which starts with COMMAND DOCS and COMMAND).
func TestRedisCLI(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be ringline.Backend) {
		srv := start(t, Options{Backend: be})
		h, p := hostPort(t, srv)
		cli := func(args ...string) string {
			return run(t, nil, "redis-cli", append([]string{"-h", h, "-p", p}, args...)...)
		}
		require.Equal(t, "PONG\n", cli("PING"))
		require.Equal(t, "OK\n", cli("SET", "greeting", "hello world"))
		require.Equal(t, "hello world\n", cli("GET", "greeting"))
		require.Equal(t, "\n", cli("GET", "nokey"))
		require.Equal(t, "(nil)\n", cli("--no-raw", "GET", "nokey"))
		require.Equal(t, "1\n", cli("INCR", "n"))
		require.Equal(t, "11\n", cli("INCRBY", "n", "10"))
		require.Equal(t, "OK\n", cli("MSET", "a", "1", "b", "2"))
		require.Equal(t, "1\n2\n\n", cli("MGET", "a", "b", "c"))
		require.Equal(t, "OK\n", cli("SET", "t", "v", "EX", "100"))
		require.Equal(t, "100\n", cli("TTL", "t"))
		require.Equal(t, "1\n", cli("EXPIRE", "a", "50"))
		require.Equal(t, "2\n", cli("EXISTS", "a", "b"))
		require.Equal(t, "2\n", cli("DEL", "a", "b"))
		require.Equal(t, "3\n", cli("DBSIZE"))
		require.Contains(t, cli("INFO"), "ringline_backend:"+be.String())
		require.Contains(t, cli("ECHO", "x y"), "x y")
		require.Contains(t, cli("foo"), "ERR unknown command 'foo'")
		// Binary-safe: every byte value through stdin and back.
		bin := make([]byte, 512)
		for i := range bin {
			bin[i] = byte(i)
		}
		require.Equal(t, "OK\n", run(t, bin, "redis-cli", "-h", h, "-p", p, "-x", "SET", "bin"))
		require.Equal(t, string(bin)+"\n", cli("GET", "bin"))
		require.Equal(t, "OK\n", cli("FLUSHALL"))
		require.Equal(t, "0\n", cli("DBSIZE"))

		// Interactive, through a pseudo-terminal (script(1), util-linux);
		// TERM=dumb makes linenoise read plain lines.
		session := "ping\nset a \"x y\"\nget a\nfoo bar\nquit\n"
		cmd := exec.Command("script", "-qec", "redis-cli -h "+h+" -p "+p, "/dev/null")
		cmd.Env = append(os.Environ(), "TERM=dumb")
		cmd.Stdin = strings.NewReader(session)
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "%s", out)
		o := strings.ReplaceAll(string(out), "\r", "")
		prompt := h + ":" + p + "> "
		require.Contains(t, o, prompt+"PONG\n")
		require.Contains(t, o, prompt+"OK\n")
		require.Contains(t, o, prompt+"\"x y\"\n")
		require.Contains(t, o, prompt+"(error) ERR unknown command 'foo', with args beginning with: 'bar'")
		require.NotContains(t, o, "Could not connect")
	})
}

// TestRedisCLIPipe: mass insertion of 100,000 keys with redis-cli --pipe,
// then every key checked.
func TestRedisCLIPipe(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be ringline.Backend) {
		srv := start(t, Options{Backend: be})
		h, p := hostPort(t, srv)
		const N = 100000
		var in bytes.Buffer
		for i := 0; i < N; i++ {
			in.WriteString(cmd("SET", fmt.Sprintf("key:%06d", i), fmt.Sprintf("value-%d", i*7)))
		}
		out := run(t, in.Bytes(), "redis-cli", "-h", h, "-p", p, "--pipe")
		require.Contains(t, out, "errors: 0, replies: 100000", out)
		c := dial(t, srv)
		c.do("DBSIZE\r\n", ":100000\r\n")
		for i := 0; i < N; i += 1000 {
			args := []string{"MGET"}
			want := "*1000\r\n"
			for j := i; j < i+1000; j++ {
				args = append(args, fmt.Sprintf("key:%06d", j))
				want += bulk(fmt.Sprintf("value-%d", j*7))
			}
			c.do(cmd(args...), want)
		}
	})
}

// TestRedisBenchmark: redis-benchmark's PING, SET, GET, INCR and MSET tests
// at pipeline depth 16 complete (redis-benchmark 7 exits at the first
// error reply), and the counter it incremented is exact.
func TestRedisBenchmark(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be ringline.Backend) {
		srv := start(t, Options{Backend: be, Workers: 2})
		h, p := hostPort(t, srv)
		out := run(t, nil, "redis-benchmark", "-h", h, "-p", p, "-t", "ping,set,get,incr,mset",
			"-n", "100000", "-P", "16", "-d", "64", "--csv")
		rows, err := csv.NewReader(strings.NewReader(out[strings.Index(out, `"test"`):])).ReadAll()
		require.NoError(t, err, out)
		var tests []string
		for _, r := range rows[1:] {
			tests = append(tests, r[0])
			rps, err := strconv.ParseFloat(r[1], 64)
			require.NoError(t, err)
			require.Greater(t, rps, 0.0, "%v", r)
		}
		require.Equal(t, []string{"PING_INLINE", "PING_MBULK", "SET", "GET", "INCR", "MSET (10 keys)"}, tests, out)
		c := dial(t, srv)
		c.do("GET counter:__rand_int__\r\n", bulk("100000"))
		c.write("GET key:__rand_int__\r\n")
		require.Equal(t, "$64\r\n", c.readReply()[:5])
		require.GreaterOrEqual(t, srv.Commands(), uint64(600000))
	})
}

// TestDifferential replays commandScript and badInputs against a real
// redis-server 7 and this server: the replies must match byte for byte
// (except where notRedis or the badInputs comment says they differ by
// design), and so must which connections get closed.
func TestDifferential(t *testing.T) {
	rs := startRedisServer(t)
	srv := start(t, Options{})
	ours, theirs := dial(t, srv), dialAddr(t, rs)
	for _, s := range commandScript {
		if notRedis[s.req] {
			continue
		}
		ours.write(s.req)
		theirs.write(s.req)
		require.Equal(t, theirs.readReplies(s.want), ours.readReplies(s.want), "request %q", s.req)
	}
	for i, b := range badInputs {
		if i >= len(badInputs)-3 {
			break // missing CRLF: refused here, skipped by redis
		}
		o, r := dial(t, srv), dialAddr(t, rs)
		o.write(b.in)
		r.write(b.in)
		require.Equal(t, r.readN(len(b.want)), o.readN(len(b.want)), "input %.40q", b.in)
		o.expectClosed()
		r.expectClosed()
	}
}

// readReplies reads as many replies as want holds.
func (c *client) readReplies(want string) string {
	n := 0
	r := bufio.NewReader(strings.NewReader(want))
	for {
		if _, err := r.Peek(1); err != nil {
			break
		}
		var b bytes.Buffer
		readOne(c.t, r, &b)
		n++
	}
	var out strings.Builder
	for i := 0; i < n; i++ {
		out.WriteString(c.readReply())
	}
	return out.String()
}

func (c *client) readN(n int) string {
	c.t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(30 * time.Second))
	b := make([]byte, n)
	k, _ := c.r.Read(b)
	for k < n {
		m, err := c.r.Read(b[k:])
		k += m
		if err != nil {
			break
		}
	}
	return string(b[:k])
}

func dialAddr(t *testing.T, addr string) *client {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return &client{t: t, c: c, r: bufio.NewReaderSize(c, 64<<10)}
}

// startRedisServer runs redis-server on a free loopback port, persistence
// off, and stops it when the test ends.
func startRedisServer(t *testing.T) string {
	bin := tool(t, "redis-server")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := l.Addr().String()
	l.Close()
	_, port, _ := net.SplitHostPort(addr)
	dir := t.TempDir()
	cmd := exec.Command(bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
		"--dir", dir, "--logfile", filepath.Join(dir, "redis.log"))
	require.NoError(t, cmd.Start())
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	eventually(t, 20*time.Second, func() bool {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		defer c.Close()
		_, _ = c.Write([]byte("PING\r\n"))
		b := make([]byte, 7)
		_ = c.SetReadDeadline(time.Now().Add(time.Second))
		n, _ := c.Read(b)
		return string(b[:n]) == "+PONG\r\n"
	}, "redis-server answers PING")
	return addr
}
