package fcmtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strings"
)

// maxDataBytes is FCM's limit on a message's payload: its data keys and
// values and its notification texts, in bytes.
const maxDataBytes = 4096

// sendRequest is a parsed messages:send body.
type sendRequest struct {
	validateOnly bool
	token        string
	topic        string
	condition    string
	data         map[string]string
	message      json.RawMessage // the message object as sent
}

// requestError is why a send body is invalid: FCM's message and the field
// it names.
type requestError struct {
	field   string
	message string
}

func (e *requestError) answer() answer {
	return answer{code: InvalidArgument, message: e.message, field: e.field}
}

// Field names are accepted in both spellings of the protobuf JSON mapping,
// as FCM accepts them; the SDK sends the snake_case ones.
var (
	requestFields = []string{"validate_only", "validateOnly", "message"}
	messageFields = []string{
		"name", "data", "notification", "android", "webpush", "apns",
		"fcm_options", "fcmOptions", "token", "topic", "condition",
	}
	// ttlPattern is a protobuf Duration in JSON: seconds with up to nine
	// fractional digits and an "s". FCM rejects negative TTLs.
	ttlPattern = regexp.MustCompile(`^[0-9]+(\.[0-9]{1,9})?s$`)
)

// parseSend parses and validates a messages:send body the way FCM does for
// the parts a sender is likely to get wrong. It returns what it could read
// even when the body is invalid, so that the request is logged under its
// token.
func parseSend(body []byte) (sendRequest, *requestError) {
	var req sendRequest
	var top map[string]json.RawMessage
	if err := json.Unmarshal(body, &top); err != nil || top == nil {
		return req, &requestError{message: "Invalid JSON payload received. " + jsonProblem(err)}
	}
	if err := unknownField(top, requestFields, ""); err != nil {
		return req, err
	}
	for _, name := range []string{"validate_only", "validateOnly"} {
		if raw, ok := top[name]; ok {
			if err := json.Unmarshal(raw, &req.validateOnly); err != nil {
				return req, invalidValue(name, "TYPE_BOOL", raw)
			}
		}
	}
	raw, ok := top["message"]
	if !ok || isNull(raw) {
		return req, &requestError{field: "message", message: "Message must be set."}
	}
	var msg map[string]json.RawMessage
	if err := json.Unmarshal(raw, &msg); err != nil {
		return req, invalidValue("message", "TYPE_MESSAGE", raw)
	}
	req.message = raw
	if err := unknownField(msg, messageFields, "message"); err != nil {
		return req, err
	}

	targets := 0
	for _, t := range []struct {
		name string
		dst  *string
	}{{"token", &req.token}, {"topic", &req.topic}, {"condition", &req.condition}} {
		v, ok := msg[t.name]
		if !ok || isNull(v) {
			continue
		}
		if err := json.Unmarshal(v, t.dst); err != nil {
			return req, invalidValue("message."+t.name, "TYPE_STRING", v)
		}
		if *t.dst != "" {
			targets++
		}
	}
	switch {
	case targets == 0:
		return req, &requestError{field: "message", message: "Recipient of the message is not set."}
	case targets > 1:
		return req, &requestError{field: "message", message: "Invalid value at 'message' (oneof), oneof field 'target' is already set."}
	}
	if req.token != "" && !validToken(req.token) {
		return req, &requestError{field: "message.token", message: invalidTokenMessage}
	}
	if req.topic != "" && !validTopic(req.topic) {
		return req, &requestError{field: "message.topic", message: "Invalid topic name."}
	}

	size := 0
	if v, ok := msg["data"]; ok {
		data, err := stringMap(v, "message.data")
		if err != nil {
			return req, err
		}
		for k, val := range data {
			if reservedDataKey(k) {
				return req, &requestError{field: "message.data", message: fmt.Sprintf("Invalid data payload key: %q is reserved.", k)}
			}
			size += len(k) + len(val)
		}
		req.data = data
	}
	if v, ok := msg["notification"]; ok {
		texts, err := stringMap(v, "message.notification")
		if err != nil {
			return req, err
		}
		for _, t := range texts {
			size += len(t)
		}
	}
	if size > maxDataBytes {
		return req, &requestError{field: "message", message: fmt.Sprintf("Message is too big: payload of %d bytes, over the limit of %d.", size, maxDataBytes)}
	}
	if v, ok := msg["android"]; ok {
		if err := validateAndroid(v); err != nil {
			return req, err
		}
	}
	return req, nil
}

