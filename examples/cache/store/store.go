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
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/ringline-go/ringline/examples/cache/resp"
)

// EntryOverhead is what a key costs beyond its item allocation (header,
// key and small value) in the memory estimate: its map slot and its place
// in the sampling arrays. It is an estimate.
const EntryOverhead = 48

// Options configures a Store. Zero fields take defaults.
type Options struct {
	// Shards is the number of shards, a power of two. Default 256.
	Shards int
	// MaxMemory bounds the estimated memory (item allocations, big
	// values, EntryOverhead per key); 0 means no bound. Writes evict keys
	// (approximate LRU) to stay under it; see Reserve.
	MaxMemory int64
	// RefMin is the size from which values are immutable once stored and
	// handed to readers by reference instead of copied. Default 16 KiB.
	RefMin int
	// Samples is how many random keys eviction looks at to pick the least
	// recently used (redis's maxmemory-samples). Default 5.
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

// A shard's keys. The map's key strings alias the key bytes inside the
// items, so a lookup's key comparison, the deadline check, the LRU clock
// and a small value are all in one allocation: a GET touches the map and
// one item, not a key string, an entry record and a value buffer apart.
type shard struct {
	mu    sync.Mutex
	index map[string]*item
	items []*item          // every item, densely: random samples for eviction
	vol   []*item          // items with a deadline: samples for active expiry
	big   map[*item][]byte // values of RefMin bytes or more, immutable
	// n is len(items), readable without the lock (eviction picks big
	// shards by it).
	n atomic.Int32
	_ [36]byte
}

// item is the header of one allocation that holds a key and, unless it is
// big, its value:
//
//	[item header][key bytes][value bytes][room to grow the value]
//
// The allocation is a []byte (no pointers, so the garbage collector never
// scans it); the header is read through an *item that points at its
// start. Key bytes never change (the map's key string aliases them); the
// value is overwritten in place when it fits.
type item struct {
	exp    int64  // deadline on the store clock (ms); 0: none
	clock  uint32 // last access, low bits of the ms clock (LRU)
	pos    int32  // index in shard.items
	volPos int32  // index in shard.vol, -1 when no deadline
	klen   uint32
	vlen   uint32 // length of the small value (0 when big)
	size   uint32 // bytes of the allocation
	big    bool   // the value is in shard.big
}

const hdrSize = int(unsafe.Sizeof(item{}))

// newItem allocates an item for key with room for a value of vroom bytes.
func newItem(key []byte, vroom int) *item {
	buf := make([]byte, hdrSize+len(key)+vroom)
	p := unsafe.Pointer(unsafe.SliceData(buf))
	if uintptr(p)%unsafe.Alignof(item{}) != 0 {
		panic("store: misaligned item allocation")
	}
	it := (*item)(p)
	it.klen, it.size, it.volPos, it.pos = uint32(len(key)), uint32(len(buf)), -1, -1
	copy(buf[hdrSize:], key)
	return it
}

func (it *item) bytes() []byte { return unsafe.Slice((*byte)(unsafe.Pointer(it)), it.size) }

func (it *item) key() string {
	return unsafe.String((*byte)(unsafe.Add(unsafe.Pointer(it), hdrSize)), it.klen)
}

// val is the small value, writable in place up to room.
func (it *item) val() []byte {
	o := hdrSize + int(it.klen)
	return it.bytes()[o : o+int(it.vlen)]
}

func (it *item) room() int { return int(it.size) - hdrSize - int(it.klen) }

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
		s.shards[i].index = make(map[string]*item)
		s.shards[i].big = make(map[*item][]byte)
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

// cost is an item's share of the memory estimate.
func (sh *shard) cost(it *item) int64 {
	n := int64(it.size) + EntryOverhead
	if it.big {
		n += int64(cap(sh.big[it]))
	}
	return n
}

// find returns key's item, deleting it first when it has expired. Caller
// holds sh.mu.
func (s *Store) find(sh *shard, key []byte, now int64) *item {
	it := sh.index[string(key)]
	if it != nil && it.exp != 0 && it.exp <= now {
		s.remove(sh, it)
		s.expired.Add(1)
		return nil
	}
	return it
}

// remove deletes it. Caller holds sh.mu.
func (s *Store) remove(sh *shard, it *item) {
	s.used.Add(-sh.cost(it))
	s.keys.Add(-1)
	delete(sh.index, it.key())
	if it.big {
		delete(sh.big, it)
	}
	s.setNoDeadline(sh, it)
	last := sh.items[len(sh.items)-1]
	sh.items[it.pos] = last
	last.pos = it.pos
	sh.items[len(sh.items)-1] = nil
	sh.items = sh.items[:len(sh.items)-1]
	sh.n.Store(int32(len(sh.items)))
}

func (s *Store) setDeadline(sh *shard, it *item, at int64) {
	if at == 0 {
		s.setNoDeadline(sh, it)
		return
	}
	it.exp = at
	if it.volPos < 0 {
		it.volPos = int32(len(sh.vol))
		sh.vol = append(sh.vol, it)
	}
}

func (s *Store) setNoDeadline(sh *shard, it *item) {
	it.exp = 0
	if p := it.volPos; p >= 0 {
		last := sh.vol[len(sh.vol)-1]
		sh.vol[p] = last
		last.volPos = p
		sh.vol[len(sh.vol)-1] = nil
		sh.vol = sh.vol[:len(sh.vol)-1]
		it.volPos = -1
	}
}

// Get looks key up. A value smaller than RefMin is appended to dst by enc
// (called under the shard lock, so enc must only copy); a larger value is
// returned as ref, which is immutable and may be read after Get returns.
func (s *Store) Get(dst []byte, key []byte, now int64, enc func(dst, val []byte) []byte) (out []byte, ref []byte, found bool) {
	sh := s.shardOf(key)
	sh.mu.Lock()
	it := s.find(sh, key, now)
	if it == nil {
		sh.mu.Unlock()
		return dst, nil, false
	}
	it.clock = uint32(now)
	if it.big {
		ref = sh.big[it]
	} else {
		dst = enc(dst, it.val())
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
	it := s.find(sh, key, now)
	exists := it != nil
	if (mode&SetNX != 0 && exists) || (mode&SetXX != 0 && !exists) {
		sh.mu.Unlock()
		return false
	}
	if !exists {
		room := len(val)
		if fresh != nil {
			room = 0
		}
		it = s.insert(sh, key, room)
	}
	it = s.store(sh, it, val, fresh)
	it.clock = uint32(now)
	if mode&SetKeepTTL == 0 || !exists {
		s.setDeadline(sh, it, at)
	}
	sh.mu.Unlock()
	return true
}

// insert adds an item for key with room for a value of vroom bytes.
// Caller holds sh.mu.
func (s *Store) insert(sh *shard, key []byte, vroom int) *item {
	it := newItem(key, vroom)
	it.pos = int32(len(sh.items))
	sh.items = append(sh.items, it)
	sh.n.Store(int32(len(sh.items)))
	sh.index[it.key()] = it
	s.used.Add(sh.cost(it))
	s.keys.Add(1)
	return it
}

// store puts val into it and returns the item that now holds the key: it
// itself when the value fits in place (small values only: big ones are
// immutable) or is big (fresh, already a copy), else a bigger or smaller
// copy of it that replaces it everywhere. Caller holds sh.mu.
func (s *Store) store(sh *shard, it *item, val, fresh []byte) *item {
	before := sh.cost(it)
	if it.big && fresh == nil {
		delete(sh.big, it)
		it.big = false
	}
	switch room := it.room(); {
	case fresh != nil:
		sh.big[it] = fresh
		it.big, it.vlen = true, 0
	case room >= len(val) && room <= 2*len(val)+32:
		it.vlen = uint32(len(val))
		copy(it.val(), val)
	default:
		it = s.realloc(sh, it, len(val))
		it.vlen = uint32(len(val))
		copy(it.val(), val)
	}
	if d := sh.cost(it) - before; d != 0 {
		s.used.Add(d)
	}
	return it
}

// realloc moves it into a new item with room for vroom value bytes (the
// value itself is not copied) and puts the new item in its places.
// Caller holds sh.mu.
func (s *Store) realloc(sh *shard, it *item, vroom int) *item {
	key := it.bytes()[hdrSize : hdrSize+int(it.klen)]
	nw := newItem(key, vroom)
	nw.exp, nw.clock, nw.pos, nw.volPos = it.exp, it.clock, it.pos, it.volPos
	delete(sh.index, it.key())
	sh.index[nw.key()] = nw
	sh.items[nw.pos] = nw
	if nw.volPos >= 0 {
		sh.vol[nw.volPos] = nw
	}
	if it.big {
		nw.big = true
		sh.big[nw] = sh.big[it]
		delete(sh.big, it)
	}
	return nw
}

// Del deletes key and reports whether it existed.
func (s *Store) Del(key []byte, now int64) bool {
	sh := s.shardOf(key)
	sh.mu.Lock()
	it := s.find(sh, key, now)
	if it != nil {
		s.remove(sh, it)
	}
	sh.mu.Unlock()
	return it != nil
}

// Exists reports whether key is present (and not expired).
func (s *Store) Exists(key []byte, now int64) bool {
	sh := s.shardOf(key)
	sh.mu.Lock()
	it := s.find(sh, key, now)
	sh.mu.Unlock()
	return it != nil
}

// IncrBy adds delta to the decimal integer stored at key (a missing key
// counts as 0) and returns the result. The key's deadline is kept. Errors:
// ErrNotInteger, ErrOverflow.
func (s *Store) IncrBy(key []byte, delta, now int64) (int64, error) {
	sh := s.shardOf(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	it := s.find(sh, key, now)
	var cur int64
	if it != nil {
		if it.big {
			return 0, ErrNotInteger
		}
		v, ok := resp.ParseInt(it.val())
		if !ok {
			return 0, ErrNotInteger
		}
		cur = v
	}
	if (delta > 0 && cur > math.MaxInt64-delta) || (delta < 0 && cur < math.MinInt64-delta) {
		return 0, ErrOverflow
	}
	cur += delta
	var buf [20]byte
	num := strconv.AppendInt(buf[:0], cur, 10)
	if it == nil {
		// Room for any int64, so later increments stay in place.
		it = s.insert(sh, key, 20)
	} else if it.room() < 20 {
		before := sh.cost(it)
		it = s.realloc(sh, it, 20)
		s.used.Add(sh.cost(it) - before)
	}
	it.vlen = uint32(len(num))
	copy(it.val(), num)
	it.clock = uint32(now)
	return cur, nil
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
	it := s.find(sh, key, now)
	if it == nil {
		return false
	}
	cur := it.exp
	if (cond&ExpireNX != 0 && cur != 0) || (cond&ExpireXX != 0 && cur == 0) ||
		(cond&ExpireGT != 0 && (cur == 0 || at <= cur)) || (cond&ExpireLT != 0 && cur != 0 && at >= cur) {
		return false
	}
	if at <= now {
		s.remove(sh, it)
		return true
	}
	s.setDeadline(sh, it, at)
	return true
}

// TTL returns the milliseconds left before key expires: -2 when the key
// does not exist, -1 when it has no deadline.
func (s *Store) TTL(key []byte, now int64) int64 {
	sh := s.shardOf(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	it := s.find(sh, key, now)
	if it == nil {
		return -2
	}
	if exp := it.exp; exp != 0 {
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
		for _, it := range sh.items {
			freed += sh.cost(it)
		}
		s.used.Add(-freed)
		s.keys.Add(-int64(len(sh.items)))
		sh.index = make(map[string]*item)
		sh.big = make(map[*item][]byte)
		sh.items, sh.vol = nil, nil
		sh.n.Store(0)
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
// MaxMemory it evicts the least recently used of a few random keys
// (approximate LRU, like redis's allkeys-lru), taken from the largest of a
// few random shards: evicting from shards picked uniformly would let a
// small shard drain empty (its size would be a random walk), and then its
// most recently used keys would go. It reports false when nothing is left
// to evict and the store is still over the bound; redis then refuses the
// write with an OOM error. A write may take the store over the bound by
// its own size; the next write's Reserve brings it back.
func (s *Store) Reserve(now int64) bool {
	for s.max > 0 && s.used.Load() > s.max {
		var sh *shard
		for j := 0; j < 3; j++ {
			c := &s.shards[rand.Uint64()&s.mask]
			if sh == nil || c.n.Load() > sh.n.Load() {
				sh = c
			}
		}
		if sh.n.Load() == 0 {
			// The samples missed: look for any key at all.
			sh = nil
			for i := range s.shards {
				if s.shards[i].n.Load() > 0 {
					sh = &s.shards[i]
					break
				}
			}
			if sh == nil {
				return false
			}
		}
		sh.mu.Lock()
		s.evictOne(sh, now)
		sh.mu.Unlock()
	}
	return true
}

// evictOne removes the least recently used of s.sample random items of
// sh (an expired one at once). Caller holds sh.mu.
func (s *Store) evictOne(sh *shard, now int64) bool {
	if len(sh.items) == 0 {
		return false
	}
	var best *item
	var bestAge uint32
	for j := 0; j < s.sample; j++ {
		it := sh.items[rand.IntN(len(sh.items))]
		if it.exp != 0 && it.exp <= now {
			s.remove(sh, it)
			s.expired.Add(1)
			return true
		}
		if age := uint32(now) - it.clock; best == nil || age > bestAge {
			best, bestAge = it, age
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
// most 8 rounds). Callers drive it: a timer, and command processing. It
// returns the number of keys reclaimed.
func (s *Store) ActiveExpire(now int64, shards int) int {
	total := 0
	for k := 0; k < shards; k++ {
		sh := &s.shards[uint64(s.cursor.Add(1))&s.mask]
		sh.mu.Lock()
		for round := 0; round < 8 && len(sh.vol) > 0; round++ {
			n := min(20, len(sh.vol))
			got := 0
			for j := 0; j < n && len(sh.vol) > 0; j++ {
				it := sh.vol[rand.IntN(len(sh.vol))]
				if it.exp <= now {
					s.remove(sh, it)
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
