package ringline

// ParseResult is what a WithData or WithBytes closure reports about the
// bytes it was shown.
type ParseResult struct {
	consumed int
	need     int // total buffered bytes wanted before the closure runs again
}

// Consumed reports that the first n bytes were used; they are dropped from
// the connection's receive buffer and WithData returns n. Consumed(0) is the
// same as NeedMore. n larger than the bytes shown is clamped.
func Consumed(n int) ParseResult { return ParseResult{consumed: n} }

// NeedMore reports that the bytes shown hold no complete message; the
// closure runs again, over the same bytes plus more, once more arrive.
func NeedMore() ParseResult { return ParseResult{} }

// NeedAtLeast reports that no message can complete before n bytes are
// buffered; the closure is not run again until then (or EOF).
func NeedAtLeast(n int) ParseResult { return ParseResult{need: n} }

// Bytes is received data that may be retained after the closure returns
// and sliced in O(1). The library never overwrites memory a Bytes refers
// to; its capacity is clipped to its length so append copies.
type Bytes []byte
