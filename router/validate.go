package router

import (
	"fmt"
	"time"
	"unicode/utf8"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/herald-push/herald/delivery"

	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// Limits on Notify fields that are not configurable: they keep Redis keys,
// SSE frames and log lines of a sane size.
const (
	maxEventBytes          = 128
	maxIdempotencyKeyBytes = 128
	maxPushFieldBytes      = 4096
	// maxTTL is FCM's own limit on a message's time to live.
	maxTTL = 28 * 24 * time.Hour
)

// violation is one invalid field.
type violation struct{ field, desc string }

// invalidArgument is the status for a request with invalid fields: code
// InvalidArgument, a message that names the first field, and every violation
// as a google.rpc.BadRequest detail.
func invalidArgument(vs []violation) error {
	st := status.New(codes.InvalidArgument, fmt.Sprintf("%s: %s", vs[0].field, vs[0].desc))
	br := &errdetails.BadRequest{}
	for _, v := range vs {
		br.FieldViolations = append(br.FieldViolations, &errdetails.BadRequest_FieldViolation{
			Field: v.field, Description: v.desc,
		})
	}
	if withDetails, err := st.WithDetails(br); err == nil {
		st = withDetails
	}
	return st.Err()
}

// checkText validates a short identifier-like field with delivery's rules.
func checkText(vs []violation, field, v string, maxBytes int, required bool) []violation {
	if v == "" && required {
		return append(vs, violation{field, "must not be empty"})
	}
	if err := delivery.CheckText(v, maxBytes); err != nil {
		return append(vs, violation{field, err.Error()})
	}
	return vs
}

// checkPayload validates the data and TTL that Notify and Broadcast share.
func (s *Service) checkPayload(vs []violation, data []byte, ttl *durationpb.Duration) []violation {
	switch {
	case len(data) > s.cfg.MaxPayloadBytes:
		vs = append(vs, violation{"data", fmt.Sprintf("is %d bytes, over the limit of %d", len(data), s.cfg.MaxPayloadBytes)})
	case !utf8.Valid(data):
		vs = append(vs, violation{"data", "must be valid UTF-8: SSE is a text protocol"})
	}
	if ttl != nil {
		if err := ttl.CheckValid(); err != nil {
			vs = append(vs, violation{"ttl", "is not a valid duration"})
		} else if d := ttl.AsDuration(); d <= 0 || d > maxTTL {
			vs = append(vs, violation{"ttl", fmt.Sprintf("must be above 0 and at most %v", maxTTL)})
		}
	}
	return vs
}

// validateBroadcast checks a BroadcastRequest.
func (s *Service) validateBroadcast(req *heraldv1.BroadcastRequest) error {
	var vs []violation
	if !delivery.ValidTopic(req.GetTopic()) {
		vs = append(vs, violation{"topic", "must be 1-128 characters of A-Z a-z 0-9 . _ : -, starting with a letter or digit"})
	}
	vs = checkText(vs, "event", req.GetEvent(), maxEventBytes, false)
	vs = s.checkPayload(vs, req.GetData(), req.GetTtl())
	if len(vs) > 0 {
		return invalidArgument(vs)
	}
	return nil
}

// validate checks a NotifyRequest against the limits. It returns nil or an
// InvalidArgument status naming the fields.
func (s *Service) validate(req *heraldv1.NotifyRequest) error {
	var vs []violation
	vs = checkText(vs, "user_id", req.GetUserId(), delivery.MaxUserIDBytes, true)
	vs = checkText(vs, "event", req.GetEvent(), maxEventBytes, false)
	vs = checkText(vs, "idempotency_key", req.GetIdempotencyKey(), maxIdempotencyKeyBytes, false)
	vs = s.checkPayload(vs, req.GetData(), req.GetTtl())
	if p := req.GetPush(); p != nil {
		for _, f := range []struct{ name, v string }{
			{"push.title", p.GetTitle()}, {"push.body", p.GetBody()}, {"push.collapse_key", p.GetCollapseKey()},
		} {
			if len(f.v) > maxPushFieldBytes {
				vs = append(vs, violation{f.name, fmt.Sprintf("is %d bytes, over the limit of %d", len(f.v), maxPushFieldBytes)})
			}
		}
		if _, ok := heraldv1.Priority_name[int32(p.GetPriority())]; !ok {
			vs = append(vs, violation{"push.priority", "is not a known priority"})
		}
	}
	if _, ok := heraldv1.DeliveryMode_name[int32(req.GetDeliveryMode())]; !ok {
		vs = append(vs, violation{"delivery_mode", "is not a known delivery mode"})
	}
	if d := req.GetAckDeadline(); d != nil {
		switch {
		case req.GetDeliveryMode() != heraldv1.DeliveryMode_DELIVERY_MODE_ACK_OR_PUSH:
			vs = append(vs, violation{"ack_deadline", "is only for DELIVERY_MODE_ACK_OR_PUSH"})
		case d.CheckValid() != nil || d.AsDuration() <= 0 || d.AsDuration() > maxAckDeadline:
			vs = append(vs, violation{"ack_deadline", fmt.Sprintf("must be above 0 and at most %v", maxAckDeadline)})
		}
	}
	if len(vs) > 0 {
		return invalidArgument(vs)
	}
	return nil
}
