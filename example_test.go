package ringline_test

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/ringline-go/ringline"
)

// handlerFunc turns a task body into an AsyncEventHandler.
type handlerFunc func(c ringline.ConnCtx)

func (f handlerFunc) OnAccept(c ringline.ConnCtx) { f(c) }

// launch starts a one-worker runtime on a free loopback port running task
// for every connection.
func launch(cfg ringline.Config, task func(c ringline.ConnCtx)) *ringline.Runtime {
	cfg.Workers = 1
	rt, err := ringline.New(cfg).Bind("127.0.0.1:0").
		Launch(func(workerID int) ringline.AsyncEventHandler { return handlerFunc(task) })
	if err != nil {
		log.Fatal(err)
	}
	return rt
}

// dial connects to rt as a client would, with a deadline so that a broken
// server fails the example instead of hanging it.
func dial(rt *ringline.Runtime) net.Conn {
	c, err := net.DialTimeout("tcp", rt.Addr().String(), 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(30 * time.Second))
	return c
}

// stop shuts the runtime down and waits until its workers have released
// everything.
func stop(rt *ringline.Runtime) {
	rt.Shutdown()
	rt.Wait()
}

// echo is the connection's task: it sends back whatever arrives, awaiting
// each send, until the peer closes.
type echo struct{}

func (echo) OnAccept(c ringline.ConnCtx) {
	for {
		var fut ringline.SendFuture
		var err error
		n := c.WithData(func(b []byte) ringline.ParseResult {
			// b may be the kernel's own receive buffer: Send copies it
			// into the send pool before the closure returns.
			fut, err = c.Send(b)
			if err != nil {
				// Close makes WithData return 0 rather than wait for
				// more bytes.
				c.Close()
				return ringline.Consumed(0)
			}
			return ringline.Consumed(len(b))
		})
		if n == 0 || err != nil {
			return // the peer closed, or the connection failed
		}
		if _, err := fut.Await(); err != nil {
			return
		}
	}
}

// An echo server: one handler per worker, one task per connection.
func Example() {
	rt, err := ringline.New(ringline.Config{Workers: 1}).
		Bind("127.0.0.1:0").
		Launch(func(workerID int) ringline.AsyncEventHandler { return echo{} })
	if err != nil {
		log.Fatal(err)
	}
	defer stop(rt)

	c := dial(rt)
	defer c.Close()
	fmt.Fprint(c, "hello, ringline")
	buf := make([]byte, len("hello, ringline"))
	if _, err := io.ReadFull(c, buf); err != nil {
		log.Fatal(err)
	}
	fmt.Println(string(buf))
	// Output: hello, ringline
}

// A parse loop over a line protocol. The closure sees everything received
// and not yet consumed; with no complete line it returns NeedMore, and
// WithData runs it again once more bytes arrive, however the peer split
// them.
func ExampleConnCtx_WithData() {
	rt := launch(ringline.Config{}, func(c ringline.ConnCtx) {
		for {
			n := c.WithData(func(b []byte) ringline.ParseResult {
				i := bytes.IndexByte(b, '\n')
				if i < 0 {
					return ringline.NeedMore()
				}
				reply := "you said " + strings.ToUpper(string(b[:i])) + "\n"
				if err := c.SendNowait([]byte(reply)); err != nil {
					c.Close()
				}
				return ringline.Consumed(i + 1)
			})
			if n == 0 {
				return
			}
		}
	})
	defer stop(rt)

	c := dial(rt)
	defer c.Close()
	r := bufio.NewReader(c)
	// Two lines in three writes, split mid-line; each write waits for
	// nothing, so the server sees them in whatever pieces TCP delivers.
	for _, part := range []string{"hel", "lo\nwor", "ld\n"} {
		fmt.Fprint(c, part)
	}
	for range 2 {
		line, err := r.ReadString('\n')
		if err != nil {
			log.Fatal(err)
		}
		fmt.Print(line)
	}
	// Output:
	// you said HELLO
	// you said WORLD
}

