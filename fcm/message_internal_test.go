package fcm

import (
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// TestMessagePlatformOptions checks that a message carries its token's
// platform's options only, and all three when the platform is not known.
func TestMessagePlatformOptions(t *testing.T) {
	t.Parallel()
	now := time.Unix(1_800_000_000, 0)
	env := &heraldv1.Envelope{Id: "n1", UserId: "u", Data: []byte("x"), ExpiresAt: timestamppb.New(now.Add(time.Hour))}
	for _, tc := range []struct {
		platform          string
		android, ios, web bool
	}{
		{"android", true, false, false},
		{"ios", false, true, false},
		{"web", false, false, true},
		{"", true, true, true},
		{"symbian", true, true, true},
	} {
		t.Run("platform="+tc.platform, func(t *testing.T) {
			t.Parallel()
			m := message(env, "tok", tc.platform, now, DefaultMaxDataBytes)
			if got := m.Android != nil; got != tc.android {
				t.Errorf("android options %v, want %v", got, tc.android)
			}
			if got := m.APNS != nil; got != tc.ios {
				t.Errorf("apns options %v, want %v", got, tc.ios)
			}
			if got := m.Webpush != nil; got != tc.web {
				t.Errorf("webpush options %v, want %v", got, tc.web)
			}
			if m.Data[DataID] != "n1" || m.Data[DataPayload] != "x" {
				t.Errorf("data %v, want the id and the payload", m.Data)
			}
			if tc.ios {
				// A data-only push to iOS is a background one.
				h := m.APNS.Headers
				if h["apns-push-type"] != "background" || h["apns-priority"] != "5" || !m.APNS.Payload.Aps.ContentAvailable {
					t.Errorf("apns %+v %+v, want a background push at priority 5 with content-available", h, m.APNS.Payload.Aps)
				}
			}
			if tc.web && (m.Webpush.Headers["TTL"] != "3600" || m.Webpush.Headers["Urgency"] != "normal") {
				t.Errorf("webpush headers %v, want TTL 3600 and normal urgency", m.Webpush.Headers)
			}
			if tc.android && (m.Android.TTL == nil || *m.Android.TTL != time.Hour || m.Android.Priority != "normal") {
				t.Errorf("android %+v, want an hour of TTL at normal priority", m.Android)
			}
		})
	}
}