// validateAndroid checks an AndroidConfig's ttl, priority and data.
func validateAndroid(raw json.RawMessage) *requestError {
	var android map[string]json.RawMessage
	if err := json.Unmarshal(raw, &android); err != nil {
		return invalidValue("message.android", "TYPE_MESSAGE", raw)
	}
	if v, ok := android["ttl"]; ok {
		var ttl string
		if err := json.Unmarshal(v, &ttl); err != nil || !ttlPattern.MatchString(ttl) {
			return &requestError{field: "message.android.ttl", message: fmt.Sprintf("Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration), %s", v)}
		}
	}
	if v, ok := android["priority"]; ok {
		var p string
		if err := json.Unmarshal(v, &p); err != nil || (!strings.EqualFold(p, "normal") && !strings.EqualFold(p, "high")) {
			return invalidValue("message.android.priority", "TYPE_ENUM", v)
		}
	}
	if v, ok := android["data"]; ok {
		if _, err := stringMap(v, "message.android.data"); err != nil {
			return err
		}
	}
	return nil
}

// stringMap decodes a JSON object whose values must all be strings.
func stringMap(raw json.RawMessage, field string) (map[string]string, *requestError) {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(raw, &obj); err != nil {
		return nil, invalidValue(field, "TYPE_MESSAGE", raw)
	}
	out := make(map[string]string, len(obj))
	for k, v := range obj {
		var s string
		if err := json.Unmarshal(v, &s); err != nil || isNull(v) {
			return nil, invalidValue(field+"["+k+"]", "TYPE_STRING", v)
		}
		out[k] = s
	}
	return out, nil
}

// unknownField rejects a field that FCM's schema does not have.
func unknownField(obj map[string]json.RawMessage, known []string, at string) *requestError {
	for k := range obj {
		if !slices.Contains(known, k) {
			where := ""
			if at != "" {
				where = " at '" + at + "'"
			}
			return &requestError{field: strings.TrimPrefix(at+"."+k, "."), message: fmt.Sprintf("Invalid JSON payload received. Unknown name %q%s: Cannot find field.", k, where)}
		}
	}
	return nil
}

// invalidValue is FCM's error for a value of the wrong type.
func invalidValue(field, typ string, raw json.RawMessage) *requestError {
	v := string(raw)
	if len(v) > 64 {
		v = v[:64] + "..."
	}
	return &requestError{field: field, message: fmt.Sprintf("Invalid value at '%s' (%s), %s", field, typ, v)}
}

func jsonProblem(err error) string {
	if err == nil {
		return "The body is not a JSON object."
	}
	return err.Error()
}

func isNull(raw json.RawMessage) bool { return bytes.Equal(bytes.TrimSpace(raw), []byte("null")) }

// validToken accepts what could be an FCM registration token: printable
// ASCII without spaces, as long as FCM allows. Real tokens are longer and
// narrower, but tests use short readable ones.
func validToken(tok string) bool {
	if len(tok) > 4096 {
		return false
	}
	for i := range len(tok) {
		if c := tok[i]; c <= ' ' || c > '~' {
			return false
		}
	}
	return true
}

var topicPattern = regexp.MustCompile(`^[a-zA-Z0-9-_.~%]+$`)

func validTopic(t string) bool { return topicPattern.MatchString(strings.TrimPrefix(t, "/topics/")) }

// reservedDataKey reports the data keys FCM reserves for itself.
func reservedDataKey(k string) bool {
	lk := strings.ToLower(k)
	return lk == "from" || lk == "notification" || lk == "message_type" ||
		strings.HasPrefix(lk, "google") || strings.HasPrefix(lk, "gcm")
}
