package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/router"
)

func TestHashKey(t *testing.T) {
	const want = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad" // SHA-256("abc")
	var stdout bytes.Buffer
	if err := hashKeyCmd([]string{"abc"}, nil, &stdout); err != nil || stdout.String() != want+"\n" {
		t.Fatalf("hash-key abc: %q, %v", stdout.String(), err)
	}
	stdout.Reset()
	if err := hashKeyCmd([]string{"-"}, strings.NewReader("abc\n"), &stdout); err != nil || stdout.String() != want+"\n" {
		t.Fatalf("hash-key - with abc on stdin: %q, %v", stdout.String(), err)
	}
	for _, args := range [][]string{nil, {"a", "b"}, {"-"}} {
		if err := hashKeyCmd(args, strings.NewReader("\n"), &stdout); err == nil {
			t.Errorf("hash-key %q: no error", args)
		}
	}
	var stderr bytes.Buffer
	if code := run([]string{"hash-key"}, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "usage") {
		t.Errorf("hash-key without a key: exit %d, %q", code, stderr.String())
	}
}

// serveAuthRouter serves a router that requires credentials from callers,
// with the server options given.
func serveAuthRouter(t *testing.T, callers []router.CallerConfig, opts ...grpc.ServerOption) string {
	t.Helper()
	rdb, prefix := testenv.Redis(t)
	_, pub := testenv.Publisher(t, rdb, prefix, 5*time.Second)
	svc, err := router.New(router.Config{}, router.Deps{Publisher: pub})
	if err != nil {
		t.Fatal(err)
	}
	auth, err := router.NewCallers(router.AuthConfig{Callers: callers}, router.AuthDeps{})
	if err != nil {
		t.Fatal(err)
	}
	opts = append(opts, grpc.UnaryInterceptor(auth.UnaryInterceptor()))
	return testenv.Serve(t, func(ctx context.Context, lis net.Listener) error { return svc.Serve(ctx, lis, opts...) }).Addr
}

// TestAPIKey: notify and device calls carry -api-key, or HERALD_API_KEY, as
// the bearer token the router checks.
func TestAPIKey(t *testing.T) {
	const key = "hk_test_0c1d2e3f"
	addr := serveAuthRouter(t, []router.CallerConfig{{Name: "ops", KeySHA256: router.HashKey(key), Users: []string{"zoe"}}})
	var stdout, stderr bytes.Buffer
	exit := func(args ...string) int {
		stdout.Reset()
		stderr.Reset()
		return run(append(args, "-addr", addr), &stdout, &stderr)
	}
	if code := exit("notify", "-user", "zoe"); code != 1 || !strings.Contains(stderr.String(), "Unauthenticated") {
		t.Fatalf("no key: exit %d, %q; want 1 and Unauthenticated", code, stderr.String())
	}
	if code := exit("notify", "-user", "zoe", "-api-key", "wrong"); code != 1 || !strings.Contains(stderr.String(), "Unauthenticated") {
		t.Fatalf("wrong key: exit %d, %q; want 1 and Unauthenticated", code, stderr.String())
	}
	if code := exit("notify", "-user", "zoe", "-api-key", key); code != 0 || !strings.Contains(stdout.String(), "notificationId") {
		t.Fatalf("-api-key: exit %d, %q %q", code, stdout.String(), stderr.String())
	}
	if code := exit("notify", "-user", "yan", "-api-key", key); code != 1 || !strings.Contains(stderr.String(), `PermissionDenied: router: caller "ops" may not notify user "yan"`) {
		t.Fatalf("user outside the caller's: exit %d, %q; want PermissionDenied", code, stderr.String())
	}
	t.Setenv("HERALD_API_KEY", key)
	if code := exit("notify", "-user", "zoe"); code != 0 {
		t.Fatalf("HERALD_API_KEY: exit %d, %q", code, stderr.String())
	}
	// The router has no device registry: Unimplemented means the call got
	// past authentication and authorisation.
	if code := exit("device", "register", "-user", "zoe", "-token", "t1", "-platform", "android"); code != 1 || !strings.Contains(stderr.String(), "Unimplemented") {
		t.Fatalf("device register with HERALD_API_KEY: exit %d, %q; want it past authentication", code, stderr.String())
	}
}

// TestMTLS: -tls-ca, -tls-cert and -tls-key connect over mutual TLS, the
// client certificate's CN naming the caller.
func TestMTLS(t *testing.T) {
	dir := t.TempDir()
	ca, caKey, caPEM := testCA(t)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	srvCert, srvKey := testCert(t, ca, caKey, "router", true)
	cliCert, cliKey := testCert(t, ca, caKey, "ops", false)
	tlsCfg, err := router.ServerTLS(write("srv.pem", srvCert), write("srv-key.pem", srvKey), write("ca.pem", caPEM))
	if err != nil {
		t.Fatal(err)
	}
	addr := serveAuthRouter(t, []router.CallerConfig{{Name: "ops", Users: []string{"*"}}}, grpc.Creds(credentials.NewTLS(tlsCfg)))

	var stdout, stderr bytes.Buffer
	args := []string{"notify", "-addr", addr, "-user", "zoe", "-tls-ca", write("ca.pem", caPEM)}
	if code := run(args, &stdout, &stderr); code != 1 || !strings.Contains(stderr.String(), "Unauthenticated") {
		t.Fatalf("TLS without a client certificate: exit %d, %q; want Unauthenticated", code, stderr.String())
	}
	stderr.Reset()
	args = append(args, "-tls-cert", write("cli.pem", cliCert), "-tls-key", write("cli-key.pem", cliKey))
	if code := run(args, &stdout, &stderr); code != 0 {
		t.Fatalf("mTLS: exit %d, %q", code, stderr.String())
	}
}

func testCA(t *testing.T) (*x509.Certificate, *ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(der)
	return ca, key, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// testCert issues a certificate for cn: a server's for 127.0.0.1, or a
// client's.
func testCert(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, server bool) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	if server {
		tmpl.ExtKeyUsage, tmpl.IPAddresses = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, []net.IP{net.IPv4(127, 0, 0, 1)}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})
}
