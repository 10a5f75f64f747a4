package server

import (
	"bytes"
	"math"
	"os"
	"runtime"
	"runtime/metrics"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/ringline-go/ringline/examples/cache/resp"
	"github.com/ringline-go/ringline/examples/cache/store"
)

// Engine executes commands against a store. It knows nothing of the
// network: a connection hands it parsed arguments and a Reply to append
// to. The ringline server and the redcon peer in the bench module share
// it, so they differ only in how bytes move.
type Engine struct {
	Store *store.Store
	// MaxBulk is reported by CONFIG GET proto-max-bulk-len.
	MaxBulk int64
	// Info, when set, appends extra INFO lines to the named section
	// ("server" or "ringline"), each "field:value\r\n".
	Info func(section string, b []byte) []byte
	// CountCommands, when set, is INFO's total_commands_processed
	// (servers that count per worker); otherwise Processed's sum is.
	CountCommands func() uint64

	start      time.Time
	clients    atomic.Int64
	conns      atomic.Uint64
	commands   atomic.Uint64
	lastExpire atomic.Int64
}

// NewEngine returns an Engine over st.
func NewEngine(st *store.Store, maxBulk int64) *Engine {
	return &Engine{Store: st, MaxBulk: maxBulk, start: time.Now()}
}

// Client is one connection's command state.
type Client struct {
	// Quit is set by QUIT: send the reply, then close.
	Quit bool
	// Drop is set by a command that ends the connection without a
	// reply (redis's answer to HTTP requests: POST, Host:).
	Drop bool
}

// Opened and Closed count connections for INFO.
func (e *Engine) Opened() { e.clients.Add(1); e.conns.Add(1) }

// Closed: see Opened.
func (e *Engine) Closed() { e.clients.Add(-1) }

// Processed adds n to the commands counter (called once per batch).
func (e *Engine) Processed(n int) { e.commands.Add(uint64(n)) }

// Active expiry runs from two places. Under load, the batch of commands
// that notices one is due (activeExpireEvery ms since the last, on the
// store clock) runs a cycle over activeExpireShards shards: Tick. And a
// server with its own timers (the ringline one: a start task per worker
// that sleeps between cycles) also runs cycles when idle: ExpireCycle.
const (
	activeExpireEvery  = 10
	activeExpireShards = 16
)

// Tick runs an active expiry cycle when one is due. Call it once per batch
// of commands; it costs one atomic load when none is due.
func (e *Engine) Tick(now int64) {
	last := e.lastExpire.Load()
	if now-last < activeExpireEvery || !e.lastExpire.CompareAndSwap(last, now) {
		return
	}
	e.Store.ActiveExpire(now, activeExpireShards)
}

// ExpireCycle runs an active expiry cycle now (a timer's); it returns the
// number of keys reclaimed.
func (e *Engine) ExpireCycle(now int64) int {
	e.lastExpire.Store(now)
	return e.Store.ActiveExpire(now, activeExpireShards)
}

type cmdID uint8

const (
	cmdUnknown cmdID = iota
	cmdGet
	cmdSet
	cmdDel
	cmdTTL
	cmdPing
	cmdEcho
	cmdIncr
	cmdDecr
	cmdMGet
	cmdMSet
	cmdInfo
	cmdQuit
	cmdPTTL
	cmdIncrBy
	cmdDecrBy
	cmdExists
	cmdExpire
	cmdDBSize
	cmdSelect
	cmdConfig
	cmdPExpire
	cmdCommand
	cmdFlushAll
	cmdSecurity
	numCmds
)

// cmdSpec is what COMMAND reports, and the arity check (redis's
// convention: n exact, -n at least n).
type cmdSpec struct {
	name               string
	arity              int
	flags              []string
	first, last, step  int
	acl                []string
	write, deniedOnOOM bool
}

