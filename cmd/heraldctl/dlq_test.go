package main

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/herald-push/herald/fcm/fcmtest"
	"github.com/herald-push/herald/integration/testenv"
)

// TestDeadLetterReplay: a permanent failure lands in the dead-letter topic;
// dlq ls and show find it; replay delivers it; a second replay pushes
// nothing.
func TestDeadLetterReplay(t *testing.T) {
	o := testenv.StartOffline(t, 2)
	o.Register(t, "kim", "tok-kim")
	o.Register(t, "lee", "tok-lee")
	o.Emulator.FailNext(1, fcmtest.ThirdPartyAuthError, 0)
	o.StartWorker(t, o.WorkerConfig(), nil)
	failed := o.Notify(t, "kim", `{"n":1}`, nil)
	o.WaitDeadLetters(t, 1)
	ok := o.Notify(t, "lee", `{"n":2}`, nil)
	o.WaitPushes(t, 1)

	brokers := strings.Join(o.Kafka.Brokers, ",")
	ctl := func(args ...string) string {
		t.Helper()
		var stdout, stderr bytes.Buffer
		if code := run(args, &stdout, &stderr); code != 0 {
			t.Fatalf("heraldctl %s: exit %d: %s", strings.Join(args, " "), code, stderr.String())
		}
		return stdout.String()
	}

	ls := ctl("dlq", "ls", "-kafka-brokers", brokers, "-since", "1h")
	if !strings.Contains(ls, failed.Id) || !strings.Contains(ls, "THIRD_PARTY_AUTH_ERROR") ||
		strings.Contains(ls, ok.Id) || !strings.Contains(ls, "1 dead letter(s)") {
		t.Fatalf("dlq ls:\n%s\nwant exactly %s with its code", ls, failed.Id)
	}
	if out := ctl("dlq", "ls", "-kafka-brokers", brokers, "-code", "UNREGISTERED"); !strings.Contains(out, "0 dead letter(s)") {
		t.Fatalf("dlq ls -code UNREGISTERED:\n%s\nwant none", out)
	}
	if out := ctl("dlq", "ls", "-kafka-brokers", brokers, "-user", "lee"); !strings.Contains(out, "0 dead letter(s)") {
		t.Fatalf("dlq ls -user lee:\n%s\nwant none", out)
	}
	show := ctl("dlq", "show", failed.Id, "-kafka-brokers", brokers)
	if !strings.Contains(show, `"errorCode": "THIRD_PARTY_AUTH_ERROR"`) || !strings.Contains(show, `"userId": "kim"`) {
		t.Fatalf("dlq show:\n%s", show)
	}

	redis := []string{"-kafka-brokers", brokers, "-redis-addr", testenv.RedisAddr(), "-redis-prefix", o.Prefix}
	dry := ctl(append([]string{"replay", "-user", "kim", "-dry-run"}, redis...)...)
	if !strings.Contains(dry, "would replay "+failed.Id) {
		t.Fatalf("replay -dry-run:\n%s", dry)
	}
	time.Sleep(300 * time.Millisecond) // a dry run must push nothing
	if got := len(o.Emulator.ByToken("tok-kim")); got != 0 {
		t.Fatalf("a dry run pushed %d", got)
	}

	out := ctl(append([]string{"replay", "-user", "kim"}, redis...)...)
	if !strings.Contains(out, "replayed 1, skipped 0") {
		t.Fatalf("replay:\n%s", out)
	}
	o.WaitPushes(t, 2)
	out = ctl(append([]string{"replay", "-user", "kim"}, redis...)...)
	if !strings.Contains(out, "replayed 0, skipped 1") {
		t.Fatalf("second replay:\n%s\nwant it skipped", out)
	}
	// Even forced, the worker's dedupe window keeps it from a second push.
	ctl(append([]string{"replay", "-user", "kim", "-force"}, redis...)...)
	marker := o.Notify(t, "kim", `{"n":3}`, nil)
	o.WaitPushes(t, 3)
	var ids []string
	for _, m := range o.Emulator.ByToken("tok-kim") {
		ids = append(ids, m.Data["herald_id"])
	}
	if len(ids) != 2 || ids[0] != failed.Id || ids[1] != marker.Id {
		t.Fatalf("kim's pushes %v, want %s once, then %s", ids, failed.Id, marker.Id)
	}

	var stderr bytes.Buffer
	if code := run([]string{"replay", "-kafka-brokers", brokers}, &bytes.Buffer{}, &stderr); code != 1 ||
		!strings.Contains(stderr.String(), "needs a selection") {
		t.Fatalf("replay without a selection: exit %d, %q", code, stderr.String())
	}
}
