package ringline

import (
	"github.com/ringline-go/ringline/internal/gid"
	"golang.org/x/sys/unix"
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

// setSmallSndbuf shrinks the connection's kernel send buffer (from its
// task), so queued bytes stay in the send pool while the peer does not
// read.
func setSmallSndbuf(c ConnCtx) {
	_ = unix.SetsockoptInt(int(c.get().fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 4096)
}
