// Package store is the cache example's key/value store: a fixed set of
// shards, each a map guarded by its own mutex, shared by every worker of
// the server (and by the redcon peer in the bench module).
//
// Critical sections are short and bounded: a map operation, a copy of a
// value smaller than Options.RefMin, and a few random samples for eviction
// or expiry. Nothing that can wait (I/O, a send, a suspension) ever runs
// under a shard lock, so a ringline task may take one: the worst it waits
// for is another worker's critical section on the same shard.
//
// Values are copied once, into the store. A value smaller than RefMin may
// be overwritten in place by a later write of the same key (no allocation
// in steady state), so readers copy it out under the lock; a value of
// RefMin bytes or more is immutable once stored (a write replaces the
// buffer), so readers get a reference to it and may read it after the lock
// is released, for as long as they like.
//
// Time is a millisecond clock (Now) that reads like Unix time but never
// jumps: expiry deadlines are absolute on that clock.
//
// All methods are safe for concurrent use.
package store

import (
	"errors"
	"hash/maphash"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ringline-go/ringline/examples/cache/resp"
)

// EntryOverhead is what an entry costs beyond its key and value bytes, in
// the memory estimate: the entry record, its map slot and slice headers.
// It is an estimate, close to what Go spends on a small entry.
const EntryOverhead = 96

// Options configures a Store. Zero fields take defaults.
type Options struct {
	// Shards is the number of shards, a power of two. Default 256.
	Shards int
	// MaxMemory bounds the estimated memory (keys, values and
	// EntryOverhead per entry); 0 means no bound. Writes evict keys
	// (approximate LRU) to stay under it; see Reserve.
	MaxMemory int64
	// RefMin is the size from which values are immutable once stored and
	// handed to readers by reference instead of copied. Default 16 KiB.
	RefMin int
	// Samples is how many random entries eviction looks at to pick the
	// least recently used (redis's maxmemory-samples). Default 5.
	Samples int
}

var (
	// ErrNotInteger: the value is not a decimal 64-bit integer.
	ErrNotInteger = errors.New("value is not an integer or out of range")
	// ErrOverflow: the increment would overflow an int64.
	ErrOverflow = errors.New("increment or decrement would overflow")
)

// Store is the sharded key/value store.
type Store struct {
	shards []shard
	mask   uint64
	seed   maphash.Seed
	refMin int
	max    int64
	sample int

	used    atomic.Int64 // estimated bytes
	keys    atomic.Int64
	evicted atomic.Uint64
	expired atomic.Uint64
	cursor  atomic.Uint32 // next shard for active expiry
}

type shard struct {
	mu    sync.Mutex
	index map[string]int32 // key -> position in ents
	ents  []entry
	free  []int32 // unused positions in ents
	vol   []int32 // positions of entries with a deadline (for active expiry)
	_     [40]byte
}

type entry struct {
	key    string
	val    []byte
	exp    int64  // deadline on the store clock (ms); 0: none
	clock  uint32 // last access, low bits of the ms clock (LRU)
	volPos int32  // position in shard.vol, -1 when no deadline
	live   bool
}

// New returns an empty store.
func New(o Options) *Store {
	if o.Shards <= 0 {
		o.Shards = 256
	}
	if o.Shards&(o.Shards-1) != 0 {
		panic("store: Shards must be a power of two")
	}
	if o.RefMin <= 0 {
		o.RefMin = 16 << 10
	}
	if o.Samples <= 0 {
		o.Samples = 5
	}
	s := &Store{shards: make([]shard, o.Shards), mask: uint64(o.Shards - 1), seed: maphash.MakeSeed(),
		refMin: o.RefMin, max: o.MaxMemory, sample: o.Samples}
	for i := range s.shards {
		s.shards[i].index = make(map[string]int32)
	}
	return s
}

var (
	clockStart = time.Now()
	clockBase  = clockStart.UnixMilli()
)

// Now is the store clock: milliseconds that start at the Unix time of
// process start and advance with the monotonic clock, so deadlines never
// jump with the wall clock. Read it once per batch of commands.
func Now() int64 { return clockBase + int64(time.Since(clockStart)/time.Millisecond) }

func (s *Store) shardOf(key []byte) *shard {
	return &s.shards[maphash.Bytes(s.seed, key)&s.mask]
}

func entrySize(keyLen, valCap int) int64 { return int64(keyLen + valCap + EntryOverhead) }