// Length-prefixed frames: NeedAtLeast tells WithData how many bytes must be
// buffered before the closure is worth running again.
func ExampleNeedAtLeast() {
	rt := launch(ringline.Config{}, func(c ringline.ConnCtx) {
		for {
			n := c.WithData(func(b []byte) ringline.ParseResult {
				if len(b) < 2 {
					return ringline.NeedAtLeast(2)
				}
				size := 2 + int(binary.BigEndian.Uint16(b))
				if len(b) < size {
					return ringline.NeedAtLeast(size)
				}
				if err := c.SendNowait([]byte(fmt.Sprintf("frame of %d bytes\n", size-2))); err != nil {
					c.Close()
				}
				return ringline.Consumed(size)
			})
			if n == 0 {
				return
			}
		}
	})
	defer stop(rt)

	c := dial(rt)
	defer c.Close()
	var msg []byte
	for _, payload := range []string{"ping", "a longer payload"} {
		msg = binary.BigEndian.AppendUint16(msg, uint16(len(payload)))
		msg = append(msg, payload...)
	}
	c.Write(msg[:3]) // the first frame arrives in two pieces
	c.Write(msg[3:])
	r := bufio.NewReader(c)
	for range 2 {
		line, err := r.ReadString('\n')
		if err != nil {
			log.Fatal(err)
		}
		fmt.Print(line)
	}
	// Output:
	// frame of 4 bytes
	// frame of 16 bytes
}

// Send with backpressure: a task that streams a large response awaits each
// chunk's SendFuture, so it never queues more than the peer takes. A slow
// reader slows the task down instead of filling the send pool.
// SendNowait, which returns no future, suits replies that are small next to
// the pool; when the pool is full either call returns
// ErrSendPoolExhausted and queues nothing.
func ExampleConnCtx_Send() {
	const total = 4 << 20
	rt := launch(ringline.Config{}, func(c ringline.ConnCtx) {
		chunk := bytes.Repeat([]byte{'x'}, 64<<10)
		for sent := 0; sent < total; sent += len(chunk) {
			fut, err := c.Send(chunk)
			if err != nil {
				// ErrSendPoolExhausted: other connections filled the
				// worker's pool (this task never has more than one
				// chunk queued). Here it gives up; a service might
				// await an earlier send and retry.
				return
			}
			if _, err := fut.Await(); err != nil {
				return // the peer went away
			}
		}
		c.Close() // after the queued bytes are sent
	})
	defer stop(rt)

	c := dial(rt)
	defer c.Close()
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("received", n, "bytes")
	// Output: received 4194304 bytes
}

// Choosing a backend. Probe says what this build and kernel offer, which
// backend Auto would pick and, when that is epoll, why (p.String() renders
// it all for a log line); a runtime reports what it runs on. IOUring
// refuses to fall back: where io_uring is unusable, Launch fails with an
// error wrapping ErrIOUringUnavailable and the kernel's errno.
func ExampleProbe() {
	p := ringline.Probe()

	rt := launch(ringline.Config{Backend: ringline.Auto}, echo{}.OnAccept)
	fmt.Println("Auto runs where Probe said:", rt.Backend() == p.Auto)
	stop(rt)

	rt, err := ringline.New(ringline.Config{Workers: 1, Backend: ringline.IOUring}).
		Bind("127.0.0.1:0").Launch(func(int) ringline.AsyncEventHandler { return echo{} })
	if err == nil {
		stop(rt)
	}
	agrees := (err == nil && p.AutoReason == nil) ||
		(errors.Is(err, ringline.ErrIOUringUnavailable) && p.AutoReason != nil)
	fmt.Println("IOUring launches exactly where Probe found io_uring usable:", agrees)

	rt = launch(ringline.Config{Backend: ringline.Epoll}, echo{}.OnAccept)
	fmt.Println("forced:", rt.Backend())
	stop(rt)
	// Output:
	// Auto runs where Probe said: true
	// IOUring launches exactly where Probe found io_uring usable: true
	// forced: epoll
}

