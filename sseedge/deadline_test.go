package sseedge_test

import (
	"net"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/sseedge"
)

// Write deadlines go by the real clock, not the edge's (Deps.Now): an edge
// whose clock is an hour behind, as a test's fake clock may be, still
// writes to its clients, over HTTP/1.1 and HTTP/1.0.
func TestWriteDeadlinesUseTheRealClock(t *testing.T) {
	t.Parallel()
	rdb, prefix := testenv.Redis(t)
	reg, pub := testenv.Publisher(t, rdb, prefix, 5*time.Second)
	behind := func() time.Time { return time.Now().Add(-time.Hour) }
	edge, err := sseedge.New(sseedge.Config{JWTSecret: secret, DrainPeriod: 100 * time.Millisecond},
		sseedge.Deps{Redis: rdb, Presence: reg, Registerer: prometheus.NewRegistry(), Now: behind})
	if err != nil {
		t.Fatal(err)
	}
	srv := testenv.Serve(t, edge.Serve)
	e := &testEdge{url: "http://" + srv.Addr, srv: srv, rdb: rdb, reg: reg, pub: pub}
	for _, proto := range []string{"HTTP/1.1", "HTTP/1.0"} {
		user := freshUser("behind")
		tok, err := sseedge.IssueToken(secret, user, time.Hour, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		st := openRawProto(t, &net.Dialer{}, e, tok, proto)
		id := e.publish(t, user, []byte("on time"))
		if ev := readUntil(t, st.dec, id); ev.Data != "on time" {
			t.Fatalf("%s: data %q", proto, ev.Data)
		}
	}
}