var specs = [numCmds]cmdSpec{
	cmdGet:      {name: "get", arity: 2, flags: []string{"readonly", "fast"}, first: 1, last: 1, step: 1, acl: []string{"@read", "@string", "@fast"}},
	cmdSet:      {name: "set", arity: -3, flags: []string{"write", "denyoom"}, first: 1, last: 1, step: 1, acl: []string{"@write", "@string", "@slow"}, write: true, deniedOnOOM: true},
	cmdDel:      {name: "del", arity: -2, flags: []string{"write"}, first: 1, last: -1, step: 1, acl: []string{"@keyspace", "@write", "@slow"}, write: true},
	cmdTTL:      {name: "ttl", arity: 2, flags: []string{"readonly", "fast"}, first: 1, last: 1, step: 1, acl: []string{"@keyspace", "@read", "@fast"}},
	cmdPTTL:     {name: "pttl", arity: 2, flags: []string{"readonly", "fast"}, first: 1, last: 1, step: 1, acl: []string{"@keyspace", "@read", "@fast"}},
	cmdPing:     {name: "ping", arity: -1, flags: []string{"fast"}, acl: []string{"@fast", "@connection"}},
	cmdEcho:     {name: "echo", arity: 2, flags: []string{"fast"}, acl: []string{"@fast", "@connection"}},
	cmdIncr:     {name: "incr", arity: 2, flags: []string{"write", "denyoom", "fast"}, first: 1, last: 1, step: 1, acl: []string{"@write", "@string", "@fast"}, write: true, deniedOnOOM: true},
	cmdDecr:     {name: "decr", arity: 2, flags: []string{"write", "denyoom", "fast"}, first: 1, last: 1, step: 1, acl: []string{"@write", "@string", "@fast"}, write: true, deniedOnOOM: true},
	cmdIncrBy:   {name: "incrby", arity: 3, flags: []string{"write", "denyoom", "fast"}, first: 1, last: 1, step: 1, acl: []string{"@write", "@string", "@fast"}, write: true, deniedOnOOM: true},
	cmdDecrBy:   {name: "decrby", arity: 3, flags: []string{"write", "denyoom", "fast"}, first: 1, last: 1, step: 1, acl: []string{"@write", "@string", "@fast"}, write: true, deniedOnOOM: true},
	cmdMGet:     {name: "mget", arity: -2, flags: []string{"readonly", "fast"}, first: 1, last: -1, step: 1, acl: []string{"@read", "@string", "@fast"}},
	cmdMSet:     {name: "mset", arity: -3, flags: []string{"write", "denyoom"}, first: 1, last: -1, step: 2, acl: []string{"@write", "@string", "@slow"}, write: true, deniedOnOOM: true},
	cmdExists:   {name: "exists", arity: -2, flags: []string{"readonly", "fast"}, first: 1, last: -1, step: 1, acl: []string{"@keyspace", "@read", "@fast"}},
	cmdExpire:   {name: "expire", arity: -3, flags: []string{"write", "fast"}, first: 1, last: 1, step: 1, acl: []string{"@keyspace", "@write", "@fast"}, write: true},
	cmdPExpire:  {name: "pexpire", arity: -3, flags: []string{"write", "fast"}, first: 1, last: 1, step: 1, acl: []string{"@keyspace", "@write", "@fast"}, write: true},
	cmdDBSize:   {name: "dbsize", arity: 1, flags: []string{"readonly", "fast"}, acl: []string{"@keyspace", "@read", "@fast"}},
	cmdFlushAll: {name: "flushall", arity: -1, flags: []string{"write"}, acl: []string{"@keyspace", "@write", "@slow", "@dangerous"}, write: true},
	cmdInfo:     {name: "info", arity: -1, flags: []string{"loading", "stale"}, acl: []string{"@slow", "@dangerous"}},
	cmdQuit:     {name: "quit", arity: -1, flags: []string{"allow_busy", "noscript", "loading", "stale", "fast", "no_auth"}, acl: []string{"@fast", "@connection"}},
	cmdSelect:   {name: "select", arity: 2, flags: []string{"loading", "stale", "fast"}, acl: []string{"@fast", "@connection"}},
	cmdConfig:   {name: "config", arity: -2, flags: []string{"admin", "noscript", "loading", "stale"}, acl: []string{"@admin", "@slow", "@dangerous"}},
	cmdCommand:  {name: "command", arity: -1, flags: []string{"loading", "stale"}, acl: []string{"@slow", "@connection"}},
}

