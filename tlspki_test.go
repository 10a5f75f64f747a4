package ringline

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/ringline-go/ringline/internal/require"
)

// testPKI is a throwaway certificate authority (ECDSA P-256) and the
// certificates the TLS tests use: a server certificate for "localhost",
// 127.0.0.1 and ::1, a client certificate, and a second CA that signed
// nothing the others trust.
type testPKI struct {
	ca      *x509.Certificate
	caKey   *ecdsa.PrivateKey
	pool    *x509.CertPool // trusts ca
	server  tls.Certificate
	client  tls.Certificate
	rogue   tls.Certificate // a client certificate of another CA
	caPEM   []byte
	serial  int64
	serialM sync.Mutex
}

var (
	pkiOnce sync.Once
	pki     *testPKI
)

// getPKI returns the tests' PKI, made once per test binary.
func getPKI() *testPKI {
	pkiOnce.Do(func() { pki = newPKI() })
	return pki
}

func newPKI() *testPKI {
	p := &testPKI{}
	p.ca, p.caKey = newCA("ringline test CA")
	p.pool = x509.NewCertPool()
	p.pool.AddCert(p.ca)
	p.caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.ca.Raw})
	p.server = p.issue(p.ca, p.caKey, "localhost", true)
	p.client = p.issue(p.ca, p.caKey, "ringline test client", false)
	rogueCA, rogueKey := newCA("rogue CA")
	p.rogue = p.issue(rogueCA, rogueKey, "rogue client", false)
	return p
}

func newCA(name string) (*x509.Certificate, *ecdsa.PrivateKey) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		panic(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	return cert, key
}

// issue makes a leaf certificate signed by ca: a server certificate for
// localhost and the loopback addresses, or a client certificate.
func (p *testPKI) issue(ca *x509.Certificate, caKey *ecdsa.PrivateKey, name string, server bool) tls.Certificate {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	p.serialM.Lock()
	p.serial++
	serial := p.serial + 1
	p.serialM.Unlock()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	if server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
		tmpl.DNSNames = []string{"localhost"}
		tmpl.IPAddresses = []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("::1")}
	} else {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		panic(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		panic(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// serverConfig is a server tls.Config with the PKI's server certificate.
func (p *testPKI) serverConfig() *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{p.server}}
}

// clientConfig is a client tls.Config that trusts the PKI's CA and names
// "localhost".
func (p *testPKI) clientConfig() *tls.Config {
	return &tls.Config{RootCAs: p.pool, ServerName: "localhost"}
}

// writeFiles writes the CA certificate and the client's certificate and
// key as PEM files into dir, for openssl.
func (p *testPKI) writeFiles(t *testing.T, dir string) (caFile, certFile, keyFile string) {
	t.Helper()
	caFile = filepath.Join(dir, "ca.pem")
	certFile = filepath.Join(dir, "client.pem")
	keyFile = filepath.Join(dir, "client.key")
	require.NoError(t, os.WriteFile(caFile, p.caPEM, 0o600))
	require.NoError(t, os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: p.client.Certificate[0]}), 0o600))
	der, err := x509.MarshalPKCS8PrivateKey(p.client.PrivateKey)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600))
	return caFile, certFile, keyFile
}
