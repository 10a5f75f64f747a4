// Package ringline is an io_uring-native, thread-per-core TCP runtime for Go
// services that need the most work per syscall and per core: caches,
// proxies, protocol servers, load generators. A pure-Go epoll backend serves
// where io_uring cannot (older kernels, seccomp profiles that forbid it,
// builds without cgo), with the same semantics.
//
// # The model
//
// A [Runtime] runs [Config].Workers workers (one per CPU by default). Each
// worker is a goroutine locked to its OS thread that owns everything its
// connections use: one io_uring (or one epoll instance), a ring of provided
// receive buffers, a send pool in memory outside the Go heap, its own
// SO_REUSEPORT listener and a slab of connections. Workers share nothing on
// the data path, so no lock and no cross-thread hand-off sits between a
// packet and the code that handles it.
//
// Every connection is a task: the body of [AsyncEventHandler].OnAccept, run
// as a coroutine (iter.Pull) on its worker's goroutine. A task reads and
// parses with [ConnCtx.WithData] and replies with [ConnCtx.Send] or
// [ConnCtx.SendNowait]; when it has to wait (no data yet, a send not taken
// by the kernel yet) it yields to the worker loop, which resumes it when the
// completion arrives. One loop iteration hands all the work its tasks
// staged (sends, re-armed receives) to the kernel in one call (on io_uring:
// one cgo call and one io_uring_enter) and gets back a batch of completions.
// Returning from OnAccept closes the connection, after its queued sends have
// drained; a task that panics closes only its own connection.
//
// [ConnCtx] is the task's handle on its connection: a small value (worker,
// slot index, generation) that may be copied and stored. Once the connection
// is gone and its slot reused, every method refuses the stale handle.
//
// # The rule inside a task
//
// A task runs on its worker's thread, between the other tasks of that
// worker. It must not block: no channel operations that wait, no mutexes
// held across a wait, no time.Sleep, no net calls, no blocking syscalls.
// Any of those stalls every connection of the worker until it returns. It
// must not call runtime.LockOSThread either (the worker's goroutine already
// is locked, and the Go runtime aborts a coroutine switch whose lock state
// changed). Wait only through ringline's suspending calls: WithData,
// WithBytes, RecvReady and SendFuture.Await. Work that must block belongs on
// an ordinary goroutine.
//
// A parse closure (the function given to WithData, WithBytes or
// TryWithData) must not suspend at all: it may send, but not await. The
// runtime refuses a suspension there with a panic that closes only that
// connection.
//
// # Which goroutine may call what
//
//   - [ConnCtx] methods: only on the connection's worker goroutine, from a
//     task running there (or its parse closure). Called from any other
//     goroutine, every method except Index, Token and WorkerID does
//     nothing and returns [ErrNotInWorker] (or its zero value); the misuse
//     is logged at most once a second, naming the caller, and counted in
//     WorkerStats.ForeignCalls. The check is exact (the caller's goroutine
//     identity, about 4 ns), never a racy read. The receiving methods
//     (WithData, WithBytes, TryWithData, SetRecvSink, TakeRecvSink,
//     RecvReady) belong to the task that owns the connection and return 0
//     or false in any other task; any task of the worker may send on a
//     connection, close it, or await its sends ([SendFuture.Await] returns
//     [ErrNotInTask] on the worker outside any task).
//   - The parse closure: runs synchronously inside WithData, WithBytes or
//     TryWithData, on the worker; the []byte it is shown is valid only
//     until it returns (a [Bytes] from WithBytes may be kept). Build with
//     -tags ringline_debug while testing handlers: memory ringline takes
//     back is then poisoned (0xDB), so a slice kept too long shows it.
//   - [TaskCtx] methods: in a task of its worker (Spawn also from the handler
//     factory); off the worker they return [ErrNotInWorker], on the worker
//     outside a task [ErrNotInTask]. A connection's task gets its TaskCtx
//     with [ConnCtx.Task]; spawned, posted and start tasks are given one.
//   - [Runtime] methods (Addr, Backend, Features, Workers, Stats, Shutdown,
//     ShutdownContext, Wait, Done), [Builder.Launch] and [Probe]: any
//     goroutine.
//   - The handler factory given to Launch: once per worker, on that worker's
//     goroutine, before it serves.
//
// # When things go wrong
//
// A task that panics or calls runtime.Goexit (t.FailNow, require.* in
// tests) closes its own connection only; the worker serves on. A task that
// blocks stalls its worker: a watchdog reports loop iterations longer than
// Config.StallThreshold. [ConnCtx.Err] says why a connection ended. No
// connection can take a worker's shared resources from the others: its
// unparsed bytes are bounded (Config.MaxRecvAccumulator), its queued sends
// are bounded (Config.MaxSendQueue, [ErrSendQueueFull]), a closed
// connection's unsent bytes have Config.CloseDrainTimeout to drain, and
// provided receive buffers are shared fairly when they run out. Accept
// errors are counted and rate-limited in the log; out of descriptors, the
// waiting clients are refused at once. [Runtime.ShutdownContext] bounds a
// shutdown that a stuck task would otherwise hold up. By default [Bind]
// refuses a port another socket holds (Config.ReusePort shares it).
//
// # Outbound connections, Unix sockets and the connection lifecycle
//
// A task dials out with [TaskCtx.Connect] (IPv4 or IPv6),
// [TaskCtx.ConnectWithTimeout] or [TaskCtx.ConnectUnix]; [ConnCtx] has the
// same three methods, acting for the task that runs them. They return a
// [ConnectFuture] at once; its Await suspends the task until the kernel
// has connected and returns a new ConnCtx (IsOutbound reports true) that
// is everything an accepted one is: the same receive methods, sends,
// deadlines and PeerAddr, TCP_NODELAY, and a slot in the fixed-file table
// where it has room. A connect failure is an error wrapping the kernel's
// (errors.Is(err, syscall.ECONNREFUSED), ENOENT for a missing Unix
// socket); a timeout satisfies both os.ErrDeadlineExceeded and
// syscall.ETIMEDOUT. On io_uring the timeout is a linked timeout in the
// same submission as the connect; the epoll backend gives the same
// completions from its own timer.
//
// Who may use an outbound connection: the task that called Connect owns
// it. Only that task may await the ConnectFuture and receive on the
// connection (WithData, WithBytes, TryWithData, RecvReady, the sink and
// Readable); like any connection, any task of the worker may send on it,
// close it, cancel it or await its sends, and no other goroutine may touch
// it. It closes when its owning task ends, like an accepted connection
// when OnAccept returns (a connect still pending is then cancelled). One
// task may own several connections: a proxy's task owns its client and the
// upstream it connected, and waits on both with
// Select(client.Readable(), upstream.Readable()). An outbound connection
// that has been closed (Close, Cancel, a failed send) gives its slot back
// as soon as the kernel is done with it, even while its task runs, so a
// task may connect and close any number of times; its handle is stale from
// then on, so read Err as soon as WithData returns 0. (An accepted
// connection's slot is kept until its task returns.)
//
// The rest of the lifecycle: [ConnCtx.Close] closes after the queued sends
// have drained; [ConnCtx.ShutdownWrite] half-closes (a FIN after the last
// queued byte, while receiving goes on); [ConnCtx.Cancel] aborts, cancelling
// what the connection has in the kernel (a pending connect resolves with
// an error wrapping syscall.ECANCELED, a task waiting in WithData wakes);
// [TaskCtx.RequestShutdown] shuts the whole runtime down gracefully, the
// same way [Runtime.Shutdown] does.
//
// A runtime launched without Bind is client-only: a handler that
// implements [Starter] gets a start task on every worker (OnStart), from
// which a load generator or a pure client connects and spawns its tasks.
// [Builder.BindUnix] serves a Unix stream socket instead of a TCP address.
//
// # Backends and how to choose
//
// [Config].Backend picks the backend: [Auto] (the default) probes io_uring
// with a real ring and the features ringline needs, and runs on epoll, with
// the reason logged through Config.Logger, when any is missing; [IOUring]
// fails Launch instead of falling back (its error wraps
// [ErrIOUringUnavailable] and the kernel's syscall.Errno, e.g. EPERM under
// Docker's default seccomp profile); [Epoll] forces epoll. Leave Auto for
// services that must run anywhere; use IOUring where a silent fallback
// would hide a misconfigured host; use Epoll where io_uring is forbidden by
// policy. [Probe] reports what the build and the running kernel offer,
// which backend Auto would pick and why, and which liburing the io_uring
// backend was built against; [Runtime.Backend] and [Runtime.Features] report
// what a runtime runs on.
//
// Both backends keep the same contract: bytes reach the peer in call order,
// never interleaved; a connection has at most one send in flight and queued
// sends coalesce; receives go through the same accumulator and parse
// closures. What differs is cost: epoll needs syscalls per readiness
// (recv, sendmsg, epoll_wait) where io_uring batches them into one enter,
// and Config.BatchWait applies to io_uring only.
//
// # Building
//
// The io_uring backend is C (the csrc directory, over liburing) and needs
// cgo and liburing 2.3 or later; a build can get it three ways, described
// in the README ("Using ringline in your service"):
//
//  1. the distribution's liburing (apt-get install liburing-dev), then
//     go build as usual;
//  2. the pinned, checksum-verified static liburing 2.9 that
//     eval "$(go run github.com/ringline-go/ringline/cmd/ringline-liburing)"
//     builds into a per-user cache and points cgo at;
//  3. no io_uring: CGO_ENABLED=0 or -tags ringline_epoll, epoll only, no C
//     toolchain needed.
//
// With cgo on and no liburing, the build stops with one error naming these
// three. A liburing older than 2.8 lacks what Config.BatchWait needs; Probe
// then lists it in ProbeResult.CompiledOut.
//
// # Examples
//
// The runnable examples in example_test.go (go test -run Example runs
// them; go doc -http and pkg.go.dev show them beside the API they use):
//
//   - Example: an echo server, its handler and a client round trip.
//   - ExampleConnCtx_WithData: a line protocol parsed with NeedMore across
//     writes split mid-line.
//   - ExampleNeedAtLeast: length-prefixed frames.
//   - ExampleConnCtx_Send: streaming a large reply with Send and
//     SendFuture.Await (backpressure).
//   - ExampleProbe: choosing a backend; Probe, Auto and IOUring's refusal.
//   - ExampleTaskCtx_Connect: a task that connects to a server in the same
//     program, sends a line and reads the echo.
//   - ExampleStarter: a client-only runtime whose start task connects and
//     then asks the runtime to shut down.
//
// Beside them, examples/proxy is a TCP and Unix-socket proxy (Connect
// with a timeout, two-way copy with backpressure, half-close passed on)
// and examples/loadgen an echo load generator on a client-only runtime.
//
// # Errors
//
// Errors wrap syscall.Errno where the kernel refused, so
// errors.Is(err, syscall.ECONNRESET) works. Operations on a closed
// connection return [ErrClosed]; on a stale handle [ErrStale] (which is also
// ErrClosed); off the worker [ErrNotInWorker]. A send that finds the send
// pool full returns [ErrSendPoolExhausted], one that would take its
// connection's queue past Config.MaxSendQueue [ErrSendQueueFull]; both queue
// nothing and leave the connection working.
package ringline