// find returns the live entry position for key, deleting it first when it
// has expired. Caller holds sh.mu.
func (s *Store) find(sh *shard, key []byte, now int64) (int32, bool) {
	i, ok := sh.index[string(key)]
	if !ok {
		return 0, false
	}
	e := &sh.ents[i]
	if e.exp != 0 && e.exp <= now {
		s.remove(sh, i)
		s.expired.Add(1)
		return 0, false
	}
	return i, true
}

// remove deletes entry i. Caller holds sh.mu.
func (s *Store) remove(sh *shard, i int32) {
	e := &sh.ents[i]
	delete(sh.index, e.key)
	s.setNoDeadline(sh, e)
	s.used.Add(-entrySize(len(e.key), cap(e.val)))
	s.keys.Add(-1)
	*e = entry{volPos: -1}
	sh.free = append(sh.free, i)
}

func (s *Store) setDeadline(sh *shard, i int32, at int64) {
	e := &sh.ents[i]
	if at == 0 {
		s.setNoDeadline(sh, e)
		return
	}
	e.exp = at
	if e.volPos < 0 {
		e.volPos = int32(len(sh.vol))
		sh.vol = append(sh.vol, i)
	}
}

func (s *Store) setNoDeadline(sh *shard, e *entry) {
	e.exp = 0
	if p := e.volPos; p >= 0 {
		last := sh.vol[len(sh.vol)-1]
		sh.vol[p] = last
		sh.ents[last].volPos = p
		sh.vol = sh.vol[:len(sh.vol)-1]
		e.volPos = -1
	}
}

// Get looks key up. A value smaller than RefMin is appended to dst by enc
// (called under the shard lock, so enc must only copy); a larger value is
// returned as ref, which is immutable and may be read after Get returns.
func (s *Store) Get(dst []byte, key []byte, now int64, enc func(dst, val []byte) []byte) (out []byte, ref []byte, found bool) {
	sh := s.shardOf(key)
	sh.mu.Lock()
	i, ok := s.find(sh, key, now)
	if !ok {
		sh.mu.Unlock()
		return dst, nil, false
	}
	e := &sh.ents[i]
	e.clock = uint32(now)
	if len(e.val) >= s.refMin {
		ref = e.val
	} else {
		dst = enc(dst, e.val)
	}
	sh.mu.Unlock()
	return dst, ref, true
}

// SetMode is the condition and deadline handling of Set.
type SetMode uint8

const (
	// SetNX writes only when the key does not exist.
	SetNX SetMode = 1 << iota
	// SetXX writes only when the key exists.
	SetXX
	// SetKeepTTL keeps an existing key's deadline (at is ignored).
	SetKeepTTL
)

// Set stores a copy of val under key with deadline at (0: none) unless the
// mode's condition fails; it reports whether it wrote.
func (s *Store) Set(key, val []byte, at, now int64, mode SetMode) bool {
	var fresh []byte
	if len(val) >= s.refMin {
		// Copied outside the lock: a big copy must not hold the shard.
		fresh = make([]byte, len(val))
		copy(fresh, val)
	}
	sh := s.shardOf(key)
	sh.mu.Lock()
	i, exists := s.find(sh, key, now)
	if (mode&SetNX != 0 && exists) || (mode&SetXX != 0 && !exists) {
		sh.mu.Unlock()
		return false
	}
	if !exists {
		i = s.insert(sh, key)
	}
	e := &sh.ents[i]
	s.store(e, val, fresh)
	e.clock = uint32(now)
	if mode&SetKeepTTL == 0 || !exists {
		s.setDeadline(sh, i, at)
	}
	sh.mu.Unlock()
	return true
}

// insert adds an empty entry for key. Caller holds sh.mu.
func (s *Store) insert(sh *shard, key []byte) int32 {
	var i int32
	if n := len(sh.free); n > 0 {
		i = sh.free[n-1]
		sh.free = sh.free[:n-1]
	} else {
		i = int32(len(sh.ents))
		sh.ents = append(sh.ents, entry{})
	}
	k := string(key)
	sh.ents[i] = entry{key: k, volPos: -1, live: true}
	sh.index[k] = i
	s.used.Add(entrySize(len(k), 0))
	s.keys.Add(1)
	return i
}

