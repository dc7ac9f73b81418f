package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"google.golang.org/protobuf/proto"

	"github.com/herald-push/herald/cmd/internal/daemon"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

const deviceUsage = "usage: heraldctl device register -user U -token T -platform android|ios|web, or heraldctl device unregister -user U -token T"

// platforms maps -platform's values to the API's. There is no default: the
// FCM worker sends a device only its own platform's options, so a device
// registered under the wrong platform would silently lose them.
var platforms = map[string]heraldv1.Platform{
	"android": heraldv1.Platform_PLATFORM_ANDROID,
	"ios":     heraldv1.Platform_PLATFORM_IOS,
	"web":     heraldv1.Platform_PLATFORM_WEB,
}

// deviceCmd registers or unregisters a device token.
func deviceCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 || (args[0] != "register" && args[0] != "unregister") {
		return errors.New(deviceUsage)
	}
	fs := flag.NewFlagSet("device "+args[0], flag.ContinueOnError)
	var (
		rc       = routerFlags(fs)
		user     = fs.String("user", "", "user id (required)")
		token    = fs.String("token", "", "the device's FCM registration token (required)")
		platform = fs.String("platform", "", "the device's platform, android, ios or web (required by register; unregister ignores it)")
	)
	if err := daemon.ParseFlags(fs, args[1:], "HERALD_"); err != nil {
		return err
	}
	if args[0] == "unregister" {
		return call(rc, "", stdout, func(ctx context.Context, c heraldv1.RouterServiceClient) (proto.Message, error) {
			return c.UnregisterDevice(ctx, &heraldv1.UnregisterDeviceRequest{UserId: *user, Token: *token})
		})
	}
	if *platform == "" {
		return errors.New("device register needs -platform android, ios or web; " + deviceUsage)
	}
	p, ok := platforms[strings.ToLower(*platform)]
	if !ok {
		return fmt.Errorf("device register: -platform %q: must be android, ios or web", *platform)
	}
	return call(rc, "", stdout, func(ctx context.Context, c heraldv1.RouterServiceClient) (proto.Message, error) {
		return c.RegisterDevice(ctx, &heraldv1.RegisterDeviceRequest{UserId: *user, Token: *token, Platform: p})
	})
}