// eq compares b with upper, an upper-case ASCII name, ignoring case.
func eq(b []byte, upper string) bool {
	if len(b) != len(upper) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		if c != upper[i] {
			return false
		}
	}
	return true
}

// lookup maps a command name to its id without allocating.
func lookup(name []byte) cmdID {
	switch len(name) {
	case 3:
		switch {
		case eq(name, "GET"):
			return cmdGet
		case eq(name, "SET"):
			return cmdSet
		case eq(name, "DEL"):
			return cmdDel
		case eq(name, "TTL"):
			return cmdTTL
		}
	case 4:
		switch {
		case eq(name, "PING"):
			return cmdPing
		case eq(name, "INCR"):
			return cmdIncr
		case eq(name, "DECR"):
			return cmdDecr
		case eq(name, "MGET"):
			return cmdMGet
		case eq(name, "MSET"):
			return cmdMSet
		case eq(name, "ECHO"):
			return cmdEcho
		case eq(name, "INFO"):
			return cmdInfo
		case eq(name, "QUIT"):
			return cmdQuit
		case eq(name, "PTTL"):
			return cmdPTTL
		case eq(name, "POST"):
			return cmdSecurity
		}
	case 5:
		if eq(name, "HOST:") {
			return cmdSecurity
		}
	case 6:
		switch {
		case eq(name, "INCRBY"):
			return cmdIncrBy
		case eq(name, "DECRBY"):
			return cmdDecrBy
		case eq(name, "EXISTS"):
			return cmdExists
		case eq(name, "EXPIRE"):
			return cmdExpire
		case eq(name, "DBSIZE"):
			return cmdDBSize
		case eq(name, "SELECT"):
			return cmdSelect
		case eq(name, "CONFIG"):
			return cmdConfig
		}
	case 7:
		switch {
		case eq(name, "PEXPIRE"):
			return cmdPExpire
		case eq(name, "COMMAND"):
			return cmdCommand
		}
	case 8:
		if eq(name, "FLUSHALL") {
			return cmdFlushAll
		}
	}
	return cmdUnknown
}

const (
	errSyntax    = "ERR syntax error"
	errNotInt    = "ERR value is not an integer or out of range"
	errOverflow  = "ERR increment or decrement would overflow"
	errOOM       = "OOM command not allowed when used memory > 'maxmemory'."
	errDBIndex   = "ERR DB index is out of range"
	errDecrOverf = "ERR decrement would overflow"
)

func appendArityErr(b []byte, name string) []byte {
	b = append(b, "-ERR wrong number of arguments for '"...)
	b = append(b, name...)
	return append(b, "' command\r\n"...)
}

func appendExpireTimeErr(b []byte, name string) []byte {
	b = append(b, "-ERR invalid expire time in '"...)
	b = append(b, name...)
	return append(b, "' command\r\n"...)
}

// appendSanitized appends s with CR and LF turned into spaces, as redis
// does for error replies built from client input.
func appendSanitized(b, s []byte) []byte {
	for _, c := range s {
		if c == '\r' || c == '\n' {
			c = ' '
		}
		b = append(b, c)
	}
	return b
}

// appendUnknown appends redis 7's unknown command error: the name cut at
// 128 bytes, then the arguments quoted until 128 bytes of them are shown.
func appendUnknown(b []byte, args [][]byte) []byte {
	b = append(b, "-ERR unknown command '"...)
	b = appendSanitized(b, args[0][:min(len(args[0]), 128)])
	b = append(b, "', with args beginning with: "...)
	shown := 0
	for _, a := range args[1:] {
		if shown >= 128 {
			break
		}
		a = a[:min(len(a), 128-shown)]
		b = append(b, '\'')
		b = appendSanitized(b, a)
		b = append(b, '\'', ' ')
		shown += len(a) + 3
	}
	return append(b, '\r', '\n')
}

