package resp

import "strconv"

// Reply accumulates the replies of a batch of requests: bytes copied into
// B, and big values referenced rather than copied. A Ref's value goes on
// the wire after B[:Off] and before B[Off:]; refs are in Off order.
//
// Referenced values must be immutable while the reply is sent (the store
// guarantees it for values of RefMin bytes and more). Today the server
// sends a Ref by copying it into the send pool in chunks; with a
// scatter-gather send that takes caller-owned parts, a Ref becomes such a
// part and is never copied.
type Reply struct {
	B    []byte
	Refs []Ref
	refN int // bytes in Refs
}

// Ref is a referenced value in a Reply.
type Ref struct {
	Off int
	Val []byte
}

// Len is the number of bytes the reply puts on the wire.
func (r *Reply) Len() int { return len(r.B) + r.refN }

// Reset empties the reply, keeping its buffers.
func (r *Reply) Reset() {
	r.B = r.B[:0]
	clear(r.Refs)
	r.Refs = r.Refs[:0]
	r.refN = 0
}

// Ref appends val by reference.
func (r *Reply) Ref(val []byte) {
	r.Refs = append(r.Refs, Ref{Off: len(r.B), Val: val})
	r.refN += len(val)
}

// BulkRef appends a bulk string whose payload is referenced.
func (r *Reply) BulkRef(val []byte) {
	r.B = AppendBulkLen(r.B, len(val))
	r.Ref(val)
	r.B = append(r.B, '\r', '\n')
}

// AppendSimple appends a simple string reply: +s CRLF.
func AppendSimple(b []byte, s string) []byte {
	b = append(b, '+')
	b = append(b, s...)
	return append(b, '\r', '\n')
}

// AppendErr appends an error reply; msg starts with its code ("ERR ...")
// and must not contain CR or LF.
func AppendErr(b []byte, msg string) []byte {
	b = append(b, '-')
	b = append(b, msg...)
	return append(b, '\r', '\n')
}

// AppendInt appends an integer reply.
func AppendInt(b []byte, n int64) []byte {
	if n >= 0 && n <= 9 {
		return append(b, ':', byte('0'+n), '\r', '\n')
	}
	b = append(b, ':')
	b = strconv.AppendInt(b, n, 10)
	return append(b, '\r', '\n')
}

// AppendArrayLen appends an array header of n elements.
func AppendArrayLen(b []byte, n int) []byte {
	b = append(b, '*')
	b = strconv.AppendInt(b, int64(n), 10)
	return append(b, '\r', '\n')
}

// AppendBulkLen appends a bulk string header for n bytes.
func AppendBulkLen(b []byte, n int) []byte {
	if n < 10 {
		return append(b, '$', byte('0'+n), '\r', '\n')
	}
	b = append(b, '$')
	b = strconv.AppendInt(b, int64(n), 10)
	return append(b, '\r', '\n')
}

// AppendBulk appends a bulk string reply holding v.
func AppendBulk(b, v []byte) []byte {
	b = AppendBulkLen(b, len(v))
	b = append(b, v...)
	return append(b, '\r', '\n')
}

// AppendBulkString appends a bulk string reply holding s.
func AppendBulkString(b []byte, s string) []byte {
	b = AppendBulkLen(b, len(s))
	b = append(b, s...)
	return append(b, '\r', '\n')
}

// AppendNull appends the RESP2 null bulk string ($-1).
func AppendNull(b []byte) []byte { return append(b, "$-1\r\n"...) }

// AppendCommand appends args encoded as a multi-bulk request, the form
// clients send.
func AppendCommand(b []byte, args ...[]byte) []byte {
	b = AppendArrayLen(b, len(args))
	for _, a := range args {
		b = AppendBulk(b, a)
	}
	return b
}
