package integration_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/delivery/queue"
	"github.com/herald-push/herald/delivery/trail"
	"github.com/herald-push/herald/fcm"
	"github.com/herald-push/herald/integration/testenv"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// TestOfflineUserIsPushed: through the router's gRPC API, an offline user's
// notification takes the push route and reaches each of their devices
// through Kafka, the worker and FCM; once the user connects, the next one
// goes over SSE and is not pushed.
func TestOfflineUserIsPushed(t *testing.T) {
	o := testenv.StartOffline(t, 3)
	s := newSystemWith(t, options{edges: 1, offline: o})
	o.StartWorker(t, o.WorkerConfig(), nil)
	ctx := context.Background()
	for _, tok := range []string{"tok-mia-phone", "tok-mia-web"} {
		if _, err := s.router.RegisterDevice(ctx, &heraldv1.RegisterDeviceRequest{
			UserId: "mia", Token: tok, Platform: heraldv1.Platform_PLATFORM_ANDROID,
		}); err != nil {
			t.Fatal(err)
		}
	}

	resp := s.notify(t, &heraldv1.NotifyRequest{UserId: "mia", Event: "fill", Data: []byte(`{"px":12.5}`),
		Push: &heraldv1.PushOptions{Title: "Filled"}})
	if resp.GetRoute() != heraldv1.Route_ROUTE_PUSH_QUEUED {
		t.Fatalf("offline user: route %v, want ROUTE_PUSH_QUEUED", resp.GetRoute())
	}
	o.WaitPushes(t, 2)
	for _, tok := range []string{"tok-mia-phone", "tok-mia-web"} {
		got := o.Emulator.ByToken(tok)
		if len(got) != 1 || got[0].Data[fcm.DataID] != resp.GetNotificationId() ||
			got[0].Data[fcm.DataPayload] != `{"px":12.5}` || got[0].Data[fcm.DataEvent] != "fill" {
			t.Fatalf("%s: pushes %+v, want notification %s with its payload", tok, got, resp.GetNotificationId())
		}
	}

	c := connect(t, s.edges[0].url, token(t, "mia"))
	online := s.notify(t, &heraldv1.NotifyRequest{UserId: "mia", Event: "fill", Data: []byte("2")})
	if online.GetRoute() != heraldv1.Route_ROUTE_ONLINE {
		t.Fatalf("connected user: route %v, want ROUTE_ONLINE", online.GetRoute())
	}
	if ev := c.next(t, 5*time.Second); ev.Data != "2" {
		t.Fatalf("SSE got %q", ev.Data)
	}
	// The edge counts its write in the notification's trail.
	testenv.WaitFor(t, 5*time.Second, "the SSE write in the trail", func() bool {
		tr, err := trail.Find(ctx, o.Redis, o.Prefix, "mia", online.GetNotificationId())
		return err == nil && tr.Fields["sse_writes"] == "1" && !tr.Time("sse_first_ms").IsZero()
	})
	// The online notification must not be pushed: once a later offline
	// one has come through, there are three pushes, not five.
	o.Register(t, "nia", "tok-nia")
	s.notify(t, &heraldv1.NotifyRequest{UserId: "nia", Data: []byte("m")})
	o.WaitPushes(t, 3)
	if n := len(o.Emulator.ByToken("tok-mia-phone")); n != 1 {
		t.Fatalf("mia's phone got %d pushes; the SSE-delivered notification was pushed too", n)
	}
	if n := len(o.Kafka.ReadAll(queue.DefaultOfflineTopic)); n != 2 {
		t.Fatalf("the offline topic holds %d records, want 2: the SSE-delivered one must not be queued", n)
	}

	// Invalid device registrations are refused, naming the field.
	for _, bad := range []*heraldv1.RegisterDeviceRequest{
		{UserId: "mia", Token: "", Platform: heraldv1.Platform_PLATFORM_IOS},
		{UserId: "mia", Token: "has space", Platform: heraldv1.Platform_PLATFORM_IOS},
		{UserId: "mia", Token: "t", Platform: heraldv1.Platform_PLATFORM_UNSPECIFIED},
		{UserId: "", Token: "t", Platform: heraldv1.Platform_PLATFORM_WEB},
	} {
		if _, err := s.router.RegisterDevice(ctx, bad); status.Code(err) != codes.InvalidArgument {
			t.Errorf("RegisterDevice(%v) = %v, want InvalidArgument", bad, err)
		}
	}
}

