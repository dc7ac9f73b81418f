package sseedge_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/sseedge"
)

// keys are the test's signing keys; the edges know some of them.
type keys struct {
	rsa, rsaOther *rsa.PrivateKey
	ec, ecOther   *ecdsa.PrivateKey
}

var testKeys = sync.OnceValue(func() keys {
	gen := func() *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			panic(err)
		}
		return k
	}
	genEC := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	}
	return keys{rsa: gen(), rsaOther: gen(), ec: genEC(), ecOther: genEC()}
})

// pemOf encodes public keys as PKIX PEM blocks.
func pemOf(tb testing.TB, pubs ...any) []byte {
	tb.Helper()
	var out []byte
	for _, pub := range pubs {
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der})...)
	}
	return out
}

// jwkOf encodes a public key as an RFC 7517 JSON Web Key.
func jwkOf(tb testing.TB, kid string, pub any) map[string]string {
	tb.Helper()
	b64 := base64.RawURLEncoding.EncodeToString
	switch k := pub.(type) {
	case *rsa.PublicKey:
		return map[string]string{"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
			"n": b64(k.N.Bytes()), "e": b64(big.NewInt(int64(k.E)).Bytes())}
	case *ecdsa.PublicKey:
		b, err := k.Bytes()
		if err != nil {
			tb.Fatal(err)
		}
		return map[string]string{"kty": "EC", "kid": kid, "crv": "P-256", "x": b64(b[1:33]), "y": b64(b[33:])}
	}
	tb.Fatalf("no JWK for %T", pub)
	return nil
}

func jwksOf(tb testing.TB, jwks ...map[string]string) []byte {
	tb.Helper()
	b, err := json.Marshal(map[string]any{"keys": jwks})
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func writeFile(tb testing.TB, name string, data []byte) string {
	tb.Helper()
	p := filepath.Join(tb.TempDir(), name)
	if err := os.WriteFile(p, data, 0o600); err != nil {
		tb.Fatal(err)
	}
	return p
}

// claims are valid claims for user, for an hour.
func claims(user string) jwt.MapClaims {
	now := time.Now()
	return jwt.MapClaims{"sub": user, "iat": now.Unix(), "exp": now.Add(time.Hour).Unix()}
}

// with returns c with the given claims set, or removed when nil.
func with(c jwt.MapClaims, kv ...any) jwt.MapClaims {
	out := jwt.MapClaims{}
	for k, v := range c {
		out[k] = v
	}
	for i := 0; i < len(kv); i += 2 {
		if kv[i+1] == nil {
			delete(out, kv[i].(string))
		} else {
			out[kv[i].(string)] = kv[i+1]
		}
	}
	return out
}

// sign returns a token of c signed with key by method, with header fields
// from hdr ("kid", ...).
func sign(tb testing.TB, method jwt.SigningMethod, key any, c jwt.Claims, hdr ...string) string {
	tb.Helper()
	tok := jwt.NewWithClaims(method, c)
	for i := 0; i < len(hdr); i += 2 {
		tok.Header[hdr[i]] = hdr[i+1]
	}
	s, err := tok.SignedString(key)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// newAuthEdge serves an edge configured with cfg's keys alone (unlike
// newTestEdge, which always sets the shared secret).
func newAuthEdge(tb testing.TB, cfg sseedge.Config, client *http.Client) *testEdge {
	tb.Helper()
	rdb, prefix := testenv.Redis(tb)
	reg, pub := testenv.Publisher(tb, rdb, prefix, 5*time.Second)
	if cfg.DrainPeriod == 0 {
		cfg.DrainPeriod = 100 * time.Millisecond
	}
	metrics := prometheus.NewRegistry()
	edge, err := sseedge.New(cfg, sseedge.Deps{Redis: rdb, Presence: reg, Registerer: metrics, HTTPClient: client})
	if err != nil {
		tb.Fatal(err)
	}
	srv := testenv.Serve(tb, edge.Serve)
	return &testEdge{url: "http://" + srv.Addr, rdb: rdb, reg: reg, pub: pub, metrics: metrics}
}

// connect asks for a stream with tok in the Authorization header and query
// (starting with "&") and returns the status and, for a refusal, the error
// code of the JSON body. An opened stream is closed at once.
func connect(tb testing.TB, url, tok, query string) (int, string) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/v1/events?"+strings.TrimPrefix(query, "&"), nil)
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK {
		return resp.StatusCode, ""
	}
	var body struct{ Error, Message string }
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		tb.Errorf("status %s: body is not JSON: %v", resp.Status, err)
	}
	if resp.StatusCode == http.StatusUnauthorized && resp.Header.Get("WWW-Authenticate") == "" {
		tb.Errorf("401 without WWW-Authenticate")
	}
	return resp.StatusCode, body.Error
}

