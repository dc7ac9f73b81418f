package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// The connection to the router of the commands that call it: its flags,
// its credentials and one call.

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
	fs.DurationVar(&rc.timeout, "timeout", 5*time.Second, "call timeout, retries included")
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
	// router.DialOptions: the retry policy, so that a call made while a
	// router restarts, or over the caller's rate limit, is retried, with the
	// same idempotency key, within -timeout.
	conn, err := grpc.NewClient(rc.addr, append(router.DialOptions(), grpc.WithTransportCredentials(creds))...)
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
