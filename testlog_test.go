package ringline

import (
	"github.com/ringline-go/ringline/internal/gid"
	"io"
	"log/slog"
)

// newTestLogger logs everything (debug included) as text into w, so tests
// can assert on what the runtime logged.
func newTestLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// getgForTest is the identity a test's hand-built worker records.
func getgForTest() uintptr { return gid.Get() }
