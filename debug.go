package ringline

// Debug builds (-tags ringline_debug) make misuse of lent memory visible:
// memory the library takes back is overwritten with poisonByte before
// anyone else can use it, so a slice kept past its contract shows 0xDB
// bytes instead of, silently, another connection's data. Test with the tag
// (`go test -tags ringline_debug ./...`); it costs a memset per buffer and
// per parse, so it is off in normal builds.
//
//   - Receive buffers, when they go back to the ring.
//   - The bytes a WithData closure consumed, when it returns (its slice is
//     valid only during the call; WithBytes data is never touched).
//   - Send pool slots, when the kernel is done with them.

// poisonByte fills memory the library has taken back, in debug builds.
const poisonByte = 0xDB

func poison(b []byte) {
	if debugPoison {
		for i := range b {
			b[i] = poisonByte
		}
	}
}

// recycle gives provided buffer bid back to the backend.
func (w *worker) recycle(bid uint16) {
	if w.holdRecycle(bid) {
		return // forwarded: back to the ring once its sends are done
	}
	if debugPoison {
		poison(w.be.buffer(bid))
	}
	w.be.recycle(bid)
}
