package sseedge_test

import (
	"context"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/herald-push/herald/delivery"
	"github.com/herald-push/herald/integration/testenv"
	"github.com/herald-push/herald/sseedge"
)

// Streams of one user opening and closing at once (a join while the last
// stream leaves, a leave while a join's subscription is on the way) leave
// the edge subscribed exactly while a stream reads the channel: the last
// stream opened receives, and once it closes the channel is unsubscribed.
func TestSubscriptionRacesSettle(t *testing.T) {
	t.Parallel()
	e := newTestEdge(t, sseedge.Config{})
	const user = "churn"
	channel := delivery.Channel(e.reg.Prefix(), delivery.UserStream(user))
	numsub := func() int64 {
		n, err := e.rdb.PubSubNumSub(context.Background(), channel).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n[channel]
	}
	tok := tokenFor(t, user, time.Hour)
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 15 {
				ctx, cancel := context.WithCancel(context.Background())
				req, _ := http.NewRequestWithContext(ctx, http.MethodGet, e.url+"/v1/events?access_token="+tok, nil)
				if resp, err := http.DefaultClient.Do(req); err == nil {
					resp.Body.Close()
				}
				cancel()
			}
		})
	}
	wg.Wait()
	testenv.WaitFor(t, 10*time.Second, "the churned channel to be unsubscribed", func() bool {
		return e.metric("herald_sse_connections_open") == 0 && e.metric("herald_sse_redis_subscriptions") == 0 && numsub() == 0
	})

	resp := e.open(t, tok)
	if n := numsub(); n != 1 {
		t.Fatalf("%d subscriptions to the channel with one stream open, want 1", n)
	}
	id := e.publish(t, user, []byte("settled"))
	if ev := readUntil(t, sseedge.NewDecoder(resp.Body), id); ev.Data != "settled" {
		t.Fatalf("data %q", ev.Data)
	}
	resp.Body.Close()
	testenv.WaitFor(t, 10*time.Second, "the channel to be unsubscribed", func() bool { return numsub() == 0 })
}
