package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestRefusesToStartWithoutAuth: the router will not serve the API without
// authentication unless told to, and says how to configure it; contradictory
// or incomplete security flags, and a pipeline of no calls, are refused
// before anything starts.
func TestRefusesToStartWithoutAuth(t *testing.T) {
	for _, name := range []string{"HERALD_CALLERS_FILE", "HERALD_INSECURE_NO_AUTH", "HERALD_TLS_CERT", "HERALD_TLS_KEY", "HERALD_TLS_CLIENT_CA"} {
		t.Setenv(name, "")
		os.Unsetenv(name)
	}
	bad := filepath.Join(t.TempDir(), "callers.json")
	if err := os.WriteFile(bad, []byte(`[{"name": "a", "key": "x"}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		want string
	}{
		{nil, "set -callers-file (HERALD_CALLERS_FILE)"},
		{[]string{"-callers-file", bad, "-insecure-no-auth"}, "contradict"},
		{[]string{"-tls-client-ca", "ca.pem", "-insecure-no-auth"}, "-tls-client-ca needs -callers-file"},
		{[]string{"-tls-cert", "cert.pem", "-insecure-no-auth"}, "-tls-key"},
		{[]string{"-callers-file", bad}, `unknown field "key"`},
		{[]string{"-insecure-no-auth", "-max-pipeline", "0"}, "-max-pipeline 0: must be at least 1"},
	}
	for _, tc := range cases {
		err := run(append([]string{"-admin-addr", "", "-grpc-addr", "127.0.0.1:0", "-log-level", "error"}, tc.args...))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("run %q: %v, want an error saying %q", tc.args, err, tc.want)
		}
	}
}
