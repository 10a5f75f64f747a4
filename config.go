package ringline

import (
	"crypto/tls"
	"fmt"
	"log/slog"
	"runtime"
	"time"
)

// Config tunes a runtime. The zero value of every field means "use the
// default"; Launch refuses values that cannot work with an error naming the
// field.
type Config struct {
	// Workers is the number of worker loops, each a goroutine (on
	// io_uring, or with PinCPUs, locked to its OS thread) with its own
	// ring, listener, buffers and connections. Default (0): one per CPU.
	Workers int
	// PinCPUs pins worker i to CPU i modulo the CPUs this process may use.
	// A pinned worker's goroutine is locked to its thread (io_uring
	// workers always are); an epoll worker that is not pinned is not
	// locked, and parks in Go's netpoller while its waits are long
	// instead of holding its P in epoll_wait.
	PinCPUs bool
	// Backend chooses io_uring, epoll, or Auto (the default).
	Backend Backend
	// RingEntries is the submission queue size (a power of two, 8..32768);
	// the completion queue is four times larger, at most the kernel's
	// limit of 65536 entries. A loop iteration may stage more operations
	// than this: they go to the kernel in SQ-sized batches within the
	// iteration's one call into C. Default 1024.
	RingEntries int
	// BufferCount is the number of provided receive buffers per worker (a
	// power of two, 1..32768). Default 256.
	BufferCount int
	// BufferSize is the size of each provided receive buffer, 256 B..1 MiB.
	// Default 16 KiB.
	BufferSize int
	// MaxConnections is the connection limit per worker (1..1<<24);
	// accepts beyond it are closed at once. Default 16384, lowered to the
	// RLIMIT_NOFILE hard limit.
	MaxConnections int
	// SendPoolSlots and SendSlotSize size each worker's send pool: the
	// memory outside the Go heap that SendNowait and Send copy into.
	// Defaults 2048 slots of 16 KiB (32 MiB of address space, touched
	// lazily). SendSlotSize is 256 B..1 MiB.
	SendPoolSlots int
	SendSlotSize  int
	// MaxSendQueue bounds the bytes one connection may have queued for
	// the kernel (sent with SendNowait/Send and not yet taken by the
	// kernel), so a peer that never reads cannot take the worker's whole
	// send pool from the other connections. On io_uring, bytes a
	// zero-copy send handed to the kernel keep their memory until the
	// peer acknowledges them; a connection keeps at most half of
	// MaxSendQueue that way (its later sends are copied by the kernel),
	// so it holds at most 1.5 times MaxSendQueue of the pool. A send that would take the
	// queue past it fails with ErrSendQueueFull and nothing is queued
	// (a single send larger than MaxSendQueue always fails: split it).
	// SendSlotSize..pool size. Default: a quarter of the pool
	// (SendPoolSlots*SendSlotSize/4, 8 MiB with the default pool), raised
	// to MaxRecvAccumulator (within the pool), so echoing everything a
	// parse was shown always fits.
	MaxSendQueue int
	// SendZCThreshold (io_uring only) is the smallest send, in bytes,
	// that goes out zero-copy (IORING_OP_SEND_ZC/SENDMSG_ZC): the kernel
	// reads the queued memory (pool slots, SendBuilder.Ref parts,
	// forwarded buffers) in place instead of copying it, and ringline
	// releases that memory only on the kernel's notification that it is
	// done. A send is one submission: everything queued on the
	// connection, up to 32 segments. A worker whose kernel refuses zero
	// copy, or reports that it copied anyway (always over loopback and
	// veth, whose receive side copies; devices without scatter-gather),
	// falls back to copied sends for good and counts it in
	// WorkerStats.ZeroCopyFallbacks. Default 64 KiB, negative disables
	// zero copy; ignored on epoll, which always copies. On loopback and
	// veth (what BenchmarkZeroCopySend measures) zero copy never pays,
	// since the receiving side copies anyway, so there it only costs the
	// one send that triggers the fallback; on a NIC it pays only for large
	// sends (the kernel's MSG_ZEROCOPY guidance: around 10 KB and up), and
	// its memory stays taken until the peer's acknowledgement, so the
	// default keeps it to sends large enough to clearly pay.
	SendZCThreshold int
	// CloseDrainTimeout bounds how long a closed connection (Close, or
	// its task returned) may take to hand its queued bytes to a peer that
	// is not reading them (and, for zero-copy sends, for the peer to
	// acknowledge them: the kernel reads their memory until then); after
	// it the connection is reset, its pool slots and references freed and
	// Err reports ErrDrainTimeout. Default 10s.
	CloseDrainTimeout time.Duration
	// ShutdownTimeout bounds how long Shutdown lets connections drain
	// and tasks return before it stops them. Shortly before it (a quarter
	// of it, at most 500ms), connections whose zero-copy sends still
	// await the peer's acknowledgement are reset, so the kernel lets go
	// of their memory before the workers end. Default 2s.
	ShutdownTimeout time.Duration
	// StallThreshold is how long one task may run without yielding (a
	// handler that blocks, say) before the watchdog logs that its worker
	// is stalled and counts it in WorkerStats.Stalls. It is measured from
	// the worker's last progress mark, which the worker makes at the
	// start of each loop iteration and again every 16 task runs within
	// one, so an iteration that runs a great many short tasks (a stop
	// ending every task, a burst of wake-ups) is not a stall. Release
	// callbacks count like task runs, and so do the deferred calls of the
	// tasks a stop ends; a stall during a stop is logged as holding up
	// the stop rather than the connections. Default 250ms; negative
	// disables the watchdog. The watchdog looks every StallThreshold/4
	// while a worker is busy, and sleeps while every worker waits in the
	// kernel (a worker that turns busy wakes it), so it does not wake an
	// idle runtime.
	StallThreshold time.Duration
	// ReusePort lets other sockets (another process's, for a hot restart
	// or a multi-process server) share the bound port. Off by default:
	// Bind then fails with an error wrapping EADDRINUSE when any socket
	// already holds the address (or an overlapping one: a wildcard that
	// covers it, or one it covers), also when that socket binds while
	// Bind sets up its listeners, instead of silently splitting the
	// connections with it. The workers of one runtime share the port
	// either way.
	ReusePort bool
	// MaxRecvAccumulator bounds the bytes a connection may buffer without
	// a parse making progress; past it the connection is closed. It must
	// be at least BufferSize. Default 4 MiB.
	MaxRecvAccumulator int
	// ListenBacklog is the listen(2) backlog. Default 1024.
	ListenBacklog int
	// BatchWait (io_uring only; kernels with IORING_FEAT_MIN_TIMEOUT,
	// 6.12+, and a build against liburing 2.8 or later: Probe().CompiledOut
	// says when the build lacks it) lets a worker with nothing to run wait up to this long for a
	// batch of completions before it handles the ones that came. Under
	// load that means fewer ring enters and bigger batches per message;
	// the price is up to BatchWait of added latency while the loop is
	// busy. A worker that has waited longer than BatchWait is woken by the
	// first completion as usual.
	// Default 0: off. At most 10ms.
	BatchWait time.Duration
	// HoldWait is how long a worker whose waits have been long (over
	// 100µs, two in a row) first waits for more while keeping its P: a raw
	// system call (epoll_pwait2, io_uring_enter), which the Go scheduler
	// does not see as one. Only when nothing comes within HoldWait does it
	// wait the ordinary way, as a system call that lets Go lend its P to
	// other goroutines. Why: a goroutine blocked in an ordinary system
	// call keeps its P, and when no other P is idle (GOMAXPROCS no larger
	// than the workers, or the spare Ps busy) Go's sysmon takes that P
	// after 20 µs and wakes another thread for it, at a cost of several
	// microseconds of CPU each time; a loop that waits long and often pays
	// it on most waits, and a held wait pays none of it
	// (docs/BENCHMARKS.md §7.6). Short waits (a busy loop, a ping-pong)
	// stay ordinary ones: they are seldom taken, and a hold's timer would
	// cost more. Holding is for workers locked to their threads: io_uring
	// workers, and epoll workers with PinCPUs; an unpinned epoll worker
	// parks in Go's netpoller instead, holding no P. The price: while a
	// worker holds its P, other goroutines can run only on other Ps.
	// Goroutines that are ready to run when a hold would start (say, one
	// a task just sent a reply to) run first; with no P to spare, one
	// readied during a hold may wait up to HoldWait more (they wait for a
	// busy worker the same way: it yields its P every 2ms). Timers,
	// Post, every I/O completion and the shutdown end a hold at once. Not
	// combined with BatchWait (a worker that batches waits the ordinary
	// way). Default 1ms; negative turns holding off. At most 2ms: sysmon
	// preempts a goroutine that seems to run for 10ms, and the worker
	// passes through the scheduler every 2ms anyway.
	HoldWait time.Duration
	// Logger receives connection-level errors (panics, limit closes) and
	// backend selection notes. Default slog.Default().
	Logger *slog.Logger

	// TLS, when set, makes the listener serve TLS (crypto/tls): every
	// accepted connection completes its handshake inside its task before
	// OnAccept runs, and the handler then sees plaintext through the same
	// ConnCtx methods. It needs a certificate (Certificates, GetCertificate
	// or GetConfigForClient). Launch keeps its own copy (Clone); callbacks
	// in it (GetCertificate, VerifyPeerCertificate, ...) run on the worker
	// inside the handshake and must not block. Default nil: plaintext.
	TLS *tls.Config
	// TLSClient is the template ConnectTLS clones for each outbound TLS
	// connection (roots, ALPN protocols, client certificates, session
	// cache); ConnectTLS sets ServerName. Default nil: crypto/tls's
	// defaults (the system roots).
	TLSClient *tls.Config
	// TLSHandshakeTimeout bounds a TLS handshake, from accept (or from
	// the established connect) to the handshake's end, so a client that
	// never finishes cannot hold a connection. Default 10s.
	TLSHandshakeTimeout time.Duration
	// TLSCloseTimeout is how long a TLS connection closed by its side
	// waits, after sending close_notify, for the peer's close_notify or
	// FIN before the socket is closed (closing while the peer still sends
	// makes the kernel reset the connection, which can destroy the last
	// bytes in flight). Negative: do not wait. Default 1s.
	TLSCloseTimeout time.Duration

	// ringFlagMask restricts the ring setup flags tried (tests).
	ringFlagMask uint32
	// plainFDs skips the fixed-file table (benchmarks compare the two).
	plainFDs bool
	// zcKeepCopied keeps zero copy on when the kernel reports it copied
	// (benchmarks and tests measure zero copy over loopback and veth).
	zcKeepCopied bool
}

