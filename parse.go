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
//
// What retaining one costs: a Bytes keeps alive the whole array it points
// into, the connection's receive accumulator as it was when the bytes
// arrived. After a WithBytes closure that array is never reused (a value
// may point into it): the next receive gets a fresh one sized to the data
// it holds, rounded up to 64 bytes. So a value cut from a small read pins
// a small array (TestRetainedBytesDoNotPinLargeArrays keeps it under 512
// bytes per retained one-byte value; before that sizing, 20,000 of them
// cost 91.5 MB against 11.8 MB copied), but a value cut from a large
// burst (many pipelined messages in one read) pins that burst's array.
// Copy a small value kept long (append([]byte(nil), b...)); use WithData
// when nothing is retained, which reuses one accumulator.
type Bytes []byte
