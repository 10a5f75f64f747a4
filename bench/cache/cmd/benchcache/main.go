// Command benchcache measures the cache example against redis-server 7 and
// the redcon peer, side by side in one run, with redis-benchmark as the
// load: each server pinned to one CPU (taskset), redis-benchmark to
// another, one server thread/worker each. It prints, per server, test and
// pipeline depth: redis-benchmark's requests per second and p50/p99
// latency, the server's CPU time over the run (utime+stime from
// /proc/PID/stat) and requests per server-CPU-second.
//
// `make bench-cache` builds the binaries and runs it; see the flags for
// what can change.
package main

import (
	"bytes"
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
)

type serverKind struct {
	name string
	cmd  func(port string) []string
}

type result struct {
	server, test string
	pipeline     int
	rps          float64
	p50, p99     float64
	cpu          float64 // server CPU seconds over the run
	requests     int
}

func main() {
	cacheBin := flag.String("cache", "bin/cache", "the ringline cache binary (examples/cache)")
	redconBin := flag.String("redcon", "bin/cache-redcon", "the redcon cache binary (bench/cache/redcon)")
	redisServer := flag.String("redis-server", "redis-server", "redis-server binary")
	benchBin := flag.String("redis-benchmark", "redis-benchmark", "redis-benchmark binary")
	servers := flag.String("servers", "iouring,epoll,redis,redcon", "servers to measure, in order: iouring and epoll are the ringline cache on that backend")
	n := flag.Int("n", 1000000, "requests per measurement (redis-benchmark -n)")
	clients := flag.Int("clients", 50, "connections (redis-benchmark -c)")
	size := flag.Int("d", 64, "value size in bytes (redis-benchmark -d)")
	keyspace := flag.Int("keyspace", 100000, "random keys (redis-benchmark -r); 0 uses one key")
	pipelines := flag.String("pipelines", "1,16", "pipeline depths (redis-benchmark -P)")
	tests := flag.String("tests", "set,get", "redis-benchmark tests, in order (SET first fills the keys GET reads)")
	serverCPU := flag.Int("server-cpu", 0, "CPU the server is pinned to")
	clientCPU := flag.Int("client-cpu", 1, "CPU redis-benchmark is pinned to")
	warmup := flag.Int("warmup", 100000, "requests of each test sent before measuring")
	batchWait := flag.String("batch-wait", "0", "the ringline cache's -batch-wait (io_uring Config.BatchWait), e.g. 50us")
	flag.Parse()

	if runtime.NumCPU() < 2 {
		fail(errors.New("needs two CPUs: one for the server, one for the client"))
	}
	for _, b := range []string{*cacheBin, *redconBin} {
		if _, err := os.Stat(b); err != nil {
			fail(fmt.Errorf("%s: %w (make bench-cache builds it)", b, err))
		}
	}
	kinds := map[string]serverKind{
		"iouring": {"ringline io_uring", func(p string) []string {
			return []string{*cacheBin, "-addr", "127.0.0.1:" + p, "-workers", "1", "-backend", "iouring", "-batch-wait", *batchWait}
		}},
		"epoll": {"ringline epoll", func(p string) []string {
			return []string{*cacheBin, "-addr", "127.0.0.1:" + p, "-workers", "1", "-backend", "epoll"}
		}},
		"redis": {"redis-server", func(p string) []string {
			return []string{*redisServer, "--port", p, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
				"--io-threads", "1", "--daemonize", "no", "--logfile", "", "--dir", os.TempDir()}
		}},
		"redcon": {"redcon (net)", func(p string) []string {
			return []string{*redconBin, "-addr", "127.0.0.1:" + p}
		}},
	}
	var depths []int
	for _, s := range strings.Split(*pipelines, ",") {
		d, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || d < 1 {
			fail(fmt.Errorf("-pipelines: bad depth %q", s))
		}
		depths = append(depths, d)
	}
	tck := clockTicks()
	benchArgs := func(port, test string, p, reqs int) []string {
		a := []string{"taskset", "-c", strconv.Itoa(*clientCPU), *benchBin, "-h", "127.0.0.1", "-p", port,
			"-c", strconv.Itoa(*clients), "-n", strconv.Itoa(reqs), "-d", strconv.Itoa(*size), "-P", strconv.Itoa(p),
			"-t", test, "--csv"}
		if *keyspace > 0 {
			a = append(a, "-r", strconv.Itoa(*keyspace))
		}
		return a
	}
	shown := strings.Join(benchArgs("PORT", "TEST", 0, *n), " ")
	fmt.Printf("load: %s\n", strings.Replace(shown, "-P 0", "-P "+*pipelines, 1))
	fmt.Printf("server: taskset -c %d; one worker/thread each\n\n", *serverCPU)

	var results []result
	for _, key := range strings.Split(*servers, ",") {
		k, ok := kinds[strings.TrimSpace(key)]
		if !ok {
			fail(fmt.Errorf("-servers: unknown %q", key))
		}
		port := freePort()
		args := append([]string{"-c", strconv.Itoa(*serverCPU)}, k.cmd(port)...)
		srv := exec.Command("taskset", args...)
		var log bytes.Buffer
		srv.Stdout, srv.Stderr = &log, &log
		if err := srv.Start(); err != nil {
			fail(fmt.Errorf("%s: %w", k.name, err))
		}
		stop := func() {
			_ = srv.Process.Signal(os.Interrupt)
			done := make(chan struct{})
			go func() { _ = srv.Wait(); close(done) }()
			select {
			case <-done:
			case <-time.After(10 * time.Second):
				_ = srv.Process.Kill()
				<-done
			}
		}
		if err := waitReady("127.0.0.1:" + port); err != nil {
			stop()
			fail(fmt.Errorf("%s did not start: %v\n%s", k.name, err, log.String()))
		}
		fmt.Fprintf(os.Stderr, "%s: pid %d, port %s\n", k.name, srv.Process.Pid, port)
		for _, p := range depths {
			for _, test := range strings.Split(*tests, ",") {
				if *warmup > 0 {
					if _, err := runBench(benchArgs(port, test, p, *warmup)); err != nil {
						stop()
						fail(fmt.Errorf("%s warm-up: %w", k.name, err))
					}
				}
				before, err := cpuTicks(srv.Process.Pid)
				if err != nil {
					stop()
					fail(err)
				}
				row, err := runBench(benchArgs(port, test, p, *n))
				after, err2 := cpuTicks(srv.Process.Pid)
				if err != nil || err2 != nil {
					stop()
					fail(fmt.Errorf("%s %s -P %d: %v %v", k.name, test, p, err, err2))
				}
				r := result{server: k.name, test: strings.ToUpper(test), pipeline: p, requests: *n,
					rps: row[1], p50: row[4], p99: row[6], cpu: float64(after-before) / tck}
				results = append(results, r)
				fmt.Fprintf(os.Stderr, "  %s -P %d: %.0f req/s, %.2f CPU s\n", r.test, p, r.rps, r.cpu)
			}
		}
		stop()
	}
	printTable(os.Stdout, results)
}

