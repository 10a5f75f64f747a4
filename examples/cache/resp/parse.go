// Package resp reads RESP2 requests (multi-bulk frames and inline commands)
// and writes RESP2 replies, the way redis-server 7 does: the same limits,
// the same protocol error messages, and the same tolerance.
//
// The parser is built for a receive buffer that is only borrowed (a ringline
// WithData closure): arguments of a multi-bulk frame are slices of the
// buffer itself (no copy), and a frame that is not complete yet leaves its
// progress in the Parser, so the next call — over the same frame start with
// more bytes behind it — resumes where the last one stopped instead of
// rescanning, and the caller learns how many bytes to wait for.
package resp

// Redis's limits.
const (
	// MaxInlineSize is the longest inline command line and the longest
	// multi-bulk header line (PROTO_INLINE_MAX_SIZE).
	MaxInlineSize = 64 << 10
	// DefaultMaxBulk is redis's proto-max-bulk-len (512 MB).
	DefaultMaxBulk = 512 << 20
	// MaxMultibulk is the largest element count redis accepts (INT_MAX).
	MaxMultibulk = 1<<31 - 1
)

// Error is a protocol error: the request cannot be parsed and the
// connection must be closed after the reply. Reply is the whole error
// reply line as redis sends it, e.g. "-ERR Protocol error: invalid bulk
// length\r\n".
type Error struct {
	Msg string // without "-ERR " and CRLF
}

// Error returns the message as the error reply carries it ("ERR ...").
func (e *Error) Error() string { return "ERR " + e.Msg }

// AppendReply appends the error reply to b.
func (e *Error) AppendReply(b []byte) []byte {
	b = append(b, "-ERR "...)
	b = append(b, e.Msg...)
	return append(b, '\r', '\n')
}

var (
	errMultibulkLen   = &Error{"Protocol error: invalid multibulk length"}
	errBulkLen        = &Error{"Protocol error: invalid bulk length"}
	errBigInline      = &Error{"Protocol error: too big inline request"}
	errBigMultibulk   = &Error{"Protocol error: too big mbulk count string"}
	errBigBulkCount   = &Error{"Protocol error: too big bulk count string"}
	errUnbalanced     = &Error{"Protocol error: unbalanced quotes in request"}
	errExpectedDollar [256]*Error
	errExpectedCRLF   [256]*Error
)

func init() {
	for i := range errExpectedDollar {
		c := string([]byte{byte(i)})
		errExpectedDollar[i] = &Error{"Protocol error: expected '$', got '" + c + "'"}
		errExpectedCRLF[i] = &Error{"Protocol error: expected CRLF after bulk data, got '" + c + "'"}
	}
	// A reply line must not carry CR or LF.
	for _, c := range []byte{'\r', '\n'} {
		errExpectedDollar[c] = &Error{"Protocol error: expected '$', got ' '"}
		errExpectedCRLF[c] = &Error{"Protocol error: expected CRLF after bulk data, got ' '"}
	}
}

type span struct{ start, end int }

// Parser parses one connection's requests. The zero value is not ready:
// set MaxBulk (or use NewParser).
type Parser struct {
	// MaxBulk is the largest bulk argument accepted (redis's
	// proto-max-bulk-len); a larger declared length is refused with
	// "invalid bulk length" before anything is allocated for it.
	MaxBulk int64

	// State of a frame that is not complete yet, relative to its start.
	inFrame bool
	want    int    // elements declared by the '*' line
	pos     int    // where parsing resumes
	scanned int    // bytes known to hold no line end (header/inline scan)
	spans   []span // elements parsed so far
	args    [][]byte
	inline  []byte // unescaped inline arguments
}

// NewParser returns a Parser refusing bulk arguments over maxBulk.
func NewParser(maxBulk int64) *Parser { return &Parser{MaxBulk: maxBulk} }

// Shrink drops the argument slices once a request with very many
// arguments has made them large, so a connection does not keep that
// memory; the next requests grow them again as needed. It keeps the
// progress of a partially parsed request. Arguments returned by Next stay
// valid (they are not overwritten, only no longer reused).
func (p *Parser) Shrink() {
	if p.inFrame {
		return // spans hold a partial request's progress
	}
	if cap(p.args) > 1024 {
		p.args, p.spans = nil, nil
	}
	if cap(p.inline) > MaxInlineSize/4 {
		p.inline = nil
	}
}

