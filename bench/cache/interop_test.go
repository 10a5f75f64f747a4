package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/ringline-go/ringline"
	"github.com/ringline-go/ringline/examples/cache/server"
	"github.com/ringline-go/ringline/internal/require"
)

func backends() []ringline.Backend {
	if ringline.Probe().AutoReason == nil {
		return []ringline.Backend{ringline.IOUring, ringline.Epoll}
	}
	return []ringline.Backend{ringline.Epoll}
}

func forEachBackend(t *testing.T, f func(t *testing.T, be ringline.Backend)) {
	for _, be := range backends() {
		t.Run(be.String(), func(t *testing.T) { f(t, be) })
	}
}

func start(t *testing.T, o server.Options) *server.Server {
	t.Helper()
	o.Addr = "127.0.0.1:0"
	if o.Workers == 0 {
		o.Workers = 1
	}
	o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	o.Ring.MaxConnections = 1024
	srv, err := server.Start(o)
	require.NoError(t, err)
	t.Cleanup(func() {
		srv.Shutdown()
		select {
		case <-srv.Done():
		case <-time.After(20 * time.Second):
			t.Errorf("server did not stop within 20s")
		}
	})
	return srv
}

func newClient(t *testing.T, srv *server.Server, protocol int) *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: srv.Addr().String(), Protocol: protocol, PoolSize: 8,
		ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second})
	t.Cleanup(func() { c.Close() })
	return c
}

