package sseedge

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// The public-key algorithms the edge verifies. Each takes exactly one key
// type, so a token can never have its signature checked with a key meant for
// another algorithm.
const (
	algRS256 = "RS256" // RSA PKCS #1 v1.5 with SHA-256: *rsa.PublicKey
	algES256 = "ES256" // ECDSA on P-256 with SHA-256: *ecdsa.PublicKey
)

// minRSABits is the smallest RSA modulus accepted: smaller keys are
// factorable or close to it.
const minRSABits = 2048

// maxKeySetBytes bounds a PEM file or JWKS document.
const maxKeySetBytes = 1 << 20

// publicKey is one verification key: an *rsa.PublicKey for RS256 or an
// *ecdsa.PublicKey on P-256 for ES256.
type publicKey struct {
	kid string // "" when the source names none (a PEM file)
	alg string
	key any
}

// keySet is an immutable set of verification keys.
type keySet []publicKey

// match returns the keys for alg: those with the given kid, or, when kid is
// empty, all of them.
func (ks keySet) match(alg, kid string) []any {
	var out []any
	for _, k := range ks {
		if k.alg == alg && (kid == "" || k.kid == kid) {
			out = append(out, k.key)
		}
	}
	return out
}

// has reports whether some key has this kid.
func (ks keySet) has(kid string) bool {
	for _, k := range ks {
		if k.kid == kid {
			return true
		}
	}
	return false
}

// algs returns the algorithms the set has keys for.
func (ks keySet) algs() []string {
	var rs, es bool
	for _, k := range ks {
		rs = rs || k.alg == algRS256
		es = es || k.alg == algES256
	}
	var out []string
	if rs {
		out = append(out, algRS256)
	}
	if es {
		out = append(out, algES256)
	}
	return out
}

// newPublicKey checks that key is of a supported type and size and returns
// it with its algorithm.
func newPublicKey(kid string, key any) (publicKey, error) {
	switch k := key.(type) {
	case *rsa.PublicKey:
		if n := k.N.BitLen(); n < minRSABits {
			return publicKey{}, fmt.Errorf("RSA key of %d bits; at least %d are required", n, minRSABits)
		}
		return publicKey{kid: kid, alg: algRS256, key: k}, nil
	case *ecdsa.PublicKey:
		if k.Curve != elliptic.P256() {
			return publicKey{}, fmt.Errorf("EC key on %s; only P-256 (ES256) is supported", k.Curve.Params().Name)
		}
		return publicKey{kid: kid, alg: algES256, key: k}, nil
	}
	return publicKey{}, fmt.Errorf("unsupported key type %T: want RSA (RS256) or EC P-256 (ES256)", key)
}

// parsePEMKeys reads every public key in a PEM document: PUBLIC KEY (PKIX),
// RSA PUBLIC KEY (PKCS #1) or CERTIFICATE blocks. Anything else, a private
// key above all, is an error.
func parsePEMKeys(data []byte) (keySet, error) {
	var ks keySet
	for i := 1; ; i++ {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "PUBLIC KEY":
			key, err = x509.ParsePKIXPublicKey(block.Bytes)
		case "RSA PUBLIC KEY":
			key, err = x509.ParsePKCS1PublicKey(block.Bytes)
		case "CERTIFICATE":
			var cert *x509.Certificate
			if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
				key = cert.PublicKey
			}
		default:
			if strings.Contains(block.Type, "PRIVATE") {
				return nil, fmt.Errorf("block %d is a private key: give the edge only public keys", i)
			}
			return nil, fmt.Errorf("block %d: unsupported PEM type %q", i, block.Type)
		}
		if err != nil {
			return nil, fmt.Errorf("block %d (%s): %w", i, block.Type, err)
		}
		k, err := newPublicKey("", key)
		if err != nil {
			return nil, fmt.Errorf("block %d: %w", i, err)
		}
		ks = append(ks, k)
	}
	if len(bytes.TrimSpace(data)) > 0 && len(ks) == 0 {
		return nil, errors.New("no PEM block found")
	}
	if len(ks) == 0 {
		return nil, errors.New("no public key found")
	}
	return ks, nil
}

// jwk is the part of an RFC 7517 JSON Web Key the edge reads.
type jwk struct {
	Kty string `json:"kty"`
	Kid string `json:"kid"`
	Use string `json:"use"`
	Alg string `json:"alg"`
	// RSA (RFC 7518 section 6.3.1)
	N string `json:"n"`
	E string `json:"e"`
	// EC (RFC 7518 section 6.2.1)
	Crv string `json:"crv"`
	X   string `json:"x"`
	Y   string `json:"y"`
}

// parseJWKS reads the signing keys of a JWK Set. Keys the edge cannot use
// (encryption keys, other algorithms, symmetric keys, unknown types) are
// skipped and reported in skipped; a set with no usable key is an error.
func parseJWKS(data []byte) (ks keySet, skipped []string, err error) {
	var doc struct {
		Keys []json.RawMessage `json:"keys"`
	}
	if err := json.Unmarshal(data, &doc); err != nil {
		return nil, nil, fmt.Errorf("not a JWK Set: %w", err)
	}
	for i, raw := range doc.Keys {
		var k jwk
		if err := json.Unmarshal(raw, &k); err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d: %v", i, err))
			continue
		}
		pk, err := k.publicKey()
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("key %d (kid %q): %v", i, k.Kid, err))
			continue
		}
		ks = append(ks, pk)
	}
	if len(ks) == 0 {
		return nil, skipped, fmt.Errorf("no usable signing key among %d (%s)", len(doc.Keys), strings.Join(skipped, "; "))
	}
	return ks, skipped, nil
}

