package main

import (
	"testing"

	"github.com/ringline-go/ringline/internal/require"
)

func TestParseStat(t *testing.T) {
	// comm with spaces and parentheses; utime 1234, stime 56.
	s := "4242 (a (b) c) S 1 4242 4242 0 -1 4194560 1000 0 0 0 1234 56 0 0 20 0 3 0 100 0 0"
	v, err := parseStat(s)
	require.NoError(t, err)
	require.Equal(t, int64(1290), v)
	_, err = parseStat("garbage")
	require.Error(t, err)
}

func TestParseCSV(t *testing.T) {
	out := "WARNING: x\n\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n" +
		"\"SET\",\"51020.41\",\"0.900\",\"0.100\",\"0.455\",\"1.500\",\"2.159\",\"9.000\"\n"
	v, err := parseCSV(out)
	require.NoError(t, err)
	require.Equal(t, 51020.41, v[1])
	require.Equal(t, 0.455, v[4])
	require.Equal(t, 2.159, v[6])
	_, err = parseCSV("Could not connect")
	require.Error(t, err)
}
