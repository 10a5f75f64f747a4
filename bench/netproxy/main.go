// Command netproxy is the Go net peer of ringline's proxy benchmark
// (BenchmarkProxy in the repository root starts it as a child process):
// the same proxy as examples/proxy written the usual Go way, one goroutine
// per direction copying through a 16 KiB buffer (ringline's default
// receive buffer size), passing a half-close on with CloseWrite and
// closing both sides when either fails. Run it with GOMAXPROCS=1, as the
// benchmark does.
//
// It prints "netproxy: listening on ADDR" once serving and exits when its
// stdin ends.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"time"
)

func main() {
	upstream := flag.String("upstream", "", "upstream host:port")
	flag.Parse()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "netproxy:", err)
		os.Exit(1)
	}
	fmt.Printf("netproxy: listening on %s\n", ln.Addr())
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	for {
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "netproxy:", err)
			os.Exit(1)
		}
		go serve(c.(*net.TCPConn), *upstream)
	}
}

func serve(client *net.TCPConn, upstream string) {
	u, err := net.DialTimeout("tcp", upstream, 5*time.Second)
	if err != nil {
		client.Close()
		return
	}
	up := u.(*net.TCPConn)
	done := make(chan struct{}, 2)
	go func() { copyHalf(up, client); done <- struct{}{} }()
	go func() { copyHalf(client, up); done <- struct{}{} }()
	<-done
	<-done
	client.Close()
	up.Close()
}

// copyHalf copies src to dst; at src's clean EOF it half-closes dst, on
// an error it closes both (which ends the other direction too).
func copyHalf(dst, src *net.TCPConn) {
	buf := make([]byte, 16<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				src.Close()
				dst.Close()
				return
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				_ = dst.CloseWrite()
				return
			}
			src.Close()
			dst.Close()
			return
		}
	}
}