// Exec runs one command (args[0] is its name) and appends its reply to r.
// now is the store clock, read once per batch.
func (e *Engine) Exec(cl *Client, args [][]byte, r *resp.Reply, now int64) {
	if len(args) == 0 {
		return
	}
	id := lookup(args[0])
	if id == cmdUnknown {
		r.B = appendUnknown(r.B, args)
		return
	}
	if id == cmdSecurity {
		cl.Drop = true
		return
	}
	sp := &specs[id]
	if (sp.arity > 0 && len(args) != sp.arity) || (sp.arity < 0 && len(args) < -sp.arity) {
		r.B = appendArityErr(r.B, sp.name)
		return
	}
	st := e.Store
	if sp.deniedOnOOM && !st.Reserve(now) {
		r.B = resp.AppendErr(r.B, errOOM)
		return
	}
	switch id {
	case cmdGet:
		var ref []byte
		var ok bool
		r.B, ref, ok = st.Get(r.B, args[1], now, resp.AppendBulk)
		if !ok {
			r.B = resp.AppendNull(r.B)
		} else if ref != nil {
			r.BulkRef(ref)
		}
	case cmdSet:
		e.set(args, r, now)
	case cmdDel, cmdExists:
		n := int64(0)
		for _, k := range args[1:] {
			var ok bool
			if id == cmdDel {
				ok = st.Del(k, now)
			} else {
				ok = st.Exists(k, now)
			}
			if ok {
				n++
			}
		}
		r.B = resp.AppendInt(r.B, n)
	case cmdTTL, cmdPTTL:
		ms := st.TTL(args[1], now)
		if ms >= 0 && id == cmdTTL {
			ms = (ms + 500) / 1000
		}
		r.B = resp.AppendInt(r.B, ms)
	case cmdPing:
		switch len(args) {
		case 1:
			r.B = append(r.B, "+PONG\r\n"...)
		case 2:
			r.B = resp.AppendBulk(r.B, args[1])
		default:
			r.B = appendArityErr(r.B, sp.name)
		}
	case cmdEcho:
		r.B = resp.AppendBulk(r.B, args[1])
	case cmdIncr, cmdDecr, cmdIncrBy, cmdDecrBy:
		e.incr(id, args, r, now)
	case cmdMGet:
		r.B = resp.AppendArrayLen(r.B, len(args)-1)
		for _, k := range args[1:] {
			var ref []byte
			var ok bool
			r.B, ref, ok = st.Get(r.B, k, now, resp.AppendBulk)
			if !ok {
				r.B = resp.AppendNull(r.B)
			} else if ref != nil {
				r.BulkRef(ref)
			}
		}
	case cmdMSet:
		if len(args)%2 != 1 {
			r.B = appendArityErr(r.B, sp.name)
			return
		}
		for i := 1; i < len(args); i += 2 {
			st.Set(args[i], args[i+1], 0, now, 0)
		}
		r.B = append(r.B, "+OK\r\n"...)
	case cmdExpire, cmdPExpire:
		e.expire(id, args, r, now)
	case cmdDBSize:
		r.B = resp.AppendInt(r.B, st.Len())
	case cmdFlushAll:
		if len(args) > 2 || (len(args) == 2 && !eq(args[1], "ASYNC") && !eq(args[1], "SYNC")) {
			r.B = resp.AppendErr(r.B, errSyntax)
			return
		}
		st.Flush()
		r.B = append(r.B, "+OK\r\n"...)
	case cmdSelect:
		n, ok := resp.ParseInt(args[1])
		switch {
		case !ok:
			r.B = resp.AppendErr(r.B, errNotInt)
		case n != 0:
			r.B = resp.AppendErr(r.B, errDBIndex)
		default:
			r.B = append(r.B, "+OK\r\n"...)
		}
	case cmdQuit:
		r.B = append(r.B, "+OK\r\n"...)
		cl.Quit = true
	case cmdInfo:
		e.info(args, r)
	case cmdConfig:
		e.config(args, r)
	case cmdCommand:
		e.command(args, r)
	}
}

