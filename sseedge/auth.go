package sseedge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

	"github.com/herald-push/herald/delivery"
)

// Claims are the JWT claims an edge reads. The user is the subject (sub);
// the topics a client may read are in a claim (by default "topics") that
// holds a list of names and patterns.
type Claims struct {
	jwt.RegisteredClaims
	extra map[string]any
}

// UnmarshalJSON keeps the registered claims and every other claim.
func (c *Claims) UnmarshalJSON(b []byte) error {
	if err := json.Unmarshal(b, &c.RegisteredClaims); err != nil {
		return err
	}
	return json.Unmarshal(b, &c.extra)
}

// topics returns the list in the named claim.
func (c *Claims) topics(claim string) []string {
	list, _ := c.extra[claim].([]any)
	out := make([]string, 0, len(list))
	for _, v := range list {
		if s, ok := v.(string); ok {
			out = append(out, s)
		}
	}
	return out
}

// ErrUnauthorized wraps every authentication failure.
var ErrUnauthorized = errors.New("unauthorized")

// authenticator checks client tokens. The algorithms it accepts are exactly
// those it has keys for: HS256 with the shared secret, RS256 with RSA public
// keys, ES256 with P-256 public keys. Each algorithm is only ever given keys
// of its own type, which closes alg "none" and algorithm confusion (an HS256
// token "signed" with an RSA public key's bytes as the secret).
type authenticator struct {
	secret []byte // HS256; empty when not configured
	static keySet // from the PEM file; they carry no kid
	jwks   *jwks  // nil when not configured
	parser *jwt.Parser
}

// newAuthenticator reads the PEM file, if any. A JWKS is read by loadKeys.
func newAuthenticator(cfg Config, client *http.Client, now func() time.Time, log *slog.Logger) (*authenticator, error) {
	a := &authenticator{secret: cfg.JWTSecret}
	var algs []string
	if len(a.secret) > 0 {
		algs = append(algs, jwt.SigningMethodHS256.Alg())
	}
	if cfg.JWTPublicKeyFile != "" {
		data, err := os.ReadFile(cfg.JWTPublicKeyFile)
		if err != nil {
			return nil, fmt.Errorf("sseedge: public keys: %w", err)
		}
		if a.static, err = parsePEMKeys(data); err != nil {
			return nil, fmt.Errorf("sseedge: public keys in %s: %w", cfg.JWTPublicKeyFile, err)
		}
		algs = append(algs, a.static.algs()...)
	}
	if cfg.JWTJWKS != "" {
		a.jwks = newJWKS(cfg.JWTJWKS, client, cfg.JWKSRefresh, now, log)
		if !a.jwks.isURL() && strings.Contains(cfg.JWTJWKS, "://") {
			return nil, fmt.Errorf("sseedge: jwks %q: want a file path or an http(s) URL", cfg.JWTJWKS)
		}
		if strings.HasPrefix(cfg.JWTJWKS, "http://") {
			log.Warn("the JWKS is fetched over plain HTTP: whoever can change it in transit can mint tokens", slog.String("jwks", cfg.JWTJWKS))
		}
		// Which of them the set has keys for is checked per token, as the
		// set changes.
		algs = append(algs, algRS256, algES256)
	}
	if len(algs) == 0 {
		return nil, errors.New("sseedge: no key for client tokens: set a JWT secret, a public key file or a JWKS")
	}
	slices.Sort(algs)
	opts := []jwt.ParserOption{
		jwt.WithValidMethods(slices.Compact(algs)),
		jwt.WithExpirationRequired(),
		jwt.WithIssuedAt(),
		jwt.WithLeeway(cfg.ClockSkew),
	}
	if cfg.JWTIssuer != "" {
		opts = append(opts, jwt.WithIssuer(cfg.JWTIssuer))
	}
	if cfg.JWTAudience != "" {
		opts = append(opts, jwt.WithAudience(cfg.JWTAudience))
	}
	a.parser = jwt.NewParser(opts...)
	return a, nil
}

// loadKeys reads the JWKS, if one is configured. One that cannot be read
// at start is an error: the edge would refuse every client.
func (a *authenticator) loadKeys(ctx context.Context) error {
	if a.jwks == nil {
		return nil
	}
	if err := a.jwks.load(ctx); err != nil {
		return fmt.Errorf("sseedge: %w", err)
	}
	return nil
}