func expectStatus(tb testing.TB, url, tok, query string, status int, code string) {
	tb.Helper()
	if got, gotCode := connect(tb, url, tok, query); got != status || gotCode != code {
		tb.Errorf("%d %q, want %d %q", got, gotCode, status, code)
	}
}

// noneToken is an unsigned token (alg none), which no edge may accept.
func noneToken(tb testing.TB, c jwt.MapClaims) string {
	tb.Helper()
	s, err := jwt.NewWithClaims(jwt.SigningMethodNone, c).SignedString(jwt.UnsafeAllowNoneSignatureType)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// reheader replaces the header of a signed token, keeping its payload and
// signature.
func reheader(tok string, hdr map[string]any) string {
	b, _ := json.Marshal(hdr)
	_, rest, _ := strings.Cut(tok, ".")
	return base64.RawURLEncoding.EncodeToString(b) + "." + rest
}

func TestTokenChecks(t *testing.T) {
	t.Parallel()
	k := testKeys()
	pemBytes := pemOf(t, &k.rsa.PublicKey, &k.ec.PublicKey)
	e := newAuthEdge(t, sseedge.Config{
		JWTSecret:        secret,
		JWTPublicKeyFile: writeFile(t, "keys.pem", pemBytes),
		JWTIssuer:        "https://idp.example",
		JWTAudience:      "herald",
	}, nil)
	good := with(claims("alice"), "iss", "https://idp.example", "aud", "herald")
	now := time.Now()

	for _, tc := range []struct {
		name string
		tok  string
	}{
		{"HS256", sign(t, jwt.SigningMethodHS256, secret, good)},
		{"RS256 from PEM", sign(t, jwt.SigningMethodRS256, k.rsa, good)},
		{"RS256 with a kid", sign(t, jwt.SigningMethodRS256, k.rsa, good, "kid", "any")},
		{"ES256 from PEM", sign(t, jwt.SigningMethodES256, k.ec, good)},
		{"aud as a list", sign(t, jwt.SigningMethodES256, k.ec, with(good, "aud", []string{"other", "herald"}))},
	} {
		t.Run("accepts "+tc.name, func(t *testing.T) { expectStatus(t, e.url, tc.tok, "", http.StatusOK, "") })
	}

	rsaPEM := pemOf(t, &k.rsa.PublicKey)
	rsaDER, _ := x509.MarshalPKIXPublicKey(&k.rsa.PublicKey)
	signed := sign(t, jwt.SigningMethodRS256, k.rsa, good)
	for _, tc := range []struct {
		name string
		tok  string
	}{
		{"alg none", noneToken(t, good)},
		{"alg none, no signature", unsigned(reheader(signed, map[string]any{"alg": "none", "typ": "JWT"}))},
		{"alg None", reheader(signed, map[string]any{"alg": "None"})},
		{"no alg", reheader(signed, map[string]any{"typ": "JWT"})},
		{"HS256 keyed with the RSA public key PEM", sign(t, jwt.SigningMethodHS256, rsaPEM, good)},
		{"HS256 keyed with the RSA public key DER", sign(t, jwt.SigningMethodHS256, rsaDER, good)},
		{"HS256 keyed with the whole PEM file", sign(t, jwt.SigningMethodHS256, pemBytes, good)},
		{"RS256 signature relabelled ES256", reheader(signed, map[string]any{"alg": "ES256"})},
		{"RS256 signature relabelled PS256", reheader(signed, map[string]any{"alg": "PS256"})},
		{"HS512 with the secret", sign(t, jwt.SigningMethodHS512, secret, good)},
		{"RS512 with the key", sign(t, jwt.SigningMethodRS512, k.rsa, good)},
		{"PS256 with the key", sign(t, jwt.SigningMethodPS256, k.rsa, good)},
		{"HS256 with a wrong secret", sign(t, jwt.SigningMethodHS256, []byte("not-the-secret"), good)},
		{"RS256 with a wrong key", sign(t, jwt.SigningMethodRS256, k.rsaOther, good)},
		{"ES256 with a wrong key", sign(t, jwt.SigningMethodES256, k.ecOther, good)},
		{"ES256 with a wrong key named in a jku header", sign(t, jwt.SigningMethodES256, k.ecOther, good, "jku", "https://evil.example/jwks")},
		{"tampered payload", tamper(sign(t, jwt.SigningMethodES256, k.ec, good), with(good, "sub", "mallory"))},
		{"expired", sign(t, jwt.SigningMethodRS256, k.rsa, with(good, "exp", now.Add(-time.Minute).Unix()))},
		{"no exp", sign(t, jwt.SigningMethodRS256, k.rsa, with(good, "exp", nil))},
		{"not yet valid (nbf)", sign(t, jwt.SigningMethodES256, k.ec, with(good, "nbf", now.Add(time.Hour).Unix()))},
		{"issued in the future (iat)", sign(t, jwt.SigningMethodHS256, secret, with(good, "iat", now.Add(time.Hour).Unix()))},
		{"wrong issuer", sign(t, jwt.SigningMethodRS256, k.rsa, with(good, "iss", "https://evil.example"))},
		{"no issuer", sign(t, jwt.SigningMethodRS256, k.rsa, with(good, "iss", nil))},
		{"wrong audience", sign(t, jwt.SigningMethodES256, k.ec, with(good, "aud", "other"))},
		{"no audience", sign(t, jwt.SigningMethodHS256, secret, with(good, "aud", nil))},
		{"no subject", sign(t, jwt.SigningMethodHS256, secret, with(good, "sub", nil))},
		{"subject with a newline", sign(t, jwt.SigningMethodHS256, secret, with(good, "sub", "a\nb"))},
		{"crit header", sign(t, jwt.SigningMethodHS256, secret, good, "crit", "exp")},
		{"empty kid", sign(t, jwt.SigningMethodRS256, k.rsa, good, "kid", "")},
		{"garbage", "not.a.token"},
		{"invalid UTF-8", "\xff\xfe.\xfd.\xfc"},
	} {
		t.Run("refuses "+tc.name, func(t *testing.T) {
			expectStatus(t, e.url, tc.tok, "", http.StatusUnauthorized, "unauthorized")
		})
	}
	// Through the query parameter too.
	expectStatus(t, e.url, "", "access_token="+noneToken(t, good), http.StatusUnauthorized, "unauthorized")
	expectStatus(t, e.url, "", "access_token="+sign(t, jwt.SigningMethodHS256, rsaPEM, good), http.StatusUnauthorized, "unauthorized")
	// And the edge still serves.
	expectStatus(t, e.url, "", "access_token="+sign(t, jwt.SigningMethodES256, k.ec, good), http.StatusOK, "")
}

// unsigned drops the signature of tok.
func unsigned(tok string) string { return tok[:strings.LastIndex(tok, ".")+1] }

// tamper replaces the payload of a signed token, keeping its signature.
func tamper(tok string, c jwt.MapClaims) string {
	parts := strings.Split(tok, ".")
	b, _ := json.Marshal(c)
	parts[1] = base64.RawURLEncoding.EncodeToString(b)
	return strings.Join(parts, ".")
}

// An edge with RSA keys only accepts no HS256 token, whatever it is keyed
// with, and no ES256 token.
func TestPublicKeyOnlyEdge(t *testing.T) {
	t.Parallel()
	k := testKeys()
	rsaPEM := pemOf(t, &k.rsa.PublicKey)
	e := newAuthEdge(t, sseedge.Config{JWTPublicKeyFile: writeFile(t, "rsa.pem", rsaPEM)}, nil)
	good := claims("bob")
	for _, tc := range []struct {
		name string
		tok  string
	}{
		{"HS256 keyed with the public key PEM", sign(t, jwt.SigningMethodHS256, rsaPEM, good)},
		{"HS256 keyed with the public key PEM, trimmed", sign(t, jwt.SigningMethodHS256, []byte(strings.TrimSpace(string(rsaPEM))), good)},
		{"HS256 keyed with the usual secret", sign(t, jwt.SigningMethodHS256, secret, good)},
		{"HS256 keyed with nothing", reheader(sign(t, jwt.SigningMethodHS256, []byte{0}, good), map[string]any{"alg": "HS256"})},
		{"ES256 with a key the edge lacks", sign(t, jwt.SigningMethodES256, k.ec, good)},
		{"alg none", noneToken(t, good)},
	} {
		t.Run(tc.name, func(t *testing.T) { expectStatus(t, e.url, tc.tok, "", http.StatusUnauthorized, "unauthorized") })
	}
	expectStatus(t, e.url, sign(t, jwt.SigningMethodRS256, k.rsa, good), "", http.StatusOK, "")
}

// Topic claims hold for public-key tokens as for HS256 ones.
func TestPublicKeyTopics(t *testing.T) {
	t.Parallel()
	k := testKeys()
	e := newAuthEdge(t, sseedge.Config{JWTPublicKeyFile: writeFile(t, "ec.pem", pemOf(t, &k.ec.PublicKey))}, nil)
	tok := sign(t, jwt.SigningMethodES256, k.ec, with(claims("carol"), "topics", []string{"chat.*"}))
	expectStatus(t, e.url, tok, "topic=chat.room1", http.StatusOK, "")
	expectStatus(t, e.url, tok, "topic=admin", http.StatusForbidden, "forbidden_topic")
	expectStatus(t, e.url, tok, "topic=chat", http.StatusForbidden, "forbidden_topic")
	// A topics claim of the wrong shape allows nothing.
	odd := sign(t, jwt.SigningMethodES256, k.ec, with(claims("carol"), "topics", "chat.*"))
	expectStatus(t, e.url, odd, "topic=chat.room1", http.StatusForbidden, "forbidden_topic")
}

func TestJWKSFile(t *testing.T) {
	t.Parallel()
	k := testKeys()
	set := jwksOf(t,
		jwkOf(t, "r1", &k.rsa.PublicKey),
		jwkOf(t, "e1", &k.ec.PublicKey),
		// A symmetric key must never become an HS256 key.
		map[string]string{"kty": "oct", "kid": "h1", "k": base64.RawURLEncoding.EncodeToString(secret)},
		// An encryption key is not for signatures.
		with2(jwkOf(t, "enc", &k.rsaOther.PublicKey), "use", "enc"),
		// Nor is a key for another algorithm.
		with2(jwkOf(t, "ps", &k.ecOther.PublicKey), "alg", "ES384"),
	)
	e := newAuthEdge(t, sseedge.Config{JWTJWKS: writeFile(t, "jwks.json", set)}, nil)
	good := claims("dave")
	for _, tc := range []struct {
		name   string
		tok    string
		status int
	}{
		{"RS256 by kid", sign(t, jwt.SigningMethodRS256, k.rsa, good, "kid", "r1"), http.StatusOK},
		{"ES256 by kid", sign(t, jwt.SigningMethodES256, k.ec, good, "kid", "e1"), http.StatusOK},
		{"RS256 without a kid", sign(t, jwt.SigningMethodRS256, k.rsa, good), http.StatusOK},
		{"RS256 naming the EC key's kid", sign(t, jwt.SigningMethodRS256, k.rsa, good, "kid", "e1"), http.StatusUnauthorized},
		{"RS256 with an unknown kid", sign(t, jwt.SigningMethodRS256, k.rsa, good, "kid", "r9"), http.StatusUnauthorized},
		{"HS256 with the oct key", sign(t, jwt.SigningMethodHS256, secret, good, "kid", "h1"), http.StatusUnauthorized},
		{"RS256 with the encryption key", sign(t, jwt.SigningMethodRS256, k.rsaOther, good, "kid", "enc"), http.StatusUnauthorized},
		{"ES256 with the ES384 key", sign(t, jwt.SigningMethodES256, k.ecOther, good, "kid", "ps"), http.StatusUnauthorized},
		{"HS256 keyed with the JWKS", sign(t, jwt.SigningMethodHS256, set, good), http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code := ""
			if tc.status != http.StatusOK {
				code = "unauthorized"
			}
			expectStatus(t, e.url, tc.tok, "", tc.status, code)
		})
	}
}

