package main

import (
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// -memprofile writes a heap profile taken while the idle scenario holds its
// streams: the edge's streams are in it.
func TestIdleMemProfile(t *testing.T) {
	rate := runtime.MemProfileRate
	t.Cleanup(func() { runtime.MemProfileRate = rate })
	path := filepath.Join(t.TempDir(), "idle.heap")
	_, fig := runReport(t, "-self", "-redis", testRedis(t), "-scenario", "idle", "-idle-conns", "40",
		"-base-duration", "200ms", "-callers", "4", "-per-addr", "50", "-per-child", "100", "-memprofile", path)
	if v := fig["idle|connections held"].Value; v != 40 {
		t.Errorf("idle connections held %v, want 40", v)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("the profile is not gzipped: %v", err)
	}
	b, err := io.ReadAll(zr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte("sseedge.newStream")) {
		t.Errorf("the heap profile (%d bytes) does not hold the edge's streams (sseedge.newStream)", len(b))
	}
}
