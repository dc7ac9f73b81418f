package main

import (
	"context"
	"flag"
	"io"
	"os"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/herald-push/herald/cmd/internal/daemon"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// notify sends one notification to one user through the router.
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
