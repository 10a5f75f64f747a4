// Command gnetecho is the gnet/v2 echo server ringline's benchmarks compare
// against (bench_test.go in the repository root starts it as a child
// process). It lives in this separate module so that gnet and what it pulls
// in (zap, ants, lumberjack, bytebufferpool) never enter ringline's own
// module graph.
//
// It is gnet's own echo example with one event loop, which also accepts;
// every other option is at its default (level-triggered epoll, 64 KiB read
// buffer, TCP_NODELAY). Run it with GOMAXPROCS=1 and the CPU affinity the
// benchmark wants, as it does.
//
// Protocol on stdio: it prints "gnetecho: listening on ADDR" once serving.
// Each "usage" line read from stdin is answered with
// "usage UTIME_NS STIME_NS MALLOCS" (getrusage of this process and the Go
// heap's allocation count, so the benchmark measures the server alone). At
// the end of stdin it stops gnet and exits.
package main

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"strconv"
	"time"

	"github.com/panjf2000/gnet/v2"
	"golang.org/x/sys/unix"
)

type echo struct {
	gnet.BuiltinEventEngine
	eng   gnet.Engine
	addr  string
	err   error
	ready chan struct{}
}

func (h *echo) OnBoot(eng gnet.Engine) gnet.Action {
	defer close(h.ready)
	h.eng = eng
	fd, err := eng.Dup()
	if err != nil {
		h.err = err
		return gnet.Shutdown
	}
	defer unix.Close(fd)
	sa, err := unix.Getsockname(fd)
	if err != nil {
		h.err = err
		return gnet.Shutdown
	}
	a, ok := sa.(*unix.SockaddrInet4)
	if !ok {
		h.err = fmt.Errorf("unexpected listener address %T", sa)
		return gnet.Shutdown
	}
	h.addr = net.JoinHostPort(net.IP(a.Addr[:]).String(), strconv.Itoa(a.Port))
	return gnet.None
}

// OnTraffic takes everything read and writes it back (gnet writes at once
// and buffers only what the socket does not take).
func (h *echo) OnTraffic(c gnet.Conn) gnet.Action {
	buf, _ := c.Next(-1)
	if _, err := c.Write(buf); err != nil {
		return gnet.Close
	}
	return gnet.None
}

// logger drops gnet's debug and info lines (gnet's WithLogLevel applies
// only to a log file) and prints the rest.
type logger struct{}

func (logger) Debugf(string, ...any)     {}
func (logger) Infof(string, ...any)      {}
func (logger) Warnf(f string, a ...any)  { fmt.Fprintf(os.Stderr, "gnet: "+f+"\n", a...) }
func (logger) Errorf(f string, a ...any) { fmt.Fprintf(os.Stderr, "gnet: "+f+"\n", a...) }
func (logger) Fatalf(f string, a ...any) { fmt.Fprintf(os.Stderr, "gnet: "+f+"\n", a...); os.Exit(1) }

func main() {
	if err := run(); err != nil {
		fmt.Fprintf(os.Stderr, "gnetecho: %v\n", err)
		os.Exit(1)
	}
}

func run() error {
	h := &echo{ready: make(chan struct{})}
	runErr := make(chan error, 1)
	go func() {
		runErr <- gnet.Run(h, "tcp://127.0.0.1:0",
			gnet.WithMulticore(false), gnet.WithNumEventLoop(1), gnet.WithLogger(logger{}))
	}()
	select {
	case <-h.ready:
	case err := <-runErr:
		return fmt.Errorf("gnet.Run: %w", err)
	case <-time.After(10 * time.Second):
		return fmt.Errorf("gnet did not boot within 10s")
	}
	if h.err != nil {
		<-runErr
		return fmt.Errorf("gnet boot: %w", h.err)
	}
	fmt.Printf("gnetecho: listening on %s\n", h.addr)

	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() != "usage" {
			return fmt.Errorf("unknown command %q", in.Text())
		}
		var ru unix.Rusage
		if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
			return err
		}
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		fmt.Printf("usage %d %d %d\n", ru.Utime.Nano(), ru.Stime.Nano(), ms.Mallocs)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := h.eng.Stop(ctx); err != nil {
		return fmt.Errorf("gnet stop: %w", err)
	}
	select {
	case err := <-runErr:
		return err
	case <-time.After(10 * time.Second):
		return fmt.Errorf("gnet.Run did not return within 10s")
	}
}
