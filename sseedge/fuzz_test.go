package sseedge

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"log/slog"
	"maps"
	"math/big"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/herald-push/herald/delivery"
)

// The fuzz targets' seed corpora are in testdata/fuzz/<name>/; each runs as
// a normal test on its seeds. `make fuzz` fuzzes them.

// FuzzFrameBody checks the framing of a live event's body on the wire: only
// event: and data: lines and the blank line that ends the event, whatever
// the event name and data hold, and it decodes to exactly that event.
func FuzzFrameBody(f *testing.F) {
	f.Add("update", "hello")
	f.Add("", "")
	f.Add("x\r\nretry: 1", "a\rid: 9\n\ndata: b\r\n")
	f.Fuzz(func(t *testing.T, event, data string) {
		wire := string(appendBody(nil, event, data))
		body, ok := strings.CutSuffix(wire, "\n\n")
		if !ok {
			t.Fatalf("%q does not end with a blank line", wire)
		}
		for i, line := range strings.Split(body, "\n") {
			if strings.ContainsRune(line, '\r') {
				t.Fatalf("line %d %q holds a CR", i, line)
			}
			if i == 0 && event != "" && stripLineBreaks(event) != "" {
				if !strings.HasPrefix(line, "event: ") {
					t.Fatalf("first line %q, want the event: field", line)
				}
				continue
			}
			if !strings.HasPrefix(line, "data: ") {
				t.Fatalf("line %d %q is not a data: field", i, line)
			}
		}
		evs := decodeAll(t, []byte(wire))
		if len(evs) != 1 {
			t.Fatalf("framed as %d events: %q", len(evs), wire)
		}
		want := Event{Event: stripLineBreaks(event), Data: normaliseNewlines(data)}
		if evs[0] != want {
			t.Fatalf("decoded %+v, want %+v", evs[0], want)
		}
	})
}

// FuzzCursor checks that no Last-Event-ID makes the edge panic, that what
// parseCursor returns names only the user's stream and valid topics, that
// it round-trips through appendCursor, and that checkCursor leaves only
// positions the history can place.
func FuzzCursor(f *testing.F) {
	f.Add("1795662248194000;chat=1795662248190003", uint64(1795662248194000), "chat", uint64(1795662248190003))
	f.Add("", uint64(0), "a", uint64(0))
	f.Add("18446744073709551615;x=-1;=;;", uint64(18446744073709551615), "x.y:z-1", uint64(1))
	f.Fuzz(func(t *testing.T, s string, user uint64, topic string, pos uint64) {
		got := parseCursor(s)
		for name := range got {
			if name != "" && !delivery.ValidTopic(name) {
				t.Fatalf("parseCursor(%q) has stream %q", s, name)
			}
		}
		if _, ok := got[""]; ok {
			names := []string{""}
			for _, n := range slices.Sorted(maps.Keys(got)) {
				if n != "" {
					names = append(names, n)
				}
			}
			ps := make([]uint64, len(names))
			for i, n := range names {
				ps[i] = got[n]
			}
			if again := parseCursor(string(appendCursor(nil, names, ps))); !maps.Equal(again, got) {
				t.Fatalf("parseCursor(%q) = %v; formatted and parsed again: %v", s, got, again)
			}
		}

		// What an edge writes, it reads back.
		names, ps := []string{""}, []uint64{user}
		if delivery.ValidTopic(topic) {
			names, ps = append(names, topic), append(ps, pos)
		}
		wire := string(appendCursor(nil, names, ps))
		back := parseCursor(wire)
		if len(back) != len(names) {
			t.Fatalf("%q parsed as %v", wire, back)
		}
		for i, n := range names {
			if back[n] != ps[i] {
				t.Fatalf("%q parsed as %v, want %s=%d", wire, back, n, ps[i])
			}
		}

		now := time.Now()
		s2 := &Server{now: func() time.Time { return now }}
		limit := uint64(now.Add(cursorAhead).UnixMilli()) * 1000
		checked := s2.checkCursor(s, parseCursor(s))
		if _, ok := checked[""]; s != "" && !ok {
			t.Fatalf("checkCursor(%q) has no user position", s)
		}
		for n, p := range checked {
			if p == 0 || p > limit {
				t.Fatalf("checkCursor(%q) left %s=%d", s, n, p)
			}
		}
	})
}

// fuzzKeys are FuzzToken's keys: the edge knows the secret, rsaKey (PEM)
// and ecKey (JWKS, kid "e1").
type fuzzKeys struct {
	secret []byte
	rsaKey *rsa.PrivateKey
	ecKey  *ecdsa.PrivateKey
}

