// Command consumer is the program of the consumer-build test
// (.ci/consumer_build.sh): a service that depends on ringline the way any
// other module does, built outside ringline's repository. It prints what
// Probe reports, launches an echo server on 127.0.0.1:0 on the backend
// -backend names, makes one round trip over loopback, and prints
// "backend: NAME" and "echo: ok". Any failure exits non-zero.
package main

import (
	"bytes"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"time"

	"github.com/ringline-go/ringline"
)

// echo sends back whatever arrives until the peer closes.
type echo struct{}

func (echo) OnAccept(c ringline.ConnCtx) {
	for c.WithData(func(b []byte) ringline.ParseResult {
		if c.SendNowait(b) != nil {
			c.Close()
		}
		return ringline.Consumed(len(b))
	}) > 0 {
	}
}

func main() {
	backend := flag.String("backend", "auto", "auto, iouring or epoll")
	flag.Parse()
	cfg := ringline.Config{Workers: 1}
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
	fmt.Println(ringline.Probe())

	rt, err := ringline.New(cfg).Bind("127.0.0.1:0").Launch(func(int) ringline.AsyncEventHandler { return echo{} })
	if err != nil {
		log.Fatal(err)
	}
	defer func() {
		rt.Shutdown()
		rt.Wait()
	}()
	c, err := net.DialTimeout("tcp", rt.Addr().String(), 10*time.Second)
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte("hello from a module that requires ringline")
	if _, err := c.Write(msg); err != nil {
		log.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		log.Fatal(err)
	}
	if !bytes.Equal(got, msg) {
		log.Fatalf("echo: got %q, want %q", got, msg)
	}
	fmt.Printf("backend: %s\n", rt.Backend())
	fmt.Println("echo: ok")
}
