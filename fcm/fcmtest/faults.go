package fcmtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"time"

	"golang.org/x/time/rate"
)

// A Fault is a scripted error: the send requests it matches are answered
// with Code instead of being accepted.
//
// A fault for a Token answers after the request has been validated, as FCM
// answers for a bad token. A fault for every request (empty Token) answers
// before anything else is looked at, as an outage or a quota does.
type Fault struct {
	// ID is assigned by AddFault; RemoveFault takes it.
	ID int
	// Token limits the fault to the sends to this registration token. Empty
	// matches every send request.
	Token string
	// Code is the error to answer with.
	Code ErrorCode
	// Count is how many more requests the fault answers before it is
	// removed. Zero means no limit. Faults reports what remains.
	Count int
	// Duration is how long the fault lasts from AddFault. Zero means no limit.
	Duration time.Duration
	// Expires is when a fault with a Duration ends; set by AddFault.
	Expires time.Time
	// RetryAfter is sent as the Retry-After header, rounded up to whole
	// seconds. Zero means FCM's habit: one second for QuotaExceeded, no
	// header for the other codes. A negative value sends no header.
	RetryAfter time.Duration
	// Message replaces the code's usual error.message when set.
	Message string
}

// retryAfter is the Retry-After the fault sends, zero for none.
func (f *Fault) retryAfter() time.Duration {
	switch {
	case f.RetryAfter > 0:
		return f.RetryAfter
	case f.RetryAfter == 0 && f.Code == QuotaExceeded:
		return time.Second
	}
	return 0
}

func (f *Fault) validate() error {
	switch {
	case !f.Code.Valid():
		return fmt.Errorf("fcmtest: fault: unknown error code %q", f.Code)
	case f.Count < 0:
		return errors.New("fcmtest: fault: negative count")
	case f.Duration < 0:
		return errors.New("fcmtest: fault: negative duration")
	}
	return nil
}

// faultJSON is a Fault as the HTTP API reads and writes it, with durations
// as Go duration strings ("1.5s").
type faultJSON struct {
	ID         int        `json:"id,omitempty"`
	Token      string     `json:"token,omitempty"`
	Code       ErrorCode  `json:"code"`
	Count      int        `json:"count,omitempty"`
	Duration   string     `json:"duration,omitempty"`
	Expires    *time.Time `json:"expires,omitempty"`
	RetryAfter string     `json:"retry_after,omitempty"`
	Message    string     `json:"message,omitempty"`
}

// MarshalJSON writes the fault as the HTTP API shows it.
func (f Fault) MarshalJSON() ([]byte, error) {
	j := faultJSON{ID: f.ID, Token: f.Token, Code: f.Code, Count: f.Count, Message: f.Message}
	if f.Duration != 0 {
		j.Duration = f.Duration.String()
	}
	if !f.Expires.IsZero() {
		j.Expires = &f.Expires
	}
	if f.RetryAfter != 0 {
		j.RetryAfter = f.RetryAfter.String()
	}
	return json.Marshal(j)
}

// UnmarshalJSON reads a fault as POST /emulator/faults takes it.
func (f *Fault) UnmarshalJSON(b []byte) error {
	var j faultJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&j); err != nil {
		return err
	}
	*f = Fault{ID: j.ID, Token: j.Token, Code: j.Code, Count: j.Count, Message: j.Message}
	var err error
	if f.Duration, err = parseDuration("duration", j.Duration); err != nil {
		return err
	}
	f.RetryAfter, err = parseDuration("retry_after", j.RetryAfter)
	return err
}

func parseDuration(field, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", field, err)
	}
	return d, nil
}

// faultList holds the scripted faults in the order they were added.
type faultList struct {
	faults []*Fault
	nextID int
}

func (l *faultList) add(f Fault, now time.Time) Fault {
	l.nextID++
	f.ID = l.nextID
	if f.Duration > 0 {
		f.Expires = now.Add(f.Duration)
	}
	l.faults = append(l.faults, &f)
	return f
}

