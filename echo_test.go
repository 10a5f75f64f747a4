package ringline

import (
	"bytes"
	"fmt"
	"io"
	"sync"
	"testing"

	"github.com/ringline-go/ringline/internal/require"
)

func TestEchoSizes(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, testConfig(be), echoTask)
		for _, n := range []int{5, 8 << 10, 1 << 20} {
			t.Run(fmt.Sprint(n), func(t *testing.T) {
				c := dial(t, rt)
				msg := pattern(n, byte(n))
				require.True(t, bytes.Equal(msg, roundTrip(t, c, msg)))
			})
		}
	})
}

func TestEchoConcurrent200(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be Backend) {
		rt := serve(t, testConfig(be), echoTask)
		var wg sync.WaitGroup
		errs := make(chan error, 200)
		for i := 0; i < 200; i++ {
			wg.Add(1)
			go func(i int) {
				defer wg.Done()
				c := dial(t, rt)
				msg := pattern(3000+i, byte(i))
				go c.Write(msg)
				got := make([]byte, len(msg))
				if _, err := io.ReadFull(c, got); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(got, msg) {
					errs <- fmt.Errorf("conn %d: echo mismatch", i)
				}
			}(i)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	})
}
