//go:build ringline_debug

package ringline

// debugPoison is set by the ringline_debug build tag (see debug.go).
const debugPoison = true
