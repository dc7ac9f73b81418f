package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Scraping for heraldctl stats: reading each endpoint's /metrics and
// /readyz over HTTP.

// scrape is one read of an endpoint's /metrics.
type scrape struct {
	at   time.Time
	fams map[string]*dto.MetricFamily
	err  error
}

// scrapeAll reads every endpoint's metrics at once, in the order of eps.
func scrapeAll(ctx context.Context, client *http.Client, eps []*endpoint) []scrape {
	out := make([]scrape, len(eps))
	var wg sync.WaitGroup
	for i, ep := range eps {
		wg.Go(func() { out[i] = scrapeMetrics(ctx, client, ep.url("/metrics")) })
	}
	wg.Wait()
	return out
}

func scrapeMetrics(ctx context.Context, client *http.Client, url string) scrape {
	s := scrape{at: time.Now()}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		s.err = err
		return s
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := client.Do(req)
	if err != nil {
		s.err = err
		return s
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		s.err = fmt.Errorf("GET %s: %s", url, resp.Status)
		return s
	}
	parser := expfmt.NewTextParser(model.UTF8Validation)
	s.fams, s.err = parser.TextToMetricFamilies(resp.Body)
	if s.err != nil {
		s.err = fmt.Errorf("GET %s: %w", url, s.err)
	}
	return s
}

// checkReady asks each endpoint's /readyz, at once, and records the answer.
func checkReady(ctx context.Context, client *http.Client, eps []*endpoint) {
	var wg sync.WaitGroup
	for _, ep := range eps {
		wg.Go(func() {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, ep.url("/readyz"), nil)
			if err != nil {
				ep.Status = err.Error()
				return
			}
			resp, err := client.Do(req)
			if err != nil {
				ep.Status = "unreachable: " + err.Error()
				return
			}
			defer resp.Body.Close()
			body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
			if resp.StatusCode == http.StatusOK {
				ep.Ready, ep.Status = true, "ready"
				return
			}
			msg := strings.TrimSpace(string(body))
			if msg == "" {
				msg = resp.Status
			}
			ep.Status = msg
		})
	}
	wg.Wait()
}