// refreshKeys keeps the JWKS, if any, fresh until ctx is done.
func (a *authenticator) refreshKeys(ctx context.Context) {
	if a.jwks != nil {
		a.jwks.run(ctx)
	}
}

// tokenFromRequest takes the bearer token from the Authorization header or,
// for EventSource, which cannot set headers, the access_token query parameter.
func tokenFromRequest(r *http.Request) string {
	if h := r.Header.Get("Authorization"); h != "" {
		scheme, tok, ok := strings.Cut(h, " ")
		if ok && strings.EqualFold(scheme, "Bearer") {
			return strings.TrimSpace(tok)
		}
		return ""
	}
	return r.URL.Query().Get("access_token")
}

// authenticate returns the verified claims of the request's token.
func (a *authenticator) authenticate(r *http.Request) (*Claims, error) {
	raw := tokenFromRequest(r)
	if raw == "" {
		return nil, fmt.Errorf("%w: no bearer token in the Authorization header or access_token parameter", ErrUnauthorized)
	}
	ctx := r.Context()
	claims := new(Claims)
	_, err := a.parser.ParseWithClaims(raw, claims, func(t *jwt.Token) (any, error) { return a.key(ctx, t) })
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnauthorized, err)
	}
	if err := delivery.CheckUserID(claims.Subject); err != nil {
		return nil, fmt.Errorf("%w: sub: %v", ErrUnauthorized, err)
	}
	return claims, nil
}

// key returns the keys that may verify t: for HS256 the secret, for RS256
// and ES256 the public keys of that type (by kid, when t names one). Keys
// named in the token itself (jku, jwk, x5u, x5c) are never used.
func (a *authenticator) key(ctx context.Context, t *jwt.Token) (any, error) {
	if _, ok := t.Header["crit"]; ok {
		// RFC 7515 section 4.1.11: extensions the edge does not know.
		return nil, errors.New("unsupported crit header")
	}
	alg := t.Method.Alg()
	switch t.Method.(type) {
	case *jwt.SigningMethodHMAC:
		if alg == jwt.SigningMethodHS256.Alg() && len(a.secret) > 0 {
			return a.secret, nil
		}
	case *jwt.SigningMethodRSA:
		if alg == algRS256 {
			return a.publicKeys(ctx, alg, t)
		}
	case *jwt.SigningMethodECDSA:
		if alg == algES256 {
			return a.publicKeys(ctx, alg, t)
		}
	}
	return nil, fmt.Errorf("no key for algorithm %s", alg)
}

// publicKeys returns the public keys for alg that may verify t: every key of
// the PEM file, which names none, and the JWKS keys with t's kid (all of
// them when t names none).
func (a *authenticator) publicKeys(ctx context.Context, alg string, t *jwt.Token) (any, error) {
	var kid string
	if v, ok := t.Header["kid"]; ok {
		if kid, ok = v.(string); !ok || kid == "" {
			return nil, errors.New("kid is not a non-empty string")
		}
	}
	keys := a.static.match(alg, "")
	if a.jwks != nil {
		keys = append(keys, a.jwks.lookup(ctx, alg, kid)...)
	}
	if len(keys) == 0 {
		if kid != "" {
			return nil, fmt.Errorf("no %s key with the token's kid", alg)
		}
		return nil, fmt.Errorf("no %s key", alg)
	}
	set := jwt.VerificationKeySet{Keys: make([]jwt.VerificationKey, len(keys))}
	for i, k := range keys {
		set.Keys[i] = k
	}
	return set, nil
}

// IssueToken returns an HS256 token for user, valid for ttl, that may read
// the given topic patterns. The all-in-one
// uses it for its demo user, and tests for their clients; in production the
// application's own auth service issues tokens, with the shared secret or
// a private key whose public key the edges have.
func IssueToken(secret []byte, user string, ttl time.Duration, now time.Time, topics ...string) (string, error) {
	claims := jwt.MapClaims{
		"sub": user,
		"iat": now.Unix(),
		"exp": now.Add(ttl).Unix(),
	}
	if len(topics) > 0 {
		claims["topics"] = topics
	}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
}
