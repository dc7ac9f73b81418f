//go:build !linux

package sseedge

import (
	"context"
	"errors"
	"log/slog"
)

// Without epoll every stream stays on its handler goroutine: newPoller
// fails, so the edge starts no writers.
type poller struct{}

func newPoller(*slog.Logger) (*poller, error) { return nil, errors.ErrUnsupported }

func (*poller) add(*wire) error { return errors.ErrUnsupported }

func (*poller) remove(*wire) {}

func (*poller) run(context.Context) {}

func (*poller) each(func(*wire)) {}

func writeNow(int, []byte) (int, error) { return 0, errors.ErrUnsupported }

func dupSocket(int) (int, error) { return -1, errors.ErrUnsupported }

func closeSocket(int) {}
