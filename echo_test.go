package ringline

import (
	"bytes"
	"fmt"
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
		runClients(t, 200, func(i int) error {
			return echoCheck(rt.Addr().String(), pattern(3000+i, byte(i)))
		})
	})
}