// TestKafkaDownNotifyUnavailable: while Kafka is down, Notify for offline
// users answers Unavailable, and every OK answer has its record in Kafka;
// once Kafka is back and the router answers again, every call is accepted.
// The first calls are in flight when Kafka stops: each may go either way,
// but an OK must be in Kafka.
func TestKafkaDownNotifyUnavailable(t *testing.T) {
	o := testenv.StartOffline(t, 2)
	s := newSystemWith(t, options{edges: 1, offline: o})
	ctx := context.Background()

	var (
		mu       sync.Mutex
		accepted []string
		codeOf   = map[int]codes.Code{} // by call
	)
	call := func(i int) {
		resp, err := s.router.Notify(ctx, &heraldv1.NotifyRequest{UserId: "u" + strconv.Itoa(i%7), Data: []byte(strconv.Itoa(i)),
			IdempotencyKey: "k" + strconv.Itoa(i)})
		mu.Lock()
		defer mu.Unlock()
		codeOf[i] = status.Code(err)
		if err != nil {
			return
		}
		if resp.GetRoute() != heraldv1.Route_ROUTE_PUSH_QUEUED {
			t.Errorf("call %d: route %v, want ROUTE_PUSH_QUEUED", i, resp.GetRoute())
		}
		accepted = append(accepted, resp.GetNotificationId())
	}
	var wg sync.WaitGroup
	calls := func(from, to int) {
		for i := from; i < to; i++ {
			wg.Go(func() { call(i) })
			time.Sleep(2 * time.Millisecond)
		}
	}
	calls(0, 100)
	o.Kafka.Stop()
	// Calls made while Kafka is down, all of them answered before it is
	// back.
	calls(100, 200)
	wg.Wait()
	o.Kafka.Start()
	// The router answers again once its Kafka client has found the
	// broker back, however long that takes on a loaded machine: a probe
	// for each user (and so each partition the calls below write to).
	back := time.Now()
	rounds := 0
	testenv.WaitFor(t, 30*time.Second, "Notify to be accepted again for every user", func() bool {
		rounds++
		ok := true
		for j := range 7 {
			i := 1000 + 7*rounds + j
			call(i)
			mu.Lock()
			ok = ok && codeOf[i] == codes.OK
			mu.Unlock()
		}
		return ok
	})
	t.Logf("the router accepted again %v after Kafka was back, at probe round %d", time.Since(back), rounds)
	calls(200, 300)
	wg.Wait()

	for i, code := range codeOf {
		switch {
		case code != codes.OK && code != codes.Unavailable:
			t.Errorf("call %d refused with %v; want Unavailable only", i, code)
		case i >= 100 && i < 200 && code != codes.Unavailable:
			t.Errorf("call %d, made while Kafka was down: %v, want Unavailable", i, code)
		case i >= 200 && i < 300 && code != codes.OK:
			t.Errorf("call %d, made once the router answered again: %v, want OK", i, code)
		}
	}
	stored := map[string]bool{}
	testenv.WaitFor(t, 10*time.Second, "Kafka to answer again", func() bool {
		msgs, err := queue.ReadTopic(ctx, o.Kafka.Brokers, queue.DefaultOfflineTopic)
		if err != nil {
			return false
		}
		for _, m := range msgs {
			env, err := delivery.Unmarshal(m.Value)
			if err != nil {
				t.Fatal(err)
			}
			stored[env.GetId()] = true
		}
		return true
	})
	for _, id := range accepted {
		if !stored[id] {
			t.Fatalf("notification %s was answered OK but is not in Kafka", id)
		}
	}
	t.Logf("accepted %d (all in Kafka) of %d calls", len(accepted), len(codeOf))
}
