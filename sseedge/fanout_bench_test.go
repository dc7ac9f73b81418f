package sseedge_test

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/herald-push/herald/sseedge"
)

// BenchmarkFanOut is the edge's fan-out loop end to end: an op is one
// broadcast, published through Redis, that the edge writes to each of
// fanOutStreams streams (HTTP/1.1, taken over by the writers) and that every
// client has read. The clients read in this process, so their CPU counts
// too; heraldbench's broadcast scenario measures the edge alone.
//
//	go test -run '^$' -bench FanOut ./sseedge/
func BenchmarkFanOut(b *testing.B) {
	const fanOutStreams = 1000
	e := newTestEdge(b, sseedge.Config{MaxConnsPerIP: -1})
	var got sync.WaitGroup
	for i := range fanOutStreams {
		tok, err := sseedge.IssueToken(secret, "fan"+strconv.Itoa(i), time.Hour, time.Now(), "bench")
		if err != nil {
			b.Fatal(err)
		}
		st := openRaw(b, e, tok+"&topic=bench")
		go func() {
			for {
				if _, err := st.dec.Next(); err != nil {
					return
				}
				got.Done()
			}
		}()
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		got.Add(fanOutStreams)
		e.broadcast(b, "bench", "op "+strconv.Itoa(i))
		got.Wait()
	}
	b.StopTimer()
	elapsed := b.Elapsed()
	b.ReportMetric(float64(elapsed.Nanoseconds())/float64(b.N*fanOutStreams), "ns/delivery")
	b.ReportMetric(float64(b.N*fanOutStreams)/elapsed.Seconds(), "deliveries/s")
}