// A cache: each GET is answered with a small header built per request,
// copied into the send pool, and the cached value itself, sent from where
// it lives without a copy (on io_uring, zero-copy when the reply is large:
// Config.SendZCThreshold). The value must not change until its release
// runs: here values are immutable, so release only counts; a cache that
// evicts or overwrites values would keep a reference count and free the
// value when the last release comes.
func ExampleConnCtx_SendParts() {
	cache := map[string][]byte{
		"small": []byte("a small value"),
		"large": bytes.Repeat([]byte("0123456789abcdef"), 64<<10), // 1 MiB
	}
	var released atomic.Int64
	release := func() { released.Add(1) } // one func value, reused: no allocation per reply

	rt := launch(ringline.Config{}, func(c ringline.ConnCtx) {
		var header []byte
		for {
			n := c.WithData(func(b []byte) ringline.ParseResult {
				i := bytes.IndexByte(b, '\n')
				if i < 0 {
					return ringline.NeedMore()
				}
				key := strings.TrimPrefix(string(b[:i]), "GET ")
				value := cache[key]
				header = fmt.Appendf(header[:0], "VALUE %s %d\n", key, len(value))
				// The builder is the connection's own, reused: valid until
				// Submit. On error nothing is sent and release has run.
				err := c.SendParts().Copy(header).Ref(value, release).Submit()
				if err != nil {
					c.Close()
				}
				return ringline.Consumed(i + 1)
			})
			if n == 0 {
				return
			}
		}
	})

	c := dial(rt)
	fmt.Fprint(c, "GET small\nGET large\n")
	r := bufio.NewReader(c)
	for range 2 {
		var key string
		var size int
		if _, err := fmt.Fscanf(r, "VALUE %s %d\n", &key, &size); err != nil {
			log.Fatal(err)
		}
		value := make([]byte, size)
		if _, err := io.ReadFull(r, value); err != nil {
			log.Fatal(err)
		}
		fmt.Println(key, size, bytes.Equal(value, cache[key]))
	}
	c.Close()
	stop(rt) // every release has run by the time the runtime has stopped
	fmt.Println("released:", released.Load())
	// Output:
	// small 13 true
	// large 1048576 true
	// released: 2
}

// ForwardRecvBuf sends bytes from the buffer the kernel received them
// into, without copying them: an echo here, a proxy's relay in
// examples/proxy. The buffer goes back to the receive ring only once the
// kernel has sent it, so the task waits for its sends (Send(nil) resolves
// when everything queued before it has gone) before reading more: what a
// connection holds stays bounded, and a peer that stops reading throttles
// only its own connection. Bytes that had to be accumulated are copied
// instead (WorkerStats.ForwardCopies).
func ExampleConnCtx_ForwardRecvBuf() {
	rt := launch(ringline.Config{}, func(c ringline.ConnCtx) {
		for {
			var fut ringline.SendFuture
			var err error
			n := c.WithData(func(b []byte) ringline.ParseResult {
				if err = c.ForwardRecvBuf(b); err == nil {
					fut, err = c.Send(nil)
				}
				if err != nil {
					c.Close()
					return ringline.Consumed(0)
				}
				return ringline.Consumed(len(b)) // forwarding does not consume
			})
			if n == 0 || err != nil {
				return
			}
			if _, err := fut.Await(); err != nil {
				return
			}
		}
	})

	c := dial(rt)
	fmt.Fprint(c, "hello, forwarded\n")
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		log.Fatal(err)
	}
	fmt.Print(line)
	c.Close()
	stop(rt)
	fmt.Println("sent from the receive buffer:", ringline.Total(rt.Stats()).ForwardedBuffers > 0)
	// Output:
	// hello, forwarded
	// sent from the receive buffer: true
}

// SendWait waits for room in the send pool instead of failing: a task that
// streams to a slow reader through a small pool suspends until slots free
// up, while other connections' waiters are served in turn, first come,
// first served. It returns once the bytes are queued; an error means the
// connection closed or failed while it waited (nothing was queued).
func ExampleConnCtx_SendWait() {
	const total = 1 << 20
	cfg := ringline.Config{SendPoolSlots: 4, SendSlotSize: 16 << 10} // a 64 KiB pool
	rt := launch(cfg, func(c ringline.ConnCtx) {
		chunk := bytes.Repeat([]byte{'x'}, 16<<10)
		for sent := 0; sent < total; sent += len(chunk) {
			// SendNowait would fail with ErrSendPoolExhausted here, as
			// soon as four chunks are queued.
			if err := c.SendWait(chunk); err != nil {
				return
			}
		}
		c.Close()
	})
	defer stop(rt)

	c := dial(rt)
	defer c.Close()
	n, err := io.Copy(io.Discard, c)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("received", n, "bytes")
	// Output: received 1048576 bytes
}

