package embedded

import (
	"context"
	"net"
	"time"

	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/presence"
	"github.com/herald-push/herald/router"
	"github.com/herald-push/herald/sseedge"
)

// Config shapes a router and its edges on one Redis. The zero value is
// Herald's defaults.
type Config struct {
	// Prefix is the key prefix of presence (and so of the publisher's
	// channels). Empty: presence's default.
	Prefix string
	// LeaseTTL is the presence lease. Zero: presence's default.
	LeaseTTL time.Duration
	// Publisher configures the router's publisher: history, the offline
	// queue, receipts.
	Publisher delivery.PublisherConfig
	// Router configures the router's gRPC service.
	Router router.Config
	// Edge configures the edge that Start runs.
	Edge sseedge.Config
}

// Deps are what the router and the edge are given besides Redis and
// presence, which the wiring supplies.
type Deps struct {
	// Router's Publisher is set by NewRouter.
	Router router.Deps
	// Edge's Redis and Presence are set by NewEdge.
	Edge sseedge.Deps
}

// NewPresence returns the presence registry of cfg on rdb.
func NewPresence(rdb redis.UniversalClient, cfg Config) (*presence.Registry, error) {
	return presence.New(rdb, presence.Config{Prefix: cfg.Prefix, LeaseTTL: cfg.LeaseTTL})
}

// Router is a router's parts on one Redis: the presence registry its
// publisher reads, the publisher, and what its service is built from.
type Router struct {
	Presence  *presence.Registry
	Publisher *delivery.Publisher
	cfg       router.Config
	deps      router.Deps
}

// NewRouter wires a router on rdb with the presence registry pres (nil: a
// new one of cfg).
func NewRouter(rdb redis.UniversalClient, pres *presence.Registry, cfg Config, deps router.Deps) (*Router, error) {
	if pres == nil {
		var err error
		if pres, err = NewPresence(rdb, cfg); err != nil {
			return nil, err
		}
	}
	pub, err := delivery.NewPublisher(rdb, pres, cfg.Publisher)
	if err != nil {
		return nil, err
	}
	deps.Publisher = pub
	return &Router{Presence: pres, Publisher: pub, cfg: cfg.Router, deps: deps}, nil
}

// Deps are the router's dependencies, its publisher included.
func (r *Router) Deps() router.Deps { return r.deps }

// Service builds the router's gRPC service. A stopped service stays down
// (its health server does), so each start needs a new one.
func (r *Router) Service() (*router.Service, error) { return router.New(r.cfg, r.deps) }

// NewEdge wires an edge on rdb with the presence registry pres.
func NewEdge(rdb redis.UniversalClient, pres *presence.Registry, cfg sseedge.Config, deps sseedge.Deps) (*sseedge.Server, error) {
	deps.Redis, deps.Presence = rdb, pres
	return sseedge.New(cfg, deps)
}

// System is a router and an edge on one Redis, sharing a presence
// registry, served on their own listeners.
type System struct {
	*Router
	Edge *sseedge.Server
	// GRPC is the router's listener and HTTP the edge's.
	GRPC, HTTP net.Listener
}

// Start wires a router and an edge on rdb, listens on grpcAddr and httpAddr,
// and serves both in g until g's context (ctx) is done.
func Start(ctx context.Context, g *errgroup.Group, rdb redis.UniversalClient, cfg Config, deps Deps,
	grpcAddr, httpAddr string) (*System, error) {
	rt, err := NewRouter(rdb, nil, cfg, deps.Router)
	if err != nil {
		return nil, err
	}
	svc, err := rt.Service()
	if err != nil {
		return nil, err
	}
	edge, err := NewEdge(rdb, rt.Presence, cfg.Edge, deps.Edge)
	if err != nil {
		return nil, err
	}
	grpcLis, err := net.Listen("tcp", grpcAddr)
	if err != nil {
		return nil, err
	}
	httpLis, err := net.Listen("tcp", httpAddr)
	if err != nil {
		grpcLis.Close()
		return nil, err
	}
	g.Go(func() error { return svc.Serve(ctx, grpcLis) })
	g.Go(func() error { return edge.Serve(ctx, httpLis) })
	return &System{Router: rt, Edge: edge, GRPC: grpcLis, HTTP: httpLis}, nil
}
