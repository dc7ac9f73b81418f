package sseedge

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
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

// authenticator checks client tokens.
type authenticator struct {
	secret []byte
	parser *jwt.Parser
}

func newAuthenticator(cfg Config) *authenticator {
	opts := []jwt.ParserOption{
		// Only HS256 is accepted: this closes alg "none" and any
		// algorithm-confusion attack.
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
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
	return &authenticator{secret: cfg.JWTSecret, parser: jwt.NewParser(opts...)}
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
	claims := new(Claims)
	_, err := a.parser.ParseWithClaims(raw, claims, func(*jwt.Token) (any, error) { return a.secret, nil })
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnauthorized, err)
	}
	if err := delivery.CheckUserID(claims.Subject); err != nil {
		return nil, fmt.Errorf("%w: sub: %v", ErrUnauthorized, err)
	}
	return claims, nil
}

// IssueToken returns an HS256 token for user, valid for ttl, that may read
// the given topic patterns. The all-in-one
// uses it for its demo user, and tests for their clients; in production the
// application's own auth service issues tokens with the shared secret.
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
