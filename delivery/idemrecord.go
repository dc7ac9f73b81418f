package delivery

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"
)

// An idempotency record is "pending|" .. claimed ms .. "|" .. outcome
// while its notification is being written to the offline queue, then
// outcome, with "|queued" appended when the offline queue took it. outcome
// is "route|subscribers|eventID|" .. record, and record the notification's
// "id|accepted ms|ack deadline ms".
//
// When the offline queue refused a notification that reached no edge, the
// caller is answered UNAVAILABLE and retries with its key; but the notify
// script has recorded it in the user's history already, where a client
// that resumes with Last-Event-ID finds it. Routed afresh, the retry would
// record it a second time, under a new event id, and that client would get
// it twice. So the record becomes refusedPrefix .. outcome (settle), and
// the retry's script, finding it, records and publishes nothing: it claims
// the key again (pending) and the retry queues the same notification, with
// its first id and event id (requeue). It is pushed, and recovered from
// history by a client resuming from before it: both, not twice over SSE.
// A record still pending past PublisherConfig.PendingTimeout is claimed
// the same way: its router died, or its script ran in a Redis stall whose
// timeout failed the call (docs/reliability.md, "Redis stalls").
const refusedPrefix = "refused|"

// refusedRecord is the refused record of a notification routed as r, whose
// record is rec.
func refusedRecord(r Result, rec string) string {
	return refusedPrefix + string(r.Route) + "|" + strconv.Itoa(r.Subscribers) + "|" + r.EventID + "|" + rec
}

// requeue is the outcome of a retry that found the refused record
// "route|subscribers|eventID|" .. record (refusedPrefix cut): c goes to the
// offline queue as the notification first recorded, under its id, accepted
// time and event id.
func requeue(c *notifyCall, refused string) (Result, bool, error) {
	r, err := parseRecord(refused)
	if err != nil {
		return Result{}, false, err
	}
	r.Duplicate = false
	c.record = strings.SplitN(refused, "|", 4)[3]
	c.env.Id, c.env.AcceptedAt = r.ID, timestamppb.New(r.AcceptedAt)
	return r, true, nil
}

// parseRecord decodes "route|subscribers|eventID|id|acceptedMillis|
// ackByMillis", with "|queued" appended when the offline queue took the
// notification: the result of the first call, which a duplicate returns
// whatever the retry asked for. A record written before the ack deadline
// was kept has no ackByMillis, and reads as fire and forget.
func parseRecord(rec string) (Result, error) {
	parts := strings.Split(rec, "|")
	queued := len(parts) > 5 && parts[len(parts)-1] == "queued"
	if queued {
		parts = parts[:len(parts)-1]
	}
	if len(parts) != 5 && len(parts) != 6 {
		return Result{}, fmt.Errorf("delivery: bad idempotency record %q", rec)
	}
	subs, err1 := strconv.Atoi(parts[1])
	ms, err2 := strconv.ParseInt(parts[4], 10, 64)
	var ackBy int64
	var err3 error
	if len(parts) == 6 {
		ackBy, err3 = strconv.ParseInt(parts[5], 10, 64)
	}
	if err := errors.Join(err1, err2, err3); err != nil {
		return Result{}, fmt.Errorf("delivery: bad idempotency record %q: %w", rec, err)
	}
	r := Result{
		ID:          parts[3],
		Route:       Route(parts[0]),
		EventID:     parts[2],
		Subscribers: subs,
		Duplicate:   true,
		Queued:      queued,
		AcceptedAt:  time.UnixMilli(ms),
	}
	if ackBy > 0 {
		r.AckBy = time.UnixMilli(ackBy)
	}
	return r, nil
}
