//go:build linux && cgo && !ringline_epoll

package ringline

import (
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"

	// A crash inside ringline's C layer prints C frames with file and line
	// in every test binary (the library itself leaves this choice to the
	// program: it installs a process-wide traceback hook).
	_ "github.com/ianlancetaylor/cgosymbolizer"

	"github.com/ringline-go/ringline/internal/cfault"
	"github.com/ringline-go/ringline/internal/require"
)

const cfaultEnv = "RINGLINE_TEST_CFAULT"

// A fault inside C, in a child process (this test binary re-executed),
// prints the C frames, function, file and line, above the Go ones.
func TestCrashInCShowsCFrames(t *testing.T) {
	if os.Getenv(cfaultEnv) == "1" {
		cfault.Crash()
		t.Fatal("cfault.Crash returned")
	}
	bin := os.Args[0]
	if !hasDWARF(t, bin) {
		// `go test` links without DWARF unless told otherwise (make test
		// passes -ldflags='-s=false -w=false'), and the symbolizer reads
		// file and line from DWARF: build a copy of this test binary that
		// has it, as `go test -c` does.
		bin = filepath.Join(t.TempDir(), "ringline.test")
		out, err := exec.Command(benchGoTool(), "test", "-c", "-o", bin, ".").CombinedOutput()
		require.NoError(t, err, "go test -c: %s", out)
		require.True(t, hasDWARF(t, bin), "go test -c built %s without DWARF", bin)
	}
	cmd := exec.Command(bin, "-test.run=^TestCrashInCShowsCFrames$", "-test.count=1")
	cmd.Env = append(os.Environ(), cfaultEnv+"=1")
	out, err := cmd.CombinedOutput()
	require.Error(t, err, "the child should have crashed:\n%s", out)
	s := string(out)
	require.Contains(t, s, "SIGSEGV")
	for _, fn := range []string{"ringline_cfault_inner", "ringline_cfault_outer"} {
		re := regexp.MustCompile(fn + `\s*\n\s*\S*internal/cfault/cfault\.c:\d+`)
		require.True(t, re.MatchString(s), "no C frame %s with file:line in the crash output:\n%s", fn, s)
	}
}

func hasDWARF(t *testing.T, path string) bool {
	f, err := elf.Open(path)
	require.NoError(t, err)
	defer f.Close()
	return f.Section(".debug_info") != nil || f.Section(".zdebug_info") != nil
}
