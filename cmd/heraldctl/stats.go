package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/herald-push/herald/cmd/internal/daemon"
)

// statsCmd scrapes the binaries' admin /metrics endpoints twice, interval
// apart, and prints rates from the counters' increase, the gauges' current
// values, 99th percentiles from the histograms' bucket increases, and each
// endpoint's readiness.
func statsCmd(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("stats", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprint(fs.Output(), `usage: heraldctl stats [-router ADDRS] [-edge ADDRS] [-worker ADDRS] [flags]

Without any address it reads the binaries' default admin addresses on this
host: 127.0.0.1:9090 (router, or the all-in-one herald), 127.0.0.1:9091 (edge)
and 127.0.0.1:9093 (FCM worker).
`)
		fs.PrintDefaults()
	}
	var (
		routers  = fs.String("router", "", "router admin addresses, comma-separated")
		edges    = fs.String("edge", "", "SSE edge admin addresses, comma-separated")
		workers  = fs.String("worker", "", "FCM worker admin addresses, comma-separated")
		interval = fs.Duration("interval", 5*time.Second, "time between the two scrapes that rates are computed from")
		timeout  = fs.Duration("timeout", 5*time.Second, "time limit of each request to an endpoint")
		asJSON   = fs.Bool("json", false, "print JSON instead of a summary")
	)
	if err := daemon.ParseFlags(fs, args, "HERALD_"); err != nil {
		return err
	}
	eps := endpointsFrom(map[string]string{"router": *routers, "edge": *edges, "worker": *workers})
	if *interval <= 0 {
		return errors.New("-interval must be above 0")
	}
	ctx := context.Background()
	client := &http.Client{Timeout: *timeout}
	before := scrapeAll(ctx, client, eps)
	time.Sleep(*interval)
	after := scrapeAll(ctx, client, eps)
	checkReady(ctx, client, eps)
	rep := summarize(eps, before, after)
	if *asJSON {
		return writeJSON(stdout, rep)
	}
	return printStats(stdout, rep)
}

// endpoint is one admin listener. An address given for several roles (the
// all-in-one binary serves every metric on one listener) is one endpoint.
type endpoint struct {
	Addr  string   `json:"addr"`
	Roles []string `json:"roles"`
	Ready bool     `json:"ready"`
	// Status is "ready", or why the endpoint is not ready or not scraped.
	Status string `json:"status"`
}

// defaultAdmin is each binary's default admin address, scraped when no
// address is given: the binaries on this host. (The all-in-one herald serves
// every metric on the router's.)
var defaultAdmin = map[string]string{"router": "127.0.0.1:9090", "edge": "127.0.0.1:9091", "worker": "127.0.0.1:9093"}

func endpointsFrom(byRole map[string]string) []*endpoint {
	if strings.TrimSpace(byRole["router"]+byRole["edge"]+byRole["worker"]) == "" {
		byRole = defaultAdmin
	}
	var out []*endpoint
	seen := map[string]*endpoint{}
	for _, role := range []string{"router", "edge", "worker"} {
		for _, addr := range strings.Split(byRole[role], ",") {
			if addr = strings.TrimSpace(addr); addr == "" {
				continue
			}
			if ep, ok := seen[addr]; ok {
				ep.Roles = append(ep.Roles, role)
				continue
			}
			ep := &endpoint{Addr: addr, Roles: []string{role}}
			seen[addr] = ep
			out = append(out, ep)
		}
	}
	return out
}

// url is the address of one of ep's pages: addr may be host:port or a URL.
func (ep *endpoint) url(path string) string {
	base := ep.Addr
	if !strings.Contains(base, "://") {
		base = "http://" + base
	}
	return strings.TrimSuffix(base, "/") + path
}

// statsReport is what "heraldctl stats" shows. Rates are per second; a
// section is present when an endpoint serves its metrics.
type statsReport struct {
	IntervalSeconds float64      `json:"intervalSeconds"`
	Endpoints       []*endpoint  `json:"endpoints"`
	Router          *routerStats `json:"router,omitempty"`
	Edge            *edgeStats   `json:"edge,omitempty"`
	Worker          *workerStats `json:"worker,omitempty"`
}

