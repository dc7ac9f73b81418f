// Package daemon is the machinery Herald's binaries share: flags that fall
// back to environment variables, the logger, Redis clients, and the admin
// listener with metrics, health and pprof.
package daemon

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/delivery/redact"
	"github.com/herald-push/herald/presence"
)

// ParseFlags parses args into fs. A flag not given on the command line takes
// its value from the environment variable named envPrefix + the flag's name
// in upper case with '-' as '_' (for example HERALD_REDIS_ADDR for
// -redis-addr), when that variable is set.
func ParseFlags(fs *flag.FlagSet, args []string, envPrefix string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	set := make(map[string]bool)
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] {
			return
		}
		name := EnvName(envPrefix, f.Name)
		if v, ok := os.LookupEnv(name); ok {
			if err := fs.Set(f.Name, v); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
			}
		}
	})
	return errors.Join(errs...)
}

// EnvName is the environment variable that backs flag name.
func EnvName(prefix, name string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

// NewLogger returns a slog logger writing to w in format ("json" or "text")
// at level, which can be changed later through the returned LevelVar.
func NewLogger(w io.Writer, format, level string) (*slog.Logger, *slog.LevelVar, error) {
	lv := new(slog.LevelVar)
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, nil, fmt.Errorf("log level %q: %w", level, err)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), lv, nil
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), lv, nil
	}
	return nil, nil, fmt.Errorf("log format %q: want json or text", format)
}

// NewRedis returns a client for addrs: one address, or a comma-separated
// list of Redis Cluster seed addresses. Several addresses always mean a
// cluster. One address means a cluster when the node there says so
// (cluster_enabled:1 in INFO cluster), asked once, within a few seconds: a
// node that does not answer then is taken for a single Redis. Every
// command of the client has a deadline (see RedisReadTimeout).
func NewRedis(addrs, password string) redis.UniversalClient {
	seeds := strings.Split(addrs, ",")
	if len(seeds) > 1 || isClusterNode(seeds[0], password) {
		return redis.NewClusterClient(&redis.ClusterOptions{Addrs: seeds, Password: password,
			ClusterStateReloadInterval: ClusterStateReload,
			DialTimeout:                RedisDialTimeout, ReadTimeout: RedisReadTimeout,
			WriteTimeout: RedisWriteTimeout, PoolTimeout: RedisPoolTimeout})
	}
	return redis.NewClient(redisOptions(seeds[0], password))
}

// The timeouts of every Redis client the binaries build. They are
// go-redis' defaults, set here so that no zero or -1 (go-redis' "no
// deadline") can creep in.
//
// One attempt of a command waits at most RedisPoolTimeout for a
// connection, RedisDialTimeout to open one, RedisWriteTimeout to send and
// RedisReadTimeout for the answer, whatever its context; go-redis makes up
// to 4 attempts, but for the scripts that record and publish an event,
// which go once (delivery/once.go). The socket deadlines are these
// timeouts, not the caller's context (ContextTimeoutEnabled stays off): a
// gRPC caller's short deadline would otherwise close a pooled connection at
// each timeout, and the reconnections would pile onto a Redis already slow. Pub/Sub links read
// without a deadline, as they must; go-redis pings them every few seconds
// instead.
const (
	RedisDialTimeout  = 5 * time.Second
	RedisReadTimeout  = 3 * time.Second
	RedisWriteTimeout = 3 * time.Second
	RedisPoolTimeout  = 4 * time.Second
)

// redisOptions are the options of a single Redis' client.
func redisOptions(addr, password string) *redis.Options {
	return &redis.Options{Addr: addr, Password: password,
		DialTimeout: RedisDialTimeout, ReadTimeout: RedisReadTimeout,
		WriteTimeout: RedisWriteTimeout, PoolTimeout: RedisPoolTimeout}
}

// ClusterStateReload is how often a cluster client reads the slot map while
// it has traffic. go-redis rereads it at once on a MOVED redirect, but not
// when a primary stops answering: with its default of a minute, a dead
// primary's slots would stay unreachable for up to a minute after a replica
// took them over. One CLUSTER SLOTS every 2 s per process is cheap.
const ClusterStateReload = 2 * time.Second

// isClusterNode reports whether the Redis at addr runs in cluster mode.
func isClusterNode(addr, password string) bool {
	opt := redisOptions(addr, password)
	opt.MaxRetries = -1
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	text, err := rdb.Info(ctx, "cluster").Result()
	return err == nil && strings.Contains(text, "cluster_enabled:1")
}

