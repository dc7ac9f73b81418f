package fcm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	firebase "firebase.google.com/go/v4"
	"firebase.google.com/go/v4/messaging"
	"golang.org/x/oauth2"
	"google.golang.org/api/option"
	htransport "google.golang.org/api/transport/http"
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
	// http://127.0.0.1:9097/v1, at fcmtest.DevAddr), and no credentials are
	// used.
	Endpoint string
	// Conns is how many clients NewSender spreads the sends over, each with
	// its own HTTP transport, so its own connections. FCM speaks HTTP/2, and
	// one connection carries a bounded number of streams at once (100 at
	// Google); a worker with several SendEach calls of 50 sends in flight
	// needs several. Default 4.
	Conns int
	// H2C sends to an http:// Endpoint over HTTP/2 without TLS (prior
	// knowledge), as FCM is reached over HTTP/2; the emulator in
	// fcm/fcmtest serves it. Default false: HTTP/1.1, which any emulator
	// serves.
	H2C bool

	// ungrouped turns off groupConn where it would be used, for
	// BenchmarkSenderCPU's comparison.
	ungrouped bool
}

// DefaultConns is NewSender's default ClientConfig.Conns.
const DefaultConns = 4

// NewSender returns a Sender that spreads the sends over cfg.Conns
// firebase-admin-go clients, message by message.
func NewSender(ctx context.Context, cfg ClientConfig) (Sender, error) {
	if cfg.Conns == 0 {
		cfg.Conns = DefaultConns
	}
	if cfg.Conns < 1 {
		return nil, errors.New("fcm: Conns must be positive")
	}
	p := &clients{jobs: make(chan sendJob)}
	for range cfg.Conns {
		c, err := NewClient(ctx, cfg)
		if err != nil {
			return nil, err
		}
		p.clients = append(p.clients, c)
	}
	return p, nil
}

// maxSendEach is the most messages of a SendEach call, as the SDK's.
const maxSendEach = 500

// senderIdle is how long a sending goroutine waits for its next message
// before it ends.
const senderIdle = 5 * time.Second

// clients is a Sender over several firebase-admin-go clients. It sends each
// message with a client's Send, as the SDK's SendEach does, all of a call's
// messages at once; but where SendEach starts 50 goroutines for every call,
// which grow their stacks anew through the JSON encoder and net/http, the
// goroutines here outlive a call and take the next message that comes, and
// end after senderIdle without one. There are never more of them than
// messages in flight at the busiest moment.
type clients struct {
	clients []*messaging.Client
	next    atomic.Uint32
	// jobs hands a message to a goroutine waiting for one. Unbuffered: a
	// message that no idle goroutine takes at once starts a new one.
	jobs chan sendJob
}

var _ Sender = (*clients)(nil)

// sendJob is one message of a SendEach call.
type sendJob struct {
	ctx    context.Context
	client *messaging.Client
	msg    *messaging.Message
	out    *messaging.SendResponse
	done   *sync.WaitGroup
}

// SendEach sends every message, each within ctx, and answers with one
// response per message, in order. Unlike the SDK's SendEach, a message
// that the SDK finds invalid fails alone, in its response, rather than the
// whole call.
func (p *clients) SendEach(ctx context.Context, messages []*messaging.Message) (*messaging.BatchResponse, error) {
	if len(messages) == 0 {
		return nil, errors.New("fcm: no messages to send")
	}
	if len(messages) > maxSendEach {
		return nil, fmt.Errorf("fcm: %d messages in one call, more than %d", len(messages), maxSendEach)
	}
	outs := make([]messaging.SendResponse, len(messages))
	var done sync.WaitGroup
	done.Add(len(messages))
	for i, m := range messages {
		j := sendJob{ctx: ctx, client: p.clients[int(p.next.Add(1)%uint32(len(p.clients)))], msg: m, out: &outs[i], done: &done}
		select {
		case p.jobs <- j:
		default:
			go p.sender(j)
		}
	}
	done.Wait()
	resp := &messaging.BatchResponse{Responses: make([]*messaging.SendResponse, len(outs))}
	for i := range outs {
		resp.Responses[i] = &outs[i]
		if outs[i].Success {
			resp.SuccessCount++
		} else {
			resp.FailureCount++
		}
	}
	return resp, nil
}

// sender sends j, then the messages handed to it, until none comes for
// senderIdle.
func (p *clients) sender(j sendJob) {
	idle := time.NewTimer(senderIdle)
	defer idle.Stop()
	for {
		id, err := j.client.Send(j.ctx, j.msg)
		*j.out = messaging.SendResponse{Success: err == nil, MessageID: id, Error: err}
		j.done.Done()
		idle.Reset(senderIdle)
		select {
		case j = <-p.jobs:
		case <-idle.C:
			return
		}
	}
}