// match finds the first live fault for token (empty: the faults for every
// request), spends one of its count, and returns its answer.
func (l *faultList) match(token string, now time.Time) (answer, bool) {
	l.prune(now)
	for i, f := range l.faults {
		if f.Token != token {
			continue
		}
		a := answer{code: f.Code, message: f.Message, retryAfter: f.retryAfter()}
		if f.Count > 0 {
			if f.Count--; f.Count == 0 {
				l.faults = append(l.faults[:i], l.faults[i+1:]...)
			}
		}
		return a, true
	}
	return answer{}, false
}

// prune drops the faults whose time is over.
func (l *faultList) prune(now time.Time) {
	live := l.faults[:0]
	for _, f := range l.faults {
		if f.Expires.IsZero() || now.Before(f.Expires) {
			live = append(live, f)
		}
	}
	clear(l.faults[len(live):])
	l.faults = live
}

func (l *faultList) remove(id int) bool {
	for i, f := range l.faults {
		if f.ID == id {
			l.faults = append(l.faults[:i], l.faults[i+1:]...)
			return true
		}
	}
	return false
}

func (l *faultList) list(now time.Time) []Fault {
	l.prune(now)
	out := make([]Fault, len(l.faults))
	for i, f := range l.faults {
		out[i] = *f
	}
	return out
}

// bucket is the rate limit's token bucket: rate tokens a second, holding at
// most burst. The zero bucket is unlimited.
type bucket struct {
	lim  *rate.Limiter // nil: unlimited
	rate float64
	// last is the latest time taken: a take at an earlier time (a clock
	// read before another request's) counts as at last, so the bucket's
	// time never runs backwards.
	last time.Time
}

func newBucket(perSecond float64, burst int, now time.Time) bucket {
	if perSecond <= 0 {
		return bucket{}
	}
	if burst <= 0 {
		// One second's worth: a sender at the rate is never refused.
		burst = max(1, int(math.Ceil(perSecond)))
	}
	lim := rate.NewLimiter(rate.Limit(perSecond), burst) // starts full
	return bucket{lim: lim, rate: perSecond, last: now}
}

// take spends a token. When there is none it spends nothing and returns how
// long until there is one.
func (b *bucket) take(now time.Time) (bool, time.Duration) {
	if b.lim == nil {
		return true, 0
	}
	if now.Before(b.last) {
		now = b.last
	}
	b.last = now
	if b.lim.AllowN(now, 1) {
		return true, 0
	}
	return false, time.Duration((1 - b.lim.TokensAt(now)) / b.rate * float64(time.Second))
}

// delay draws a latency: base, plus or minus up to jitter, never negative.
func delay(base, jitter time.Duration) time.Duration {
	d := base
	if jitter > 0 {
		d += rand.N(2*jitter+1) - jitter
	}
	return max(d, 0)
}

// AddFault scripts f and returns it as added, with its ID.
func (s *Server) AddFault(f Fault) (Fault, error) {
	if err := f.validate(); err != nil {
		return Fault{}, err
	}
	s.mu.Lock()
	f = s.faults.add(f, s.now())
	s.mu.Unlock()
	s.log.Info("fcm fault added", slog.Int("id", f.ID), slog.String("code", string(f.Code)),
		slog.String("token", f.Token), slog.Int("count", f.Count), slog.Duration("duration", f.Duration))
	return f, nil
}

// mustAdd adds a fault built by one of the helpers below, whose code is
// checked by the caller's compiler only: an unknown code is a bug in the
// test, so it panics.
func (s *Server) mustAdd(f Fault) int {
	f, err := s.AddFault(f)
	if err != nil {
		panic(err)
	}
	return f.ID
}

// Unregister makes the sends to each token answer 404 UNREGISTERED, as for
// an app that was uninstalled.
func (s *Server) Unregister(tokens ...string) {
	for _, t := range tokens {
		s.mustAdd(Fault{Token: t, Code: Unregistered})
	}
}

