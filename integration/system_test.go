package integration_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/herald-push/herald/cmd/herald/embedded"
	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/queue"
	"github.com/herald-push/herald/delivery/receipts"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
	"github.com/herald-push/herald/sseedge"
)

// An edge run as a child process of the test binary, so that a test can kill
// it with SIGKILL. The child is this binary with HERALD_TEST_CHILD_EDGE set.
const childEdgeEnv = "HERALD_TEST_CHILD_EDGE"

func TestMain(m *testing.M) {
	if os.Getenv(childEdgeEnv) != "" {
		runChildEdge()
		return
	}
	if testenv.RunChildWorker() {
		return
	}
	goleak.VerifyTestMain(m,
		// kafka-go's shared default transport keeps its pooled broker
		// connections, and the goroutines that discover the cluster and
		// dial it, for the life of the process; they are not ours. They
		// can be caught anywhere in their work (a CI run found one
		// decoding a metadata response, and one waiting for its dial), so
		// any goroutine with the pool's functions on its stack is let be.
		goleak.IgnoreAnyFunction("github.com/segmentio/kafka-go.(*conn).run"),
		goleak.IgnoreAnyFunction("github.com/segmentio/kafka-go.(*connPool).discover"),
		goleak.IgnoreAnyFunction("github.com/segmentio/kafka-go.(*connGroup).grabConnOrConnect.func1"),
		goleak.IgnoreAnyFunction("github.com/segmentio/kafka-go.(*connGroup).connect"),
	)
}

var testSecret = []byte("integration-test-secret-0123456789")

// system is a router and edges on their own listeners, against the shared
// redis-server under a key prefix of the test's own.
type system struct {
	prefix string
	rdb    redis.UniversalClient
	reg    *presence.Registry
	router heraldv1.RouterServiceClient
	// routers are a client of each router (options.routers); the first is
	// router.
	routers []heraldv1.RouterServiceClient
	// routerAddr is the router's gRPC address.
	routerAddr string
	// routerSrv serves the router; restartRouter replaces it.
	routerSrv   *testenv.Server
	serveRouter func(ctx context.Context, lis net.Listener) error
	edges       []*testEdge
	opts        options
	// sweepers are the metrics of each receipt sweeper (with offline).
	sweepers []*prometheus.Registry
}

// testEdge is an edge serving in the test process.
type testEdge struct {
	*testenv.Server
	url     string // base URL, http://127.0.0.1:port
	metrics *prometheus.Registry
}

