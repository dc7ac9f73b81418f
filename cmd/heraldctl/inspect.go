package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/herald-push/herald/cmd/internal/daemon"
	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/devices"
	"github.com/herald-push/herald/presence"
)

// redisFlags are the flags of the commands that read Herald's Redis.
type redisFlags struct {
	redis   daemon.Redis
	timeout time.Duration
	json    bool
}

func (f *redisFlags) register(fs *flag.FlagSet) {
	f.redis.Register(fs)
	fs.DurationVar(&f.timeout, "timeout", 5*time.Second, "time limit for the Redis calls")
	fs.BoolVar(&f.json, "json", false, "print JSON instead of a table")
}

// connect returns a client and a context bounded by the timeout.
func (f *redisFlags) connect() (redis.UniversalClient, context.Context, context.CancelFunc) {
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	return f.redis.Client(), ctx, cancel
}

// presenceReport is what "heraldctl presence" shows.
type presenceReport struct {
	User        string         `json:"user"`
	Connections []connReport   `json:"connections"`
	Devices     []deviceReport `json:"devices"`
	Platforms   map[string]int `json:"platforms"` // device count by platform
	now         time.Time      // when it was read
}

type connReport struct {
	ID      string    `json:"id"`
	Edge    string    `json:"edge"`
	Since   time.Time `json:"since"`
	Expires time.Time `json:"expires"`
}

type deviceReport struct {
	Platform     string    `json:"platform"`
	RegisteredAt time.Time `json:"registeredAt"`
	// TokenSuffix is the token's last 6 characters: enough to tell devices
	// apart, and no use to anyone who reads the output.
	TokenSuffix string `json:"tokenSuffix"`
}

// presenceCmd shows a user's live connections and registered devices.
func presenceCmd(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("presence", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: heraldctl presence USER [flags]")
		fs.PrintDefaults()
	}
	var f redisFlags
	f.register(fs)
	var user string
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		user, args = args[0], args[1:]
	}
	if err := daemon.ParseFlags(fs, args, "HERALD_"); err != nil {
		return err
	}
	if user == "" && fs.NArg() > 0 {
		user = fs.Arg(0)
	}
	if user == "" {
		return fmt.Errorf("presence needs a user: heraldctl presence USER")
	}
	if err := delivery.CheckUserID(user); err != nil {
		return fmt.Errorf("user id %v", err)
	}
	rdb, ctx, cancel := f.connect()
	defer cancel()
	defer rdb.Close()
	reg, err := presence.New(rdb, presence.Config{Prefix: f.redis.Prefix})
	if err != nil {
		return err
	}
	devs, err := devices.New(rdb, devices.Config{Prefix: f.redis.Prefix})
	if err != nil {
		return err
	}
	conns, err := reg.Conns(ctx, user)
	if err != nil {
		return err
	}
	devices, err := devs.List(ctx, user)
	if err != nil {
		return err
	}

	rep := presenceReport{User: user, Connections: []connReport{}, Devices: []deviceReport{},
		Platforms: map[string]int{}, now: time.Now()}
	slices.SortFunc(conns, func(a, b presence.Conn) int { return a.Since.Compare(b.Since) })
	for _, c := range conns {
		rep.Connections = append(rep.Connections, connReport{ID: c.ID, Edge: c.Edge, Since: c.Since.UTC(), Expires: c.Expires.UTC()})
	}
	for _, d := range devices {
		rep.Devices = append(rep.Devices, deviceReport{Platform: d.Platform, RegisteredAt: d.RegisteredAt.UTC(), TokenSuffix: tokenSuffix(d.Token)})
		rep.Platforms[d.Platform]++
	}
	if f.json {
		return writeJSON(stdout, rep)
	}
	return printPresence(stdout, rep)
}

// tokenSuffix is the last 6 characters of a device token.
func tokenSuffix(token string) string {
	return token[max(0, len(token)-6):]
}

func printPresence(w io.Writer, rep presenceReport) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	state := "offline"
	if len(rep.Connections) > 0 {
		state = "online"
	}
	fmt.Fprintf(tw, "user %s: %s, %d connection(s), %d device(s)%s\n\n", rep.User, state,
		len(rep.Connections), len(rep.Devices), platformSummary(rep.Platforms))
	if len(rep.Connections) > 0 {
		fmt.Fprintln(tw, "CONNECTION\tEDGE\tCONNECTED\tFOR\tLEASE EXPIRES IN")
		for _, c := range rep.Connections {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.ID, c.Edge, c.Since.Format(time.RFC3339),
				duration(rep.now.Sub(c.Since)), duration(c.Expires.Sub(rep.now)))
		}
		fmt.Fprintln(tw)
	}
	if len(rep.Devices) > 0 {
		fmt.Fprintln(tw, "DEVICE\tPLATFORM\tREGISTERED")
		for _, d := range rep.Devices {
			fmt.Fprintf(tw, "…%s\t%s\t%s\n", d.TokenSuffix, orDash(d.Platform), d.RegisteredAt.Format(time.RFC3339))
		}
	}
	return tw.Flush()
}

// platformSummary renders device counts by platform: " (android 2, web 1)".
func platformSummary(p map[string]int) string {
	if len(p) == 0 {
		return ""
	}
	names := make([]string, 0, len(p))
	for name := range p {
		names = append(names, name)
	}
	slices.Sort(names)
	parts := make([]string, len(names))
	for i, name := range names {
		parts[i] = fmt.Sprintf("%s %d", orDash(name), p[name])
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// edgesCmd lists the live edges from the edge registry.
func edgesCmd(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("edges", flag.ContinueOnError)
	var f redisFlags
	f.register(fs)
	if err := daemon.ParseFlags(fs, args, "HERALD_"); err != nil {
		return err
	}
	rdb, ctx, cancel := f.connect()
	defer cancel()
	defer rdb.Close()
	reg, err := presence.New(rdb, presence.Config{Prefix: f.redis.Prefix})
	if err != nil {
		return err
	}
	edges, err := reg.Edges(ctx)
	if err != nil {
		return err
	}
	if f.json {
		if edges == nil {
			edges = []presence.Edge{}
		}
		return writeJSON(stdout, edges)
	}
	return printEdges(stdout, edges, time.Now())
}

func printEdges(w io.Writer, edges []presence.Edge, now time.Time) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "EDGE\tSTATE\tCONNECTIONS\tVERSION\tADDRESS\tSTARTED\tUP\tLAST SEEN")
	total := 0
	for _, e := range edges {
		state := "serving"
		if e.Draining {
			state = "draining"
		}
		total += e.Connections
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s ago\n", e.ID, state, e.Connections, orDash(e.Version),
			orDash(e.Addr), e.Started.UTC().Format(time.RFC3339), duration(now.Sub(e.Started)), duration(now.Sub(e.Updated)))
	}
	fmt.Fprintf(tw, "%d edge(s), %d connection(s)\n", len(edges), total)
	return tw.Flush()
}

// duration renders d for people: whole seconds, or tenths below 10s.
func duration(d time.Duration) string {
	if d < 0 {
		d = 0
	}
	if d < 10*time.Second {
		return d.Round(100 * time.Millisecond).String()
	}
	return d.Round(time.Second).String()
}

func writeJSON(w io.Writer, v any) error {
	out, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(out))
	return err
}
