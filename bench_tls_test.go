package ringline

// TLS figures (issue 11): TLS 1.3 echo, 64-byte pipelined and 16 KiB
// messages, and full handshakes, each against Go's net + crypto/tls with a
// goroutine per connection (GOMAXPROCS=1), server pinned to one CPU and
// the client a child process on the other, as BenchmarkPipelinedEcho.
//
//	go test -run '^$' -bench 'TLSEcho/.*size=64/' -benchtime 200000x -count 5 .
//	go test -run '^$' -bench 'TLSEcho/.*size=16384/' -benchtime 20000x -count 5 .
//	go test -run '^$' -bench TLSHandshake -benchtime 5000x -count 5 .

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

var benchTLSCert struct {
	once sync.Once
	cert tls.Certificate
}

// benchTLSServer is the benchmark servers' TLS 1.3 configuration (nil
// when on is false): a self-signed ECDSA P-256 certificate made once per
// process.
func benchTLSServer(on bool) *tls.Config {
	if !on {
		return nil
	}
	c := &benchTLSCert
	c.once.Do(func() {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			DNSNames: []string{"localhost"}, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			panic(err)
		}
		c.cert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
	})
	return &tls.Config{Certificates: []tls.Certificate{c.cert}, MinVersion: tls.VersionTLS13}
}

// benchTLSClientConfig is the load clients' configuration: TLS 1.3, no
// verification (the certificate is the server's throwaway one), no
// session cache (every handshake is a full one).
func benchTLSClientConfig() *tls.Config {
	return &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}
}

// benchTLSClient wraps a dialed connection in a TLS client; the handshake
// runs with the first write.
func benchTLSClient(c net.Conn) net.Conn { return tls.Client(c, benchTLSClientConfig()) }

// BenchmarkTLSEcho: the pipelined echo load of BenchmarkPipelinedEcho over
// TLS 1.3: 64 connections, 64-byte messages 16 deep (a client write is 16
// messages, one record), and 16 KiB messages 2 deep. Ringline's echo is
// the plaintext handler unchanged (nowait: WithData + SendNowait; await:
// Send + Await); Go's is net + crypto/tls, a goroutine per connection
// reading into 16 KiB and writing it back. msgs/server-cpu-s and
// server-allocs/msg are the figures (the target: ringline at least 1.1x
// Go's msgs/server-cpu-s).
func BenchmarkTLSEcho(b *testing.B) {
	loads := []benchPipeLoad{
		{Conns: 64, Depth: 16, Size: 64, TLS: true},
		{Conns: 64, Depth: 2, Size: 16 << 10, TLS: true},
	}
	for _, l := range loads {
		size := fmt.Sprintf("size=%d", l.Size)
		for _, be := range availableBackends() {
			nowait := benchServerSpec{be: be, h: echoNowaitTask, tls: true}
			await := benchServerSpec{be: be, h: echoTask, tls: true}
			b.Run(be.String()+"/"+size+"/handler=nowait", func(b *testing.B) { benchPipelinedSubproc(b, nowait, l) })
			b.Run(be.String()+"/"+size+"/handler=await", func(b *testing.B) { benchPipelinedSubproc(b, await, l) })
		}
		b.Run("gonet/"+size, func(b *testing.B) { benchPipelinedSubproc(b, benchServerSpec{peer: peerGoNet, tls: true}, l) })
	}
}

// benchHSConcurrency is how many handshakes the client keeps in flight.
const benchHSConcurrency = 8

// BenchmarkTLSHandshake: full TLS 1.3 handshakes (ECDSA P-256 server
// certificate, crypto/tls's default key exchange, no resumption), each on
// a new connection that then echoes one byte and closes; b.N is the
// handshake count, 8 in flight. handshakes/server-cpu-s is the figure.
func BenchmarkTLSHandshake(b *testing.B) {
	for _, be := range availableBackends() {
		s := benchServerSpec{be: be, h: echoNowaitTask, tls: true}
		b.Run(be.String(), func(b *testing.B) { benchHandshakes(b, s) })
	}
	b.Run("gonet", func(b *testing.B) { benchHandshakes(b, benchServerSpec{peer: peerGoNet, tls: true}) })
}

func benchHandshakes(b *testing.B, s benchServerSpec) {
	clientCPU, restore := benchPinServer()
	defer restore()
	srv, undo := benchStartServer(b, s)
	defer undo()
	ch := benchStartChild(b, "hsclient", fmt.Sprintf("%s %d %d", srv.addr, b.N, clientCPU),
		60*time.Second+time.Duration(b.N)*5*time.Millisecond)
	defer ch.wait()
	if s := ch.next(); s != "ready" {
		b.Fatalf("client: %s", s)
	}
	var before WorkerStats
	if srv.rt != nil {
		before = benchSettledStats(srv.rt)
	}
	u0, err := srv.usage()
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	if _, err := io.WriteString(ch.stdin, "go\n"); err != nil {
		b.Fatal(err)
	}
	res := ch.next()
	b.StopTimer()
	u1, err := srv.usage()
	if err != nil {
		b.Fatal(err)
	}
	if res != "done" {
		b.Fatalf("client: %s", res)
	}
	ch.wait()
	if srv.rt != nil {
		after := benchSettledStats(srv.rt)
		if got := after.TLSHandshakes - before.TLSHandshakes; got != uint64(b.N) {
			b.Fatalf("server completed %d handshakes, want %d", got, b.N)
		}
		if errs := after.TLSHandshakeErrors - before.TLSHandshakeErrors; errs != 0 {
			b.Fatalf("%d handshakes failed", errs)
		}
	}
	b.ReportMetric(float64(b.N)/u0.cpu(u1).Seconds(), "handshakes/server-cpu-s")
	b.ReportMetric(float64(u0.cpu(u1).Microseconds())/float64(b.N), "server-cpu-us/handshake")
	b.ReportMetric(float64(u1.mallocs-u0.mallocs)/float64(b.N), "server-allocs/handshake")
}

// benchHandshakeClientMain is the "hsclient" role: print "ready", wait for
// "go", then run n handshakes (each: connect, TLS 1.3 handshake, echo one
// byte, close) from benchHSConcurrency goroutines and print "done".
func benchHandshakeClientMain() error {
	var addr string
	var n, cpu int
	if _, err := fmt.Sscan(os.Getenv(benchArgsEnv), &addr, &n, &cpu); err != nil {
		return fmt.Errorf("bad %s: %w", benchArgsEnv, err)
	}
	if cpu >= 0 {
		benchPinProcess(cpu)
		runtime.GOMAXPROCS(1)
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	if !in.Scan() || in.Text() != "go" {
		return errors.New("no go from the benchmark")
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, benchHSConcurrency)
	cfg := benchTLSClientConfig()
	for range benchHSConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1)
			for next.Add(1) <= int64(n) {
				raw, err := net.DialTimeout("tcp", addr, 5*time.Second)
				if err != nil {
					errs <- err
					return
				}
				_ = raw.SetDeadline(time.Now().Add(10 * time.Second))
				c := tls.Client(raw, cfg)
				_, err = c.Write([]byte{'h'})
				if err == nil {
					_, err = io.ReadFull(c, buf)
				}
				c.Close()
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		fmt.Println("fail:", err)
		return err
	}
	fmt.Println("done")
	return nil
}