// A task that dials out: it connects to an echo server (here a ringline
// runtime in the same program) with a timeout, sends a line and reads the
// echo. The connection belongs to the task that called Connect: only it
// receives on it, and it closes when the task returns. The task runs on a
// worker of a client-only runtime (no Bind), posted there from main;
// results travel back over a buffered channel, which a task may send on
// since the send never waits.
func ExampleTaskCtx_Connect() {
	srv := launch(ringline.Config{}, echo{}.OnAccept)
	defer stop(srv)
	addr := srv.Addr().(*net.TCPAddr).AddrPort()

	client, err := ringline.New(ringline.Config{Workers: 1}).
		Launch(func(int) ringline.AsyncEventHandler { return echo{} })
	if err != nil {
		log.Fatal(err)
	}
	defer stop(client)

	result := make(chan string, 1)
	err = client.Post(0, func(t ringline.TaskCtx) {
		fut, err := t.ConnectWithTimeout(addr, 5*time.Second)
		if err != nil {
			result <- err.Error()
			return
		}
		c, err := fut.Await() // the task waits; the worker serves others meanwhile
		if err != nil {
			result <- err.Error() // errors.Is(err, syscall.ECONNREFUSED), a timeout, ...
			return
		}
		if err := c.SendNowait([]byte("hello over an outbound connection\n")); err != nil {
			result <- err.Error()
			return
		}
		var line string
		c.WithData(func(b []byte) ringline.ParseResult {
			i := bytes.IndexByte(b, '\n')
			if i < 0 {
				return ringline.NeedMore()
			}
			line = string(b[:i])
			return ringline.Consumed(i + 1)
		})
		result <- line
		// Returning closes c.
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(<-result)
	// Output: hello over an outbound connection
}

// loadClient is a client-only handler: it has no connections to accept,
// and each worker's OnStart opens its own.
type loadClient struct {
	target netip.AddrPort
	done   chan<- string
}

func (loadClient) OnAccept(ringline.ConnCtx) {} // never called: no listener

// OnStart is the worker's start task. It may connect itself, or Spawn
// tasks that do and return at once; it asks the runtime to shut down
// once its work is done.
func (l loadClient) OnStart(t ringline.TaskCtx) {
	var hs []ringline.JoinHandle
	for i := 0; i < 3; i++ {
		h, err := t.Spawn(func(t ringline.TaskCtx) {
			fut, err := t.Connect(l.target)
			if err != nil {
				return
			}
			c, err := fut.Await()
			if err != nil {
				return
			}
			f, err := c.Send([]byte{byte('a' + i)})
			if err != nil {
				return
			}
			f.Await()
			c.WithData(func(b []byte) ringline.ParseResult { return ringline.Consumed(len(b)) })
		})
		if err == nil {
			hs = append(hs, h)
		}
	}
	for _, h := range hs {
		h.Join()
	}
	l.done <- fmt.Sprintf("worker %d: %d connections echoed", t.WorkerID(), len(hs))
	t.RequestShutdown() // the same as Runtime.Shutdown
}

// A client-only runtime: launched without Bind, it listens nowhere; a
// handler that implements Starter gets a start task on every worker,
// which is how a load generator or a pure client does its work. (A
// runtime with no listener and no start task just waits for Post.)
func ExampleStarter() {
	srv := launch(ringline.Config{}, echo{}.OnAccept)
	defer stop(srv)

	done := make(chan string, 1)
	rt, err := ringline.New(ringline.Config{Workers: 1}).
		Launch(func(int) ringline.AsyncEventHandler {
			return loadClient{target: srv.Addr().(*net.TCPAddr).AddrPort(), done: done}
		})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(rt.Addr() == nil)
	rt.Wait() // until OnStart asks for the shutdown
	fmt.Println(<-done)
	// Output:
	// true
	// worker 0: 3 connections echoed
}
