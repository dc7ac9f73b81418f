package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

func TestNotifyBatch(t *testing.T) {
	srv := serveRouter(t)

	batch := filepath.Join(t.TempDir(), "batch.json")
	if err := os.WriteFile(batch, []byte(`{"notifications": [{"userId": "zoe", "data": "aGk="}, {"userId": ""}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if code := run([]string{"notify-batch", "-addr", srv.Addr, "-file", batch}, &stdout, &stderr); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	var resp struct {
		Results []struct {
			Code     int `json:"code"`
			Response struct {
				Route string `json:"route"`
			} `json:"response"`
		} `json:"results"`
	}
	if err := json.Unmarshal(stdout.Bytes(), &resp); err != nil || len(resp.Results) != 2 ||
		resp.Results[0].Code != 0 || resp.Results[0].Response.Route != "ROUTE_OFFLINE" || resp.Results[1].Code != 3 {
		t.Fatalf("output %q (%v): want zoe's routed offline and the empty user's InvalidArgument (3)", stdout.String(), err)
	}
	if code := run([]string{"notify-batch", "-addr", srv.Addr, "-file", filepath.Join(t.TempDir(), "missing")}, &stdout, &stderr); code != 1 {
		t.Fatalf("missing file: exit %d, want 1", code)
	}
}
