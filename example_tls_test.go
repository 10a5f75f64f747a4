package ringline_test

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log"
	"math/big"
	"strings"
	"time"

	"github.com/ringline-go/ringline"
)

// selfSigned makes a throwaway ECDSA P-256 certificate for localhost, and
// a client configuration that trusts it.
func selfSigned() (tls.Certificate, *tls.Config) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		log.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		log.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		log.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
		&tls.Config{RootCAs: roots, ServerName: "localhost"}
}

// A TLS server: Config.TLS makes every accepted connection complete its
// handshake before OnAccept runs, and the handler (here the same echo as
// for plaintext) reads and sends plaintext. TLSInfo says what was
// negotiated.
func Example_tls() {
	cert, clientCfg := selfSigned()
	clientCfg.NextProtos = []string{"echo/1"}
	cfg := ringline.Config{TLS: &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"echo/1"},
	}}
	rt := launch(cfg, func(c ringline.ConnCtx) {
		if info, ok := c.TLSInfo(); ok {
			fmt.Printf("server: %s, ALPN %q, SNI %q\n", tls.VersionName(info.Version), info.NegotiatedProtocol, info.ServerName)
		}
		echo{}.OnAccept(c)
	})
	defer stop(rt)

	raw := dial(rt)
	c := tls.Client(raw, clientCfg)
	defer c.Close()
	if _, err := c.Write([]byte("hello over TLS")); err != nil {
		log.Fatal(err)
	}
	got := make([]byte, len("hello over TLS"))
	if _, err := io.ReadFull(c, got); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("client: %s\n", got)
	// Output:
	// server: TLS 1.3, ALPN "echo/1", SNI "localhost"
	// client: hello over TLS
}

// A handler written against net.Conn: bufio reads lines from the view and
// writes replies through it. Read suspends the task (never a thread)
// until bytes arrive; it is reserved to the connection's own task.
func ExampleConnCtx_NetConn() {
	rt := launch(ringline.Config{}, func(c ringline.ConnCtx) {
		conn := c.NetConn()
		r := bufio.NewReader(conn)
		w := bufio.NewWriter(conn)
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return // io.EOF: the client closed
			}
			fmt.Fprintf(w, "%d %s", len(line)-1, strings.ToUpper(line))
			if r.Buffered() == 0 {
				if w.Flush() != nil {
					return
				}
			}
		}
	})
	defer stop(rt)

	c := dial(rt)
	defer c.Close()
	go func() { _, _ = io.WriteString(c, "hello\nnet.Conn view\n") }()
	in := bufio.NewReader(c)
	for range 2 {
		line, err := in.ReadString('\n')
		if err != nil {
			log.Fatal(err)
		}
		fmt.Print(line)
	}
	// Output:
	// 5 HELLO
	// 13 NET.CONN VIEW
}