// store puts val into e: in place when the old buffer fits (small values
// only: big ones are immutable), else in fresh (already a copy) or a new
// buffer. Caller holds the shard lock.
func (s *Store) store(e *entry, val, fresh []byte) {
	old := cap(e.val)
	switch {
	case fresh != nil:
		e.val = fresh
	case old >= len(val) && old < s.refMin && old <= 2*len(val)+32:
		e.val = e.val[:len(val)]
		copy(e.val, val)
	default:
		e.val = append(make([]byte, 0, len(val)), val...)
	}
	if d := cap(e.val) - old; d != 0 {
		s.used.Add(int64(d))
	}
}

// Del deletes key and reports whether it existed.
func (s *Store) Del(key []byte, now int64) bool {
	sh := s.shardOf(key)
	sh.mu.Lock()
	i, ok := s.find(sh, key, now)
	if ok {
		s.remove(sh, i)
	}
	sh.mu.Unlock()
	return ok
}

// Exists reports whether key is present (and not expired).
func (s *Store) Exists(key []byte, now int64) bool {
	sh := s.shardOf(key)
	sh.mu.Lock()
	_, ok := s.find(sh, key, now)
	sh.mu.Unlock()
	return ok
}

// IncrBy adds delta to the decimal integer stored at key (a missing key
// counts as 0) and returns the result. The key's deadline is kept. Errors:
// ErrNotInteger, ErrOverflow.
func (s *Store) IncrBy(key []byte, delta, now int64) (int64, error) {
	sh := s.shardOf(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i, exists := s.find(sh, key, now)
	var cur int64
	if exists {
		v, ok := resp.ParseInt(sh.ents[i].val)
		if !ok {
			return 0, ErrNotInteger
		}
		cur = v
	}
	if (delta > 0 && cur > math.MaxInt64-delta) || (delta < 0 && cur < math.MinInt64-delta) {
		return 0, ErrOverflow
	}
	cur += delta
	if !exists {
		i = s.insert(sh, key)
	}
	e := &sh.ents[i]
	var buf [20]byte
	num := appendInt(buf[:0], cur)
	if cap(e.val) < 20 && cap(e.val) < s.refMin {
		// Room for any int64 once, so later increments stay in place.
		s.used.Add(int64(24 - cap(e.val)))
		e.val = make([]byte, 0, 24)
	}
	if cap(e.val) >= s.refMin {
		s.store(e, num, nil) // never write into an immutable buffer
	} else {
		e.val = append(e.val[:0], num...)
	}
	e.clock = uint32(now)
	return cur, nil
}

func appendInt(b []byte, v int64) []byte {
	if v == 0 {
		return append(b, '0')
	}
	var tmp [20]byte
	i := len(tmp)
	u := uint64(v)
	if v < 0 {
		u = uint64(-v)
	}
	for u > 0 {
		i--
		tmp[i] = byte('0' + u%10)
		u /= 10
	}
	if v < 0 {
		b = append(b, '-')
	}
	return append(b, tmp[i:]...)
}

// ExpireCond is a set of EXPIRE conditions (NX, XX, GT, LT); all given
// must hold.
type ExpireCond uint8

const (
	ExpireNX ExpireCond = 1 << iota // only when the key has no deadline
	ExpireXX                        // only when it has one
	ExpireGT                        // only when the new deadline is later (none counts as infinite)
	ExpireLT                        // only when the new deadline is earlier (none counts as infinite)
)

// Expire sets key's deadline to at; a deadline not after now deletes the
// key. It reports false when the key does not exist or a condition in
// cond does not hold.
func (s *Store) Expire(key []byte, at, now int64, cond ExpireCond) bool {
	sh := s.shardOf(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i, ok := s.find(sh, key, now)
	if !ok {
		return false
	}
	cur := sh.ents[i].exp
	if (cond&ExpireNX != 0 && cur != 0) || (cond&ExpireXX != 0 && cur == 0) ||
		(cond&ExpireGT != 0 && (cur == 0 || at <= cur)) || (cond&ExpireLT != 0 && cur != 0 && at >= cur) {
		return false
	}
	if at <= now {
		s.remove(sh, i)
		return true
	}
	s.setDeadline(sh, i, at)
	return true
}

// TTL returns the milliseconds left before key expires: -2 when the key
// does not exist, -1 when it has no deadline.
func (s *Store) TTL(key []byte, now int64) int64 {
	sh := s.shardOf(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	i, ok := s.find(sh, key, now)
	if !ok {
		return -2
	}
	if exp := sh.ents[i].exp; exp != 0 {
		return exp - now
	}
	return -1
}

// Flush deletes every key.
func (s *Store) Flush() {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		var freed int64
		for j := range sh.ents {
			if e := &sh.ents[j]; e.live {
				freed += entrySize(len(e.key), cap(e.val))
				s.keys.Add(-1)
			}
		}
		s.used.Add(-freed)
		sh.index = make(map[string]int32)
		sh.ents, sh.free, sh.vol = nil, nil, nil
		sh.mu.Unlock()
	}
}

// Len returns the number of keys, counting expired keys not yet reclaimed
// (as redis's DBSIZE does).
func (s *Store) Len() int64 { return s.keys.Load() }

// Volatile returns the number of keys with a deadline.
func (s *Store) Volatile() int64 {
	var n int64
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += int64(len(sh.vol))
		sh.mu.Unlock()
	}
	return n
}

// MemUsed returns the estimated bytes held: key and value buffers plus
// EntryOverhead per entry.
func (s *Store) MemUsed() int64 { return s.used.Load() }

// MaxMemory returns the configured bound (0: none).
func (s *Store) MaxMemory() int64 { return s.max }

// Evicted and Expired count keys removed by eviction and by expiry (lazy
// and active).
func (s *Store) Evicted() uint64 { return s.evicted.Load() }

// Expired: see Evicted.
func (s *Store) Expired() uint64 { return s.expired.Load() }

// Reserve makes room before a write: while the estimate is over
// MaxMemory it evicts, shard by shard, the least recently used of a few
// random entries (approximate LRU, like redis's allkeys-lru). It reports
// false when nothing more can be evicted and the store is still over the
// bound; redis then refuses the write with an OOM error. A write may take
// the store over the bound by its own size; the next write's Reserve
// brings it back.
func (s *Store) Reserve(now int64) bool {
	if s.max <= 0 || s.used.Load() <= s.max {
		return true
	}
	start := rand.Uint64()
	empty := 0
	for n := uint64(0); s.used.Load() > s.max; n++ {
		sh := &s.shards[(start+n)&s.mask]
		sh.mu.Lock()
		ok := s.evictOne(sh, now)
		sh.mu.Unlock()
		if ok {
			empty = 0
		} else if empty++; empty > len(s.shards) {
			return false
		}
	}
	return true
}

// evictOne removes the least recently used of s.sample random entries of
// sh (expired ones first). Caller holds sh.mu.
func (s *Store) evictOne(sh *shard, now int64) bool {
	live := len(sh.ents) - len(sh.free)
	if live == 0 {
		return false
	}
	best := int32(-1)
	var bestAge uint32
	// Free slots do not count as samples: a sample of one live entry and
	// four holes would make that entry the victim, however recently used.
	seen := 0
	for tries := 0; tries < 8*s.sample && seen < s.sample; tries++ {
		i := int32(rand.IntN(len(sh.ents)))
		e := &sh.ents[i]
		if !e.live {
			continue
		}
		seen++
		if e.exp != 0 && e.exp <= now {
			s.remove(sh, i)
			s.expired.Add(1)
			return true
		}
		if age := uint32(now) - e.clock; best < 0 || age > bestAge {
			best, bestAge = i, age
		}
	}
	if best < 0 {
		// A sparse slab: fall back to any live entry.
		for i := range sh.ents {
			if sh.ents[i].live {
				best = int32(i)
				break
			}
		}
	}
	s.remove(sh, best)
	s.evicted.Add(1)
	return true
}

// ActiveExpire reclaims expired keys without scanning the store: it visits
// the next few shards (a cursor shared by all callers) and, in each,
// samples up to 20 keys that have a deadline, deleting the expired ones,
// and samples again while more than a quarter of a sample had expired (at
// most 8 rounds). Callers drive it from command processing, since the
// server has no timers. It returns the number of keys reclaimed.
func (s *Store) ActiveExpire(now int64, shards int) int {
	total := 0
	for k := 0; k < shards; k++ {
		sh := &s.shards[uint64(s.cursor.Add(1))&s.mask]
		sh.mu.Lock()
		for round := 0; round < 8 && len(sh.vol) > 0; round++ {
			n := min(20, len(sh.vol))
			got := 0
			for j := 0; j < n && len(sh.vol) > 0; j++ {
				i := sh.vol[rand.IntN(len(sh.vol))]
				if sh.ents[i].exp <= now {
					s.remove(sh, i)
					got++
				}
			}
			total += got
			if got*4 <= n {
				break
			}
		}
		sh.mu.Unlock()
	}
	if total > 0 {
		s.expired.Add(uint64(total))
	}
	return total
}

// Shards returns the number of shards.
func (s *Store) Shards() int { return len(s.shards) }