type routerStats struct {
	Notify           float64            `json:"notifyPerSecond"`
	NotifyByRoute    map[string]float64 `json:"notifyPerSecondByRoute"`
	NotifyErrors     float64            `json:"notifyErrorsPerSecond"`
	NotifyErrorsCode map[string]float64 `json:"notifyErrorsPerSecondByCode"` // every code but OK
	NotifyP99        *float64           `json:"notifyP99Seconds"`            // null: no Notify in the interval
	RedisErrors      float64            `json:"redisErrorsPerSecond"`
	KafkaErrors      float64            `json:"kafkaErrorsPerSecond"`
}

type edgeStats struct {
	ConnectionsOpen float64            `json:"connectionsOpen"`
	Closes          float64            `json:"closesPerSecond"`
	ClosesByReason  map[string]float64 `json:"closesPerSecondByReason"`
	Refused         float64            `json:"refusedPerSecond"`
	RefusedByCode   map[string]float64 `json:"refusedPerSecondByCode"`
	EventsWritten   float64            `json:"eventsWrittenPerSecond"`
	DeliveryP99     *float64           `json:"deliveryLatencyP99Seconds"` // null: nothing written in the interval
	PresenceErrors  float64            `json:"presenceErrorsPerSecond"`
}

type workerStats struct {
	Messages          float64            `json:"messagesPerSecond"`
	MessagesByOutcome map[string]float64 `json:"messagesPerSecondByOutcome"`
	Retries           float64            `json:"retriesPerSecond"`
	RetriesByCode     map[string]float64 `json:"retriesPerSecondByCode"`
	DeadLetters       float64            `json:"deadLettersPerSecond"`
	DeadLettersByCode map[string]float64 `json:"deadLettersPerSecondByCode"`
	ConsumerLag       float64            `json:"consumerLagMessages"`
}

// summarize computes the report from two scrapes of eps. An endpoint that
// failed either scrape counts in none of the figures; its status says why.
func summarize(eps []*endpoint, before, after []scrape) statsReport {
	var w window
	for i, ep := range eps {
		switch {
		case before[i].err != nil:
			ep.Ready, ep.Status = false, "scrape failed: "+before[i].err.Error()
		case after[i].err != nil:
			ep.Ready, ep.Status = false, "scrape failed: "+after[i].err.Error()
		default:
			w = append(w, [2]scrape{before[i], after[i]})
		}
	}
	rep := statsReport{Endpoints: eps}
	if len(w) > 0 {
		rep.IntervalSeconds = w.seconds()
	}
	if w.has("herald_router_") {
		r := &routerStats{}
		r.Notify, r.NotifyByRoute = w.rate("herald_router_notify_total", "route")
		_, r.NotifyErrorsCode = w.rate("herald_router_notify_total", "code")
		delete(r.NotifyErrorsCode, "OK")
		for _, v := range r.NotifyErrorsCode {
			r.NotifyErrors += v
		}
		r.NotifyP99 = w.quantile("herald_router_notify_duration_seconds", 0.99)
		r.RedisErrors, _ = w.rate("herald_router_redis_errors_total", "")
		r.KafkaErrors, _ = w.rate("herald_router_kafka_errors_total", "")
		rep.Router = r
	}
	if w.has("herald_sse_") {
		e := &edgeStats{ConnectionsOpen: w.gauge("herald_sse_connections_open")}
		e.Closes, e.ClosesByReason = w.rate("herald_sse_connections_closed_total", "reason")
		e.Refused, e.RefusedByCode = w.rate("herald_sse_connections_refused_total", "code")
		e.EventsWritten, _ = w.rate("herald_sse_events_written_total", "")
		e.DeliveryP99 = w.quantile("herald_sse_delivery_latency_seconds", 0.99)
		e.PresenceErrors, _ = w.rate("herald_sse_presence_errors_total", "")
		rep.Edge = e
	}
	if w.has("herald_fcm_") {
		f := &workerStats{ConsumerLag: w.gauge("herald_fcm_consumer_lag_messages")}
		f.Messages, f.MessagesByOutcome = w.rate("herald_fcm_messages_total", "outcome")
		f.Retries, f.RetriesByCode = w.rate("herald_fcm_retries_total", "code")
		f.DeadLetters, f.DeadLettersByCode = w.rate("herald_fcm_dead_letters_total", "code")
		rep.Worker = f
	}
	return rep
}
