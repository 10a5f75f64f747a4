package store

import (
	"bytes"
	"fmt"
	"math"
	"runtime"
	"strings"
	"sync"
	"testing"

	"github.com/ringline-go/ringline/internal/require"
)

func bulk(dst, v []byte) []byte { return append(dst, v...) }

func get(s *Store, key string, now int64) (string, bool) {
	out, ref, ok := s.Get(nil, []byte(key), now, bulk)
	if ref != nil {
		return string(ref), ok
	}
	return string(out), ok
}

func TestSetGetDel(t *testing.T) {
	s := New(Options{})
	const now = 1000
	_, ok := get(s, "k", now)
	require.False(t, ok)
	require.True(t, s.Set([]byte("k"), []byte("v1"), 0, now, 0))
	v, ok := get(s, "k", now)
	require.True(t, ok)
	require.Equal(t, "v1", v)
	// Binary keys and values.
	bin := []byte("\x00\r\n\xff")
	require.True(t, s.Set(bin, bin, 0, now, 0))
	v, _ = get(s, string(bin), now)
	require.Equal(t, string(bin), v)
	require.Equal(t, int64(2), s.Len())
	require.True(t, s.Del([]byte("k"), now))
	require.False(t, s.Del([]byte("k"), now))
	require.False(t, s.Exists([]byte("k"), now))
	require.True(t, s.Exists(bin, now))
	require.Equal(t, int64(1), s.Len())
	s.Flush()
	require.Equal(t, int64(0), s.Len())
	require.Equal(t, int64(0), s.MemUsed())
}

func TestSetModes(t *testing.T) {
	s := New(Options{})
	k := []byte("k")
	require.False(t, s.Set(k, []byte("a"), 0, 1, SetXX))
	require.True(t, s.Set(k, []byte("a"), 0, 1, SetNX))
	require.False(t, s.Set(k, []byte("b"), 0, 1, SetNX))
	require.True(t, s.Set(k, []byte("c"), 5000, 1, SetXX))
	require.Equal(t, int64(4999), s.TTL(k, 1))
	require.True(t, s.Set(k, []byte("d"), 0, 1, SetKeepTTL))
	require.Equal(t, int64(4999), s.TTL(k, 1))
	require.True(t, s.Set(k, []byte("e"), 0, 1, 0))
	require.Equal(t, int64(-1), s.TTL(k, 1))
	require.Equal(t, int64(-2), s.TTL([]byte("nope"), 1))
	v, _ := get(s, "k", 1)
	require.Equal(t, "e", v)
}

func TestExpiry(t *testing.T) {
	s := New(Options{Shards: 4})
	k := []byte("k")
	s.Set(k, []byte("v"), 100, 10, 0)
	_, ok := get(s, "k", 99)
	require.True(t, ok)
	_, ok = get(s, "k", 100) // lazily reclaimed on access
	require.False(t, ok)
	require.Equal(t, uint64(1), s.Expired())
	require.Equal(t, int64(0), s.Len())

	// EXPIRE conditions.
	s.Set(k, []byte("v"), 0, 10, 0)
	require.False(t, s.Expire(k, 500, 10, ExpireXX))
	require.False(t, s.Expire(k, 500, 10, ExpireGT)) // no deadline counts as infinite
	require.True(t, s.Expire(k, 500, 10, ExpireLT))
	require.False(t, s.Expire(k, 600, 10, ExpireNX))
	require.False(t, s.Expire(k, 400, 10, ExpireGT))
	require.True(t, s.Expire(k, 600, 10, ExpireGT|ExpireXX))
	require.False(t, s.Expire(k, 700, 10, ExpireLT|ExpireXX))
	require.True(t, s.Expire(k, 550, 10, ExpireLT|ExpireXX))
	require.Equal(t, int64(540), s.TTL(k, 10))
	require.False(t, s.Expire([]byte("nope"), 500, 10, 0))
	// A deadline in the past deletes.
	require.True(t, s.Expire(k, 5, 10, 0))
	require.False(t, s.Exists(k, 10))
}

// TestActiveExpiry: expired keys nobody touches are reclaimed by sampled
// cycles, without a full scan, and keys without deadlines are left alone.
func TestActiveExpiry(t *testing.T) {
	s := New(Options{Shards: 16})
	for i := 0; i < 10000; i++ {
		at := int64(0)
		if i%2 == 0 {
			at = 50
		}
		s.Set([]byte(fmt.Sprintf("k%d", i)), []byte("v"), at, 1, 0)
	}
	require.Equal(t, int64(5000), s.Volatile())
	require.Equal(t, 0, s.ActiveExpire(10, 16)) // nothing due yet
	cycles := 0
	for s.Len() > 5000 && cycles < 1000 {
		s.ActiveExpire(100, 4)
		cycles++
	}
	require.Equal(t, int64(5000), s.Len(), "after %d cycles", cycles)
	require.Equal(t, uint64(5000), s.Expired())
	require.Equal(t, int64(0), s.Volatile())
	_, ok := get(s, "k1", 100)
	require.True(t, ok)
}

