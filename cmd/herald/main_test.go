package main

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/sseedge"
)

// TestAllInOne runs the all-in-one on the embedded Redis, follows the
// instructions it prints, and checks that the printed notify command's
// notification arrives on the printed stream URL.
func TestAllInOne(t *testing.T) {
	ctx, text, _ := startAllInOne(t)
	streamURL := regexp.MustCompile(`curl -N '([^']+)'`).FindStringSubmatch(text)
	notifyCmd := regexp.MustCompile(`heraldctl notify -addr (\S+) -user (\S+) -event (\S+) -data '([^']*)'`).FindStringSubmatch(text)
	if streamURL == nil || notifyCmd == nil {
		t.Fatalf("banner lacks the stream URL or the notify command:\n%s", text)
	}
	if !strings.Contains(text, "embedded") {
		t.Errorf("banner does not say Redis is embedded:\n%s", text)
	}
	clientURL := regexp.MustCompile(`import \{ connect \} from "([^"]+)"`).FindStringSubmatch(text)
	if clientURL == nil {
		t.Fatalf("banner lacks the browser client's URL:\n%s", text)
	}
	if creq, err := http.NewRequestWithContext(ctx, http.MethodGet, clientURL[1], nil); err != nil {
		t.Fatal(err)
	} else if cresp, err := http.DefaultClient.Do(creq); err != nil {
		t.Fatal(err)
	} else {
		cresp.Body.Close()
		if ct := cresp.Header.Get("Content-Type"); cresp.StatusCode != http.StatusOK || !strings.HasPrefix(ct, "text/javascript") {
			t.Fatalf("the banner's browser client %s: %s, Content-Type %q", clientURL[1], cresp.Status, ct)
		}
	}

	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, streamURL[1], nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("stream: %s", resp.Status)
	}

	client := heraldv1.NewRouterServiceClient(testenv.GRPCClient(t, notifyCmd[1]))
	sent, err := client.Notify(ctx, &heraldv1.NotifyRequest{UserId: notifyCmd[2], Event: notifyCmd[3], Data: []byte(notifyCmd[4])})
	if err != nil {
		t.Fatal(err)
	}
	if sent.GetRoute() != heraldv1.Route_ROUTE_ONLINE {
		t.Fatalf("demo user is not online: %v", sent)
	}
	events := make(chan sseedge.Event, 1)
	go func() {
		dec := sseedge.NewDecoder(resp.Body)
		ev, err := dec.Next()
		for err == nil && ev.Retry != 0 { // skip the retry: field
			ev, err = dec.Next()
		}
		events <- ev
	}()
	select {
	case ev := <-events:
		if ev.ID != sent.GetEventId() || ev.Event != notifyCmd[3] || ev.Data != notifyCmd[4] {
			t.Fatalf("stream showed %+v, want the notification %s", ev, sent.GetEventId())
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the notification did not arrive on the stream")
	}

	// The offline path, as the banner shows it: register bob's device,
	// notify him, and find the push at the emulator.
	register := regexp.MustCompile(`heraldctl device register -addr \S+ -user (\S+) -token (\S+)`).FindStringSubmatch(text)
	offline := regexp.MustCompile(`heraldctl notify -addr \S+ -user (\S+) -title "([^"]+)" -body "([^"]+)" -data '([^']*)'`).FindStringSubmatch(text)
	pushes := regexp.MustCompile(`curl -s (\S+/emulator/messages)`).FindStringSubmatch(text)
	if register == nil || offline == nil || pushes == nil {
		t.Fatalf("banner lacks the offline path's commands:\n%s", text)
	}
	if _, err := client.RegisterDevice(ctx, &heraldv1.RegisterDeviceRequest{UserId: register[1], Token: register[2],
		Platform: heraldv1.Platform_PLATFORM_ANDROID}); err != nil {
		t.Fatal(err)
	}
	queued, err := client.Notify(ctx, &heraldv1.NotifyRequest{UserId: offline[1], Data: []byte(offline[4]),
		Push: &heraldv1.PushOptions{Title: offline[2], Body: offline[3]}})
	if err != nil {
		t.Fatal(err)
	}
	if queued.GetRoute() != heraldv1.Route_ROUTE_PUSH_QUEUED {
		t.Fatalf("offline user: %v, want ROUTE_PUSH_QUEUED", queued)
	}
	testenv.WaitFor(t, 20*time.Second, "the push at the emulator", func() bool {
		resp, err := http.Get(pushes[1])
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return strings.Contains(string(body), queued.GetNotificationId()) && strings.Contains(string(body), register[2])
	})
}

// startAllInOne runs the all-in-one on the embedded Redis until the test
// ends, and returns the banner it printed, and a context that ends with
// it. stop stops it and waits for it to return; it is idempotent.
func startAllInOne(t *testing.T) (ctx context.Context, banner string, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out, w := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-grpc-addr", "127.0.0.1:0", "-http-addr", "127.0.0.1:0",
			"-admin-addr", "127.0.0.1:0", "-redis-addr=", "-fcm-emulator-addr", "127.0.0.1:0"}, w)
		w.Close()
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("run: %v", err)
			}
		})
	}
	t.Cleanup(stop)

	// Read the banner up to its last line.
	var b strings.Builder
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		b.WriteString(sc.Text() + "\n")
		if strings.HasPrefix(sc.Text(), "Stop with Ctrl-C") {
			break
		}
	}
	go func() { _, _ = io.Copy(io.Discard, out) }()
	return ctx, b.String(), stop
}
