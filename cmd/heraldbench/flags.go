package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"
)

// config is what the flags say.
type config struct {
	self           bool
	grpcAddr       string
	edgeURL        string
	secret         []byte
	redisAddr      string
	pids           []namedPID
	scenarios      []string
	jsonPath       string
	idleConns      int
	idleH2         []int // idle scenario: streams per HTTP/2 connection of each h2c run
	conns          int
	rates          []float64
	duration       time.Duration
	baseDuration   time.Duration
	pairs          int // rounds of each baseline and subject measured in alternation (pairs.go)
	callers        int
	workers        int
	pipeline       int
	broadcastConns int
	broadcasts     int
	perAddr        int
	perChild       int
	dials          int
	batch          int // router scenario: notifications per NotifyBatch
	batchCallers   int
	pollClients    int
	pollDuration   time.Duration
	cpuProfile     string
	memProfile     string // idle scenario: heap profile with the connections held
	tune           selfTuning
	soak           soakConfig
	offline        offlineConfig
	redisMem       redisMemConfig
	scale          scaleConfig
	stream         streamConfig
}

type namedPID struct {
	Name string
	PID  int
}

var allScenarios = []string{"idle", "unicast", "router", "broadcast", "pollpush"}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("heraldbench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		c         config
		secret    = fs.String("jwt-secret", "", "HS256 secret of the edge's client tokens (not with -self)")
		pids      = fs.String("pids", "", "Herald processes to read RSS and CPU of: name=pid,... (names edge and router are used by the scenarios)")
		scenarios = fs.String("scenario", strings.Join(allScenarios, ","), "scenarios to run, comma-separated: "+strings.Join(allScenarios, ", ")+"; or, when named, "+strings.Join(optionalScenarios, ", ")+", redismem, scale and soak; or goals: every scenario issue 17's goals table reads, at the goals' sizes")
		rates     = fs.String("rates", "1000,10000", "unicast Notify rates, calls a second, comma-separated")
		quick     = fs.Bool("quick", false, "small numbers: a run of about a minute")
		idleH2    = fs.String("idle-h2", "", "idle scenario: also hold -idle-conns streams over HTTP/2 (h2c), this many streams a connection, one run per number, comma-separated (e.g. 1,100; at most 250, the edge's concurrent streams); empty: HTTP/1.1 only")
		admin     string
	)
	fs.BoolVar(&c.self, "self", false, "start the router and an edge in this process instead of using -grpc and -http")
	fs.StringVar(&c.grpcAddr, "grpc", "127.0.0.1:7070", "router address")
	fs.StringVar(&c.edgeURL, "http", "http://127.0.0.1:8080", "edge base URL")
	fs.StringVar(&c.redisAddr, "redis", "127.0.0.1:6379", "Redis of the PUBLISH baseline, and of the system with -self (\"mini\": an embedded miniredis)")
	fs.StringVar(&c.jsonPath, "json", "", "also write the results to this JSON file")
	fs.DurationVar(&c.tune.leaseTTL, "self-lease-ttl", 0, "with -self: the presence lease TTL, renewed every third of it (0: the default, 30s)")
	fs.DurationVar(&c.tune.heartbeat, "self-heartbeat", 0, "with -self: the edge's heartbeat period (0: the default, 15s)")
	fs.StringVar(&c.cpuProfile, "cpuprofile", "", "write this process's CPU profile (with -self: the router's and the edge's) to this file, for go tool pprof")
	fs.StringVar(&c.memProfile, "memprofile", "", "with -self: write this process's heap profile, taken while the idle scenario holds its connections, to this file, for go tool pprof")
	fs.IntVar(&c.idleConns, "idle-conns", 19900, "idle scenario: connections held on the edge")
	fs.IntVar(&c.conns, "conns", 2000, "unicast and router scenarios: connections (users) held")
	fs.DurationVar(&c.duration, "duration", 10*time.Second, "length of each measured run")
	fs.DurationVar(&c.baseDuration, "base-duration", 5*time.Second, "length of each baseline run")
	fs.IntVar(&c.pairs, "pairs", 5, "router and unicast scenarios: a ratio a goal reads is measured in this many pairs of rounds, a round of its baseline then one of the figure, -base-duration and -duration split among them; the ratio is the pairs' median")
	fs.IntVar(&c.callers, "callers", 64, "closed-loop callers (router scenario and the gRPC and FCM baselines)")
	fs.IntVar(&c.workers, "workers", 256, "open-loop worker pool")
	fs.IntVar(&c.pipeline, "pipeline", 64, "PUBLISH baseline: commands per pipeline")
	fs.IntVar(&c.broadcastConns, "broadcast-conns", 10000, "broadcast scenario: connections subscribed to the topic")
	fs.IntVar(&c.broadcasts, "broadcasts", 10, "broadcast scenario: broadcasts sent, one at a time")
	fs.IntVar(&c.perAddr, "per-addr", 100, "connections per 127.0.0.x source address (the edge's default per-address limit); 0 lets the kernel choose")
	fs.IntVar(&c.perChild, "per-child", 19000, "connections per child process, below the 20,000 open files a process may have")
	fs.IntVar(&c.dials, "dials", 64, "connections being opened at once, per child")
	fs.IntVar(&c.pollClients, "poll-clients", 10000, "pollpush scenario: clients polling, then clients holding a stream")
	fs.DurationVar(&c.pollDuration, "poll-duration", 60*time.Second, "pollpush scenario: length of each phase")
	fs.IntVar(&c.batch, "batch", 100, "router scenario: notifications per NotifyBatch call; 0 skips the batch run")
	fs.IntVar(&c.batchCallers, "batch-callers", 8, "router scenario: closed-loop NotifyBatch callers")
	soakFlags(fs, &c.soak, &admin)
	offlineFlags(fs, &c.offline)
	redisMemFlags(fs, &c.redisMem)
	scaleFlags(fs, &c.scale)
	streamFlags(fs, &c.stream)
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	goals := slices.Contains(strings.Split(strings.ReplaceAll(*scenarios, " ", ""), ","), "goals")
	if goals {
		// The sizes the goals are stated at, unless a flag says otherwise;
		// with -quick, only the rates and the h2c runs.
		goalDefaults := map[string]func(){
			"idle-h2":         func() { *idleH2 = "1,100" },
			"rates":           func() { *rates = "1000,10000" },
			"conns":           func() { c.conns = 5000 },
			"broadcast-conns": func() { c.broadcastConns = 19600 },
			"broadcasts":      func() { c.broadcasts = 30 },
		}
		for name, apply := range goalDefaults {
			if !set[name] && (!*quick || name == "idle-h2" || name == "rates") {
				apply()
				set[name] = true // before -quick's
			}
		}
	}
	if *quick {
		quickDefaults := map[string]func(){
			"idle-conns":             func() { c.idleConns = 2000 },
			"conns":                  func() { c.conns = 500 },
			"duration":               func() { c.duration = 3 * time.Second },
			"base-duration":          func() { c.baseDuration = 2 * time.Second },
			"pairs":                  func() { c.pairs = 3 },
			"broadcast-conns":        func() { c.broadcastConns = 1000 },
			"broadcasts":             func() { c.broadcasts = 3 },
			"rates":                  func() { *rates = "200,1000" },
			"poll-clients":           func() { c.pollClients = 2000 },
			"poll-duration":          func() { c.pollDuration = 15 * time.Second },
			"redismem-users":         func() { c.redisMem.users = 500 },
			"redismem-notifications": func() { c.redisMem.notifications = 50000 },
			"redismem-steady":        func() { c.redisMem.steady = 10000 },
			"scale-streams":          func() { c.scale.streams = 500 },
			"scale-rate":             func() { c.scale.rate = 2000 },
			"scale-duration":         func() { c.scale.duration = 5 * time.Second },
		}
		for name, apply := range quickDefaults {
			if !set[name] {
				apply()
			}
		}
	}
	c.secret = []byte(*secret)
	if !c.self && len(c.secret) == 0 {
		return c, errors.New("-jwt-secret is required without -self")
	}
	for _, s := range strings.Split(*scenarios, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if s == "soak" {
			c.soak.on = true
			continue
		}
		if s == "goals" {
			for _, g := range goalScenarios {
				if knownScenario(g) && !slices.Contains(c.scenarios, g) {
					c.scenarios = append(c.scenarios, g)
				}
			}
			continue
		}
		if !knownScenario(s) {
			return c, fmt.Errorf("unknown scenario %q (have %s, soak)", s, strings.Join(allScenarios, ", "))
		}
		if !slices.Contains(c.scenarios, s) {
			c.scenarios = append(c.scenarios, s)
		}
	}
	for _, v := range strings.Split(*idleH2, ",") {
		if v = strings.TrimSpace(v); v == "" {
			continue
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxH2Streams {
			return c, fmt.Errorf("-idle-h2: bad streams per connection %q: want 1 to %d", v, maxH2Streams)
		}
		c.idleH2 = append(c.idleH2, n)
	}
	for _, r := range strings.Split(*rates, ",") {
		v, err := strconv.ParseFloat(strings.TrimSpace(r), 64)
		if err != nil || v <= 0 {
			return c, fmt.Errorf("-rates: bad rate %q", r)
		}
		c.rates = append(c.rates, v)
	}
	if *pids != "" {
		for _, p := range strings.Split(*pids, ",") {
			name, num, ok := strings.Cut(p, "=")
			if !ok {
				name, num = "pid"+p, p
			}
			pid, err := strconv.Atoi(strings.TrimSpace(num))
			if err != nil {
				return c, fmt.Errorf("-pids: bad pid %q", p)
			}
			c.pids = append(c.pids, namedPID{strings.TrimSpace(name), pid})
		}
	}
	if c.perChild < 1 || c.pairs < 1 || c.conns < 1 || c.idleConns < 1 || c.broadcastConns < 1 || c.pollClients < 1 ||
		c.duration <= 0 || c.baseDuration <= 0 || c.pollDuration <= 0 {
		return c, errors.New("counts and durations must be positive")
	}
	if err := c.scale.validate(); err != nil {
		return c, err
	}
	return c, c.soak.validate(admin)
}