// TestEviction: with maxmemory set, writes evict (approximately) least
// recently used keys to stay under the bound.
func TestEviction(t *testing.T) {
	const max = 200 << 10
	s := New(Options{Shards: 8, MaxMemory: max})
	val := bytes.Repeat([]byte("x"), 100)
	now := int64(1)
	s.Set([]byte("hot"), val, 0, now, 0)
	for i := 0; i < 20000; i++ {
		now++
		_, ok := get(s, "hot", now) // keep "hot" recently used
		require.True(t, ok, "hot key evicted at write %d", i)
		require.True(t, s.Reserve(now))
		s.Set([]byte(fmt.Sprintf("key:%d", i)), val, 0, now, 0)
		require.LessOrEqual(t, s.MemUsed(), int64(max+EntryOverhead+hdrSize+200))
	}
	require.Greater(t, s.Evicted(), uint64(15000))
	// Eviction keeps the shards balanced (none drains).
	avg := float64(s.Len()) / float64(len(s.shards))
	for i := range s.shards {
		require.Greater(t, float64(len(s.shards[i].items)), avg/2, "shard %d", i)
	}
	checkStore(t, s)
	require.Less(t, s.Len(), int64(2000))
	// Recent keys survive more often than old ones.
	old, recent := 0, 0
	for i := 0; i < 1000; i++ {
		if s.Exists([]byte(fmt.Sprintf("key:%d", i)), now) {
			old++
		}
		if s.Exists([]byte(fmt.Sprintf("key:%d", 19000+i)), now) {
			recent++
		}
	}
	require.Greater(t, recent, 4*old+100, "old %d recent %d", old, recent)

	// Nothing to evict: Reserve says so.
	tiny := New(Options{MaxMemory: 10})
	require.True(t, tiny.Reserve(1))
	tiny.Set([]byte("a"), val, 0, 1, 0)
	require.True(t, tiny.Reserve(1)) // evicts "a"
	require.Equal(t, int64(0), tiny.Len())
	require.Equal(t, int64(0), tiny.MemUsed())
}

func TestIncrBy(t *testing.T) {
	s := New(Options{})
	k := []byte("n")
	n, err := s.IncrBy(k, 1, 1)
	require.NoError(t, err)
	require.Equal(t, int64(1), n)
	n, err = s.IncrBy(k, -11, 1)
	require.NoError(t, err)
	require.Equal(t, int64(-10), n)
	v, _ := get(s, "n", 1)
	require.Equal(t, "-10", v)
	s.Set(k, []byte("9223372036854775807"), 500, 1, 0)
	_, err = s.IncrBy(k, 1, 1)
	require.ErrorIs(t, err, ErrOverflow)
	n, err = s.IncrBy(k, math.MinInt64, 1)
	require.NoError(t, err)
	require.Equal(t, int64(-1), n)
	require.Equal(t, int64(499), s.TTL(k, 1), "INCR keeps the deadline")
	for _, bad := range []string{"1.5", " 1", "01", "", "abc", "-0", "+1"} {
		s.Set(k, []byte(bad), 0, 1, 0)
		_, err = s.IncrBy(k, 1, 1)
		require.ErrorIs(t, err, ErrNotInteger, "%q", bad)
	}
}

// TestBigValuesAreImmutable: a value of RefMin bytes or more is handed out
// by reference, so a later write must never touch the bytes a reader
// holds.
func TestBigValuesAreImmutable(t *testing.T) {
	s := New(Options{RefMin: 1024})
	a := bytes.Repeat([]byte("a"), 2000)
	s.Set([]byte("k"), a, 0, 1, 0)
	_, ref, ok := s.Get(nil, []byte("k"), 1, bulk)
	require.True(t, ok)
	require.Equal(t, 2000, len(ref))
	s.Set([]byte("k"), bytes.Repeat([]byte("b"), 2000), 0, 1, 0)
	s.Set([]byte("k"), []byte("c"), 0, 1, 0)
	require.Equal(t, string(a), string(ref))
	// A small value is copied out under the lock instead.
	out, ref, ok := s.Get([]byte("x"), []byte("k"), 1, bulk)
	require.True(t, ok)
	require.Nil(t, ref)
	require.Equal(t, "xc", string(out))
}

