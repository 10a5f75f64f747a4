package main

import (
	"errors"
	"io"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ringline-go/ringline"
)

// hogThenProxy: the worker's first accepted connection is a hog that fills
// the send pool (its client never reads); every later one is relayed by
// the proxy example's own OnAccept/relay code.
type hogThenProxy struct {
	n      int
	p      *proxy
	full   *atomic.Bool
	stop   *atomic.Bool
	hogErr *atomic.Value
}

func (h *hogThenProxy) OnAccept(c ringline.ConnCtx) {
	h.n++
	if h.n > 1 {
		h.p.OnAccept(c)
		return
	}
	chunk := make([]byte, 4096)
	t := c.Task()
	for !h.stop.Load() {
		err := c.SendNowait(chunk)
		switch {
		case err == nil:
			continue
		case errors.Is(err, ringline.ErrSendPoolExhausted) || errors.Is(err, ringline.ErrSendQueueFull):
			h.full.Store(true)
			_ = t.Sleep(time.Millisecond)
		default:
			h.hogErr.Store(err)
			return
		}
	}
	// Stop hogging: the pool is freed when this connection goes away.
	c.Cancel()
}

// A relay whose send is refused because another connection holds the
// worker's send pool waits for room and then delivers (forwarding needs
// no pool room for the request, so there it goes at once):
// the request arrives at the upstream and its echo at the client once the
// pool has room again, with nothing more from the client. (It used to
// return Consumed(0) from the closure, which WithData takes as "need more
// bytes": the relay stalled until the client sent again.)
func TestRelayWaitsForPoolRoom(t *testing.T) {
	for _, forward := range []bool{false, true} {
		t.Run(map[bool]string{false: "copy", true: "forward"}[forward], func(t *testing.T) { testRelayWaitsForPoolRoom(t, forward) })
	}
}

func testRelayWaitsForPoolRoom(t *testing.T, forward bool) {
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); _, _ = io.Copy(c, c) }()
		}
	}()
	var full, stop atomic.Bool
	var hogErr atomic.Value
	var failed atomic.Uint64
	upAP := up.Addr().(*net.TCPAddr).AddrPort()
	cfg := ringline.Config{Workers: 1, SendPoolSlots: 16, SendSlotSize: 4096}
	rt, err := ringline.New(cfg).Bind("127.0.0.1:0").Launch(func(int) ringline.AsyncEventHandler {
		return &hogThenProxy{p: &proxy{up: upstream{tcp: upAP, timeout: 5 * time.Second}, forward: forward, failed: &failed},
			full: &full, stop: &stop, hogErr: &hogErr}
	})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { rt.Shutdown(); rt.Wait() }()

	hog, err := net.Dial("tcp", rt.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer hog.Close()
	_ = hog.(*net.TCPConn).SetReadBuffer(4096)
	deadline := time.Now().Add(10 * time.Second)
	for !full.Load() && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if !full.Load() {
		t.Fatalf("the hog never filled the pool (%v)", hogErr.Load())
	}

	c, err := net.Dial("tcp", rt.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	time.Sleep(200 * time.Millisecond) // the upstream connect
	if _, err := c.Write([]byte("ping")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond) // the proxy's Send is refused now
	stop.Store(true)                   // the pool has room again
	_ = c.SetReadDeadline(time.Now().Add(3 * time.Second))
	got := make([]byte, 4)
	n, err := io.ReadFull(c, got)
	t.Logf("after the pool freed: read %d bytes %q, err %v; pool-exhausted refusals %d",
		n, got[:n], err, ringline.Total(rt.Stats()).SendPoolExhausted)
	if err != nil || string(got) != "ping" {
		t.Fatalf("no echo of the request 3 s after the pool had room again: %q, %v", got[:n], err)
	}
	// Forwarding needs no pool room for these bytes; a copy does, and
	// was refused.
	if !forward && ringline.Total(rt.Stats()).SendWaits == 0 {
		t.Fatalf("the relay's send was never refused: the test did not fill the pool")
	}
}
