package main

import (
	"context"
	"net"
	"testing"
	"time"

	"google.golang.org/grpc/metadata"

	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// TestSilentConnsDoNotLockOut: one address without credentials opens more
// connections than the router holds in all (-grpc-max-conns 128 here) and
// sends nothing on them; a caller from another address is still served.
// Before the bound per address, the silent sockets took every slot for
// grpc-go's 120 s handshake timeout, and the caller's Notify waited in the
// listen queue until its deadline. The handshake timeout is set past the
// test's hang guard, so that only the bound per address can let it in.
func TestSilentConnsDoNotLockOut(t *testing.T) {
	const silent = 200
	p := newTestRouterProc(t, "-grpc-max-conns", "128", "-grpc-handshake-timeout", "5m")
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}
	for range silent {
		c, err := d.Dial("tcp", p.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	client := heraldv1.NewRouterServiceClient(testenv.GRPCClient(t, p.addr))
	// A hang guard: served, the call takes milliseconds.
	ctx, cancel := context.WithTimeout(metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer k1"), 60*time.Second)
	defer cancel()
	if _, err := client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "alice", Data: []byte("x")}); err != nil {
		t.Fatalf("Notify from 127.0.0.1 while 127.0.0.2 holds %d silent connections: %v", silent, err)
	}
}