// publicKey converts a JWK to a verification key.
func (k jwk) publicKey() (publicKey, error) {
	if k.Use != "" && k.Use != "sig" {
		return publicKey{}, fmt.Errorf("use %q is not sig", k.Use)
	}
	b64 := base64.RawURLEncoding.Strict()
	switch k.Kty {
	case "RSA":
		if k.Alg != "" && k.Alg != algRS256 {
			return publicKey{}, fmt.Errorf("alg %q; the edge verifies RSA keys with RS256 only", k.Alg)
		}
		n, err := b64.DecodeString(k.N)
		if err != nil || len(n) == 0 {
			return publicKey{}, errors.New("bad modulus n")
		}
		e, err := b64.DecodeString(k.E)
		if err != nil || len(e) == 0 || len(e) > 4 {
			return publicKey{}, errors.New("bad exponent e")
		}
		exp := new(big.Int).SetBytes(e)
		if exp.Int64() < 3 || exp.Int64() > 1<<31-1 || exp.Bit(0) == 0 {
			return publicKey{}, errors.New("bad exponent e")
		}
		return newPublicKey(k.Kid, &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(exp.Int64())})
	case "EC":
		if k.Alg != "" && k.Alg != algES256 {
			return publicKey{}, fmt.Errorf("alg %q; the edge verifies EC keys with ES256 only", k.Alg)
		}
		if k.Crv != "P-256" {
			return publicKey{}, fmt.Errorf("curve %q; only P-256 is supported", k.Crv)
		}
		x, errX := b64.DecodeString(k.X)
		y, errY := b64.DecodeString(k.Y)
		if errX != nil || errY != nil || len(x) != 32 || len(y) != 32 {
			return publicKey{}, errors.New("bad coordinates x, y: want 32 bytes each")
		}
		// The uncompressed SEC 1 point; parsing checks that it is on the curve.
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			return publicKey{}, err
		}
		return newPublicKey(k.Kid, pub)
	case "":
		return publicKey{}, errors.New("no kty")
	}
	// "oct" (a shared secret) above all must never become a verification
	// key: HS256 uses the configured secret alone.
	return publicKey{}, fmt.Errorf("unsupported kty %q", k.Kty)
}

// unknownKIDInterval bounds the refreshes that tokens with an unknown kid
// can cause: one a minute, however many such tokens arrive.
const unknownKIDInterval = time.Minute

// jwks is a JWK Set read from a file or an http(s) URL, refreshed every
// refresh interval and, at most once per unknownKIDInterval, when a token
// names a kid it lacks. A failed refresh keeps the last good set.
type jwks struct {
	source  string
	client  *http.Client
	refresh time.Duration
	now     func() time.Time
	log     *slog.Logger

	keys atomic.Pointer[keySet] // nil until the first load

	mu          sync.Mutex // serialises loads
	lastUnknown time.Time  // of the last refresh for an unknown kid
}

func newJWKS(source string, client *http.Client, refresh time.Duration, now func() time.Time, log *slog.Logger) *jwks {
	return &jwks{source: source, client: client, refresh: refresh, now: now, log: log.With(slog.String("jwks", source))}
}

// isURL reports whether the source is fetched over HTTP.
func (j *jwks) isURL() bool {
	return strings.HasPrefix(j.source, "https://") || strings.HasPrefix(j.source, "http://")
}

// current returns the last good set, or nil before the first load.
func (j *jwks) current() keySet {
	if p := j.keys.Load(); p != nil {
		return *p
	}
	return nil
}

// load reads the set and, when it is good, replaces the current one.
func (j *jwks) load(ctx context.Context) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	return j.loadLocked(ctx)
}

func (j *jwks) loadLocked(ctx context.Context) error {
	data, err := j.read(ctx)
	if err != nil {
		return fmt.Errorf("jwks %s: %w", j.source, err)
	}
	ks, skipped, err := parseJWKS(data)
	if err != nil {
		return fmt.Errorf("jwks %s: %w", j.source, err)
	}
	if len(skipped) > 0 {
		j.log.Debug("jwks keys skipped", slog.Any("keys", skipped))
	}
	j.keys.Store(&ks)
	return nil
}

func (j *jwks) read(ctx context.Context) ([]byte, error) {
	if !j.isURL() {
		f, err := os.Open(j.source)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		return readLimited(f)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, j.source, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := j.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET: %s", resp.Status)
	}
	return readLimited(resp.Body)
}

func readLimited(r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxKeySetBytes+1))
	if err == nil && len(data) > maxKeySetBytes {
		err = fmt.Errorf("over %d bytes", maxKeySetBytes)
	}
	return data, err
}

// lookup returns the keys for alg and kid. A kid the set lacks causes a
// refresh, unless one was made for that reason within unknownKIDInterval.
func (j *jwks) lookup(ctx context.Context, alg, kid string) []any {
	ks := j.current()
	if kid == "" || ks.has(kid) {
		return ks.match(alg, kid)
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	if fresh := j.current(); fresh.has(kid) {
		// Another request's refresh brought it.
		return fresh.match(alg, kid)
	}
	if now := j.now(); now.Sub(j.lastUnknown) >= unknownKIDInterval {
		j.lastUnknown = now
		// A client that hangs up must not waste the minute's fetch.
		if err := j.loadLocked(context.WithoutCancel(ctx)); err != nil {
			j.log.Warn("jwks refresh for an unknown kid failed; keeping the last good set", slog.Any("err", err))
		}
	}
	return j.current().match(alg, kid)
}

// run refreshes the set every refresh interval until ctx is done.
func (j *jwks) run(ctx context.Context) {
	t := time.NewTicker(j.refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := j.load(ctx); err != nil && ctx.Err() == nil {
			j.log.Warn("jwks refresh failed; keeping the last good set", slog.Any("err", err))
		}
	}
}
