// Package stop is how the example programs end: on SIGINT or SIGTERM they
// shut the runtime down, give connections a grace period to finish, and
// exit anyway past it (a handler that never yields cannot be stopped) or
// at a second signal.
package stop

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/ringline-go/ringline"
)

// Signals starts catching SIGINT and SIGTERM. Call it before the program
// says it is listening: a supervisor that signals as soon as it sees that
// line then gets a clean shutdown, not the default action.
func Signals() <-chan os.Signal {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	return sig
}

// Wait returns once rt has stopped: by itself, or after a signal on sig,
// which shuts it down within grace. Past grace, or at a second signal, it
// exits the process with status 1. name prefixes what it prints.
func Wait(name string, sig <-chan os.Signal, rt *ringline.Runtime, grace time.Duration) {
	select {
	case s := <-sig:
		fmt.Printf("%s: %v, shutting down (again to exit at once)\n", name, s)
		go func() {
			<-sig
			os.Exit(1)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), grace)
		err := rt.ShutdownContext(ctx)
		cancel()
		if err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v; exiting\n", name, err)
			os.Exit(1)
		}
	case <-rt.Done():
	}
	rt.Wait()
}
