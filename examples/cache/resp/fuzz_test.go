package resp

import (
	"fmt"
	"testing"
)

// FuzzParse checks, on any input, that the parser never panics, keeps
// its "need" promise, and yields the same commands (or the same error)
// whether the bytes come in one buffer or trickle in — which is what the
// resumable state must guarantee — and that every multi-bulk command it
// yields parses back identically once re-encoded.
//
// The seed corpus in testdata/fuzz/FuzzParse holds frames captured from
// redis-cli (command mode and --pipe), redis-benchmark and go-redis talking
// to this server, plus the malformed frames of the protocol tests; plain
// `go test` runs it. Fuzz with:
//
//	go test -run '^$' -fuzz FuzzParse ./examples/cache/resp
func FuzzParse(f *testing.F) {
	f.Add([]byte("*1\r\n$4\r\nPING\r\n"))
	f.Add([]byte("PING\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		const maxBulk = 1 << 16
		whole, rest := parseWhole(maxBulk, data)
		for _, chunk := range []int{1, 2, 7, 1 + len(data)/3} {
			got, r := parseChunked(maxBulk, data, chunk)
			if fmt.Sprint(got) != fmt.Sprint(whole) || r != rest {
				t.Fatalf("chunks of %d: %v (rest %d), whole buffer: %v (rest %d)", chunk, got, r, whole, rest)
			}
		}
		for _, ev := range whole {
			if ev.err != "" {
				continue
			}
			args := make([][]byte, len(ev.args))
			for i, a := range ev.args {
				args[i] = []byte(a)
			}
			enc := AppendCommand(nil, args...)
			back, r := parseWhole(maxBulk, enc)
			if r != 0 || len(back) != 1 || fmt.Sprint(back[0].args) != fmt.Sprint(ev.args) {
				t.Fatalf("round trip of %q gave %v (rest %d)", ev.args, back, r)
			}
		}
	})
}
