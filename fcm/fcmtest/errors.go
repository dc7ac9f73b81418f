package fcmtest

import (
	"encoding/json"
	"math"
	"net/http"
	"strconv"
	"time"
)

// ErrorCode is an FCM HTTP v1 error code: the errorCode of the
// google.firebase.fcm.v1.FcmError detail the emulator puts in an error body.
type ErrorCode string

// The error codes the emulator answers with. Each maps to the HTTP status and
// the canonical Google status that FCM sends with it.
const (
	// Unregistered is 404 NOT_FOUND: the token is no longer valid.
	Unregistered ErrorCode = "UNREGISTERED"
	// InvalidArgument is 400 INVALID_ARGUMENT: a malformed request or token.
	InvalidArgument ErrorCode = "INVALID_ARGUMENT"
	// SenderIDMismatch is 403 PERMISSION_DENIED: the token belongs to another
	// sender.
	SenderIDMismatch ErrorCode = "SENDER_ID_MISMATCH"
	// QuotaExceeded is 429 RESOURCE_EXHAUSTED, with a Retry-After header.
	QuotaExceeded ErrorCode = "QUOTA_EXCEEDED"
	// Unavailable is 503 UNAVAILABLE: FCM is overloaded.
	Unavailable ErrorCode = "UNAVAILABLE"
	// Internal is 500 INTERNAL: FCM failed.
	Internal ErrorCode = "INTERNAL"
	// ThirdPartyAuthError is 401 UNAUTHENTICATED: the APNs certificate or the
	// web push key was rejected.
	ThirdPartyAuthError ErrorCode = "THIRD_PARTY_AUTH_ERROR"
	// PermissionDenied is 403 PERMISSION_DENIED for a send to a project that
	// is not the emulator's (Config.Project). It is not an FcmError code: like
	// FCM, that answer carries no FcmError detail, so no messaging.Is* helper
	// recognises it; errorutils.IsPermissionDenied does.
	PermissionDenied ErrorCode = "PERMISSION_DENIED"
)

// errorKind is how FCM answers one error code.
type errorKind struct {
	httpStatus int
	status     string // the canonical Google status in error.status
	message    string // FCM's usual error.message
	fcmDetail  bool   // whether the body carries an FcmError detail
}

var errorKinds = map[ErrorCode]errorKind{
	Unregistered:        {http.StatusNotFound, "NOT_FOUND", "Requested entity was not found.", true},
	InvalidArgument:     {http.StatusBadRequest, "INVALID_ARGUMENT", "Request contains an invalid argument.", true},
	SenderIDMismatch:    {http.StatusForbidden, "PERMISSION_DENIED", "SenderId mismatch", true},
	QuotaExceeded:       {http.StatusTooManyRequests, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Send requests' of service 'fcm.googleapis.com'.", true},
	Unavailable:         {http.StatusServiceUnavailable, "UNAVAILABLE", "The service is currently unavailable.", true},
	Internal:            {http.StatusInternalServerError, "INTERNAL", "Internal error encountered.", true},
	ThirdPartyAuthError: {http.StatusUnauthorized, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service", true},
	PermissionDenied:    {http.StatusForbidden, "PERMISSION_DENIED", "Permission 'cloudmessaging.messages.create' denied on resource.", false},
}

// Valid reports whether the emulator knows how to answer with c.
func (c ErrorCode) Valid() bool {
	_, ok := errorKinds[c]
	return ok
}

// HTTPStatus is the HTTP status FCM answers c with, or 0 for an unknown code.
func (c ErrorCode) HTTPStatus() int { return errorKinds[c].httpStatus }

const (
	fcmErrorType   = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
	badRequestType = "type.googleapis.com/google.rpc.BadRequest"

	// invalidTokenMessage is FCM's message for a token it cannot parse.
	invalidTokenMessage = "The registration token is not a valid FCM registration token"
)

// errorBody is a Google API error response.
type errorBody struct {
	Error errorStatus `json:"error"`
}

type errorStatus struct {
	Code    int           `json:"code"`
	Message string        `json:"message"`
	Status  string        `json:"status"`
	Details []errorDetail `json:"details,omitempty"`
}

type errorDetail struct {
	Type            string           `json:"@type"`
	ErrorCode       ErrorCode        `json:"errorCode,omitempty"`
	FieldViolations []fieldViolation `json:"fieldViolations,omitempty"`
}

type fieldViolation struct {
	Field       string `json:"field"`
	Description string `json:"description"`
}

// answer is the emulator's decision on one send request.
type answer struct {
	code       ErrorCode // empty when the send is accepted
	message    string    // overrides the code's usual message
	field      string    // the offending field, for a google.rpc.BadRequest detail
	retryAfter time.Duration
}

// writeError writes a's error as FCM does, with a Retry-After header when
// a.retryAfter is positive.
func writeError(w http.ResponseWriter, a answer) {
	kind, ok := errorKinds[a.code]
	if !ok {
		kind = errorKinds[Internal]
	}
	msg := kind.message
	if a.message != "" {
		msg = a.message
	}
	body := errorBody{Error: errorStatus{Code: kind.httpStatus, Message: msg, Status: kind.status}}
	if kind.fcmDetail {
		body.Error.Details = append(body.Error.Details, errorDetail{Type: fcmErrorType, ErrorCode: a.code})
	}
	if a.field != "" {
		body.Error.Details = append(body.Error.Details, errorDetail{
			Type:            badRequestType,
			FieldViolations: []fieldViolation{{Field: a.field, Description: msg}},
		})
	}
	if a.retryAfter > 0 {
		w.Header().Set("Retry-After", strconv.Itoa(retryAfterSeconds(a.retryAfter)))
	}
	writeJSON(w, kind.httpStatus, body)
}

// retryAfterSeconds rounds d up to the whole seconds a Retry-After header
// carries, so that a client waiting that long never comes back early.
func retryAfterSeconds(d time.Duration) int {
	return int(math.Ceil(d.Seconds()))
}

// writeJSON writes v as the JSON body of a response with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json; charset=UTF-8")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
