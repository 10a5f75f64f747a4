package ringline

import "errors"

var (
	// ErrClosed is returned by operations on a connection that is closed,
	// closing, or whose ConnCtx is stale (its slot was released).
	ErrClosed = errors.New("ringline: connection closed")
	// ErrStale is returned when a ConnCtx or ConnToken refers to a
	// connection whose slot was released (it closed and its task
	// returned, or, for an outbound one, its task connected again): the
	// slot may already hold a different connection, which the handle
	// never reaches. It is also what a call that waited on the connection
	// (SendFuture.Await, SendWait) returns when the slot was released
	// meanwhile. errors.Is(err, ErrClosed) also holds.
	ErrStale = staleError{}
	// ErrSendPoolExhausted is returned by SendNowait, Send, SendParts'
	// Submit and ForwardRecvBuf (when it copies) when the worker's send
	// pool has no room for the bytes. Nothing was queued; the connection
	// keeps working. To wait for room instead, use ConnCtx.SendWait: it
	// suspends the task until slots free up, serving the worker's waiting
	// tasks first come, first served. Retrying around an earlier send's
	// SendFuture also works when this connection has sends queued, but a
	// future with nothing queued resolves at once, so such a loop spins
	// the worker.
	ErrSendPoolExhausted = errors.New("ringline: send pool exhausted")
	// ErrSendQueueFull is returned by SendNowait, Send, SendParts' Submit
	// and ForwardRecvBuf when the bytes would take the connection's queue
	// (bytes waiting for the kernel, copied or not) past
	// Config.MaxSendQueue, typically because its peer does not read (or
	// because one send is larger than MaxSendQueue). Nothing was queued;
	// other connections are unaffected. SendWait waits until the queue
	// has room (and fails at once for a send larger than MaxSendQueue);
	// otherwise await an earlier SendFuture before sending more, or close
	// the connection.
	ErrSendQueueFull = errors.New("ringline: connection send queue full (Config.MaxSendQueue)")
	// ErrNotInTask is returned when a suspending method is called on the
	// connection's worker but outside any task (for example from the
	// handler factory), where there is nothing to suspend.
	ErrNotInTask = errors.New("ringline: called outside a ringline task")
	// ErrNotInWorker is returned by ConnCtx methods (and the futures they
	// return) called from a goroutine that is not the connection's worker:
	// neither the worker's loop nor one of its tasks. The call did
	// nothing.
	ErrNotInWorker = errors.New("ringline: ConnCtx used off its worker goroutine")
	// ErrRecvLimit is Err's answer for a connection closed because it
	// buffered Config.MaxRecvAccumulator bytes without its parser making
	// progress. Bytes still queued are dropped, and then the peer is reset
	// rather than sent a FIN.
	ErrRecvLimit = errors.New("ringline: receive accumulator limit reached without parse progress")
	// ErrDrainTimeout is Err's answer for a connection that was closed
	// with bytes still queued and reset because its peer did not take
	// them within Config.CloseDrainTimeout.
	ErrDrainTimeout = errors.New("ringline: queued sends did not drain before Config.CloseDrainTimeout; connection reset")
	// ErrShutdown is Err's answer for a connection closed by the
	// runtime's shutdown.
	ErrShutdown = errors.New("ringline: runtime shutting down")
)

type staleError struct{}

func (staleError) Error() string        { return "ringline: stale connection handle" }
func (staleError) Is(target error) bool { return target == ErrClosed }
