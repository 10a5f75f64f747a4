package ringline

import (
	"bytes"
	"log/slog"
	"sync"

	"github.com/ringline-go/ringline/internal/gid"
	"golang.org/x/sys/unix"
)

// logSink collects output: a runtime's log (captureLog), a child
// process's stdout or stderr. Safe for concurrent writers.
type logSink struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *logSink) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *logSink) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// captureLog points cfg.Logger at a text handler writing to the returned
// sink, so a test can assert on what the runtime logged.
func captureLog(cfg *Config) *logSink {
	s := &logSink{}
	cfg.Logger = slog.New(slog.NewTextHandler(s, &slog.HandlerOptions{Level: slog.LevelDebug}))
	return s
}

// getgForTest is the identity a test's hand-built worker records.
func getgForTest() uintptr { return gid.Get() }

// setSmallSndbuf shrinks the connection's kernel send buffer (from its
// task), so queued bytes stay in the send pool while the peer does not
// read.
func setSmallSndbuf(c ConnCtx) {
	_ = unix.SetsockoptInt(int(c.get().fd), unix.SOL_SOCKET, unix.SO_SNDBUF, 4096)
}
