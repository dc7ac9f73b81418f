package router

import (
	"context"
	"log/slog"
)

// CallerLogHandler wraps a log handler so that each line logged with the
// context of an authenticated call carries the attribute "caller": the
// router's "notify failed" and "broadcast failed" lines name who called.
func CallerLogHandler(h slog.Handler) slog.Handler { return callerHandler{h} }

type callerHandler struct{ slog.Handler }

func (h callerHandler) Handle(ctx context.Context, r slog.Record) error {
	if name, ok := CallerFrom(ctx); ok {
		r.AddAttrs(slog.String("caller", name))
	}
	return h.Handler.Handle(ctx, r)
}

func (h callerHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return callerHandler{h.Handler.WithAttrs(as)}
}

func (h callerHandler) WithGroup(name string) slog.Handler {
	return callerHandler{h.Handler.WithGroup(name)}
}
