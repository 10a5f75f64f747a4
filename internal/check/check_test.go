package check

import (
	"errors"
	"fmt"
	"io"
	"testing"
	"time"
)

func TestEqual(t *testing.T) {
	cases := []struct {
		a, b any
		want bool
	}{
		{[]byte("ab"), []byte("ab"), true},
		{[]byte("ab"), []byte("ac"), false},
		{[]byte{}, []byte(nil), false},
		{1, 1, true},
		{1, int64(1), false},
		{"x", "x", true},
		{nil, nil, true},
		{nil, 0, false},
		{[]int{1, 2}, []int{1, 2}, true},
	}
	for _, c := range cases {
		if got := Equal(c.a, c.b); got != c.want {
			t.Errorf("Equal(%#v, %#v) = %v, want %v", c.a, c.b, got, c.want)
		}
	}
}

func TestContainsAndCompare(t *testing.T) {
	if f, ok := Contains("hello", "ell"); !f || !ok {
		t.Error("substring")
	}
	if f, ok := Contains([]int32{1, 2}, int32(2)); !f || !ok {
		t.Error("slice element")
	}
	if f, ok := Contains(map[string]bool{"a": true}, "b"); f || !ok {
		t.Error("map key")
	}
	if _, ok := Contains(3, 3); ok {
		t.Error("an int contains nothing")
	}
	if c, ok := Compare(time.Second, 2*time.Second); !ok || c >= 0 {
		t.Error("durations order")
	}
	if _, ok := Compare(1, uint(1)); ok {
		t.Error("mixed types must not order")
	}
	if !IsEmpty("") || IsEmpty([]int{0}) || !IsZero(0) || IsNil(0) || !IsNil((*int)(nil)) {
		t.Error("emptiness")
	}
	if !ErrorIs(fmt.Errorf("w: %w", io.EOF), io.EOF) || ErrorIs(errors.New("x"), io.EOF) {
		t.Error("ErrorIs")
	}
}

type fakeT struct {
	msgs   []string
	failed bool
}

func (f *fakeT) Helper()                        {}
func (f *fakeT) Errorf(format string, a ...any) { f.msgs = append(f.msgs, fmt.Sprintf(format, a...)) }
func (f *fakeT) FailNow()                       { f.failed = true }

func TestFailMessage(t *testing.T) {
	var f fakeT
	Fail(&f, "what", "got %d", 3)
	if len(f.msgs) != 1 || f.msgs[0] != "what\n\tmessage: got 3" {
		t.Errorf("message = %q", f.msgs)
	}
}