// set is SET key value [NX|XX] [EX seconds|PX milliseconds|KEEPTTL], with
// redis 7's option rules and errors (GET, EXAT and PXAT are not offered).
func (e *Engine) set(args [][]byte, r *resp.Reply, now int64) {
	var mode store.SetMode
	var exp []byte
	unit := int64(0) // 1000 for EX, 1 for PX
	for j := 3; j < len(args); j++ {
		opt := args[j]
		next := j+1 < len(args)
		switch {
		case eq(opt, "NX") && mode&store.SetXX == 0:
			mode |= store.SetNX
		case eq(opt, "XX") && mode&store.SetNX == 0:
			mode |= store.SetXX
		case eq(opt, "KEEPTTL") && unit == 0:
			mode |= store.SetKeepTTL
		case eq(opt, "EX") && mode&store.SetKeepTTL == 0 && unit != 1 && next:
			unit, exp = 1000, args[j+1]
			j++
		case eq(opt, "PX") && mode&store.SetKeepTTL == 0 && unit != 1000 && next:
			unit, exp = 1, args[j+1]
			j++
		default:
			r.B = resp.AppendErr(r.B, errSyntax)
			return
		}
	}
	at := int64(0)
	if exp != nil {
		v, ok := resp.ParseInt(exp)
		if !ok {
			r.B = resp.AppendErr(r.B, errNotInt)
			return
		}
		if v <= 0 || (unit == 1000 && v > math.MaxInt64/1000) {
			r.B = appendExpireTimeErr(r.B, "set")
			return
		}
		v *= unit
		if v > math.MaxInt64-now {
			r.B = appendExpireTimeErr(r.B, "set")
			return
		}
		at = now + v
	}
	if e.Store.Set(args[1], args[2], at, now, mode) {
		r.B = append(r.B, "+OK\r\n"...)
	} else {
		r.B = resp.AppendNull(r.B)
	}
}

func (e *Engine) incr(id cmdID, args [][]byte, r *resp.Reply, now int64) {
	delta := int64(1)
	switch id {
	case cmdDecr:
		delta = -1
	case cmdIncrBy, cmdDecrBy:
		v, ok := resp.ParseInt(args[2])
		if !ok {
			r.B = resp.AppendErr(r.B, errNotInt)
			return
		}
		if id == cmdDecrBy {
			if v == math.MinInt64 {
				r.B = resp.AppendErr(r.B, errDecrOverf)
				return
			}
			v = -v
		}
		delta = v
	}
	n, err := e.Store.IncrBy(args[1], delta, now)
	switch err {
	case nil:
		r.B = resp.AppendInt(r.B, n)
	case store.ErrOverflow:
		r.B = resp.AppendErr(r.B, errOverflow)
	default:
		r.B = resp.AppendErr(r.B, errNotInt)
	}
}

// expire is EXPIRE/PEXPIRE key time [NX|XX|GT|LT], as redis 7.
func (e *Engine) expire(id cmdID, args [][]byte, r *resp.Reply, now int64) {
	var nx, xx, gt, lt bool
	for _, opt := range args[3:] {
		switch {
		case eq(opt, "NX"):
			nx = true
		case eq(opt, "XX"):
			xx = true
		case eq(opt, "GT"):
			gt = true
		case eq(opt, "LT"):
			lt = true
		default:
			r.B = append(r.B, "-ERR Unsupported option "...)
			r.B = appendSanitized(r.B, opt)
			r.B = append(r.B, '\r', '\n')
			return
		}
	}
	if nx && (xx || gt || lt) {
		r.B = resp.AppendErr(r.B, "ERR NX and XX, GT or LT options at the same time are not compatible")
		return
	}
	if gt && lt {
		r.B = resp.AppendErr(r.B, "ERR GT and LT options at the same time are not compatible")
		return
	}
	when, ok := resp.ParseInt(args[2])
	if !ok {
		r.B = resp.AppendErr(r.B, errNotInt)
		return
	}
	name := specs[id].name
	if id == cmdExpire {
		if when > math.MaxInt64/1000 || when < math.MinInt64/1000 {
			r.B = appendExpireTimeErr(r.B, name)
			return
		}
		when *= 1000
	}
	if when > math.MaxInt64-now {
		r.B = appendExpireTimeErr(r.B, name)
		return
	}
	var cond store.ExpireCond
	for _, c := range [...]struct {
		on bool
		c  store.ExpireCond
	}{{nx, store.ExpireNX}, {xx, store.ExpireXX}, {gt, store.ExpireGT}, {lt, store.ExpireLT}} {
		if c.on {
			cond |= c.c
		}
	}
	done := e.Store.Expire(args[1], now+when, now, cond)
	if done {
		r.B = append(r.B, ":1\r\n"...)
	} else {
		r.B = append(r.B, ":0\r\n"...)
	}
}

