package sseedge

import (
	"context"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	"github.com/herald-push/herald/presence"
)

// announce keeps this edge's record in the edge registry (presence.Edges)
// for operators: at once, every renew interval, and again as soon as serving
// ends (ctx is done) so that the drain shows. It withdraws the record when
// stop is done, after the drain.
func (s *Server) announce(ctx, stop context.Context, h *hub, addr net.Addr) {
	e := presence.Edge{
		ID:      s.cfg.EdgeID,
		Version: version(),
		Addr:    advertised(addr),
		Started: s.now(),
	}
	every := s.presence.RenewInterval()
	t := time.NewTicker(every)
	defer t.Stop()
	served := ctx.Done()
	for {
		e.Connections = h.count()
		e.Draining = s.draining.Load() || ctx.Err() != nil
		e.Updated = s.now()
		actx, cancel := context.WithTimeout(stop, every)
		if err := s.presence.Announce(actx, e); err != nil && stop.Err() == nil {
			s.log.Warn("edge announcement failed", slog.Any("err", err))
		}
		cancel()
		select {
		case <-stop.Done():
			wctx, cancel := context.WithTimeout(context.WithoutCancel(stop), 2*time.Second)
			if err := s.presence.Withdraw(wctx, e.ID); err != nil {
				// The record expires by itself within the lease TTL.
				s.log.Warn("edge withdrawal failed", slog.Any("err", err))
			}
			cancel()
			return
		case <-served:
			served = nil
		case <-t.C:
		}
	}
}

// version is the edge's build: the main module's version ("devel" when it
// has none) with the VCS revision it was built from as build metadata, when
// the build recorded one that the version does not already name, and "dirty"
// when the tree had changes.
func version() string {
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "devel"
	}
	v, dirty := strings.CutSuffix(info.Main.Version, "+dirty")
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			if rev := s.Value[:min(12, len(s.Value))]; !strings.Contains(v, rev) {
				v += "+" + rev
			}
		case "vcs.modified":
			dirty = dirty || s.Value == "true"
		}
	}
	switch {
	case dirty && strings.Contains(v, "+"):
		v += ".dirty"
	case dirty:
		v += "+dirty"
	}
	return v
}

// advertised is the address to announce for a listener: its own, with the
// host name in place of an unspecified IP (":8080" listens on every
// interface, which says nothing about where the edge is).
func advertised(addr net.Addr) string {
	tcp, ok := addr.(*net.TCPAddr)
	if !ok || !tcp.IP.IsUnspecified() {
		return addr.String()
	}
	host, err := os.Hostname()
	if err != nil {
		return addr.String()
	}
	return net.JoinHostPort(host, strconv.Itoa(tcp.Port))
}
