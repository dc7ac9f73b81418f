package fcmtest

import (
	"testing"
	"time"
)

func TestDelayStaysWithinJitter(t *testing.T) {
	t.Parallel()
	lo, hi := time.Hour, time.Duration(0)
	for range 2000 {
		d := delay(100*time.Millisecond, 20*time.Millisecond)
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo < 80*time.Millisecond || hi > 120*time.Millisecond {
		t.Errorf("delay spans [%v, %v], want within [80ms, 120ms]", lo, hi)
	}
	if hi-lo < 20*time.Millisecond {
		t.Errorf("delay spans only [%v, %v]: no jitter", lo, hi)
	}
	for range 200 {
		if d := delay(time.Millisecond, time.Second); d < 0 {
			t.Fatalf("negative delay %v", d)
		}
	}
}

func TestBucket(t *testing.T) {
	t.Parallel()
	now := time.Unix(0, 0)
	b := newBucket(2, 0, now) // burst 2
	for i := range 2 {
		if ok, _ := b.take(now); !ok {
			t.Fatalf("take %d refused", i)
		}
	}
	ok, wait := b.take(now)
	if ok || wait != 500*time.Millisecond {
		t.Errorf("empty bucket: ok %v, wait %v", ok, wait)
	}
	if ok, _ := b.take(now.Add(wait)); !ok {
		t.Error("refused after waiting")
	}
	if ok, _ := b.take(now.Add(time.Hour)); !ok { // refills, but only to burst
		t.Error("refused after an hour")
	}
	if ok, _ := b.take(now.Add(time.Hour)); !ok {
		t.Error("second after an hour refused")
	}
	if ok, _ := b.take(now.Add(time.Hour)); ok {
		t.Error("burst exceeded")
	}
}
