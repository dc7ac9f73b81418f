package integration_test

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/sseedge"
)

// stallGate sits between a Redis client and the nodes it dials. Once armed
// for a node, a write that carries an SSUBSCRIBE to it is held until the
// gate opens (or the connection closes): what a primary that stopped
// reading does to its clients once its TCP window is full. A proxy that
// only held the bytes back would not do: the kernel's buffers would take
// the write, and the writer would not wait.
type stallGate struct {
	mu      sync.Mutex
	port    string // the armed node's port; "" while disarmed
	stalled chan struct{}
	once    sync.Once
	release chan struct{}
	relOnce sync.Once
}

func newTestStallGate(tb testing.TB) *stallGate {
	tb.Helper()
	g := &stallGate{stalled: make(chan struct{}), release: make(chan struct{})}
	tb.Cleanup(g.open)
	return g
}

// arm holds the SSUBSCRIBEs written to the node at addr from now on.
func (g *stallGate) arm(addr string) {
	_, port, _ := net.SplitHostPort(addr)
	g.mu.Lock()
	g.port = port
	g.mu.Unlock()
}

// open lets every held write through, and every later one.
func (g *stallGate) open() { g.relOnce.Do(func() { close(g.release) }) }

func (g *stallGate) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, err
	}
	_, port, _ := net.SplitHostPort(addr)
	return &gatedConn{Conn: c, g: g, port: port, closed: make(chan struct{})}, nil
}

func (g *stallGate) holds(port string, b []byte) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.port != "" && g.port == port && bytes.Contains(bytes.ToLower(b), []byte("ssubscribe"))
}

type gatedConn struct {
	net.Conn
	g         *stallGate
	port      string
	closed    chan struct{}
	closeOnce sync.Once
}

func (c *gatedConn) Write(b []byte) (int, error) {
	if c.g.holds(c.port, b) {
		c.g.once.Do(func() { close(c.g.stalled) })
		select {
		case <-c.g.release:
		case <-c.closed:
			return 0, net.ErrClosed
		}
	}
	return c.Conn.Write(b)
}

func (c *gatedConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

// TestClusterJoinStallNoDeliveryStall: on a Redis Cluster, a join whose
// primary does not take its SSUBSCRIBE holds up that join alone: the
// streams already subscribed, on other primaries, go on receiving while it
// waits. (The edge sent SUBSCRIBEs under the lock that every delivery
// takes, so one slow primary stalled delivery to every stream.)
func TestClusterJoinStallNoDeliveryStall(t *testing.T) {
	c := testenv.StartCluster(t, 3, 0)
	s := newSystemWith(t, options{cluster: c})
	gate := newTestStallGate(t)
	cc := redis.NewClusterClient(&redis.ClusterOptions{Addrs: c.Seeds(), Dialer: gate.dial})
	t.Cleanup(func() { _ = cc.Close() })
	reg, err := presence.New(cc, presence.Config{Prefix: s.prefix, LeaseTTL: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	// The join may wait for as long as the test holds it.
	edge, err := sseedge.New(sseedge.Config{EdgeID: "stall", JWTSecret: testSecret, SubscribeTimeout: time.Minute,
		DrainPeriod: 100 * time.Millisecond}, sseedge.Deps{Redis: cc, Presence: reg})
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + testenv.Serve(t, edge.Serve).Addr
	// Open the gate before the edge stops: a held write must not hold the
	// drain.
	t.Cleanup(gate.open)

	// alice and bob, whose channels live on two different primaries.
	var names []string
	for i := range 20 {
		names = append(names, "stall-"+strconv.Itoa(i))
	}
	owner := owners(t, s, names)
	alice, bob := names[0], ""
	for _, u := range names[1:] {
		if owner[u] != owner[alice] {
			bob = u
			break
		}
	}
	if bob == "" {
		t.Fatal("every user on one primary")
	}
	ac := connect(t, url, token(t, alice))

	// bob's primary stops taking SSUBSCRIBEs; bob joins.
	gate.arm(owner[bob])
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	joined := make(chan *http.Response, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/v1/events?access_token="+token(t, bob), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			joined <- nil
			return
		}
		joined <- resp
	}()
	select {
	case <-gate.stalled:
	case <-time.After(30 * time.Second):
		t.Fatal("bob's SSUBSCRIBE never reached his primary")
	}

	// While bob's join is held, alice still gets her notifications.
	s.notify(t, &heraldv1.NotifyRequest{UserId: alice, Data: []byte("during bob's join")})
	if ev := ac.next(t, 10*time.Second); ev.Data != "during bob's join" {
		t.Fatalf("alice got %q", ev.Data)
	}
	select {
	case resp := <-joined:
		if resp != nil {
			resp.Body.Close()
		}
		t.Fatal("bob's stream opened before Redis took his subscription")
	default:
	}

	// Once the primary takes it, bob's stream opens, subscribed.
	gate.open()
	var resp *http.Response
	select {
	case resp = <-joined:
	case <-time.After(30 * time.Second):
		t.Fatal("bob's stream did not open once his primary came back")
	}
	if resp == nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("bob's stream: %v", resp)
	}
	defer resp.Body.Close()
	got := make(chan string)
	go func() {
		defer close(got)
		dec := sseedge.NewDecoder(resp.Body)
		for {
			ev, err := dec.Next()
			if err != nil {
				return
			}
			select {
			case got <- ev.Data:
			case <-ctx.Done():
				return
			}
		}
	}()
	s.notify(t, &heraldv1.NotifyRequest{UserId: bob, Data: []byte("after")})
	for {
		select {
		case data, ok := <-got:
			if !ok {
				t.Fatal("bob's stream ended")
			}
			if data == "after" {
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatal("bob's stream got nothing")
		}
	}
}