// TestGoRedis drives every command of the cache through go-redis v9, with
// RESP2 requested and with go-redis's default RESP3 (HELLO 3 is refused as
// by a redis-server before 6, and go-redis falls back to RESP2).
func TestGoRedis(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be ringline.Backend) {
		srv := start(t, server.Options{Backend: be})
		for _, proto := range []int{2, 3} {
			t.Run(fmt.Sprintf("protocol%d", proto), func(t *testing.T) {
				ctx := context.Background()
				c := newClient(t, srv, proto)
				require.NoError(t, c.FlushAll(ctx).Err())

				require.Equal(t, "PONG", c.Ping(ctx).Val())
				require.Equal(t, "hi\r\nthere", c.Echo(ctx, "hi\r\nthere").Val())

				// GET/SET and binary values.
				bin := string([]byte{0, 1, '\r', '\n', 0xff, '$', '*'})
				require.NoError(t, c.Set(ctx, bin, bin, 0).Err())
				v, err := c.Get(ctx, bin).Result()
				require.NoError(t, err)
				require.Equal(t, bin, v)
				_, err = c.Get(ctx, "missing").Result()
				require.ErrorIs(t, err, redis.Nil)
				big := strings.Repeat("0123456789", 100000) // 1 MB
				require.NoError(t, c.Set(ctx, "big", big, 0).Err())
				require.Equal(t, big, c.Get(ctx, "big").Val())

				// SET options.
				ok, err := c.SetNX(ctx, "nx", "1", 0).Result()
				require.NoError(t, err)
				require.True(t, ok)
				ok, _ = c.SetNX(ctx, "nx", "2", 0).Result()
				require.False(t, ok)
				ok, _ = c.SetXX(ctx, "xx", "1", 0).Result()
				require.False(t, ok)
				ok, _ = c.SetXX(ctx, "nx", "3", 0).Result()
				require.True(t, ok)
				require.Equal(t, "3", c.Get(ctx, "nx").Val())
				require.NoError(t, c.Set(ctx, "ex", "v", 100*time.Second).Err())
				require.Equal(t, 100*time.Second, c.TTL(ctx, "ex").Val())
				require.NoError(t, c.Set(ctx, "px", "v", 1500*time.Millisecond).Err())
				pttl := c.PTTL(ctx, "px").Val()
				require.True(t, pttl > time.Second && pttl <= 1500*time.Millisecond, "PTTL %v", pttl)
				require.Equal(t, "OK", c.SetArgs(ctx, "args", "v", redis.SetArgs{Mode: "NX", TTL: time.Minute}).Val())
				require.Equal(t, time.Minute, c.TTL(ctx, "args").Val())
				require.NoError(t, c.SetArgs(ctx, "args", "w", redis.SetArgs{KeepTTL: true}).Err())
				require.Equal(t, time.Minute, c.TTL(ctx, "args").Val())
				err = c.SetArgs(ctx, "args", "v", redis.SetArgs{Get: true}).Err()
				require.Error(t, err) // SET ... GET is not offered
				require.Contains(t, err.Error(), "syntax error")

				// DEL, EXISTS, MGET, MSET.
				require.NoError(t, c.MSet(ctx, "a", "1", "b", "2", "c", "3").Err())
				require.Equal(t, []any{"1", "2", nil, "3"}, c.MGet(ctx, "a", "b", "none", "c").Val())
				require.Equal(t, int64(3), c.Exists(ctx, "a", "b", "none", "a").Val())
				require.Equal(t, int64(2), c.Del(ctx, "a", "b", "none").Val())
				require.Equal(t, int64(0), c.Exists(ctx, "a").Val())

				// Counters.
				require.Equal(t, int64(1), c.Incr(ctx, "n").Val())
				require.Equal(t, int64(11), c.IncrBy(ctx, "n", 10).Val())
				require.Equal(t, int64(10), c.Decr(ctx, "n").Val())
				require.Equal(t, int64(-5), c.DecrBy(ctx, "n", 15).Val())
				err = c.Incr(ctx, "big").Err()
				require.Error(t, err)
				require.Equal(t, "ERR value is not an integer or out of range", err.Error())

				// EXPIRE/TTL and their conditions.
				require.True(t, c.Expire(ctx, "c", time.Hour).Val())
				require.Equal(t, time.Hour, c.TTL(ctx, "c").Val())
				require.False(t, c.ExpireNX(ctx, "c", time.Minute).Val())
				require.True(t, c.ExpireGT(ctx, "c", 2*time.Hour).Val())
				require.True(t, c.ExpireLT(ctx, "c", time.Minute).Val())
				require.True(t, c.ExpireXX(ctx, "c", 30*time.Second).Val())
				require.Equal(t, 30*time.Second, c.TTL(ctx, "c").Val())
				require.True(t, c.PExpire(ctx, "c", 20*time.Second).Val())
				require.Equal(t, 20*time.Second, c.TTL(ctx, "c").Val())
				require.False(t, c.Expire(ctx, "none", time.Hour).Val())
				require.Equal(t, time.Duration(-2), c.TTL(ctx, "none").Val())
				require.Equal(t, time.Duration(-1), c.TTL(ctx, "n").Val())

				// Server commands.
				require.Equal(t, int64(8), c.DBSize(ctx).Val()) // bin big nx ex px args c n
				info, err := c.Info(ctx).Result()
				require.NoError(t, err)
				require.Contains(t, info, "ringline_backend:"+be.String())
				require.Contains(t, info, "db0:keys=8")
				stats, err := c.Info(ctx, "stats").Result()
				require.NoError(t, err)
				require.Contains(t, stats, "total_commands_processed:")
				require.NotContains(t, stats, "# Server")
				cmds, err := c.Command(ctx).Result()
				require.NoError(t, err)
				require.Equal(t, int8(-3), cmds["set"].Arity)
				require.Equal(t, int8(1), cmds["get"].FirstKeyPos)
				require.True(t, cmds["get"].ReadOnly)
				cfg, err := c.ConfigGet(ctx, "appendonly").Result()
				require.NoError(t, err)
				require.Equal(t, map[string]string{"appendonly": "no"}, cfg)
				err = c.Do(ctx, "NOSUCH", "x").Err()
				require.Error(t, err)
				require.Equal(t, "ERR unknown command 'NOSUCH', with args beginning with: 'x' ", err.Error())
				require.Equal(t, "PONG", c.Ping(ctx).Val()) // the connection survived
				require.NoError(t, c.FlushAll(ctx).Err())
				require.Equal(t, int64(0), c.DBSize(ctx).Val())

				// QUIT on a dedicated connection: +OK, then closed.
				conn := c.Conn()
				require.Equal(t, "OK", conn.Do(ctx, "QUIT").Val())
				require.Error(t, conn.Ping(ctx).Err())
				conn.Close()
			})
		}
	})
}