// TestSteadyStateNoAllocs: overwriting and reading a small value, and
// incrementing, allocate nothing once the key exists.
func TestSteadyStateNoAllocs(t *testing.T) {
	s := New(Options{})
	key, val := []byte("key:__rand_int__"), bytes.Repeat([]byte("x"), 64)
	s.Set(key, val, 0, 1, 0)
	dst := make([]byte, 0, 256)
	s.IncrBy([]byte("counter"), 1, 1)
	allocs := testing.AllocsPerRun(1000, func() {
		s.Set(key, val, 0, 1, 0)
		dst, _, _ = s.Get(dst[:0], key, 1, bulk)
		s.IncrBy([]byte("counter"), 1, 1)
		s.Exists(key, 1)
	})
	require.Equal(t, 0.0, allocs)
	require.Equal(t, int64(2*hdrSize+len("key:__rand_int__")+64+len("counter")+20+2*EntryOverhead), s.MemUsed())
}

// TestConcurrent exercises every operation from several goroutines (run
// with -race); the counters must add up.
func TestConcurrent(t *testing.T) {
	s := New(Options{Shards: 4, MaxMemory: 1 << 20, RefMin: 512})
	var wg sync.WaitGroup
	const G, N = 4, 3000
	for g := 0; g < G; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			val := bytes.Repeat([]byte{byte('a' + g)}, 100+g*300)
			for i := 0; i < N; i++ {
				now := Now()
				k := []byte(fmt.Sprintf("k%d", i%500))
				switch i % 7 {
				case 0, 1:
					s.Reserve(now)
					s.Set(k, val, now+int64(i%3)*5, now, 0)
				case 2:
					s.Get(nil, k, now, bulk)
				case 3:
					s.IncrBy([]byte("ctr"), 1, now)
				case 4:
					s.Expire(k, now+100, now, 0)
				case 5:
					s.Del(k, now)
				case 6:
					s.ActiveExpire(now+10, 2)
				}
			}
		}(g)
	}
	wg.Wait()
	n, err := s.IncrBy([]byte("ctr"), 0, Now())
	if err == nil {
		require.LessOrEqual(t, n, int64(G*N/7+G))
	}
	checkStore(t, s)
}

func countBig(sh *shard) int {
	n := 0
	for _, it := range sh.items {
		if it.big {
			n++
		}
	}
	return n
}

// checkStore verifies the store's internal invariants: every item is in
// the index under its own key, at its position in items, in vol exactly
// when it has a deadline, in big exactly when flagged; counters add up.
func checkStore(t *testing.T, s *Store) {
	t.Helper()
	var keys, mem int64
	for i := range s.shards {
		sh := &s.shards[i]
		require.Equal(t, len(sh.index), len(sh.items))
		for j, it := range sh.items {
			keys++
			mem += sh.cost(it)
			require.Equal(t, int32(j), it.pos)
			require.True(t, sh.index[it.key()] == it)
			require.Equal(t, it.big, sh.big[it] != nil)
			if it.volPos >= 0 {
				require.True(t, sh.vol[it.volPos] == it)
			} else {
				require.Zero(t, it.exp)
			}
		}
		require.Equal(t, len(sh.big), countBig(sh))
	}
	require.Equal(t, keys, s.Len())
	require.Equal(t, mem, s.MemUsed())
}

// TestValueTransitions walks one key through every storage change — grow
// in place, grow into a new item, shrink, become big, become small again,
// turn into a counter — with the garbage collector running in between,
// checking the value and the store's invariants at each step.
func TestValueTransitions(t *testing.T) {
	s := New(Options{Shards: 2, RefMin: 1000})
	k := []byte("key")
	vals := []string{"a", "ab", strings.Repeat("c", 40), "d", strings.Repeat("e", 999),
		strings.Repeat("f", 1000), strings.Repeat("g", 5000), "h", strings.Repeat("i", 2000), "12"}
	s.Set([]byte("other"), []byte("o"), 900, 1, 0)
	for i, v := range vals {
		require.True(t, s.Set(k, []byte(v), int64(1000+i), 1, 0))
		runtime.GC()
		got, ok := get(s, "key", 1)
		require.True(t, ok)
		require.Equal(t, v, got, "step %d", i)
		require.Equal(t, int64(999+i), s.TTL(k, 1))
		checkStore(t, s)
	}
	for i := 0; i < 3; i++ {
		n, err := s.IncrBy(k, 1_000_000_000_000, 1)
		require.NoError(t, err)
		require.Equal(t, 12+int64(i+1)*1_000_000_000_000, n)
		runtime.GC()
		checkStore(t, s)
	}
	s.Set(k, []byte(strings.Repeat("j", 3000)), 0, 1, 0)
	_, err := s.IncrBy(k, 1, 1)
	require.ErrorIs(t, err, ErrNotInteger)
	require.True(t, s.Del(k, 1))
	v, ok := get(s, "other", 1)
	require.True(t, ok)
	require.Equal(t, "o", v)
	checkStore(t, s)
	s.Flush()
	checkStore(t, s)
	require.Equal(t, int64(0), s.MemUsed())
}
