package main

import (
	"errors"
	"net/netip"
	"os"
	"strings"
)

// tokenKey is the HS256 key from -jwt-secret or -jwt-secret-file. With no
// public keys (hasPublic false), one of them is required.
func tokenKey(secret, file string, hasPublic bool) ([]byte, error) {
	key := []byte(secret)
	if file != "" {
		var err error
		if key, err = os.ReadFile(file); err != nil {
			return nil, err
		}
	}
	if len(key) == 0 && !hasPublic {
		return nil, errors.New("a token key is required: set HERALD_JWT_SECRET, -jwt-secret-file, -jwt-public-key-file or -jwt-jwks")
	}
	return key, nil
}

// parsePrefixes reads addresses ("10.0.0.1") and CIDRs ("10.0.0.0/8").
func parsePrefixes(list []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(list))
	for _, v := range list {
		p, err := netip.ParsePrefix(v)
		if err != nil {
			a, aerr := netip.ParseAddr(v)
			if aerr != nil {
				return nil, err
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// splitList splits a comma-separated flag value, dropping empty items.
func splitList(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}
