package server

import (
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ringline-go/ringline"
	"github.com/ringline-go/ringline/examples/cache/resp"
	"github.com/ringline-go/ringline/examples/cache/store"
)

// BenchmarkEngine is the per-command cost of the cache's own code: parse
// a 16-command pipeline straight from a buffer and execute it, with no
// network. Profile with -cpuprofile.
func BenchmarkEngine(b *testing.B) {
	val := strings.Repeat("x", 64)
	for _, test := range []string{"SET", "GET", "INCR"} {
		b.Run(test, func(b *testing.B) {
			eng := NewEngine(store.New(store.Options{}), resp.DefaultMaxBulk)
			var batch []byte
			for i := 0; i < 16; i++ {
				k := fmt.Sprintf("key:%012d", i*7919%100000)
				switch test {
				case "SET":
					batch = append(batch, cmd("SET", k, val)...)
				case "GET":
					eng.Store.Set([]byte(k), []byte(val), 0, 1, 0)
					batch = append(batch, cmd("GET", k)...)
				case "INCR":
					batch = append(batch, cmd("INCR", k)...)
				}
			}
			p := resp.NewParser(resp.DefaultMaxBulk)
			var cl Client
			var r resp.Reply
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i += 16 {
				now := store.Now()
				for off := 0; off < len(batch); {
					args, n, _, _ := p.Next(batch[off:])
					eng.Exec(&cl, args, &r, now)
					off += n
				}
				r.Reset()
			}
		})
	}
}

// BenchmarkServer measures whole requests through the server over
// loopback: 8 connections, each sending pipelines of P requests (SET or
// GET of 64-byte values over 100,000 keys) and reading the replies. The
// client shares the process, so this is for profiling the server's path
// (go test -bench Server -cpuprofile), not for figures: those come from
// make bench-cache.
func BenchmarkServer(b *testing.B) {
	for _, be := range backends() {
		for _, test := range []string{"SET", "GET"} {
			for _, p := range []int{1, 16} {
				b.Run(fmt.Sprintf("%s/%s/P%d", be, test, p), func(b *testing.B) {
					benchServer(b, be, test, p)
				})
			}
		}
	}
}

func benchServer(b *testing.B, be ringline.Backend, test string, p int) {
	srv := start(b, Options{Backend: be, Workers: 1})
	val := strings.Repeat("x", 64)
	const conns, keys = 8, 100000
	st := srv.Engine().Store
	for i := 0; i < keys; i++ {
		st.Set([]byte(fmt.Sprintf("key:%012d", i)), []byte(val), 0, 1, 0)
	}
	// Each connection cycles through a few prebuilt pipelines.
	type plan struct{ req, want []byte }
	plans := make([][]plan, conns)
	for c := range plans {
		for j := 0; j < 64; j++ {
			var pl plan
			for k := 0; k < p; k++ {
				key := fmt.Sprintf("key:%012d", (c*7919+j*104729+k*31)%keys)
				if test == "SET" {
					pl.req = append(pl.req, cmd("SET", key, val)...)
					pl.want = append(pl.want, "+OK\r\n"...)
				} else {
					pl.req = append(pl.req, cmd("GET", key)...)
					pl.want = append(pl.want, bulk(val)...)
				}
			}
			plans[c] = append(plans[c], pl)
		}
	}
	cs := make([]net.Conn, conns)
	for i := range cs {
		c, err := net.Dial("tcp", srv.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(10 * time.Minute))
		cs[i] = c
	}
	rounds := (b.N + conns*p - 1) / (conns * p)
	b.ReportAllocs()
	b.ResetTimer()
	var wg sync.WaitGroup
	errc := make(chan error, conns)
	for i, c := range cs {
		wg.Add(1)
		go func(c net.Conn, pls []plan) {
			defer wg.Done()
			got := make([]byte, len(pls[0].want))
			for r := 0; r < rounds; r++ {
				pl := pls[r%len(pls)]
				if _, err := c.Write(pl.req); err != nil {
					errc <- err
					return
				}
				if _, err := io.ReadFull(c, got); err != nil {
					errc <- err
					return
				}
			}
			errc <- nil
		}(c, plans[i])
	}
	wg.Wait()
	b.StopTimer()
	for range cs {
		if err := <-errc; err != nil {
			b.Fatal(err)
		}
	}
}
