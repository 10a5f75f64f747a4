// Package tlsflags holds the examples' TLS command-line flags, so the echo
// server and the proxy take a server certificate the same way: -tls-cert
// and -tls-key (PEM files), or -tls-self-signed for a quick start.
package tlsflags

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"flag"
	"fmt"
	"math/big"
	"net"
	"time"
)

// Server is the server-certificate flags registered on a FlagSet.
type Server struct {
	certFile, keyFile *string
	selfSigned        *bool
}

// RegisterServer registers -tls-cert, -tls-key and -tls-self-signed on fs;
// what serves TLS is the program's name in their help text.
func RegisterServer(fs *flag.FlagSet, what string) *Server {
	return &Server{
		certFile:   fs.String("tls-cert", "", what+" serves TLS with this certificate (PEM; with -tls-key)"),
		keyFile:    fs.String("tls-key", "", "the private key of -tls-cert (PEM)"),
		selfSigned: fs.Bool("tls-self-signed", false, what+" serves TLS with a throwaway self-signed certificate for localhost made at start"),
	}
}

// Config returns the server tls.Config the flags ask for, or nil when they
// ask for none (plaintext). note is a line to print at start-up for a
// self-signed certificate (its SHA-256 fingerprint, for a client to pin),
// empty otherwise.
func (s *Server) Config() (cfg *tls.Config, note string, err error) {
	switch {
	case *s.selfSigned:
		if *s.certFile != "" || *s.keyFile != "" {
			return nil, "", errors.New("-tls-self-signed and -tls-cert/-tls-key exclude each other")
		}
		cert, err := SelfSigned()
		if err != nil {
			return nil, "", err
		}
		sum := sha256.Sum256(cert.Certificate[0])
		return &tls.Config{Certificates: []tls.Certificate{cert}},
			fmt.Sprintf("TLS with a self-signed certificate for localhost, SHA-256 fingerprint %X", sum), nil
	case *s.certFile != "" || *s.keyFile != "":
		cert, err := tls.LoadX509KeyPair(*s.certFile, *s.keyFile)
		if err != nil {
			return nil, "", fmt.Errorf("-tls-cert/-tls-key: %w", err)
		}
		return &tls.Config{Certificates: []tls.Certificate{cert}}, "", nil
	}
	return nil, "", nil
}

// SelfSigned makes a throwaway ECDSA P-256 certificate for localhost,
// 127.0.0.1 and ::1, valid for a day. Clients must be told to trust it
// (or not to verify): it is for trying TLS out, not for serving.
func SelfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "localhost"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