// NewClient returns the firebase-admin-go messaging client for cfg. Its HTTP
// client keeps an idle connection for every send a worker has in flight at
// most (see transport), and bounds the dial and the TLS handshake.
//
// A send itself is bounded by its context: the worker gives each SendEach
// call Config.SendTimeout. The client has no http.Client.Timeout of its own,
// so that production and an emulator endpoint take the same path.
func NewClient(ctx context.Context, cfg ClientConfig) (*messaging.Client, error) {
	opts, err := clientOptions(ctx, cfg)
	if err != nil {
		return nil, err
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

// scopes are the OAuth2 scopes of FCM's HTTP v1 API.
var scopes = []string{
	"https://www.googleapis.com/auth/cloud-platform",
	"https://www.googleapis.com/auth/firebase.messaging",
}

// tokenTimeout bounds one fetch of an OAuth2 access token. The token source
// fetches outside any send's context, so without it a hung token endpoint
// would hang every send behind it.
const tokenTimeout = 10 * time.Second

// clientOptions are the firebase options for cfg. The SDK uses a custom
// HTTP client as is, without adding credentials, so with credentials the
// tuned transport is wrapped in Google's authenticating transport here.
func clientOptions(ctx context.Context, cfg ClientConfig) ([]option.ClientOption, error) {
	if cfg.Endpoint != "" {
		if cfg.Project == "" {
			return nil, errors.New("fcm: a project id is required with an endpoint")
		}
		return []option.ClientOption{option.WithEndpoint(cfg.Endpoint), option.WithoutAuthentication(),
			option.WithHTTPClient(&http.Client{Transport: transport(cfg.H2C, cfg.H2C && !cfg.ungrouped)})}, nil
	}
	auth := []option.ClientOption{option.WithScopes(scopes...)}
	if cfg.CredentialsFile != "" {
		auth = append(auth, option.WithCredentialsFile(cfg.CredentialsFile))
	}
	// The token source keeps this context and fetches tokens with its
	// HTTP client.
	tctx := context.WithValue(ctx, oauth2.HTTPClient, &http.Client{Timeout: tokenTimeout, Transport: transport(false, false)})
	rt, err := htransport.NewTransport(tctx, transport(false, !cfg.ungrouped), auth...)
	if err != nil {
		return nil, fmt.Errorf("fcm: credentials: %w", err)
	}
	// The credentials stay among the options so that the app can read the
	// project id from them.
	return append(auth, option.WithHTTPClient(&http.Client{Transport: rt})), nil
}

// transport is an HTTP transport that keeps the connections of up to a
// thousand concurrent sends (over HTTP/1.1, one each), over HTTP/2 without
// TLS with h2c. It bounds the dial and the TLS handshake; the send's
// context bounds the whole.
//
// With group, its connections are groupConns, so that the HTTP/2 frames
// (in TLS records, for FCM) of concurrent sends on one connection go out
// in one write(2). It is for HTTP/2, where many sends share a connection;
// over HTTP/1.1 a connection carries one send at a time, and grouping
// would only add the writer's wake-up to each.
func transport(h2c, group bool) *http.Transport {
	dial := (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	if group {
		plain := dial
		dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := plain(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return newGroupConn(c, groupMaxPending), nil
		}
	}
	t := &http.Transport{
		Proxy:             http.ProxyFromEnvironment,
		DialContext:       dial,
		ForceAttemptHTTP2: true,
		// Over HTTP/1.1 each send in flight needs a connection of its own,
		// and one beyond the idle limit is closed after its answer and
		// dialled again for a later send. A worker has at most 2 ×
		// Concurrency calls of 50 in flight (800 by default), all of which
		// may go through one client.
		MaxIdleConns:        2048,
		MaxIdleConnsPerHost: 1024,
		IdleConnTimeout:     90 * time.Second,
		TLSHandshakeTimeout: 5 * time.Second,
		// No ResponseHeaderTimeout: every send has its context's deadline
		// (the worker's Config.SendTimeout), which bounds the wait for the
		// answer as well, and over HTTP/2 the header timeout costs a timer
		// and a second wake-up of the request's goroutine per send.
		// FCM's answer is a message name or an error, a few hundred bytes:
		// asking for it gzipped would only cost a decompressor per send
		// whenever the server obliges.
		DisableCompression: true,
	}
	if h2c {
		t.Protocols = new(http.Protocols)
		t.Protocols.SetUnencryptedHTTP2(true)
	}
	return t
}
