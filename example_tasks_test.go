package ringline_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringline-go/ringline"
)

// An idle timeout: the read deadline is renewed after every parse, so a
// connection that sends nothing for the timeout is closed (here with a
// goodbye), while a busy one never is. Renewing costs a store, not a timer
// operation.
func ExampleConnCtx_SetReadDeadline() {
	const idle = 100 * time.Millisecond
	rt := launch(ringline.Config{}, func(c ringline.ConnCtx) {
		for {
			c.SetReadDeadline(time.Now().Add(idle))
			n := c.WithData(func(b []byte) ringline.ParseResult {
				c.SendNowait(b)
				return ringline.Consumed(len(b))
			})
			if n == 0 {
				if errors.Is(c.Err(), os.ErrDeadlineExceeded) {
					c.SendNowait([]byte("idle, bye\n"))
				}
				return
			}
		}
	})
	defer stop(rt)

	conn := dial(rt)
	defer conn.Close()
	r := bufio.NewReader(conn)
	fmt.Fprint(conn, "hello\n")
	line, _ := r.ReadString('\n')
	fmt.Print(line)
	line, _ = r.ReadString('\n') // we stay silent: the server gives up
	fmt.Print(line)
	_, err := r.ReadByte()
	fmt.Println(err == io.EOF)
	// Output:
	// hello
	// idle, bye
	// true
}

// Timers and spawned tasks: a connection's task starts a ticker task that
// sends a line every 20 ms, waits for the client's "stop" or a timeout,
// whichever comes first, then aborts the ticker.
func ExampleSelect() {
	rt := launch(ringline.Config{}, func(c ringline.ConnCtx) {
		tc := c.Task()
		ticker, _ := tc.Spawn(func(tc ringline.TaskCtx) {
			for i := 1; ; i++ {
				tc.Sleep(20 * time.Millisecond)
				c.SendNowait(fmt.Appendf(nil, "tick %d\n", i))
			}
		})
		timeout := tc.After(time.Second)
		which, _ := ringline.Select(c.Readable(), timeout)
		timeout.Stop()
		ticker.Abort()
		fmt.Println("ticker:", ticker.Join())
		if which == 0 {
			c.SendNowait([]byte("stopped by client\n"))
		}
	})
	defer stop(rt)

	conn := dial(rt)
	defer conn.Close()
	r := bufio.NewReader(conn)
	for i := 0; i < 3; i++ {
		line, _ := r.ReadString('\n')
		fmt.Print(line)
	}
	fmt.Fprint(conn, "stop\n")
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			break
		}
		if line == "stopped by client\n" {
			fmt.Print(line)
		}
	}
	// Output:
	// tick 1
	// tick 2
	// tick 3
	// ticker: ringline: task aborted
	// stopped by client
}

// State shared across workers, the supported way: each worker keeps its own
// part (here a counter, touched only by its tasks), and other goroutines
// (or other workers' tasks) reach it with Runtime.Post, which runs a
// function as a task on that worker. No lock is held in a task.
func ExampleRuntime_Post() {
	const workers = 2
	rt, err := ringline.New(ringline.Config{Workers: workers}).
		Launch(func(int) ringline.AsyncEventHandler { return handlerFunc(func(ringline.ConnCtx) {}) })
	if err != nil {
		log.Fatal(err)
	}
	defer stop(rt)

	counts := make([]int, workers) // counts[i] belongs to worker i
	var wg sync.WaitGroup
	for i := 0; i < 100; i++ {
		wg.Add(1)
		w := i % workers
		if err := rt.Post(w, func(ringline.TaskCtx) { counts[w]++; wg.Done() }); err != nil {
			log.Fatal(err)
		}
	}
	wg.Wait()
	// Reading the parts also goes through their workers.
	total := make(chan int, workers)
	for w := 0; w < workers; w++ {
		rt.Post(w, func(ringline.TaskCtx) { total <- counts[w] })
	}
	fmt.Println(<-total + <-total)
	// Output: 100
}

// A mailbox carries values from ordinary goroutines to a task: Put never
// blocks (a full mailbox says ErrMailboxFull), the task's Recv suspends
// until a value arrives. Here a producer goroutine feeds lines that a
// connection's task writes to its client.
func ExampleMailbox() {
	// The mailbox needs the runtime, the handler needs the mailbox: an
	// atomic pointer hands it over (a task must not block on a channel).
	var box atomic.Pointer[ringline.Mailbox[string]]
	rt := launch(ringline.Config{}, func(c ringline.ConnCtx) {
		mb := box.Load()
		for {
			line, err := mb.Recv()
			if err != nil { // closed
				return
			}
			c.SendNowait([]byte(line))
		}
	})
	defer stop(rt)
	mb, _ := ringline.NewMailbox[string](rt, 0, 16)
	box.Store(mb)

	conn := dial(rt)
	defer conn.Close()
	go func() {
		for _, s := range []string{"one\n", "two\n", "three\n"} {
			for errors.Is(mb.Put(s), ringline.ErrMailboxFull) { // full: try again later
				time.Sleep(time.Millisecond)
			}
		}
		mb.Close()
	}()
	b, _ := io.ReadAll(conn)
	fmt.Print(string(b))
	// Output:
	// one
	// two
	// three
}