func printTable(f *os.File, results []result) {
	ref := map[string]float64{} // redis-server's req/CPU-s per test and depth
	for _, r := range results {
		if r.server == "redis-server" && r.cpu > 0 {
			ref[fmt.Sprint(r.test, r.pipeline)] = float64(r.requests) / r.cpu
		}
	}
	w := tabwriter.NewWriter(f, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "server\ttest\t-P\treq/s\tp50 ms\tp99 ms\tserver CPU s\treq per CPU-s\tvs redis\t")
	for _, r := range results {
		perCPU, vs := "-", "-"
		if r.cpu > 0 {
			v := float64(r.requests) / r.cpu
			perCPU = fmt.Sprintf("%.0f", v)
			if x := ref[fmt.Sprint(r.test, r.pipeline)]; x > 0 {
				vs = fmt.Sprintf("%.2fx", v/x)
			}
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%.0f\t%.3f\t%.3f\t%.2f\t%s\t%s\t\n", r.server, r.test, r.pipeline, r.rps, r.p50, r.p99, r.cpu, perCPU, vs)
	}
	w.Flush()
}

// runBench runs redis-benchmark and returns its CSV row's numbers: rps,
// avg, min, p50, p95, p99, max (index 1..7; index 0 unused).
func runBench(args []string) ([]float64, error) {
	cmd := exec.Command(args[0], args[1:]...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("%s: %v: %s%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	return parseCSV(out.String())
}

func parseCSV(s string) ([]float64, error) {
	i := strings.Index(s, `"test"`)
	if i < 0 {
		return nil, fmt.Errorf("no CSV in redis-benchmark output %q", s)
	}
	rows, err := csv.NewReader(strings.NewReader(s[i:])).ReadAll()
	if err != nil || len(rows) != 2 || len(rows[1]) < 8 {
		return nil, fmt.Errorf("unexpected redis-benchmark output %q (%v)", s, err)
	}
	vals := make([]float64, 8)
	for j := 1; j < 8; j++ {
		if vals[j], err = strconv.ParseFloat(rows[1][j], 64); err != nil {
			return nil, fmt.Errorf("redis-benchmark column %d %q: %v", j, rows[1][j], err)
		}
	}
	return vals, nil
}

// cpuTicks returns utime+stime of a process (all its threads), in clock
// ticks, from /proc/PID/stat.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return 0, err
	}
	return parseStat(string(b))
}

func parseStat(s string) (int64, error) {
	// Fields after the command name (which may hold spaces): state is
	// field 3, utime 14, stime 15.
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("bad /proc stat %q", s)
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, fmt.Errorf("bad /proc stat %q", s)
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("bad /proc stat %q", s)
	}
	return u + st, nil
}

func clockTicks() float64 {
	out, err := exec.Command("getconf", "CLK_TCK").Output()
	if err == nil {
		if v, err := strconv.ParseFloat(strings.TrimSpace(string(out)), 64); err == nil && v > 0 {
			return v
		}
	}
	return 100
}

func freePort() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fail(err)
	}
	defer l.Close()
	_, p, _ := net.SplitHostPort(l.Addr().String())
	return p
}

func waitReady(addr string) error {
	deadline := time.Now().Add(20 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			_ = c.SetDeadline(time.Now().Add(2 * time.Second))
			_, _ = c.Write([]byte("PING\r\n"))
			b := make([]byte, 7)
			k, _ := c.Read(b)
			c.Close()
			if string(b[:k]) == "+PONG\r\n" {
				return nil
			}
			last = fmt.Errorf("PING answered %q", b[:k])
		} else {
			last = err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return last
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "benchcache:", err)
	os.Exit(1)
}
