// Package check holds the comparisons behind ringline's test assertion
// packages (internal/assert and internal/require). They mirror the subset
// of testify's API the tests use, so that ringline's module graph carries
// no test-only dependency into its users' builds (testify requires a YAML
// module).
package check

//go:generate go run ./gen

import (
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"reflect"
	"strings"
)

// T is the part of testing.TB the checks need.
type T interface {
	Helper()
	Errorf(format string, args ...any)
	FailNow()
}

// Fail reports a failed check with its message and the caller's extra
// message (msgAndArgs: a string, or a format string and its arguments).
func Fail(t T, what string, msgAndArgs ...any) {
	t.Helper()
	if m := Message(msgAndArgs...); m != "" {
		t.Errorf("%s\n\tmessage: %s", what, m)
		return
	}
	t.Errorf("%s", what)
}

// Message renders msgAndArgs the way testify does.
func Message(msgAndArgs ...any) string {
	switch len(msgAndArgs) {
	case 0:
		return ""
	case 1:
		if s, ok := msgAndArgs[0].(string); ok {
			return s
		}
		return fmt.Sprintf("%+v", msgAndArgs[0])
	}
	f, _ := msgAndArgs[0].(string)
	return fmt.Sprintf(f, msgAndArgs[1:]...)
}

// Equal reports whether two values are equal: byte slices by content,
// everything else by reflect.DeepEqual.
func Equal(expected, actual any) bool {
	if expected == nil || actual == nil {
		return expected == actual
	}
	eb, ok1 := expected.([]byte)
	ab, ok2 := actual.([]byte)
	if ok1 && ok2 {
		if eb == nil || ab == nil {
			return eb == nil && ab == nil
		}
		return bytes.Equal(eb, ab)
	}
	return reflect.DeepEqual(expected, actual)
}

// IsNil reports whether v is nil or a nil pointer, map, slice, chan or
// func.
func IsNil(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Chan, reflect.Func, reflect.Interface, reflect.Map, reflect.Pointer, reflect.Slice, reflect.UnsafePointer:
		return rv.IsNil()
	}
	return false
}

// IsZero reports whether v is its type's zero value.
func IsZero(v any) bool {
	return v == nil || reflect.ValueOf(v).IsZero()
}

// IsEmpty reports whether v is nil, zero, or a zero-length array, slice,
// map, chan or string.
func IsEmpty(v any) bool {
	if v == nil {
		return true
	}
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Array, reflect.Chan, reflect.Map, reflect.Slice, reflect.String:
		return rv.Len() == 0
	case reflect.Pointer:
		if rv.IsNil() {
			return true
		}
		return IsEmpty(rv.Elem().Interface())
	}
	return rv.IsZero()
}

// Len returns v's length, or false when v has none.
func Len(v any) (int, bool) {
	rv := reflect.ValueOf(v)
	switch rv.Kind() {
	case reflect.Array, reflect.Chan, reflect.Map, reflect.Slice, reflect.String:
		return rv.Len(), true
	}
	return 0, false
}

// Contains reports whether s (a string, array, slice or map) holds
// elem (a substring, an element, a key); ok is false when s is none of
// those.
func Contains(s, elem any) (found, ok bool) {
	rv := reflect.ValueOf(s)
	switch rv.Kind() {
	case reflect.String:
		e, isStr := elem.(string)
		if !isStr {
			return false, false
		}
		return strings.Contains(rv.String(), e), true
	case reflect.Map:
		for _, k := range rv.MapKeys() {
			if Equal(k.Interface(), elem) {
				return true, true
			}
		}
		return false, true
	case reflect.Array, reflect.Slice:
		for i := 0; i < rv.Len(); i++ {
			if Equal(rv.Index(i).Interface(), elem) {
				return true, true
			}
		}
		return false, true
	}
	return false, false
}

// Compare orders two values of the same basic kind (integers, unsigned
// integers, floats, strings; time.Duration is an integer). ok is false when
// they cannot be ordered.
func Compare(a, b any) (c int, ok bool) {
	ra, rb := reflect.ValueOf(a), reflect.ValueOf(b)
	if !ra.IsValid() || !rb.IsValid() || ra.Type() != rb.Type() {
		return 0, false
	}
	switch ra.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		return cmp.Compare(ra.Int(), rb.Int()), true
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Uintptr:
		return cmp.Compare(ra.Uint(), rb.Uint()), true
	case reflect.Float32, reflect.Float64:
		return cmp.Compare(ra.Float(), rb.Float()), true
	case reflect.String:
		return cmp.Compare(ra.String(), rb.String()), true
	}
	return 0, false
}

// ErrorIs is errors.Is with a nil-safe description for failures.
func ErrorIs(err, target error) bool { return errors.Is(err, target) }

// ErrorAs is errors.As.
func ErrorAs(err error, target any) bool { return errors.As(err, target) }