// closed is the edge's herald_sse_connections_closed_total{reason}.
func (e *testEdge) closed(reason sseedge.CloseReason) float64 {
	mfs, _ := e.metrics.Gather()
	for _, mf := range mfs {
		if mf.GetName() != "herald_sse_connections_closed_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			if m.GetLabel()[0].GetValue() == string(reason) {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// gauge reads the edge's gauge name (a metric without labels), or -1.
func (e *testEdge) gauge(name string) float64 {
	mfs, _ := e.metrics.Gather()
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	return -1
}

// beyondHistory events, published while a client is away, leave a history
// of 5 (HistoryConfig.Length) without the first of them: Redis trims a
// stream in whole nodes, which hold at most 100 entries
// (stream-node-max-entries, by default), so a history of 5 holds at most
// 104, and the client's last event and the first it missed are gone.
const beyondHistory = 5 + 100

// options shape a system; the zero value is one edge on the shared Redis.
type options struct {
	edges    int
	leaseTTL time.Duration
	history  delivery.HistoryConfig
	edge     sseedge.Config // the edges' config, less the id and secret
	redis    *redis.Client  // default: the shared redis-server
	// cluster, when set, is the Redis the system runs on: every router and
	// edge has a cluster client of its own.
	cluster *testenv.Cluster
	// routers is how many routers serve; default 1.
	routers int
	pages   http.Handler
	// offline, when set, gives the router an offline path (Kafka, the
	// device registry) on these parts, and the system their Redis and
	// prefix.
	offline *testenv.Offline
	// sweepers is how many receipt sweepers run (with offline); default 1.
	sweepers int
}

func newSystem(tb testing.TB, edges int, leaseTTL time.Duration) *system {
	return newSystemWith(tb, options{edges: edges, leaseTTL: leaseTTL})
}

func newSystemWith(tb testing.TB, o options) *system {
	tb.Helper()
	rdb, prefix := o.redis, testenv.Prefix(tb)
	var client redis.UniversalClient = rdb
	switch {
	case o.offline != nil:
		client, prefix = o.offline.Redis, o.offline.Prefix
	case o.cluster != nil:
		client = o.cluster.Client()
	case rdb == nil:
		client, prefix = testenv.Redis(tb)
	}
	rdb = nil
	if o.leaseTTL == 0 {
		o.leaseTTL = 5 * time.Second
	}
	if o.edge.DrainPeriod == 0 {
		o.edge.DrainPeriod = 100 * time.Millisecond
	}
	ecfg := embedded.Config{Prefix: prefix, LeaseTTL: o.leaseTTL, Publisher: delivery.PublisherConfig{History: o.history}}
	reg, err := embedded.NewPresence(client, ecfg)
	if err != nil {
		tb.Fatal(err)
	}
	deps := router.Deps{}
	var sweepers []*prometheus.Registry
	if o.offline != nil {
		q, err := queue.NewKafka(queue.Config{Brokers: o.offline.Kafka.Brokers, WriteTimeout: time.Second, MaxAttempts: 1},
			queue.DefaultOfflineTopic)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { q.Close() })
		ecfg.Publisher.Offline, deps.Devices = q, o.offline.Devices
		rc := receipts.New(client, receipts.Config{Prefix: prefix, SweepEvery: 20 * time.Millisecond})
		ecfg.Publisher.Receipts = rc
		for range max(o.sweepers, 1) {
			reg := prometheus.NewRegistry()
			sw, err := router.NewSweeper(rc, q, nil, reg)
			if err != nil {
				tb.Fatal(err)
			}
			sweepers = append(sweepers, reg)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { defer close(done); _ = sw.Run(ctx) }()
			tb.Cleanup(func() { cancel(); <-done })
		}
	}
	rt, err := embedded.NewRouter(client, reg, ecfg, deps)
	if err != nil {
		tb.Fatal(err)
	}
	serve := func(ctx context.Context, lis net.Listener) error {
		// A new Service each time: a stopped one's health server stays down.
		svc, err := rt.Service()
		if err != nil {
			return err
		}
		return svc.Serve(ctx, lis)
	}
	srv := testenv.Serve(tb, serve)
	conn := testenv.GRPCClient(tb, srv.Addr)
	s := &system{prefix: prefix, rdb: client, reg: reg, router: heraldv1.NewRouterServiceClient(conn), routerAddr: srv.Addr, opts: o,
		routerSrv: srv, serveRouter: serve, sweepers: sweepers}
	s.routers = append(s.routers, s.router)
	for range max(o.routers, 1) - 1 {
		// Another router: a publisher on a Redis client of its own.
		rt, err := embedded.NewRouter(s.newClient(tb), reg, ecfg, deps)
		if err != nil {
			tb.Fatal(err)
		}
		srv := testenv.Serve(tb, func(ctx context.Context, lis net.Listener) error {
			svc, err := rt.Service()
			if err != nil {
				return err
			}
			return svc.Serve(ctx, lis)
		})
		s.routers = append(s.routers, heraldv1.NewRouterServiceClient(testenv.GRPCClient(tb, srv.Addr)))
	}
	for i := range o.edges {
		s.edges = append(s.edges, s.startEdge(tb, fmt.Sprintf("edge-%d", i), "127.0.0.1:0"))
	}
	return s
}

// restartRouter stops the router (gracefully, as on SIGTERM), calls
// whileDown, and starts a new one on the same address; clients reconnect by
// themselves.
func (s *system) restartRouter(tb testing.TB, whileDown func()) {
	tb.Helper()
	if err := s.routerSrv.Stop(); err != nil {
		tb.Fatal(err)
	}
	whileDown()
	s.routerSrv = testenv.ServeOn(tb, s.routerAddr, s.serveRouter)
}

// newClient returns a Redis client of its own to the system's Redis,
// closed at cleanup.
func (s *system) newClient(tb testing.TB) redis.UniversalClient {
	if s.opts.cluster != nil {
		return s.opts.cluster.Client()
	}
	opts := *s.rdb.(*redis.Client).Options()
	rdb := redis.NewClient(&opts)
	tb.Cleanup(func() { rdb.Close() })
	return rdb
}

// startEdge runs an in-process edge on addr with a Redis client of its own.
func (s *system) startEdge(tb testing.TB, id, addr string) *testEdge {
	tb.Helper()
	rdb := s.newClient(tb)
	reg, err := embedded.NewPresence(rdb, embedded.Config{Prefix: s.prefix, LeaseTTL: s.opts.leaseTTL})
	if err != nil {
		tb.Fatal(err)
	}
	cfg := s.opts.edge
	cfg.EdgeID, cfg.JWTSecret = id, testSecret
	metrics := prometheus.NewRegistry()
	edge, err := embedded.NewEdge(rdb, reg, cfg, sseedge.Deps{Registerer: metrics, Pages: s.opts.pages})
	if err != nil {
		tb.Fatal(err)
	}
	srv := testenv.ServeOn(tb, addr, edge.Serve)
	return &testEdge{Server: srv, url: "http://" + srv.Addr, metrics: metrics}
}

func token(tb testing.TB, user string) string {
	tb.Helper()
	tok, err := sseedge.IssueToken(testSecret, user, time.Hour, time.Now())
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// sseClient is one EventSource-like connection.
type sseClient struct {
	mu     sync.Mutex
	last   string // the id of the last event received
	events chan sseedge.Event
	closed chan error // receives the error that ended the stream
	cancel context.CancelFunc
}

// connect opens a stream at baseURL for tok, and returns once the edge has
// answered 200: by then the user's subscription and presence are in place.
func connect(tb testing.TB, baseURL, tok string) *sseClient {
	tb.Helper()
	return connectFrom(tb, baseURL+"/v1/events?access_token="+tok, "")
}

// connectFrom opens a stream at url, resuming after lastEventID if set.
func connectFrom(tb testing.TB, url, lastEventID string) *sseClient {
	tb.Helper()
	h := http.Header{}
	if lastEventID != "" {
		h.Set("Last-Event-ID", lastEventID)
	}
	resp, cancel := get(tb, url, h)
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		cancel()
		tb.Fatalf("GET /v1/events: %s %s", resp.Status, body)
	}
	c := &sseClient{events: make(chan sseedge.Event, 1024), closed: make(chan error, 1), cancel: cancel}
	go func() {
		defer resp.Body.Close()
		d := sseedge.NewDecoder(resp.Body)
		for {
			ev, err := d.Next()
			if err != nil {
				c.closed <- err
				close(c.events)
				return
			}
			if ev.Retry == 0 {
				c.mu.Lock()
				c.last = d.LastEventID()
				c.mu.Unlock()
				c.events <- ev
			}
		}
	}()
	tb.Cleanup(c.close)
	return c
}

func (c *sseClient) close() { c.cancel() }

// lastID is the id of the last event received.
func (c *sseClient) lastID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.last
}

