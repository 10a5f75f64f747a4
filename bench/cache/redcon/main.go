// Command redcon is the cache example's benchmark peer: the same store and
// command engine as examples/cache, served by github.com/tidwall/redcon
// (a goroutine per connection on Go's net package) instead of ringline.
// Only the network layer differs, so the two compare what ringline adds.
package main

import (
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"syscall"

	"github.com/ringline-go/ringline/examples/cache/resp"
	"github.com/ringline-go/ringline/examples/cache/server"
	"github.com/ringline-go/ringline/examples/cache/store"
	"github.com/tidwall/redcon"
)

type connState struct {
	cl   server.Client
	r    resp.Reply
	cmds []redcon.Command
}

func main() {
	addr := flag.String("addr", "127.0.0.1:7380", "listen address")
	maxMemory := flag.Int64("maxmemory", 0, "memory bound in bytes (0: unbounded)")
	flag.Parse()

	eng := server.NewEngine(store.New(store.Options{MaxMemory: *maxMemory}), resp.DefaultMaxBulk)
	exec := func(st *connState, cmds []redcon.Command) {
		now := store.Now()
		for _, c := range cmds {
			eng.Exec(&st.cl, c.Args, &st.r, now)
			if st.cl.Quit || st.cl.Drop {
				break
			}
		}
		eng.Processed(len(cmds))
		eng.Tick(now)
	}
	srv := redcon.NewServer(*addr,
		func(conn redcon.Conn, cmd redcon.Command) {
			st := conn.Context().(*connState)
			// The rest of the pipeline read with this command runs as one
			// batch, with one clock read, as in the ringline server.
			st.cmds = append(append(st.cmds[:0], cmd), conn.ReadPipeline()...)
			exec(st, st.cmds)
			clear(st.cmds)
			prev := 0
			for _, ref := range st.r.Refs {
				conn.WriteRaw(st.r.B[prev:ref.Off])
				conn.WriteRaw(ref.Val)
				prev = ref.Off
			}
			conn.WriteRaw(st.r.B[prev:])
			st.r.Reset()
			if st.cl.Quit || st.cl.Drop {
				conn.Close()
			}
		},
		func(conn redcon.Conn) bool {
			conn.SetContext(&connState{})
			eng.Opened()
			return true
		},
		func(conn redcon.Conn, err error) { eng.Closed() },
	)
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenServeAndSignal(nil) }()
	fmt.Printf("cache-redcon: listening on %s\n", *addr)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	select {
	case s := <-sig:
		fmt.Printf("cache-redcon: %v, shutting down\n", s)
		srv.Close()
	case err := <-errc:
		log.Fatal(err)
	}
}