// config answers CONFIG GET for the parameters this server can state
// truthfully; everything else is redis's unknown-subcommand error.
func (e *Engine) config(args [][]byte, r *resp.Reply) {
	if !eq(args[1], "GET") {
		r.B = append(r.B, "-ERR unknown subcommand '"...)
		r.B = appendSanitized(r.B, args[1][:min(len(args[1]), 128)])
		r.B = append(r.B, "'. Try CONFIG HELP.\r\n"...)
		return
	}
	if len(args) < 3 {
		r.B = appendArityErr(r.B, "config|get")
		return
	}
	params := [...][2]string{
		{"save", ""},
		{"appendonly", "no"},
		{"databases", "1"},
		{"maxmemory", strconv.FormatInt(e.Store.MaxMemory(), 10)},
		{"maxmemory-policy", "allkeys-lru"},
		{"maxmemory-samples", "5"},
		{"proto-max-bulk-len", strconv.FormatInt(e.MaxBulk, 10)},
	}
	var out [][2]string
	for _, a := range args[2:] {
		for _, p := range params {
			if string(a) == "*" || bytes.EqualFold(a, []byte(p[0])) {
				dup := false
				for _, o := range out {
					dup = dup || o[0] == p[0]
				}
				if !dup {
					out = append(out, p)
				}
			}
		}
	}
	r.B = resp.AppendArrayLen(r.B, 2*len(out))
	for _, p := range out {
		r.B = resp.AppendBulkString(r.B, p[0])
		r.B = resp.AppendBulkString(r.B, p[1])
	}
}

// command answers COMMAND, COMMAND COUNT, COMMAND INFO and COMMAND LIST in
// redis 7's shapes. COMMAND DOCS is refused like a server that predates
// it, so redis-cli falls back to its built-in help.
func (e *Engine) command(args [][]byte, r *resp.Reply) {
	appendSpec := func(sp *cmdSpec) {
		b := resp.AppendArrayLen(r.B, 10)
		b = resp.AppendBulkString(b, sp.name)
		b = resp.AppendInt(b, int64(sp.arity))
		b = resp.AppendArrayLen(b, len(sp.flags))
		for _, f := range sp.flags {
			b = resp.AppendSimple(b, f)
		}
		b = resp.AppendInt(b, int64(sp.first))
		b = resp.AppendInt(b, int64(sp.last))
		b = resp.AppendInt(b, int64(sp.step))
		b = resp.AppendArrayLen(b, len(sp.acl))
		for _, a := range sp.acl {
			b = resp.AppendSimple(b, a)
		}
		b = resp.AppendArrayLen(b, 0) // tips
		b = resp.AppendArrayLen(b, 0) // key specs
		b = resp.AppendArrayLen(b, 0) // subcommands
		r.B = b
	}
	n := 0
	for i := range specs {
		if specs[i].name != "" {
			n++
		}
	}
	if len(args) == 1 {
		r.B = resp.AppendArrayLen(r.B, n)
		for i := range specs {
			if specs[i].name != "" {
				appendSpec(&specs[i])
			}
		}
		return
	}
	sub := args[1]
	switch {
	case eq(sub, "COUNT") && len(args) == 2:
		r.B = resp.AppendInt(r.B, int64(n))
	case eq(sub, "LIST") && len(args) == 2:
		r.B = resp.AppendArrayLen(r.B, n)
		for i := range specs {
			if specs[i].name != "" {
				r.B = resp.AppendBulkString(r.B, specs[i].name)
			}
		}
	case eq(sub, "INFO"):
		r.B = resp.AppendArrayLen(r.B, len(args)-2)
		for _, name := range args[2:] {
			if id := lookup(name); id != cmdUnknown && id != cmdSecurity {
				appendSpec(&specs[id])
			} else {
				r.B = append(r.B, "*-1\r\n"...)
			}
		}
	default:
		r.B = append(r.B, "-ERR unknown subcommand '"...)
		r.B = appendSanitized(r.B, sub[:min(len(sub), 128)])
		r.B = append(r.B, "'. Try COMMAND HELP.\r\n"...)
	}
}

