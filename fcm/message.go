// Package fcm is Herald's offline path: a Kafka consumer-group member that
// pushes the notifications of users who are not connected through Firebase
// Cloud Messaging, retries what FCM asks to retry, removes dead tokens, and
// dead-letters what cannot be delivered.
package fcm

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"firebase.google.com/go/v4/errorutils"
	"firebase.google.com/go/v4/messaging"

	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// Data keys of a push's data payload. An app reads them to show or fold the
// notification, and to fetch the payload itself when it was too large to
// push ("herald_truncated" is then "1").
const (
	DataID        = "herald_id"
	DataEvent     = "herald_event"
	DataEventID   = "herald_event_id"
	DataPayload   = "herald_payload"
	DataTruncated = "herald_truncated"
)

// message maps one envelope to one token's FCM message, as of now. FCM
// allows 4 KB of payload in all, so a larger data field is left out and the
// push says so: the app then fetches what changed, as it would on a
// "herald.reset".
//
// platform is the token's, as registered (one of devices.Platforms): the
// message carries that platform's options only, since FCM applies each
// platform's block to that platform's devices alone and ignores the others,
// which would only cost the worker JSON encoding on every push. An empty or
// unknown platform (a retry, whose record keeps the tokens only) gets all
// three.
func message(env *heraldv1.Envelope, token, platform string, now time.Time, maxData int) *messaging.Message {
	data := make(map[string]string, 4)
	data[DataID] = env.GetId()
	if env.GetEvent() != "" {
		data[DataEvent] = env.GetEvent()
	}
	if env.GetEventId() != "" {
		data[DataEventID] = env.GetEventId()
	}
	if len(env.GetData()) <= maxData {
		data[DataPayload] = string(env.GetData())
	} else {
		data[DataTruncated] = "1"
	}
	m := &messaging.Message{Token: token, Data: data}

	p := env.GetPush()
	visible := p.GetTitle() != "" || p.GetBody() != ""
	if visible {
		m.Notification = &messaging.Notification{Title: p.GetTitle(), Body: p.GetBody()}
	}
	high := p.GetPriority() == heraldv1.Priority_PRIORITY_HIGH
	expires := env.GetExpiresAt().AsTime()
	ttl := max(expires.Sub(now).Truncate(time.Second), 0)
	android, ios, web := true, true, true
	switch platform {
	case "android":
		ios, web = false, false
	case "ios":
		android, web = false, false
	case "web":
		android, ios = false, false
	}

	if android {
		m.Android = &messaging.AndroidConfig{CollapseKey: p.GetCollapseKey(), Priority: "normal", TTL: &ttl}
		if high {
			m.Android.Priority = "high"
		}
	}

	if ios {
		// APNs: a visible alert may be sent at priority 10 (at once); a
		// data-only ("background") push must use 5 and content-available.
		apnsPriority, pushType := "5", "background"
		if visible {
			pushType = "alert"
			if high {
				apnsPriority = "10"
			}
		}
		headers := map[string]string{
			"apns-priority":   apnsPriority,
			"apns-push-type":  pushType,
			"apns-expiration": strconv.FormatInt(expires.Unix(), 10),
		}
		if ck := p.GetCollapseKey(); ck != "" && len(ck) <= 64 {
			headers["apns-collapse-id"] = ck
		}
		m.APNS = &messaging.APNSConfig{
			Headers: headers,
			Payload: &messaging.APNSPayload{Aps: &messaging.Aps{ContentAvailable: !visible}},
		}
	}

	if web {
		urgency := "normal"
		if high {
			urgency = "high"
		}
		m.Webpush = &messaging.WebpushConfig{Headers: map[string]string{
			"TTL":     strconv.FormatInt(int64(ttl/time.Second), 10),
			"Urgency": urgency,
		}}
	}
	return m
}

// class is what the worker does about one message's outcome.
type class int

const (
	sent      class = iota // FCM accepted it
	deadToken              // the token will never work again: remove it
	retryable              // try again later, through the retry topic
	permanent              // trying again will not help: dead-letter it
)

// outcome is one message's result.
type outcome struct {
	class class
	code  string // FCM's error code, or OK
	msg   string
	// retryAfter is FCM's Retry-After, when it sent one.
	retryAfter time.Duration
}

// classify reads a send's error. FCM's own codes come first; an error
// without one (a connection refused, a timeout) is retryable.
func classify(err error, now time.Time) outcome {
	if err == nil {
		return outcome{class: sent, code: "OK"}
	}
	o := outcome{class: retryable, msg: err.Error()}
	switch {
	case messaging.IsUnregistered(err):
		o.class, o.code = deadToken, "UNREGISTERED"
	case messaging.IsSenderIDMismatch(err):
		o.class, o.code = deadToken, "SENDER_ID_MISMATCH"
	case messaging.IsInvalidArgument(err):
		o.class, o.code = permanent, "INVALID_ARGUMENT"
		// FCM answers a malformed token with INVALID_ARGUMENT too; only its
		// message tells it from a malformed message.
		if strings.Contains(strings.ToLower(err.Error()), "registration token") {
			o.class = deadToken
		}
	case messaging.IsQuotaExceeded(err):
		o.code = "QUOTA_EXCEEDED"
	case messaging.IsUnavailable(err):
		o.code = "UNAVAILABLE"
	case messaging.IsInternal(err):
		o.code = "INTERNAL"
	case messaging.IsThirdPartyAuthError(err):
		o.class, o.code = permanent, "THIRD_PARTY_AUTH_ERROR"
	case errorutils.IsUnauthenticated(err):
		o.class, o.code = permanent, "UNAUTHENTICATED"
	case errorutils.IsPermissionDenied(err):
		o.class, o.code = permanent, "PERMISSION_DENIED"
	case errorutils.IsResourceExhausted(err):
		o.code = "QUOTA_EXCEEDED"
	case errorutils.IsUnavailable(err):
		o.code = "UNAVAILABLE"
	case errorutils.IsInternal(err):
		o.code = "INTERNAL"
	case errorutils.IsDeadlineExceeded(err), errors.Is(err, context.DeadlineExceeded):
		o.code = "DEADLINE_EXCEEDED"
	case errorutils.IsNotFound(err):
		o.class, o.code = permanent, "NOT_FOUND"
	default:
		o.code = "UNKNOWN"
	}
	if o.class == retryable {
		o.retryAfter = retryAfter(errorutils.HTTPResponse(err), now)
	}
	return o
}

// retryAfter reads a Retry-After header: seconds, or an HTTP date.
func retryAfter(resp *http.Response, now time.Time) time.Duration {
	if resp == nil {
		return 0
	}
	v := strings.TrimSpace(resp.Header.Get("Retry-After"))
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil && s > 0 {
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}