func newFuzzAuthenticator(f *testing.F) (*authenticator, fuzzKeys) {
	f.Helper()
	k := fuzzKeys{secret: []byte("fuzz-secret")}
	var err error
	if k.rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
		f.Fatal(err)
	}
	if k.ecKey, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
		f.Fatal(err)
	}
	der, err := x509.MarshalPKIXPublicKey(&k.rsaKey.PublicKey)
	if err != nil {
		f.Fatal(err)
	}
	dir := f.TempDir()
	pemFile := filepath.Join(dir, "rsa.pem")
	if err := os.WriteFile(pemFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), 0o600); err != nil {
		f.Fatal(err)
	}
	pt, _ := k.ecKey.PublicKey.Bytes()
	b64 := base64.RawURLEncoding.EncodeToString
	set, _ := json.Marshal(map[string]any{"keys": []map[string]string{
		{"kty": "EC", "kid": "e1", "crv": "P-256", "x": b64(pt[1:33]), "y": b64(pt[33:])},
	}})
	jwksFile := filepath.Join(dir, "jwks.json")
	if err := os.WriteFile(jwksFile, set, 0o600); err != nil {
		f.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	a, err := newAuthenticator(Config{JWTSecret: k.secret, JWTPublicKeyFile: pemFile, JWTJWKS: jwksFile}, http.DefaultClient, time.Now, log)
	if err != nil {
		f.Fatal(err)
	}
	if err := a.loadKeys(f.Context()); err != nil {
		f.Fatal(err)
	}
	return a, k
}

// FuzzToken feeds arbitrary Authorization headers and access_token
// parameters to the authenticator: it must never panic, and never accept a
// token whose signature the configured keys do not verify, checked here
// with the crypto packages directly.
func FuzzToken(f *testing.F) {
	a, k := newFuzzAuthenticator(f)
	now := time.Now()
	c := jwt.MapClaims{"sub": "fuzz", "iat": now.Unix(), "exp": now.Add(24 * time.Hour).Unix(), "topics": []string{"chat.*"}}
	mustSign := func(m jwt.SigningMethod, key any, hdr ...string) string {
		tok := jwt.NewWithClaims(m, c)
		for i := 0; i < len(hdr); i += 2 {
			tok.Header[hdr[i]] = hdr[i+1]
		}
		s, err := tok.SignedString(key)
		if err != nil {
			f.Fatal(err)
		}
		return s
	}
	der, _ := x509.MarshalPKIXPublicKey(&k.rsaKey.PublicKey)
	for _, tok := range []string{
		mustSign(jwt.SigningMethodHS256, k.secret),
		mustSign(jwt.SigningMethodRS256, k.rsaKey),
		mustSign(jwt.SigningMethodES256, k.ecKey, "kid", "e1"),
		mustSign(jwt.SigningMethodHS256, der),
		mustSign(jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType),
	} {
		f.Add("Bearer "+tok, "")
		f.Add("", tok)
	}
	f.Fuzz(func(t *testing.T, header, query string) {
		r := &http.Request{Header: http.Header{}, URL: &url.URL{RawQuery: "access_token=" + url.QueryEscape(query)}}
		if header != "" {
			r.Header.Set("Authorization", header)
		}
		claims, err := a.authenticate(r)
		if err != nil {
			return
		}
		raw := tokenFromRequest(r)
		if !verifiedBy(raw, k) {
			t.Fatalf("accepted %q, which no configured key signed", raw)
		}
		if claims.Subject == "" || claims.ExpiresAt == nil {
			t.Fatalf("accepted %q without sub or exp", raw)
		}
	})
}

// verifiedBy reports whether the compact JWS tok carries a signature of its
// first two parts that one of k's keys verifies under the algorithm its
// header names, as RFC 7515 and 7518 define them.
func verifiedBy(tok string, k fuzzKeys) bool {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return false
	}
	hb, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	sig, err2 := base64.RawURLEncoding.DecodeString(parts[2])
	var hdr struct{ Alg string }
	if err1 != nil || err2 != nil || json.Unmarshal(hb, &hdr) != nil {
		return false
	}
	input := parts[0] + "." + parts[1]
	sum := sha256.Sum256([]byte(input))
	switch hdr.Alg {
	case "HS256":
		mac := hmac.New(sha256.New, k.secret)
		mac.Write([]byte(input))
		return hmac.Equal(mac.Sum(nil), sig)
	case "RS256":
		return rsa.VerifyPKCS1v15(&k.rsaKey.PublicKey, crypto.SHA256, sum[:], sig) == nil
	case "ES256":
		if len(sig) != 64 {
			return false
		}
		r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
		return ecdsa.Verify(&k.ecKey.PublicKey, sum[:], r, s)
	}
	return false
}
