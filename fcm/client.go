package fcm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	firebase "firebase.google.com/go/v4"
	"firebase.google.com/go/v4/messaging"
	"google.golang.org/api/option"
)

// ClientConfig says which FCM to send through.
type ClientConfig struct {
	// Project is the Firebase project id. Required with Endpoint; with
	// credentials it defaults to the credentials' project.
	Project string
	// CredentialsFile is a service-account JSON key file. Empty means
	// Google's application default credentials (GOOGLE_APPLICATION_CREDENTIALS,
	// or the metadata server on Google Cloud).
	CredentialsFile string
	// Endpoint, when set, replaces FCM's (for example an emulator's
	// http://127.0.0.1:9099/v1), and no credentials are used.
	Endpoint string
	// Timeout bounds one send. Default 10s.
	Timeout time.Duration
}

// NewClient returns the firebase-admin-go messaging client for cfg. Its HTTP
// client keeps enough idle connections per host for the SDK's 50 parallel
// sends of a SendEach call.
func NewClient(ctx context.Context, cfg ClientConfig) (*messaging.Client, error) {
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	var opts []option.ClientOption
	if cfg.Endpoint != "" {
		if cfg.Project == "" {
			return nil, errors.New("fcm: a project id is required with an endpoint")
		}
		// The SDK only uses a custom HTTP client's transport as is, so the
		// transport is tuned only where no credentials wrap it.
		opts = append(opts, option.WithEndpoint(cfg.Endpoint), option.WithoutAuthentication(),
			option.WithHTTPClient(&http.Client{Transport: transport(), Timeout: cfg.Timeout}))
	} else if cfg.CredentialsFile != "" {
		opts = append(opts, option.WithCredentialsFile(cfg.CredentialsFile))
	}
	var fc *firebase.Config
	if cfg.Project != "" {
		fc = &firebase.Config{ProjectID: cfg.Project}
	}
	app, err := firebase.NewApp(ctx, fc, opts...)
	if err != nil {
		return nil, fmt.Errorf("fcm: %w", err)
	}
	c, err := app.Messaging(ctx)
	if err != nil {
		return nil, fmt.Errorf("fcm: %w", err)
	}
	return c, nil
}

// transport is an HTTP transport sized for SendEach's 50 concurrent sends.
func transport() *http.Transport {
	return &http.Transport{
		Proxy:               http.ProxyFromEnvironment,
		DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
		ForceAttemptHTTP2:   true,
		MaxIdleConns:        256,
		MaxIdleConnsPerHost: 128,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 5 * time.Second,
	}
}