// DefaultConfig returns the defaults Launch fills in.
func DefaultConfig() Config {
	c := Config{}
	c.fill()
	return c
}

func (c *Config) fill() {
	if c.Workers == 0 {
		c.Workers = runtime.NumCPU()
	}
	if c.RingEntries == 0 {
		c.RingEntries = 1024
	}
	if c.BufferCount == 0 {
		c.BufferCount = 256
	}
	if c.BufferSize == 0 {
		c.BufferSize = 16 << 10
	}
	if c.MaxConnections == 0 {
		c.MaxConnections = 16384
		if lim := nofileHard(); lim > 0 && c.MaxConnections > lim {
			c.MaxConnections = lim
		}
	}
	if c.SendPoolSlots == 0 {
		c.SendPoolSlots = 2048
	}
	if c.SendSlotSize == 0 {
		c.SendSlotSize = 16 << 10
	}
	if c.MaxRecvAccumulator == 0 {
		c.MaxRecvAccumulator = 4 << 20
		if c.MaxRecvAccumulator < c.BufferSize {
			c.MaxRecvAccumulator = c.BufferSize
		}
	}
	if c.ListenBacklog == 0 {
		c.ListenBacklog = 1024
	}
	if c.MaxSendQueue == 0 {
		pool := c.SendPoolSlots * c.SendSlotSize
		c.MaxSendQueue = min(max(pool/4, c.MaxRecvAccumulator, c.SendSlotSize), pool)
	}
	if c.SendZCThreshold == 0 {
		c.SendZCThreshold = 64 << 10
	}
	if c.CloseDrainTimeout == 0 {
		c.CloseDrainTimeout = 10 * time.Second
	}
	if c.ShutdownTimeout == 0 {
		c.ShutdownTimeout = 2 * time.Second
	}
	if c.StallThreshold == 0 {
		c.StallThreshold = 250 * time.Millisecond
	}
	if c.HoldWait == 0 {
		c.HoldWait = time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.TLS != nil {
		c.TLS = c.TLS.Clone() // later changes by the caller cannot race the workers
	}
	if c.TLSClient != nil {
		c.TLSClient = c.TLSClient.Clone()
	}
	if c.TLSHandshakeTimeout == 0 {
		c.TLSHandshakeTimeout = 10 * time.Second
	}
	if c.TLSCloseTimeout == 0 {
		c.TLSCloseTimeout = time.Second
	}
}

// ConfigError reports an invalid Config field.
type ConfigError struct {
	Field string
	// Value is the rejected value (an int, a time.Duration for the
	// duration fields, a description for TLS).
	Value  any
	Reason string
}

func (e *ConfigError) Error() string {
	return fmt.Sprintf("ringline: invalid Config.%s = %v: %s", e.Field, e.Value, e.Reason)
}

func isPow2(n int) bool { return n > 0 && n&(n-1) == 0 }

func (c *Config) validate() error {
	bad := func(f string, v any, why string) error { return &ConfigError{Field: f, Value: v, Reason: why} }
	pool := c.SendPoolSlots * c.SendSlotSize
	switch {
	case c.Workers < 1 || c.Workers > 1024:
		return bad("Workers", c.Workers, "must be 0 (one per CPU) or 1..1024")
	case c.Backend < Auto || c.Backend > Epoll:
		return bad("Backend", c.Backend, "must be Auto, IOUring or Epoll")
	case !isPow2(c.RingEntries) || c.RingEntries < 8 || c.RingEntries > 32768:
		return bad("RingEntries", c.RingEntries, "must be a power of two in 8..32768")
	case !isPow2(c.BufferCount) || c.BufferCount > 32768:
		return bad("BufferCount", c.BufferCount, "must be a power of two in 1..32768")
	case c.BufferSize < 256 || c.BufferSize > 1<<20:
		return bad("BufferSize", c.BufferSize, "must be 256..1048576")
	case c.MaxConnections < 1 || c.MaxConnections > udIdxMask:
		return bad("MaxConnections", c.MaxConnections, "must be 1..16777215")
	case c.SendPoolSlots < 1 || c.SendPoolSlots > 1<<20:
		return bad("SendPoolSlots", c.SendPoolSlots, "must be 1..1048576")
	case c.SendSlotSize < 256 || c.SendSlotSize > 1<<20:
		return bad("SendSlotSize", c.SendSlotSize, "must be 256..1048576")
	case c.MaxSendQueue < c.SendSlotSize || c.MaxSendQueue > pool:
		return bad("MaxSendQueue", c.MaxSendQueue, fmt.Sprintf("must be SendSlotSize..SendPoolSlots*SendSlotSize (%d..%d)", c.SendSlotSize, pool))
	case c.MaxRecvAccumulator < c.BufferSize:
		return bad("MaxRecvAccumulator", c.MaxRecvAccumulator, "must be at least BufferSize")
	case c.ListenBacklog < 1:
		return bad("ListenBacklog", c.ListenBacklog, "must be positive")
	case c.BatchWait < 0 || c.BatchWait > 10*time.Millisecond:
		return bad("BatchWait", c.BatchWait, "must be 0..10ms")
	case c.HoldWait > maxHoldWait:
		return bad("HoldWait", c.HoldWait, "must be at most 2ms (negative: off)")
	case c.CloseDrainTimeout < 0:
		return bad("CloseDrainTimeout", c.CloseDrainTimeout, "must not be negative")
	case c.ShutdownTimeout < 0:
		return bad("ShutdownTimeout", c.ShutdownTimeout, "must not be negative")
	case c.TLSHandshakeTimeout < 0:
		return bad("TLSHandshakeTimeout", c.TLSHandshakeTimeout, "must not be negative")
	case c.TLS != nil && len(c.TLS.Certificates) == 0 && c.TLS.GetCertificate == nil && c.TLS.GetConfigForClient == nil:
		return &ConfigError{Field: "TLS", Value: "a *tls.Config without a certificate", Reason: "set Certificates, GetCertificate or GetConfigForClient"}
	}
	return nil
}
