package integration_test

import (
	"context"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/devices"
	"github.com/herald-push/herald/delivery/queue"
	"github.com/herald-push/herald/delivery/receipts"
	"github.com/herald-push/herald/fcm"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/presence"
	"github.com/herald-push/herald/router"
	"github.com/herald-push/herald/sseedge"
)

// TestMetricsDocumented checks that docs/metrics.md lists exactly the herald_
// metrics that the router, the edge and the FCM worker register.
func TestMetricsDocumented(t *testing.T) {
	rdb, prefix := testenv.Redis(t)
	reg, err := presence.New(rdb, presence.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := delivery.NewPublisher(rdb, reg, delivery.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	metrics := &recordingRegisterer{Registerer: prometheus.NewPedanticRegistry()}
	if _, err := router.New(router.Config{}, router.Deps{Publisher: pub, Registerer: metrics}); err != nil {
		t.Fatal(err)
	}
	if _, err := sseedge.New(sseedge.Config{JWTSecret: []byte("x"), Heartbeat: time.Second},
		sseedge.Deps{Redis: rdb, Presence: reg, Registerer: metrics}); err != nil {
		t.Fatal(err)
	}
	devices, err := devices.New(rdb, devices.Config{Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	sender, err := fcm.NewClient(context.Background(), fcm.ClientConfig{Project: "p", Endpoint: "http://127.0.0.1:1/v1"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fcm.New(fcm.Config{Kafka: queue.Config{Brokers: []string{"127.0.0.1:1"}}},
		fcm.Deps{Sender: sender, Devices: devices, Redis: rdb, Registerer: metrics}); err != nil {
		t.Fatal(err)
	}
	if _, err := router.NewSweeper(receipts.New(rdb, receipts.Config{Prefix: prefix}), nil, nil, metrics); err != nil {
		t.Fatal(err)
	}
	if _, err := router.NewCallers(router.AuthConfig{}, router.AuthDeps{Registerer: metrics}); err != nil {
		t.Fatal(err)
	}
	registered := metrics.names
	slices.Sort(registered)

	doc, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	var documented []string
	for _, m := range regexp.MustCompile("(?m)^\\| `(herald_[a-z_]+)`").FindAllStringSubmatch(string(doc), -1) {
		documented = append(documented, m[1])
	}
	slices.Sort(documented)
	if !slices.Equal(registered, documented) {
		t.Fatalf("docs/metrics.md and the registered metrics differ\nregistered: %s\ndocumented: %s",
			strings.Join(registered, " "), strings.Join(documented, " "))
	}
}

// recordingRegisterer records the name of every metric registered through it.
type recordingRegisterer struct {
	prometheus.Registerer
	names []string
}

var fqName = regexp.MustCompile(`fqName: "([^"]+)"`)

func (r *recordingRegisterer) Register(c prometheus.Collector) error {
	descs := make(chan *prometheus.Desc, 16)
	go func() { c.Describe(descs); close(descs) }()
	for d := range descs {
		if m := fqName.FindStringSubmatch(d.String()); m != nil {
			r.names = append(r.names, m[1])
		}
	}
	return r.Registerer.Register(c)
}
