// Package ringline is an io_uring-native, thread-per-core TCP runtime for Go
// services that need the most work per syscall and per core: caches,
// proxies, protocol servers, load generators. A pure-Go epoll backend serves
// where io_uring cannot (older kernels, seccomp profiles that forbid it,
// builds without cgo), with the same semantics.
//
// # The model
//
// A [Runtime] runs [Config].Workers workers (one per CPU by default). Each
// worker is a goroutine (locked to its OS thread on io_uring or with
// PinCPUs) that owns everything its connections use: one io_uring (or one epoll instance), a ring of provided
// receive buffers, a send pool in memory outside the Go heap, its own
// SO_REUSEPORT listener and a slab of connections. Workers share nothing on
// the data path, so no lock and no cross-thread hand-off sits between a
// packet and the code that handles it.
//
// Every connection is a task: the body of [AsyncEventHandler].OnAccept, run
// as a coroutine (iter.Pull) on its worker's goroutine. A task reads and
// parses with [ConnCtx.WithData] and replies with [ConnCtx.Send] or
// [ConnCtx.SendNowait] (copies), [ConnCtx.SendParts] (copied and
// caller-owned parts) or [ConnCtx.ForwardRecvBuf] (the receive buffer
// itself); when it has to wait (no data yet, a send not taken
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
// must not call runtime.LockOSThread or UnlockOSThread either (the Go
// runtime aborts a coroutine switch whose thread-lock state changed).
// Wait only through ringline's suspending calls: WithData, WithBytes,
// RecvReady, SendFuture.Await, TaskCtx.Sleep, Timer.Await,
// JoinHandle.Join, Select, JoinAll and Mailbox.Recv. A coroutine the task
// makes itself (iter.Pull) is another goroutine: ringline refuses calls
// from it like any foreign goroutine's. Work that must block belongs on
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
//     identity, a few nanoseconds), never a racy read. The receiving methods
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
//     [Select], [JoinAll], [JoinHandle], [Timer], [ConnectFuture] methods
//     and [Mailbox.Recv]: likewise, from a task of their worker.
//   - [Runtime] methods (Addr, Backend, Features, Workers, Stats, Shutdown,
//     ShutdownContext, Wait, Done, Post, Send), [Mailbox.Put],
//     [Mailbox.TryRecv], [Mailbox.Close], [Builder.Launch] and [Probe]: any
//     goroutine (Runtime.Send blocks its caller for a round trip, so from a
//     task it returns [ErrWouldBlock]).
//   - The handler factory given to Launch: once per worker, on that worker's
//     goroutine, before it serves.
//
// # When things go wrong
//
// A task that panics or calls runtime.Goexit (t.FailNow, require.* in
// tests) closes its own connection only; the worker serves on. A task that
// blocks stalls its worker: a watchdog reports a task that runs longer
// than Config.StallThreshold without yielding (and, at a stop, a deferred
// call or release callback that holds the stop up). [ConnCtx.Err] says
// why a connection ended. No connection can take a worker's shared
// resources from the others: its unparsed bytes are bounded
// (Config.MaxRecvAccumulator), its queued sends are bounded
// (Config.MaxSendQueue, [ErrSendQueueFull]), a closed connection's
// unsent bytes have Config.CloseDrainTimeout to drain, and provided
// receive buffers are shared fairly when they run out. Accept errors are
// counted and rate-limited in the log; out of descriptors, the waiting
// clients are refused at once. [Runtime.ShutdownContext] bounds a
// shutdown that a stuck task would otherwise hold up. By default [Bind]
// refuses a port another socket holds (Config.ReusePort shares it).
//
// # Time, other tasks, and the way in
//
// A task reaches its worker through a [TaskCtx]: a connection's task from
// [ConnCtx.Task], a spawned, posted or start task as its argument (Go has
// no goroutine-local executor, so the handle is passed, not looked up).
// With it a task can Sleep, SleepUntil, make a [Timer] (After), [TaskCtx.Spawn]
// a task that is not a connection and Join or Abort it ([JoinHandle]).
// [Select] waits for the first of several futures (a [SendFuture], a
// Timer, a JoinHandle, a mailbox's Ready, a connection's
// [ConnCtx.Readable]), [JoinAll] for all of them; a task waiting on
// anything is woken only by what it waits for. Timers live in a heap in
// the core: the earliest is the wait timeout of the loop's one enter, so
// arming, firing and cancelling them cost no syscall, and Sleep, deadlines
// and (once the pool has grown) Timers allocate nothing.
//
// Deadlines have net.Conn's meaning: [ConnCtx.SetReadDeadline] ends a
// waiting WithData, WithBytes or RecvReady (it returns 0 or false, and
// [ConnCtx.Err] reports an error satisfying errors.Is(err,
// os.ErrDeadlineExceeded)); [ConnCtx.SetWriteDeadline] ends a waiting
// SendFuture.Await with such an error. The connection stays usable and a
// new deadline re-arms. An idle timeout is a read deadline renewed after
// each parse, which costs a store.
//
// Ordinary goroutines reach a worker only through these doors, all safe
// from any goroutine and returning ErrClosed without blocking after
// shutdown: [Runtime.Post] runs a function as a task on a worker;
// [Runtime.Send] queues bytes on a connection named by its [ConnToken]
// (refusing stale tokens); a [Mailbox] carries values to a worker's tasks
// (Put never blocks; a full mailbox says [ErrMailboxFull]). Each wakes the
// worker through its eventfd, and wakes coalesce: a burst of 1,000 posts
// costs one or two.
//
// # State shared across workers
//
// Workers share nothing on the data path, and state a service shares
// should follow suit:
//
//   - Per-worker state, reached with Post: each worker owns its part (a
//     cache shard, per-connection tables indexed by [ConnCtx.Index]), only
//     its tasks touch it, and another worker or goroutine that needs it
//     posts a function there (see [Runtime.Post]'s example). No locks.
//   - A short critical section guarded by a sync.Mutex is tolerated in a
//     task: a lock held for a map lookup or insert (a sharded store whose
//     shards every worker reads) waits at most for another worker's equally
//     short section, so the worker stalls for nanoseconds, not for I/O.
//   - Never hold a lock across a suspension (Await, WithData, Sleep,
//     Select): the task yields with the lock held, other tasks of the worker
//     that want it block the worker's thread, and the worker deadlocks.
//     Never wait on a channel or a sync.WaitGroup in a task; use a Mailbox
//     or Select.
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
// # TLS
//
// [Config].TLS makes the listener serve TLS with crypto/tls, on both
// backends and without a goroutine per connection: each accepted
// connection completes its handshake inside its own task before OnAccept
// runs (bounded by Config.TLSHandshakeTimeout), and the handler reads and
// sends plaintext through the same methods, unchanged. A failed handshake
// closes that connection only; it is counted in
// WorkerStats.TLSHandshakeErrors and logged at debug level only.
// [ConnCtx.TLSInfo] describes the session (version, cipher suite, ALPN,
// SNI, peer certificates). Closing sends close_notify behind the queued
// bytes and waits for the peer's (Config.TLSCloseTimeout); a peer that
// closes without one is reported by Err as [ErrTLSTruncated].
// [TaskCtx.ConnectTLS] makes outbound TLS connections with the
// Config.TLSClient template. Handshake callbacks (GetCertificate,
// VerifyPeerCertificate...) run on the worker and must not block.
//
// # The net.Conn view
//
// [ConnCtx.NetConn] is a net.Conn over the connection for code written
// against net.Conn or io.Reader and io.Writer (bufio, net/textproto,
// net/http.ReadRequest, encoding/binary), used inside the connection's
// task: Read suspends the task until bytes arrive, Write queues and waits
// only when the connection has more than 64 KiB queued, deadlines have
// net.Conn's meaning. It costs a copy per byte read that WithData can
// avoid. Like every ConnCtx method it works only on the worker.
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
//   - ExampleConnCtx_SetReadDeadline: an idle timeout.
//   - ExampleSelect: a spawned ticker task, a timer and the client's data,
//     whichever comes first.
//   - ExampleRuntime_Post: per-worker state reached with Post.
//   - ExampleMailbox: values from a goroutine to a connection's task.
//   - Example_tls: a TLS server (the plaintext echo handler, unchanged)
//     and TLSInfo.
//   - ExampleConnCtx_NetConn: a line protocol with bufio on the net.Conn
//     view.
//   - ExampleConnCtx_SendParts: a cache reply, a header copied and the
//     value referenced (SendParts, Ref and its release).
//   - ExampleConnCtx_SendWait: streaming through a small pool, waiting for
//     room instead of failing.
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
// nothing and leave the connection working ([ConnCtx.SendWait] waits for
// room instead; on TLS connections too: room for every record is checked
// before any is sealed).
package ringline