// get issues a GET with headers and returns the response and a cancel func.
func get(tb testing.TB, url string, header http.Header) (*http.Response, context.CancelFunc) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		tb.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		cancel()
		tb.Fatal(err)
	}
	return resp, cancel
}

// next returns the next event, failing the test after timeout.
func (c *sseClient) next(tb testing.TB, timeout time.Duration) sseedge.Event {
	tb.Helper()
	select {
	case ev, ok := <-c.events:
		if !ok {
			tb.Fatalf("stream ended: %v", <-c.closed)
		}
		return ev
	case <-time.After(timeout):
		tb.Fatalf("no event within %v", timeout)
	}
	return sseedge.Event{}
}

func (s *system) notify(tb testing.TB, req *heraldv1.NotifyRequest) *heraldv1.NotifyResponse {
	tb.Helper()
	resp, err := s.router.Notify(context.Background(), req)
	if err != nil {
		tb.Fatalf("Notify(%v): %v", req, err)
	}
	return resp
}

// runChildEdge is the child process: an edge on a port given by the parent,
// which prints "ready" once it serves.
func runChildEdge() {
	var cfg struct{ prefix, addr string }
	cfg.prefix, cfg.addr = os.Getenv("HERALD_TEST_PREFIX"), os.Getenv("HERALD_TEST_ADDR")
	ttl, _ := time.ParseDuration(os.Getenv("HERALD_TEST_LEASE_TTL"))
	rdb := redis.NewClient(&redis.Options{Addr: testenv.RedisAddr()})
	reg, err := embedded.NewPresence(rdb, embedded.Config{Prefix: cfg.prefix, LeaseTTL: ttl})
	if err != nil {
		panic(err)
	}
	edge, err := embedded.NewEdge(rdb, reg, sseedge.Config{EdgeID: "child-edge", JWTSecret: testSecret}, sseedge.Deps{})
	if err != nil {
		panic(err)
	}
	lis, err := net.Listen("tcp", cfg.addr)
	if err != nil {
		panic(err)
	}
	fmt.Println("ready")
	_ = edge.Serve(context.Background(), lis)
}

// startChildEdge starts an edge in a child process and returns its base URL
// and the process, to be killed by the test.
func (s *system) startChildEdge(tb testing.TB, leaseTTL time.Duration) (string, *exec.Cmd) {
	tb.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", testenv.FreePort(tb))
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEdgeEnv+"=1", "HERALD_TEST_PREFIX="+s.prefix,
		"HERALD_TEST_ADDR="+addr, "HERALD_TEST_LEASE_TTL="+leaseTTL.String())
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		tb.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || strings.TrimSpace(line) != "ready" {
		tb.Fatalf("child edge did not start: %q %v", line, err)
	}
	return "http://" + addr, cmd
}
