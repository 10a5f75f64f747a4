package ringline

import (
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ringline-go/ringline/internal/require"
)

// batchWaitCompiled reports whether this build's liburing has min-timeout
// waits (2.8 or later), without which Config.BatchWait has no effect.
func batchWaitCompiled() bool {
	return !slices.Contains(Probe().CompiledOut, "min-timeout batch waits")
}

// Probe names the liburing the C layer was built against and what an older
// one compiled out; its String says so on one line.
func TestProbeReportsLiburingBuild(t *testing.T) {
	r := Probe()
	s := r.String()
	if !uringCompiled {
		require.Empty(t, r.Liburing)
		require.Empty(t, r.CompiledOut)
		require.NotContains(t, s, "built against")
		return
	}
	m := regexp.MustCompile(`^2\.(\d+)$`).FindStringSubmatch(r.Liburing)
	require.NotNil(t, m, "Liburing %q is not 2.N", r.Liburing)
	minor, _ := strconv.Atoi(m[1])
	require.GreaterOrEqual(t, minor, 3, "the C layer needs liburing 2.3 or later")
	if minor < 8 {
		require.Equal(t, []string{"min-timeout batch waits"}, r.CompiledOut)
		require.Contains(t, s, "built against liburing "+r.Liburing+": min-timeout batch waits unavailable\n")
	} else {
		require.Empty(t, r.CompiledOut)
		require.Contains(t, s, "built against liburing "+r.Liburing+"\n")
		require.False(t, strings.Contains(s, "unavailable"), "nothing is compiled out: %s", s)
	}
}
