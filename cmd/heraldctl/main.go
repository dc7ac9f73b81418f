// Command heraldctl is the command line for people operating Herald.
//
//	heraldctl notify -user alice -event update -data '{"changed":true}'
//	heraldctl device register -user alice -token $FCM_TOKEN -platform android
//	heraldctl dlq ls -since 1h -code QUOTA_EXCEEDED
//	heraldctl replay -since 1h -code QUOTA_EXCEEDED -dry-run
//	heraldctl trace 01M8B0NDX1AXY4XAG8SXZD1CC6
//	heraldctl presence alice
//	heraldctl edges
//	heraldctl stats -router 127.0.0.1:9090 -edge 127.0.0.1:9091 -worker 127.0.0.1:9093
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/herald-push/herald/cmd/internal/daemon"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

const usage = `usage: heraldctl <command> [flags]

commands:
  notify             send one notification to one user through the router
  notify-batch       send many notifications in one call, from JSON
  device register    register a device's FCM token for a user
  device unregister  forget a device's FCM token
  dlq ls             list dead letters (pushes that failed for good)
  dlq show ID        show one notification's dead letters in full
  replay             put selected dead letters back on the offline topic
  presence USER      show a user's live connections and registered devices
  edges              list the live SSE edges: version, address, connections
  stats              rates, errors and readiness from the admin /metrics endpoints
  trace ID           what is known of one notification: route, SSE, FCM, dead letters
  hash-key KEY|-     print an API key's SHA-256, the key_sha256 of a router callers file entry

Run "heraldctl <command> -h" for the command's flags. Every flag can also be
set through the environment, for example HERALD_ADDR for -addr.
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	var err error
	switch args[0] {
	case "notify":
		err = notify(args[1:], stdout)
	case "notify-batch":
		err = notifyBatch(args[1:], os.Stdin, stdout)
	case "device":
		err = deviceCmd(args[1:], stdout)
	case "dlq":
		err = dlqCmd(args[1:], stdout)
	case "replay":
		err = replayCmd(args[1:], stdout)
	case "presence":
		err = presenceCmd(args[1:], stdout)
	case "edges":
		err = edgesCmd(args[1:], stdout)
	case "stats":
		err = statsCmd(args[1:], stdout)
	case "trace":
		err = traceCmd(args[1:], stdout)
	case "hash-key":
		err = hashKeyCmd(args[1:], os.Stdin, stdout)
	case "-h", "-help", "--help", "help":
		fmt.Fprint(stdout, usage)
		return 0
	default:
		fmt.Fprintf(stderr, "heraldctl: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		if st, ok := status.FromError(err); ok {
			fmt.Fprintf(stderr, "heraldctl: %s: %s\n", st.Code(), st.Message())
		} else {
			fmt.Fprintln(stderr, "heraldctl:", err)
		}
		return 1
	}
	return 0
}

func notify(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("notify", flag.ContinueOnError)
	var (
		rc          = routerFlags(fs)
		user        = fs.String("user", "", "user id (required)")
		event       = fs.String("event", "", "SSE event name (default: message)")
		data        = fs.String("data", "", "payload; - reads it from standard input")
		idem        = fs.String("idempotency-key", "", "idempotency key: a retry with the same key is not delivered twice")
		ttl         = fs.Duration("ttl", 0, "time to live (default: the router's)")
		title       = fs.String("title", "", "push notification title, for offline users")
		body        = fs.String("body", "", "push notification body, for offline users")
		collapseKey = fs.String("collapse-key", "", "push collapse key")
		high        = fs.Bool("high-priority", false, "send the push with high priority")
		correlation = fs.String("correlation-id", "", "your correlation id, carried with the notification")
	)
	if err := daemon.ParseFlags(fs, args, "HERALD_"); err != nil {
		return err
	}
	payload := []byte(*data)
	if *data == "-" {
		var err error
		if payload, err = io.ReadAll(os.Stdin); err != nil {
			return err
		}
	}
	req := &heraldv1.NotifyRequest{
		UserId: *user, Event: *event, Data: payload, IdempotencyKey: *idem,
	}
	if *ttl != 0 {
		req.Ttl = durationpb.New(*ttl)
	}
	if *title != "" || *body != "" || *collapseKey != "" || *high {
		req.Push = &heraldv1.PushOptions{Title: *title, Body: *body, CollapseKey: *collapseKey}
		if *high {
			req.Push.Priority = heraldv1.Priority_PRIORITY_HIGH
		}
	}
	return call(rc, *correlation, stdout, func(ctx context.Context, c heraldv1.RouterServiceClient) (proto.Message, error) {
		return c.Notify(ctx, req)
	})
}

// routerConn holds the flags of the commands that call the router: where it
// is, how long to wait, and the credentials.
type routerConn struct {
	addr, apiKey, tlsCA, tlsCert, tlsKey string
	tls                                  bool
	timeout                              time.Duration
}

// routerFlags defines the router connection's flags on fs.
func routerFlags(fs *flag.FlagSet) *routerConn {
	rc := new(routerConn)
	fs.StringVar(&rc.addr, "addr", "127.0.0.1:7070", "router gRPC address")
	fs.DurationVar(&rc.timeout, "timeout", 5*time.Second, "call timeout")
	fs.StringVar(&rc.apiKey, "api-key", "", "API key, sent as \"authorization: Bearer\"; prefer HERALD_API_KEY: flags show in ps")
	fs.BoolVar(&rc.tls, "tls", false, "connect with TLS (implied by -tls-ca and -tls-cert); the system's roots verify the router unless -tls-ca is set")
	fs.StringVar(&rc.tlsCA, "tls-ca", "", "CA (PEM) that verifies the router's certificate")
	fs.StringVar(&rc.tlsCert, "tls-cert", "", "client certificate (PEM) for mTLS: its CN names the caller")
	fs.StringVar(&rc.tlsKey, "tls-key", "", "client certificate's private key (PEM)")
	return rc
}

// transport is the connection's transport credentials: TLS when a TLS flag is set.
func (rc *routerConn) transport() (credentials.TransportCredentials, error) {
	if !rc.tls && rc.tlsCA == "" && rc.tlsCert == "" && rc.tlsKey == "" {
		return insecure.NewCredentials(), nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if rc.tlsCA != "" {
		pem, err := os.ReadFile(rc.tlsCA)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("-tls-ca %s holds no PEM certificate", rc.tlsCA)
		}
	}
	if rc.tlsCert != "" || rc.tlsKey != "" {
		cert, err := tls.LoadX509KeyPair(rc.tlsCert, rc.tlsKey)
		if err != nil {
			return nil, fmt.Errorf("client certificate (-tls-cert, -tls-key): %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return credentials.NewTLS(cfg), nil
}

// call makes one router call and prints its response as JSON.
func call(rc *routerConn, correlation string, stdout io.Writer,
	fn func(context.Context, heraldv1.RouterServiceClient) (proto.Message, error)) error {
	creds, err := rc.transport()
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(rc.addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), rc.timeout)
	defer cancel()
	if correlation != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "x-correlation-id", correlation)
	}
	if rc.apiKey != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+rc.apiKey)
	}
	resp, err := fn(ctx, heraldv1.NewRouterServiceClient(conn))
	if err != nil {
		return err
	}
	out, err := protojson.MarshalOptions{Multiline: true, EmitUnpopulated: true}.Marshal(resp)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(stdout, string(out))
	return err
}

// deviceCmd registers or unregisters a device token.
func deviceCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 || (args[0] != "register" && args[0] != "unregister") {
		return errors.New("usage: heraldctl device register|unregister -user U -token T [-platform android|ios|web]")
	}
	fs := flag.NewFlagSet("device "+args[0], flag.ContinueOnError)
	var (
		rc       = routerFlags(fs)
		user     = fs.String("user", "", "user id (required)")
		token    = fs.String("token", "", "the device's FCM registration token (required)")
		platform = fs.String("platform", "android", "android, ios or web")
	)
	if err := daemon.ParseFlags(fs, args[1:], "HERALD_"); err != nil {
		return err
	}
	if args[0] == "unregister" {
		return call(rc, "", stdout, func(ctx context.Context, c heraldv1.RouterServiceClient) (proto.Message, error) {
			return c.UnregisterDevice(ctx, &heraldv1.UnregisterDeviceRequest{UserId: *user, Token: *token})
		})
	}
	p := heraldv1.Platform(heraldv1.Platform_value["PLATFORM_"+strings.ToUpper(*platform)])
	return call(rc, "", stdout, func(ctx context.Context, c heraldv1.RouterServiceClient) (proto.Message, error) {
		return c.RegisterDevice(ctx, &heraldv1.RegisterDeviceRequest{UserId: *user, Token: *token, Platform: p})
	})
}
