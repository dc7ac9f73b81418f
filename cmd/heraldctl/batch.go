package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/herald-push/herald/cmd/internal/daemon"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// notifyBatch sends a NotifyBatchRequest, read as JSON, and prints each
// notification's result.
func notifyBatch(args []string, stdin io.Reader, stdout io.Writer) error {
	fs := flag.NewFlagSet("notify-batch", flag.ContinueOnError)
	var (
		rc          = routerFlags(fs)
		file        = fs.String("file", "-", `the batch as JSON, {"notifications": [{"userId": "alice", "data": "<base64>"}, ...]}; - reads standard input`)
		correlation = fs.String("correlation-id", "", "your correlation id, carried with every notification")
	)
	if err := daemon.ParseFlags(fs, args, "HERALD_"); err != nil {
		return err
	}
	in := stdin
	if *file != "-" {
		f, err := os.Open(*file)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	b, err := io.ReadAll(in)
	if err != nil {
		return err
	}
	req := &heraldv1.NotifyBatchRequest{}
	if err := protojson.Unmarshal(b, req); err != nil {
		return fmt.Errorf("batch: %w", err)
	}
	return call(rc, *correlation, stdout, func(ctx context.Context, c heraldv1.RouterServiceClient) (proto.Message, error) {
		return c.NotifyBatch(ctx, req)
	})
}