// Reset forgets a partially parsed frame.
func (p *Parser) Reset() {
	p.inFrame, p.want, p.pos, p.scanned = false, 0, 0, 0
	p.spans = p.spans[:0]
}

// Next parses the request at the start of buf.
//
//   - A complete request: n > 0 is its length in bytes and args its
//     arguments; args may be empty (an empty inline line, "*0\r\n" and
//     negative counts are requests redis skips). Multi-bulk arguments are
//     slices of buf; inline arguments live in the Parser. Both are valid
//     until the next call.
//   - Not complete yet: n == 0, err == nil, and need > len(buf) is how many
//     bytes buf must hold (from the same start) before anything can
//     change. The next call must pass a buffer that starts with the same
//     bytes; the Parser resumes where it stopped.
//   - A protocol error: err != nil; the caller replies with it and closes
//     the connection (as redis does). The Parser is reset.
func (p *Parser) Next(buf []byte) (args [][]byte, n, need int, err *Error) {
	if len(buf) == 0 {
		return nil, 0, 1, nil
	}
	if buf[0] != '*' {
		return p.nextInline(buf)
	}
	if !p.inFrame {
		// A line longer than redis's limit is refused whether or not its
		// end has arrived, so the outcome never depends on how the bytes
		// were split into reads (redis's does, slightly).
		cr, ok := p.scanCR(buf, 1)
		if !ok || cr > MaxInlineSize {
			if len(buf) > MaxInlineSize {
				p.Reset()
				return nil, 0, 0, errBigMultibulk
			}
			return nil, 0, len(buf) + 1, nil
		}
		if cr+1 >= len(buf) {
			return nil, 0, cr + 2, nil
		}
		ll, ok := parseInt(buf[1:cr])
		if !ok || ll > MaxMultibulk || buf[cr+1] != '\n' {
			p.Reset()
			return nil, 0, 0, errMultibulkLen
		}
		if ll <= 0 {
			p.Reset()
			return nil, cr + 2, 0, nil
		}
		p.inFrame, p.want, p.pos, p.scanned = true, int(ll), cr+2, 0
		p.spans = p.spans[:0]
	}
	for len(p.spans) < p.want {
		pos := p.pos
		if pos >= len(buf) {
			return nil, 0, pos + 1, nil
		}
		// Like redis, the line is found before its first byte is judged.
		cr, ok := p.scanCR(buf, pos)
		if !ok || cr-pos > MaxInlineSize {
			if len(buf)-pos > MaxInlineSize {
				p.Reset()
				return nil, 0, 0, errBigBulkCount
			}
			return nil, 0, len(buf) + 1, nil
		}
		if cr+1 >= len(buf) {
			return nil, 0, cr + 2, nil
		}
		if buf[pos] != '$' {
			p.Reset()
			return nil, 0, 0, errExpectedDollar[buf[pos]]
		}
		ll, ok := parseInt(buf[pos+1 : cr])
		if !ok || ll < 0 || ll > p.MaxBulk || buf[cr+1] != '\n' {
			p.Reset()
			return nil, 0, 0, errBulkLen
		}
		start := cr + 2
		end := start + int(ll)
		if end+2 > len(buf) {
			return nil, 0, end + 2, nil
		}
		if buf[end] != '\r' {
			p.Reset()
			return nil, 0, 0, errExpectedCRLF[buf[end]]
		}
		if buf[end+1] != '\n' {
			p.Reset()
			return nil, 0, 0, errExpectedCRLF[buf[end+1]]
		}
		p.spans = append(p.spans, span{start, end})
		p.pos, p.scanned = end+2, 0
	}
	args = p.args[:0]
	for _, s := range p.spans {
		args = append(args, buf[s.start:s.end:s.end])
	}
	p.args = args
	n = p.pos
	p.Reset()
	return args, n, 0, nil
}

// scanCR finds the first '\r' at or after from, resuming a scan that an
// earlier call over the same frame left unfinished.
func (p *Parser) scanCR(buf []byte, from int) (int, bool) {
	if p.scanned > from {
		from = p.scanned
	}
	for i := from; i < len(buf); i++ {
		if buf[i] == '\r' {
			return i, true
		}
	}
	p.scanned = len(buf)
	return 0, false
}

