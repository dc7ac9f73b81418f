package main

import (
	"context"
	"errors"
	"flag"
	"io"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/herald-push/herald/cmd/internal/daemon"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

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