// InvalidToken makes the sends to each token answer 400 INVALID_ARGUMENT
// "The registration token is not a valid FCM registration token".
func (s *Server) InvalidToken(tokens ...string) {
	for _, t := range tokens {
		s.mustAdd(Fault{Token: t, Code: InvalidArgument, Message: invalidTokenMessage})
	}
}

// MismatchSenderID makes the sends to each token answer 403
// SENDER_ID_MISMATCH, as for a token of another Firebase project.
func (s *Server) MismatchSenderID(tokens ...string) {
	for _, t := range tokens {
		s.mustAdd(Fault{Token: t, Code: SenderIDMismatch})
	}
}

// FailNext makes the next n send requests, whatever their token, answer
// code with a Retry-After of retryAfter (see Fault.RetryAfter). It returns
// the fault's ID.
func (s *Server) FailNext(n int, code ErrorCode, retryAfter time.Duration) int {
	if n <= 0 {
		panic("fcmtest: FailNext needs n > 0")
	}
	return s.mustAdd(Fault{Code: code, Count: n, RetryAfter: retryAfter})
}

// FailFor makes every send request answer code for d from now, with a
// Retry-After of retryAfter (see Fault.RetryAfter). It returns the fault's
// ID.
func (s *Server) FailFor(d time.Duration, code ErrorCode, retryAfter time.Duration) int {
	if d <= 0 {
		panic("fcmtest: FailFor needs d > 0")
	}
	return s.mustAdd(Fault{Code: code, Duration: d, RetryAfter: retryAfter})
}

// RemoveFault removes the fault with id, and reports whether there was one.
func (s *Server) RemoveFault(id int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults.remove(id)
}

// Faults returns the live faults in the order they are tried, with the
// count that remains of each.
func (s *Server) Faults() []Fault {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults.list(s.now())
}

// SetLatency delays every send by base, varied uniformly by up to jitter
// either way. Zero removes the delay.
func (s *Server) SetLatency(base, jitter time.Duration) {
	s.mu.Lock()
	s.latency, s.jitter = max(base, 0), max(jitter, 0)
	s.mu.Unlock()
	s.log.Info("fcm latency set", slog.Duration("latency", base), slog.Duration("jitter", jitter))
}

// Latency returns the delay added to every send and its jitter.
func (s *Server) Latency() (base, jitter time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.latency, s.jitter
}

// SetRateLimit limits the sends to perSecond, with bursts of up to burst
// (zero: one second's worth); the sends beyond answer 429 QUOTA_EXCEEDED
// with a Retry-After of the whole seconds until one would pass. A perSecond
// of zero removes the limit. The bucket starts full.
func (s *Server) SetRateLimit(perSecond float64, burst int) {
	s.mu.Lock()
	s.rate, s.burst = max(perSecond, 0), max(burst, 0)
	s.bucket = newBucket(s.rate, s.burst, s.now())
	s.mu.Unlock()
	s.log.Info("fcm rate limit set", slog.Float64("rate", perSecond), slog.Int("burst", burst))
}

// SetQuota sets the project's quota to perMinute messages a minute, kept
// over every second as Config.QuotaPerMinute says: SetRateLimit(perMinute/60,
// burst). Zero removes it.
func (s *Server) SetQuota(perMinute, burst int) {
	s.SetRateLimit(float64(max(perMinute, 0))/60, burst)
}

// RateLimit returns the rate limit: sends a second (zero: none) and burst.
func (s *Server) RateLimit() (perSecond float64, burst int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rate, s.burst
}

// ClearFaults removes every scripted fault and restores the latency and the
// rate limit of the Config.
func (s *Server) ClearFaults() {
	s.mu.Lock()
	s.faults.faults = nil
	s.restoreSettings()
	s.mu.Unlock()
	s.log.Info("fcm faults cleared")
}

// restoreSettings sets the latency and the rate limit from the Config.
// s.mu is held, or s is not shared yet.
func (s *Server) restoreSettings() {
	s.latency, s.jitter = s.cfg.Latency, s.cfg.Jitter
	s.rate, s.burst = s.cfg.Rate, s.cfg.Burst
	s.bucket = newBucket(s.rate, s.burst, s.now())
}