// nextInline parses a redis inline command: one line, arguments split on
// spaces with redis's quoting rules.
func (p *Parser) nextInline(buf []byte) ([][]byte, int, int, *Error) {
	nl := -1
	for i := p.scanned; i < len(buf); i++ {
		if buf[i] == '\n' {
			nl = i
			break
		}
	}
	if nl < 0 || nl > MaxInlineSize {
		if len(buf) > MaxInlineSize {
			p.Reset()
			return nil, 0, 0, errBigInline
		}
		p.scanned = len(buf)
		return nil, 0, len(buf) + 1, nil
	}
	p.scanned = 0
	line := buf[:nl]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	args, ok := p.splitArgs(line)
	if !ok {
		return nil, 0, 0, errUnbalanced
	}
	return args, nl + 1, 0, nil
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'
}

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func hexVal(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c >= 'a':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// splitArgs splits an inline line as redis's sdssplitargs does: "double
// quotes" take \n \r \t \b \a \xHH and \<c> escapes, 'single quotes' take
// \', a closing quote must be followed by a space or the end, and a NUL
// byte ends the line (redis reads it as a C string).
func (p *Parser) splitArgs(line []byte) ([][]byte, bool) {
	for i, c := range line {
		if c == 0 {
			line = line[:i]
			break
		}
	}
	p.inline = p.inline[:0]
	p.spans = p.spans[:0]
	at := func(i int) byte {
		if i < len(line) {
			return line[i]
		}
		return 0
	}
	i := 0
	for {
		for i < len(line) && isSpace(line[i]) {
			i++
		}
		if i >= len(line) {
			break
		}
		start := len(p.inline)
		inq, insq, done := false, false, false
		for !done {
			c := at(i)
			switch {
			case inq:
				switch {
				case c == '\\' && at(i+1) == 'x' && isHex(at(i+2)) && isHex(at(i+3)):
					p.inline = append(p.inline, hexVal(at(i+2))<<4|hexVal(at(i+3)))
					i += 3
				case c == '\\' && at(i+1) != 0:
					i++
					e := at(i)
					switch e {
					case 'n':
						e = '\n'
					case 'r':
						e = '\r'
					case 't':
						e = '\t'
					case 'b':
						e = '\b'
					case 'a':
						e = '\a'
					}
					p.inline = append(p.inline, e)
				case c == '"':
					if n := at(i + 1); n != 0 && !isSpace(n) {
						return nil, false
					}
					done = true
				case c == 0:
					return nil, false
				default:
					p.inline = append(p.inline, c)
				}
			case insq:
				switch {
				case c == '\\' && at(i+1) == '\'':
					i++
					p.inline = append(p.inline, '\'')
				case c == '\'':
					if n := at(i + 1); n != 0 && !isSpace(n) {
						return nil, false
					}
					done = true
				case c == 0:
					return nil, false
				default:
					p.inline = append(p.inline, c)
				}
			default:
				switch c {
				case ' ', '\n', '\r', '\t', 0:
					done = true
				case '"':
					inq = true
				case '\'':
					insq = true
				default:
					p.inline = append(p.inline, c)
				}
			}
			if i < len(line) {
				i++
			}
		}
		p.spans = append(p.spans, span{start, len(p.inline)})
	}
	args := p.args[:0]
	for _, s := range p.spans {
		args = append(args, p.inline[s.start:s.end:s.end])
	}
	p.args = args
	p.spans = p.spans[:0]
	return args, true
}

// parseInt is redis's string2ll: optional '-', digits without a leading
// zero (only "0" itself), no '+' or spaces, within int64.
func parseInt(b []byte) (int64, bool) {
	n := len(b)
	if n == 1 && b[0] >= '0' && b[0] <= '9' {
		return int64(b[0] - '0'), true
	}
	if n == 0 || n > 20 {
		return 0, false
	}
	neg := b[0] == '-'
	p := 0
	if neg {
		p = 1
		if n == 1 {
			return 0, false
		}
	}
	if b[p] < '1' || b[p] > '9' {
		return 0, false
	}
	var v uint64
	for ; p < n; p++ {
		c := b[p]
		if c < '0' || c > '9' {
			return 0, false
		}
		if v > (1<<64-1-9)/10 {
			return 0, false
		}
		v = v*10 + uint64(c-'0')
	}
	if neg {
		if v > 1<<63 {
			return 0, false
		}
		return -int64(v), true
	}
	if v > 1<<63-1 {
		return 0, false
	}
	return int64(v), true
}

// ParseInt parses a decimal int64 with redis's string2ll rules (as used
// for lengths, integer arguments and INCR): an optional '-', digits with no
// leading zero (only "0" itself), no '+' or spaces, "-0" refused.
func ParseInt(b []byte) (int64, bool) { return parseInt(b) }