func with2(m map[string]string, k, v string) map[string]string {
	m[k] = v
	return m
}

// jwksServer serves a JWK Set that the test can change or break, and counts
// the fetches.
type jwksServer struct {
	*httptest.Server
	mu   sync.Mutex
	body []byte
	fail bool
	hits atomic.Int64
}

func newJWKSServer(t *testing.T, body []byte) *jwksServer {
	s := &jwksServer{body: body}
	s.Server = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.hits.Add(1)
		s.mu.Lock()
		body, fail := s.body, s.fail
		s.mu.Unlock()
		if fail {
			http.Error(w, "down", http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/jwk-set+json")
		_, _ = w.Write(body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(body []byte, fail bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body, s.fail = body, fail
}

// A token with a new kid makes the edge fetch the JWKS at once; more
// unknown kids within a minute cause no more fetches.
func TestJWKSURLRotation(t *testing.T) {
	t.Parallel()
	k := testKeys()
	srv := newJWKSServer(t, jwksOf(t, jwkOf(t, "r1", &k.rsa.PublicKey)))
	e := newAuthEdge(t, sseedge.Config{JWTJWKS: srv.URL + "/jwks.json"}, srv.Client())
	good := claims("erin")
	// The edge serves once it has the set.
	expectStatus(t, e.url, sign(t, jwt.SigningMethodRS256, k.rsa, good, "kid", "r1"), "", http.StatusOK, "")
	if n := srv.hits.Load(); n != 1 {
		t.Fatalf("%d fetches at start, want 1", n)
	}

	// The identity provider adds an EC key; the first token naming it works.
	srv.set(jwksOf(t, jwkOf(t, "r1", &k.rsa.PublicKey), jwkOf(t, "e2", &k.ec.PublicKey)), false)
	expectStatus(t, e.url, sign(t, jwt.SigningMethodES256, k.ec, good, "kid", "e2"), "", http.StatusOK, "")
	if n := srv.hits.Load(); n != 2 {
		t.Fatalf("%d fetches after a new kid, want 2", n)
	}
	// Unknown kids within the minute fetch nothing.
	for _, kid := range []string{"x1", "x2", "x3", "e3"} {
		expectStatus(t, e.url, sign(t, jwt.SigningMethodES256, k.ecOther, good, "kid", kid), "", http.StatusUnauthorized, "unauthorized")
	}
	if n := srv.hits.Load(); n != 2 {
		t.Fatalf("%d fetches after unknown kids, want 2 (at most one a minute)", n)
	}
	// Known kids keep working while the JWKS is down.
	srv.set(nil, true)
	expectStatus(t, e.url, sign(t, jwt.SigningMethodES256, k.ec, good, "kid", "e2"), "", http.StatusOK, "")
}

// Periodic refreshes that fail keep the last good set; one that succeeds
// replaces it, so a removed key stops working.
func TestJWKSURLRefresh(t *testing.T) {
	t.Parallel()
	k := testKeys()
	srv := newJWKSServer(t, jwksOf(t, jwkOf(t, "r1", &k.rsa.PublicKey)))
	e := newAuthEdge(t, sseedge.Config{JWTJWKS: srv.URL, JWKSRefresh: 20 * time.Millisecond}, srv.Client())
	r1 := sign(t, jwt.SigningMethodRS256, k.rsa, claims("fay"), "kid", "r1")
	e2 := sign(t, jwt.SigningMethodES256, k.ec, claims("fay"), "kid", "e2")
	expectStatus(t, e.url, r1, "", http.StatusOK, "")

	for _, broken := range []struct {
		name string
		body []byte
		fail bool
	}{
		{"HTTP 500", nil, true},
		{"not JSON", []byte("<html>"), false},
		{"no usable key", jwksOf(t, map[string]string{"kty": "oct", "k": "c2VjcmV0"}), false},
		{"empty set", []byte(`{"keys":[]}`), false},
	} {
		srv.set(broken.body, broken.fail)
		n := srv.hits.Load()
		testenv.WaitFor(t, 5*time.Second, "refreshes", func() bool { return srv.hits.Load() >= n+2 })
		if got, _ := connect(t, e.url, r1, ""); got != http.StatusOK {
			t.Errorf("%s: status %d, want 200 with the last good set", broken.name, got)
		}
	}

	srv.set(jwksOf(t, jwkOf(t, "e2", &k.ec.PublicKey)), false)
	testenv.WaitFor(t, 5*time.Second, "the rotated set", func() bool {
		got, _ := connect(t, e.url, e2, "")
		return got == http.StatusOK
	})
	expectStatus(t, e.url, r1, "", http.StatusUnauthorized, "unauthorized")
}

// An edge needs a key, and keys it can use.
func TestKeyConfigErrors(t *testing.T) {
	t.Parallel()
	k := testKeys()
	rdb, prefix := testenv.Redis(t)
	reg, _ := testenv.Publisher(t, rdb, prefix, 5*time.Second)
	deps := sseedge.Deps{Redis: rdb, Presence: reg}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	privDER, _ := x509.MarshalPKCS8PrivateKey(k.ec)
	for _, tc := range []struct {
		name string
		cfg  sseedge.Config
		want string
	}{
		{"no key", sseedge.Config{}, "no key for client tokens"},
		{"missing PEM file", sseedge.Config{JWTPublicKeyFile: filepath.Join(t.TempDir(), "nope.pem")}, "no such file"},
		{"empty PEM file", sseedge.Config{JWTPublicKeyFile: writeFile(t, "empty.pem", nil)}, "no public key"},
		{"private key", sseedge.Config{JWTPublicKeyFile: writeFile(t, "priv.pem", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: privDER}))}, "private key"},
		{"1024-bit RSA", sseedge.Config{JWTPublicKeyFile: writeFile(t, "small.pem", pemOf(t, &small.PublicKey))}, "1024 bits"},
		{"P-384", sseedge.Config{JWTPublicKeyFile: writeFile(t, "p384.pem", pemOf(t, &p384.PublicKey))}, "P-384"},
		{"JWKS scheme", sseedge.Config{JWTJWKS: "ftp://idp.example/jwks"}, "http(s) URL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := sseedge.New(tc.cfg, deps)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("New: %v, want an error with %q", err, tc.want)
			}
		})
	}

	// A JWKS that cannot be read at start stops Serve.
	srv := newJWKSServer(t, nil)
	srv.set(nil, true)
	for name, src := range map[string]string{
		"unreachable URL": srv.URL,
		"missing file":    filepath.Join(t.TempDir(), "nope.json"),
		"no usable key":   writeFile(t, "bad.json", []byte(`{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}`)),
	} {
		t.Run(name, func(t *testing.T) {
			edge, err := sseedge.New(sseedge.Config{JWTJWKS: src}, sseedge.Deps{Redis: rdb, Presence: reg, HTTPClient: srv.Client()})
			if err != nil {
				t.Fatal(err)
			}
			lis, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer lis.Close()
			if err := edge.Serve(context.Background(), lis); err == nil || !strings.Contains(err.Error(), "jwks") {
				t.Errorf("Serve: %v, want a jwks error", err)
			}
		})
	}
}