// NewRegistry returns a Prometheus registry with the Go runtime and process
// collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Admin is the admin listener's content.
type Admin struct {
	Gatherer prometheus.Gatherer
	// Ready reports whether the binary can serve: nil when ready.
	Ready func(ctx context.Context) error
	// Level, when set, is exposed at /loglevel: GET shows it, PUT or POST
	// with a level name (debug, info, warn, error) changes it.
	Level *slog.LevelVar
}

// Handler serves /metrics, /healthz (alive), /readyz (ready to serve),
// /loglevel and /debug/pprof/.
func (a Admin) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(a.Gatherer, promhttp.HandlerOpts{}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if a.Ready != nil {
			if err := a.Ready(ctx); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	if a.Level != nil {
		mux.HandleFunc("/loglevel", func(w http.ResponseWriter, r *http.Request) {
			if r.Method == http.MethodPut || r.Method == http.MethodPost {
				b, _ := io.ReadAll(io.LimitReader(r.Body, 64))
				if err := a.Level.UnmarshalText([]byte(strings.TrimSpace(string(b)))); err != nil {
					http.Error(w, err.Error(), http.StatusBadRequest)
					return
				}
			}
			_, _ = io.WriteString(w, a.Level.Level().String()+"\n")
		})
	}
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// ServeHTTP serves h on addr until ctx is done, then shuts down within
// timeout. An empty addr serves nothing.
func ServeHTTP(ctx context.Context, addr string, h http.Handler, timeout time.Duration) error {
	if addr == "" {
		return nil
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	return Serve(ctx, lis, h, timeout)
}

// Serve serves h on lis until ctx is done, then shuts down within timeout.
func Serve(ctx context.Context, lis net.Listener, h http.Handler, timeout time.Duration) error {
	hs := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- hs.Serve(lis) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
	defer cancel()
	_ = hs.Shutdown(sctx)
	<-errc
	return nil
}

// RedisReady is a readiness check that pings Redis.
func RedisReady(rdb redis.UniversalClient) func(context.Context) error {
	return func(ctx context.Context) error {
		if err := rdb.Ping(ctx).Err(); err != nil {
			return fmt.Errorf("redis: %w", err)
		}
		return nil
	}
}

// Common holds the flags every long-running binary has.
type Common struct {
	AdminAddr     string
	RedisAddr     string
	RedisPassword string
	RedisPrefix   string
	LogFormat     string
	LogLevel      string
	LogUserIDs    bool
}

// Register defines the common flags on fs, with adminAddr as the admin
// listener's default.
func (c *Common) Register(fs *flag.FlagSet, adminAddr string) {
	fs.StringVar(&c.AdminAddr, "admin-addr", adminAddr, "admin listener (metrics, health, pprof); empty disables it")
	registerRedis(fs, &c.RedisAddr, &c.RedisPassword, &c.RedisPrefix)
	fs.StringVar(&c.LogFormat, "log-format", "json", "log format: json or text")
	fs.StringVar(&c.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.BoolVar(&c.LogUserIDs, "log-user-ids", false, "log user ids in clear; by default logs name users by a hash of their id")
}

// Redis holds the flags that name Herald's Redis, for the commands that
// read it without the rest of Common (heraldctl's).
type Redis struct {
	Addr     string
	Password string
	Prefix   string
}

// Register defines -redis-addr, -redis-password and -redis-prefix on fs,
// with the names and defaults of Common's.
func (r *Redis) Register(fs *flag.FlagSet) { registerRedis(fs, &r.Addr, &r.Password, &r.Prefix) }

// Client returns a client for the flags' Redis.
func (r *Redis) Client() redis.UniversalClient { return NewRedis(r.Addr, r.Password) }

// registerRedis defines the Redis flags, once for Common and Redis.
func registerRedis(fs *flag.FlagSet, addr, password, prefix *string) {
	fs.StringVar(addr, "redis-addr", "127.0.0.1:6379", "Redis address, or comma-separated cluster seeds")
	fs.StringVar(password, "redis-password", "", "Redis password")
	fs.StringVar(prefix, "redis-prefix", presence.DefaultPrefix, "prefix of every Redis key and channel; the same on routers and edges")
}

// UserIDs says how logs show user ids.
func (c *Common) UserIDs() redact.UserIDs { return redact.UserIDs{Clear: c.LogUserIDs} }

// Logger returns the logger the flags ask for, writing to standard error.
func (c *Common) Logger() (*slog.Logger, *slog.LevelVar, error) {
	return NewLogger(os.Stderr, c.LogFormat, c.LogLevel)
}

// Redis returns a client for the flags' Redis.
func (c *Common) Redis() redis.UniversalClient { return NewRedis(c.RedisAddr, c.RedisPassword) }
