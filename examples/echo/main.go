// Command echo is a TCP echo server on ringline. Each connection's task
// reads whatever arrived and sends it back, awaiting its sends: when a
// client stops reading, the server stops consuming its input (TCP then
// throttles the client) and no byte is lost. When a client half-closes,
// everything it sent is still echoed before the server closes. With
// -idle-timeout, a connection silent for that long is closed.
//
// -mode chooses how the bytes go back:
//
//	copy     Send: one copy into the send pool (the default)
//	forward  ForwardRecvBuf: the kernel's receive buffer itself is sent
//	         and goes back to the ring when the send completes (no copy);
//	         bytes that had to be accumulated are copied
//	parts    SendParts: the first 16 bytes copied, the rest referenced
//	         from a buffer of the task's own (a Ref, released when the
//	         kernel is done with it) — the scatter-gather API, shown
//
// With -tls-cert and -tls-key (PEM files) it serves TLS instead, and with
// -tls-self-signed it makes a throwaway ECDSA P-256 certificate for
// localhost in memory (try: openssl s_client -connect 127.0.0.1:7878). The
// handler is the same: ringline hands it plaintext.
package main

import (
	"flag"
	"fmt"
	"log"
	"time"

	"github.com/ringline-go/ringline"
	"github.com/ringline-go/ringline/examples/internal/stop"
	"github.com/ringline-go/ringline/examples/internal/tlsflags"
)

// The handlers, one per -mode. Each connection's task runs one; idle,
// when set, closes a connection that sends nothing for that long (a read
// deadline renewed before every read). They are separate types, not one
// with a switch, so that each task's stack holds only what its mode needs:
// a task starts on a 2 KiB goroutine stack, and one that outgrows it keeps
// 4 KiB for the rest of its life, which at 10,000 idle connections is
// 20 MB.

// echoCopy sends the bytes back with Send: one copy into the send pool.
type echoCopy struct{ idle time.Duration }

func (e echoCopy) OnAccept(c ringline.ConnCtx) {
	for {
		if e.idle > 0 {
			c.SetReadDeadline(time.Now().Add(e.idle))
		}
		var fut ringline.SendFuture
		var err error
		n := c.WithData(func(b []byte) ringline.ParseResult {
			if fut, err = c.Send(b); err != nil {
				c.Close() // WithData then returns 0 instead of waiting for more
				return ringline.Consumed(0)
			}
			return ringline.Consumed(len(b))
		})
		if n == 0 || err != nil {
			return
		}
		if _, err := fut.Await(); err != nil {
			return
		}
	}
}

// echoForward sends the kernel's receive buffer itself (ForwardRecvBuf);
// bytes that had to be accumulated are copied.
type echoForward struct{ idle time.Duration }

func (e echoForward) OnAccept(c ringline.ConnCtx) {
	for {
		if e.idle > 0 {
			c.SetReadDeadline(time.Now().Add(e.idle))
		}
		var fut ringline.SendFuture
		var err error
		n := c.WithData(func(b []byte) ringline.ParseResult {
			if err = c.ForwardRecvBuf(b); err == nil {
				fut, err = c.Send(nil) // resolves once everything queued is sent
			}
			if err != nil {
				c.Close()
				return ringline.Consumed(0)
			}
			return ringline.Consumed(len(b))
		})
		if n == 0 || err != nil {
			return
		}
		if _, err := fut.Await(); err != nil {
			return
		}
	}
}

// echoParts sends with SendParts: the first 16 bytes copied, the rest
// referenced from a buffer of the task's own (a Ref, released when the
// kernel is done with it), reused once released (each turn awaits its
// send, so one buffer is out at a time; release only counts how many are
// out).
type echoParts struct{ idle time.Duration }

func (e echoParts) OnAccept(c ringline.ConnCtx) {
	var own []byte
	out := 0
	release := func() { out-- }
	for {
		if e.idle > 0 {
			c.SetReadDeadline(time.Now().Add(e.idle))
		}
		var fut ringline.SendFuture
		var err error
		n := c.WithData(func(b []byte) ringline.ParseResult {
			head := min(len(b), 16)
			if out > 0 {
				own = nil // still read by the kernel: never reuse it
			}
			own = append(own[:0], b[head:]...)
			out++
			if fut, err = c.SendParts().Copy(b[:head]).Ref(own, release).Send(); err != nil {
				c.Close()
				return ringline.Consumed(0)
			}
			return ringline.Consumed(len(b))
		})
		if n == 0 || err != nil {
			return
		}
		if _, err := fut.Await(); err != nil {
			return
		}
	}
}

func main() {
	addr := flag.String("addr", "127.0.0.1:7878", "listen address")
	workers := flag.Int("workers", 0, "worker loops (0: one per CPU)")
	backend := flag.String("backend", "auto", "backend: auto, iouring or epoll")
	batchWait := flag.Duration("batch-wait", 0, "io_uring batch wait (Config.BatchWait), e.g. 50us; 0 is off")
	probe := flag.Bool("probe", false, "print what the kernel offers and which backend auto picks, then exit")
	mode := flag.String("mode", "copy", "how bytes are sent back: copy (Send), forward (ForwardRecvBuf) or parts (SendParts)")
	grace := flag.Duration("grace", 5*time.Second, "on SIGINT/SIGTERM, how long to wait for connections to close before exiting anyway")
	idle := flag.Duration("idle-timeout", 0, "close a connection that sends nothing for this long (0: never)")
	tlsFlags := tlsflags.RegisterServer(flag.CommandLine, "echo")
	flag.Parse()
	if *probe {
		fmt.Println(ringline.Probe())
		return
	}

	var handler ringline.AsyncEventHandler
	switch *mode {
	case "copy":
		handler = echoCopy{idle: *idle}
	case "forward":
		handler = echoForward{idle: *idle}
	case "parts":
		handler = echoParts{idle: *idle}
	default:
		log.Fatalf("unknown -mode %q", *mode)
	}
	cfg := ringline.Config{Workers: *workers, BatchWait: *batchWait}
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
	tlsCfg, note, err := tlsFlags.Config()
	if err != nil {
		log.Fatal(err)
	}
	cfg.TLS = tlsCfg
	if note != "" {
		fmt.Println("echo: " + note)
	}
	// Signals are caught from before the listening line is printed: a
	// supervisor that signals as soon as it sees the line gets a clean
	// shutdown, not the default action.
	sig := stop.Signals()
	rt, err := ringline.New(cfg).Bind(*addr).Launch(func(int) ringline.AsyncEventHandler { return handler })
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("echo: listening on %s with %d workers; backend %s: %s; mode %s\n", rt.Addr(), rt.Workers(), rt.Backend(), rt.Features(), *mode)

	stop.Wait("echo", sig, rt, *grace)
	t := ringline.Total(rt.Stats())
	fmt.Printf("echo: stopped; accepted %d, closed %d, bytes in %d out %d, copied into the send pool %d, buffers forwarded %d\n",
		t.Accepted, t.Closed, t.BytesIn, t.BytesOut, t.BytesCopied, t.ForwardedBuffers)
	if cfg.TLS != nil {
		fmt.Printf("echo: TLS handshakes %d, failed %d (timed out %d)\n", t.TLSHandshakes, t.TLSHandshakeErrors, t.TLSHandshakeTimeouts)
	}
}
