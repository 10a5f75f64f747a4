// Command proxy is a TCP and Unix-socket proxy on ringline. Each accepted
// connection's task connects to the upstream (with a timeout), then copies
// both directions itself: it owns both connections, so one task drives
// them, waiting with Select for whichever side has data or has taken the
// last send.
//
// Backpressure: each direction has at most one Send in flight, and the
// task reads that direction's source again only once the destination's
// kernel has taken the previous bytes (SendFuture). Meanwhile the source's
// bytes wait in its receive buffer, which stops receiving when full, so a
// slow reader throttles its writer through TCP instead of growing memory.
//
// Half-close: when one side finishes sending (EOF), the proxy shuts down
// the write side of the other (ShutdownWrite: a FIN after the last byte)
// and keeps copying the other direction until it ends too. An error on
// either side (a reset, a failed send) closes both.
//
// Usage:
//
//	proxy -listen 127.0.0.1:7879 -upstream 127.0.0.1:6379
//	proxy -listen unix:/run/proxy.sock -upstream unix:/run/app.sock
//
// Flags: -listen, -upstream (host:port or unix:PATH), -workers (0: one
// per CPU), -backend auto|iouring|epoll, -connect-timeout, -grace.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/ringline-go/ringline"
)

// upstream is where each client is relayed to: a TCP address or a Unix
// socket path.
type upstream struct {
	tcp     netip.AddrPort
	unix    string
	timeout time.Duration
}

// proxy is one worker's handler.
type proxy struct {
	up upstream
	// failed counts clients dropped because the upstream connect failed;
	// lastLog rate-limits the log line (one worker's tasks only).
	failed  *atomic.Uint64
	lastLog time.Time
}

func (p *proxy) OnAccept(client ringline.ConnCtx) {
	var fut ringline.ConnectFuture
	var err error
	if p.up.unix != "" {
		fut, err = client.ConnectUnix(p.up.unix)
	} else {
		fut, err = client.ConnectWithTimeout(p.up.tcp, p.up.timeout)
	}
	var up ringline.ConnCtx
	if err == nil {
		up, err = fut.Await()
	}
	if err != nil {
		p.failed.Add(1)
		if time.Since(p.lastLog) > time.Second {
			p.lastLog = time.Now()
			log.Printf("proxy: upstream connect failed: %v", err)
		}
		return // closes the client
	}
	relay(client, up)
	// Returning closes both connections (after their queued sends).
}

// direction is one way of the copy.
type direction struct {
	src, dst ringline.ConnCtx
	fut      ringline.SendFuture // the send in flight to dst
	inflight bool
	done     bool // src ended cleanly; dst's write side was shut down
}

// relay copies a to b and b to a until both directions have ended, or
// either fails.
func relay(a, b ringline.ConnCtx) {
	dirs := [2]direction{{src: a, dst: b}, {src: b, dst: a}}
	var fs [2]ringline.Future
	for !dirs[0].done || !dirs[1].done {
		for i := range dirs {
			d := &dirs[i]
			switch {
			case d.done:
				fs[i] = nil
			case d.inflight:
				fs[i] = d.fut
			default:
				fs[i] = d.src.Readable()
			}
		}
		i, err := ringline.Select(fs[0], fs[1])
		if err != nil {
			return
		}
		d := &dirs[i]
		if d.inflight {
			d.inflight = false
			if _, err := d.fut.Await(); err != nil { // resolved: returns at once
				return
			}
			continue
		}
		// The source has bytes (or ended): WithData does not wait here.
		// Everything buffered goes out in one Send. To forward the kernel's
		// receive buffer itself instead of copying it into the send pool,
		// this closure is the one place to change: ForwardRecvBuf(b) in
		// place of Send(b), keeping the SendFuture for backpressure.
		var serr error
		n := d.src.WithData(func(buf []byte) ringline.ParseResult {
			d.fut, serr = d.dst.Send(buf)
			if serr != nil {
				return ringline.Consumed(0)
			}
			return ringline.Consumed(len(buf))
		})
		if serr != nil {
			return
		}
		if n == 0 {
			if d.src.Err() != nil {
				return // reset or failed: close both
			}
			// A clean EOF: pass the half-close on and keep copying the
			// other way.
			if err := d.dst.ShutdownWrite(); err != nil {
				return
			}
			d.done = true
			continue
		}
		d.inflight = true
	}
}

// parseAddr reads "host:port" or "unix:PATH".
func parseAddr(s string) (tcp string, unixPath string) {
	if p, ok := strings.CutPrefix(s, "unix:"); ok {
		return "", p
	}
	return s, ""
}

func main() {
	listen := flag.String("listen", "127.0.0.1:7879", "listen address: host:port, or unix:PATH")
	upAddr := flag.String("upstream", "", "upstream address: host:port, or unix:PATH (required)")
	workers := flag.Int("workers", 0, "worker loops (0: one per CPU)")
	backend := flag.String("backend", "auto", "backend: auto, iouring or epoll")
	timeout := flag.Duration("connect-timeout", 5*time.Second, "upstream connect timeout (TCP)")
	grace := flag.Duration("grace", 5*time.Second, "on SIGINT/SIGTERM, how long to let connections finish before exiting anyway")
	flag.Parse()
	if *upAddr == "" {
		log.Fatal("proxy: -upstream is required")
	}

	up := upstream{timeout: *timeout}
	if host, path := parseAddr(*upAddr); path != "" {
		up.unix = path
	} else {
		// Resolved once here: a task must not block on DNS.
		ta, err := net.ResolveTCPAddr("tcp", host)
		if err != nil {
			log.Fatalf("proxy: -upstream %q: %v", *upAddr, err)
		}
		up.tcp = ta.AddrPort()
	}

	cfg := ringline.Config{Workers: *workers}
	switch *backend {
	case "auto":
		cfg.Backend = ringline.Auto
	case "iouring":
		cfg.Backend = ringline.IOUring
	case "epoll":
		cfg.Backend = ringline.Epoll
	default:
		log.Fatalf("unknown -backend %q", *backend)
	}
	b := ringline.New(cfg)
	if host, path := parseAddr(*listen); path != "" {
		b = b.BindUnix(path)
	} else {
		b = b.Bind(host)
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	var failed atomic.Uint64
	rt, err := b.Launch(func(int) ringline.AsyncEventHandler { return &proxy{up: up, failed: &failed} })
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("proxy: listening on %s, upstream %s, %d workers; backend %s: %s\n",
		rt.Addr(), *upAddr, rt.Workers(), rt.Backend(), rt.Features())

	select {
	case s := <-sig:
		fmt.Printf("proxy: %v, shutting down (again to exit at once)\n", s)
		go func() {
			<-sig
			os.Exit(1)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), *grace)
		err := rt.ShutdownContext(ctx)
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "proxy: %v; exiting\n", err)
			os.Exit(1)
		}
	case <-rt.Done():
	}
	rt.Wait()
	t := ringline.Total(rt.Stats())
	fmt.Printf("proxy: stopped; accepted %d, upstream connects %d, failed %d, bytes in %d out %d\n",
		t.Accepted, t.Connected, failed.Load(), t.BytesIn, t.BytesOut)
}