// info answers INFO [section ...] with a short report of what this server
// actually measures. Sections: server, clients, memory, stats, ringline,
// keyspace; "all", "everything" and "default" mean all of them.
func (e *Engine) info(args [][]byte, r *resp.Reply) {
	want := func(s string) bool {
		if len(args) == 1 {
			return true
		}
		for _, a := range args[1:] {
			if bytes.EqualFold(a, []byte(s)) || eq(a, "ALL") || eq(a, "EVERYTHING") || eq(a, "DEFAULT") {
				return true
			}
		}
		return false
	}
	var b []byte
	line := func(k string, v any) {
		b = append(b, k...)
		b = append(b, ':')
		switch x := v.(type) {
		case int64:
			b = strconv.AppendInt(b, x, 10)
		case uint64:
			b = strconv.AppendUint(b, x, 10)
		case int:
			b = strconv.AppendInt(b, int64(x), 10)
		case string:
			b = append(b, x...)
		}
		b = append(b, '\r', '\n')
	}
	section := func(name, title string, body func()) {
		if !want(name) {
			return
		}
		if len(b) > 0 {
			b = append(b, '\r', '\n')
		}
		b = append(b, "# "+title+"\r\n"...)
		body()
		if e.Info != nil {
			b = e.Info(name, b)
		}
	}
	st := e.Store
	section("server", "Server", func() {
		line("server_name", "ringline-cache")
		line("go_version", runtime.Version())
		line("process_id", os.Getpid())
		line("uptime_in_seconds", int64(time.Since(e.start)/time.Second))
	})
	section("clients", "Clients", func() {
		line("connected_clients", e.clients.Load())
	})
	section("memory", "Memory", func() {
		line("used_memory", st.MemUsed())
		line("used_memory_note", "estimate: key and value bytes plus "+strconv.Itoa(store.EntryOverhead)+" per key")
		line("maxmemory", st.MaxMemory())
		line("maxmemory_policy", "allkeys-lru")
		samples := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/total:bytes"}}
		metrics.Read(samples)
		if samples[0].Value.Kind() == metrics.KindUint64 {
			line("go_heap_objects_bytes", samples[0].Value.Uint64())
		}
		if samples[1].Value.Kind() == metrics.KindUint64 {
			line("go_total_bytes", samples[1].Value.Uint64())
		}
	})
	section("stats", "Stats", func() {
		line("total_connections_received", e.conns.Load())
		n := e.commands.Load()
		if e.CountCommands != nil {
			n = e.CountCommands()
		}
		line("total_commands_processed", n)
		line("expired_keys", st.Expired())
		line("evicted_keys", st.Evicted())
	})
	section("ringline", "Ringline", func() {})
	section("keyspace", "Keyspace", func() {
		if n := st.Len(); n > 0 {
			b = append(b, "db0:keys="...)
			b = strconv.AppendInt(b, n, 10)
			b = append(b, ",expires="...)
			b = strconv.AppendInt(b, st.Volatile(), 10)
			b = append(b, ",avg_ttl=0\r\n"...)
		}
	})
	r.B = resp.AppendBulk(r.B, b)
}
