package ringline

import "errors"

var (
	// ErrClosed is returned by operations on a connection that is closed,
	// closing, or whose ConnCtx is stale (its slot was reused).
	ErrClosed = errors.New("ringline: connection closed")
	// ErrStale is returned when a ConnCtx or ConnToken refers to a slot
	// that now holds a different connection. errors.Is(err, ErrClosed)
	// also holds.
	ErrStale = staleError{}
	// ErrSendPoolExhausted is returned by SendNowait and Send when the
	// worker's send pool has no room for the bytes. Nothing was queued;
	// the connection keeps working and the call can be retried once
	// earlier sends complete (await a SendFuture to wait for that).
	ErrSendPoolExhausted = errors.New("ringline: send pool exhausted")
	// ErrNotInTask is returned when a suspending ConnCtx method is called
	// from outside a task running on the connection's worker.
	ErrNotInTask = errors.New("ringline: called outside a ringline task")
)

type staleError struct{}

func (staleError) Error() string        { return "ringline: stale connection handle" }
func (staleError) Is(target error) bool { return target == ErrClosed }
