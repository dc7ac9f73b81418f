package router_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
	"github.com/herald-push/herald/router"
)

// TestCallsPerCaller: a caller holding MaxCallsPerCaller calls and streams
// in flight (here a NotifyStream and a health Watch, which it may keep
// open for ever) is refused RESOURCE_EXHAUSTED for its next call or
// stream, without spending its rate limit, while another caller is
// served; once one of its streams ends, it is served again. Before the
// bound, one caller could hold every stream of every connection.
func TestCallsPerCaller(t *testing.T) {
	r := newAuthRouterConfig(t, router.Config{}, router.AuthConfig{MaxCallsPerCaller: 2, Callers: []router.CallerConfig{
		{Name: "greedy", KeySHA256: router.HashKey("k1"), Users: []string{"*"}, Rate: 1, Burst: 3},
		{Name: "other", KeySHA256: router.HashKey("k2"), Users: []string{"*"}},
	}})
	ctx, cancel := context.WithTimeout(withKey("k1"), 30*time.Second)
	defer cancel()

	ns, err := r.client.NotifyStream(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.Send(&heraldv1.NotifyStreamRequest{Sequence: 1, Notification: &heraldv1.NotifyRequest{UserId: "alice", Data: []byte("x")}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := ns.Recv(); err != nil || resp.GetResponse() == nil {
		t.Fatalf("NotifyStream's first response: %v, %v", resp, err)
	}
	health := healthpb.NewHealthClient(testenv.GRPCClient(t, r.addr))
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	watch, err := health.Watch(watchCtx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := watch.Recv(); err != nil {
		t.Fatalf("health Watch: %v", err)
	}

	_, err = r.client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "alice", Data: []byte("x")})
	if st := status.Convert(err); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), `caller "greedy" has 2 calls and streams in flight`) ||
		retryInfo(err) != nil {
		t.Fatalf("Notify of a caller at its limit: %v, want ResourceExhausted naming the limit, without RetryInfo", err)
	}
	third, err := health.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err == nil {
		_, err = third.Recv()
	}
	if status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("third stream of a caller at its limit: %v, want ResourceExhausted", err)
	}
	if _, err := r.client.Notify(withKey("k2"), &heraldv1.NotifyRequest{UserId: "alice", Data: []byte("x")}); err != nil {
		t.Fatalf("another caller's Notify: %v", err)
	}
	if n := r.refused(t, "too_many_calls"); n != 2 {
		t.Errorf("auth_refused_total{too_many_calls} = %v, want 2", n)
	}

	// Ending the Watch frees a call. The refusals spent no token of the
	// burst of 3 (the stream's notification and the Watch spent one each),
	// so the next Notify is within the rate limit on the test's stopped
	// clock.
	stopWatch()
	testenv.WaitFor(t, 10*time.Second, "greedy's Notify to be served once its Watch ended", func() bool {
		_, err := r.client.Notify(ctx, &heraldv1.NotifyRequest{UserId: "alice", Data: []byte("x")})
		if status.Code(err) == codes.ResourceExhausted && strings.Contains(status.Convert(err).Message(), "rate limit") {
			t.Fatalf("Notify after the Watch ended: %v: a refusal for calls in flight spent a token", err)
		}
		return err == nil
	})
	_ = ns.CloseSend()
}
