package main

import (
	"errors"
	"flag"
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/herald-push/herald/delivery/redact"
	"github.com/herald-push/herald/router"
)

// security holds the flags of the gRPC listener's TLS and of publisher
// authentication.
type security struct {
	callersFile, tlsCert, tlsKey, tlsClientCA string
	noAuth                                    bool
	callsPerCaller                            int
}

func (s *security) register(fs *flag.FlagSet) {
	fs.StringVar(&s.callersFile, "callers-file", "", "JSON file of the callers allowed to use the API: names, key hashes, rate limits, users, topics (docs/security.md)")
	fs.StringVar(&s.tlsCert, "tls-cert", "", "TLS certificate (PEM) of the gRPC listener; empty serves plaintext")
	fs.StringVar(&s.tlsKey, "tls-key", "", "TLS private key (PEM) of the gRPC listener")
	fs.StringVar(&s.tlsClientCA, "tls-client-ca", "", "CA (PEM) of client certificates: mTLS, the certificate's CN naming a caller of the callers file")
	fs.IntVar(&s.callsPerCaller, "grpc-max-calls-per-caller", router.DefaultMaxCallsPerCaller, "most calls and streams one caller has in flight on this router; more are refused RESOURCE_EXHAUSTED; -1 disables")
	fs.BoolVar(&s.noAuth, "insecure-no-auth", false, "serve the API to anyone who can reach it, without credentials: development only")
}

// serverOptions are the gRPC listener's TLS and authentication options. The
// router refuses to start without authentication unless told it is wanted.
func (s security) serverOptions(log *slog.Logger, reg prometheus.Registerer, ids redact.UserIDs) ([]grpc.ServerOption, error) {
	var opts []grpc.ServerOption
	switch {
	case s.callersFile != "" && s.noAuth:
		return nil, errors.New("-callers-file and -insecure-no-auth contradict each other: give one")
	case s.tlsClientCA != "" && s.callersFile == "":
		return nil, errors.New("-tls-client-ca needs -callers-file: a client certificate's CN must name one of its callers")
	case s.tlsCert != "" || s.tlsKey != "" || s.tlsClientCA != "":
		cfg, err := router.ServerTLS(s.tlsCert, s.tlsKey, s.tlsClientCA)
		if err != nil {
			return nil, err
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg)))
	}
	if s.noAuth {
		log.Warn("authentication disabled (-insecure-no-auth): anyone who can reach the gRPC listener can notify any user")
		return append(opts, router.NoAuth()), nil
	}
	if s.callersFile == "" {
		return nil, errors.New("no authentication configured: set -callers-file (HERALD_CALLERS_FILE) to a JSON file of " +
			"the callers allowed to use the API (see docs/security.md), or -insecure-no-auth for development")
	}
	cfgs, err := router.ReadCallersFile(s.callersFile)
	if err != nil {
		return nil, err
	}
	callers, err := router.NewCallers(router.AuthConfig{Callers: cfgs, UserIDs: ids, MaxCallsPerCaller: s.callsPerCaller}, router.AuthDeps{Logger: log, Registerer: reg})
	if err != nil {
		return nil, err
	}
	if s.tlsCert == "" {
		log.Warn("gRPC listener without TLS: API keys cross the network in clear; set -tls-cert and -tls-key unless a proxy terminates TLS")
	}
	log.Info("publisher authentication on", slog.Int("callers", len(cfgs)), slog.Bool("mtls", s.tlsClientCA != ""))
	return append(opts, grpc.InTapHandle(callers.TapHandle()), grpc.ChainUnaryInterceptor(callers.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(callers.StreamInterceptor())), nil
}
