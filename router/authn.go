package router

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"fmt"
	"strings"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
)

// authenticate finds the caller of a call: by its client certificate when
// the connection has a verified one, otherwise by its API key. On failure
// it returns the message the caller is told.
func (c *Callers) authenticate(ctx context.Context) (*caller, string) {
	if p, ok := peer.FromContext(ctx); ok {
		if ti, ok := p.AuthInfo.(credentials.TLSInfo); ok && len(ti.State.VerifiedChains) > 0 {
			cn := ti.State.VerifiedChains[0][0].Subject.CommonName
			cl, ok := c.callers[cn]
			switch {
			case !ok:
				return nil, fmt.Sprintf("router: client certificate CN %q is not a caller in the router's callers file", cn)
			case !c.enabled[cn]:
				return nil, fmt.Sprintf("router: caller %q is disabled", cn)
			}
			return cl, ""
		}
	}
	vals := metadata.ValueFromIncomingContext(ctx, "authorization")
	switch {
	case len(vals) == 0:
		return nil, `router: no credentials: send the API key as gRPC metadata "authorization: Bearer <key>", or connect with a client certificate`
	case len(vals) > 1:
		return nil, "router: more than one authorization header"
	}
	scheme, key, ok := strings.Cut(strings.TrimSpace(vals[0]), " ")
	key = strings.TrimSpace(key)
	if !ok || !strings.EqualFold(scheme, "Bearer") || key == "" {
		return nil, `router: malformed authorization header: want "Bearer <API key>"`
	}
	h := sha256.Sum256([]byte(key))
	var found *keyEntry
	for i := range c.keys { // constant time in the key, whichever entry matches
		if subtle.ConstantTimeCompare(h[:], c.keys[i].hash[:]) == 1 {
			found = &c.keys[i]
		}
	}
	switch {
	case found == nil:
		return nil, "router: API key not recognised"
	case found.disabled:
		return nil, fmt.Sprintf("router: this API key of caller %q is disabled", found.caller.name)
	}
	return found.caller, ""
}
