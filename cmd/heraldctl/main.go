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
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"google.golang.org/grpc/status"
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