// TestGoRedisPipelines sends pipelines of every kind of command, deep and
// mixed with errors, and checks each reply in order.
func TestGoRedisPipelines(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be ringline.Backend) {
		srv := start(t, server.Options{Backend: be})
		ctx := context.Background()
		c := newClient(t, srv, 2)
		const N = 5000
		pipe := c.Pipeline()
		sets := make([]*redis.StatusCmd, N)
		for i := range sets {
			sets[i] = pipe.Set(ctx, fmt.Sprintf("k%d", i), strings.Repeat("v", i%300), 0)
		}
		incr := pipe.IncrBy(ctx, "ctr", 7)
		bad := pipe.Incr(ctx, "k5")
		mget := pipe.MGet(ctx, "k1", "k2", "nope")
		exp := pipe.Expire(ctx, "k3", time.Hour)
		ttl := pipe.TTL(ctx, "k3")
		del := pipe.Del(ctx, "k4", "k4", "nope")
		size := pipe.DBSize(ctx)
		ping := pipe.Ping(ctx)
		_, err := pipe.Exec(ctx)
		require.Error(t, err) // the INCR of a non-number
		for _, s := range sets {
			require.Equal(t, "OK", s.Val())
		}
		require.Equal(t, int64(7), incr.Val())
		require.Error(t, bad.Err())
		require.Equal(t, []any{"v", "vv", nil}, mget.Val())
		require.True(t, exp.Val())
		require.Equal(t, time.Hour, ttl.Val())
		require.Equal(t, int64(1), del.Val())
		require.Equal(t, int64(N), size.Val())
		require.Equal(t, "PONG", ping.Val())

		// Reads in a second pipeline, from many goroutines at once.
		errc := make(chan error, 8)
		for g := 0; g < 8; g++ {
			go func(g int) {
				p := c.Pipeline()
				gets := make([]*redis.StringCmd, 0, N/8)
				for i := g; i < N; i += 8 {
					gets = append(gets, p.Get(ctx, fmt.Sprintf("k%d", i)))
				}
				if _, err := p.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
					errc <- err
					return
				}
				for j, gc := range gets {
					i := g + 8*j
					if i == 4 {
						continue // deleted above
					}
					if gc.Val() != strings.Repeat("v", i%300) {
						errc <- fmt.Errorf("k%d: got %d bytes", i, len(gc.Val()))
						return
					}
				}
				errc <- nil
			}(g)
		}
		for g := 0; g < 8; g++ {
			require.NoError(t, <-errc)
		}
	})
}

// TestGoRedisExpiry waits out short TTLs: SET PX, EXPIRE and PEXPIRE.
func TestGoRedisExpiry(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be ringline.Backend) {
		srv := start(t, server.Options{Backend: be})
		ctx := context.Background()
		c := newClient(t, srv, 2)
		require.NoError(t, c.Set(ctx, "a", "1", 150*time.Millisecond).Err())
		require.NoError(t, c.Set(ctx, "b", "2", 0).Err())
		require.True(t, c.PExpire(ctx, "b", 150*time.Millisecond).Val())
		require.NoError(t, c.Set(ctx, "c", "3", 0).Err())
		require.True(t, c.Expire(ctx, "c", 1*time.Second).Val())
		require.Equal(t, int64(3), c.Exists(ctx, "a", "b", "c").Val())
		time.Sleep(300 * time.Millisecond)
		require.ErrorIs(t, c.Get(ctx, "a").Err(), redis.Nil)
		require.Equal(t, time.Duration(-2), c.TTL(ctx, "b").Val())
		require.Equal(t, int64(1), c.Exists(ctx, "a", "b", "c").Val())
		time.Sleep(1200 * time.Millisecond)
		require.Equal(t, int64(0), c.Exists(ctx, "c").Val())
		require.Equal(t, int64(0), c.DBSize(ctx).Val())
	})
}

// TestGoRedisAcrossWorkers: a pool of connections spread over two workers
// sees one store.
func TestGoRedisAcrossWorkers(t *testing.T) {
	forEachBackend(t, func(t *testing.T, be ringline.Backend) {
		srv := start(t, server.Options{Backend: be, Workers: 2})
		ctx := context.Background()
		c := newClient(t, srv, 2)
		errc := make(chan error, 32)
		for g := 0; g < 32; g++ {
			go func(g int) {
				for i := 0; i < 100; i++ {
					if err := c.Incr(ctx, "shared").Err(); err != nil {
						errc <- err
						return
					}
				}
				errc <- c.Set(ctx, fmt.Sprintf("g%d", g), g, 0).Err()
			}(g)
		}
		for g := 0; g < 32; g++ {
			require.NoError(t, <-errc)
		}
		require.Equal(t, "3200", c.Get(ctx, "shared").Val())
		require.Equal(t, int64(33), c.DBSize(ctx).Val())
		stats := srv.Runtime().Stats()
		require.Len(t, stats, 2)
		for _, s := range stats {
			require.Greater(t, s.Accepted, uint64(0), "worker %d accepted no connection", s.Worker)
		}
	})
}
