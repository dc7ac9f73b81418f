package main

import (
	"context"
	"io"
	"testing"
	"time"
)

// TestRouterBatch: the router scenario's NotifyBatch run delivers every
// notification it sends, online and then to users offline, and reports
// its figures.
func TestRouterBatch(t *testing.T) {
	cfg, err := parseFlags([]string{"-self", "-redis", testRedis(t), "-scenario", "router", "-conns", "20",
		"-duration", "500ms", "-base-duration", "300ms", "-batch", "10", "-batch-callers", "2",
		"-per-addr", "50", "-per-child", "100"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	b, err := newBench(ctx, cfg, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	defer b.close()
	prefix := b.tag + "-rt-"
	f, err := openFleet(ctx, b.fleetConfig(prefix, cfg.conns, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer f.close()
	if err := b.routerBatch(ctx, f, prefix); err != nil {
		t.Fatal(err)
	}
	fig := map[string]row{}
	for _, r := range b.rep.Rows {
		fig[r.Scenario+"|"+r.Figure] = r
	}
	for _, k := range []string{
		"router batch|notifications a second, batches of 10, closed loop, 2 callers",
		"router batch|notifications a second to users offline",
		"router batch|router CPU per notification to users offline",
	} {
		if _, ok := fig[k]; !ok {
			t.Errorf("no row %q", k)
		}
	}
	if r := fig["router batch|delivered"]; r.Value <= 0 || r.Ratio != 1 {
		t.Errorf("delivered %v, ratio to sent %v; want all delivered", r.Value, r.Ratio)
	}
	if r := fig["router batch|failed batches"]; r.Value != 0 || len(b.rep.Notes) > 0 {
		t.Errorf("%v batches failed; notes %q", r.Value, b.rep.Notes)
	}
}
