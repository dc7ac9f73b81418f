package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/segmentio/kafka-go"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/herald-push/herald/cmd/internal/daemon"
	"github.com/herald-push/herald/delivery/queue"
	heraldv1 "github.com/herald-push/herald/proto/herald/v1"
)

// deadLetter is one record of the dead-letter topic.
type deadLetter struct {
	Partition int
	Offset    int64
	Code      string // from the header, so that undecodable records have one too
	DL        *heraldv1.DeadLetter
	Err       error // set when the value could not be decoded
}

// dlqFilter selects dead letters.
type dlqFilter struct {
	kafka        daemon.Kafka // brokers and dead-letter topic
	since, until string
	code, user   string
	ids          string
	limit        int
	timeout      time.Duration
}

func (f *dlqFilter) register(fs *flag.FlagSet) {
	f.kafka.RegisterNamed(fs, "kafka-brokers", "kafka-dead-letter-topic")
	fs.StringVar(&f.since, "since", "", "only dead letters from this time on: RFC 3339, or a duration ago such as 2h")
	fs.StringVar(&f.until, "until", "", "only dead letters before this time: RFC 3339, or a duration ago")
	fs.StringVar(&f.code, "code", "", "only this error code, e.g. UNREGISTERED, QUOTA_EXCEEDED, NO_DEVICE")
	fs.StringVar(&f.user, "user", "", "only this user's")
	fs.StringVar(&f.ids, "id", "", "only these notification ids, comma-separated")
	fs.IntVar(&f.limit, "limit", 0, "at most this many, the newest (0: all)")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "time limit for reading the topic")
}

// parseWhen reads an RFC 3339 time or a duration before now.
func parseWhen(v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if d, err := time.ParseDuration(v); err == nil {
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time nor a duration", v)
	}
	return t, nil
}

// read returns the dead letters the filter selects, oldest first.
func (f *dlqFilter) read(ctx context.Context) ([]deadLetter, error) {
	now := time.Now()
	since, err := parseWhen(f.since, now)
	if err != nil {
		return nil, fmt.Errorf("-since: %w", err)
	}
	until, err := parseWhen(f.until, now)
	if err != nil {
		return nil, fmt.Errorf("-until: %w", err)
	}
	ids := map[string]bool{}
	for _, id := range strings.Split(f.ids, ",") {
		if id = strings.TrimSpace(id); id != "" {
			ids[id] = true
		}
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	msgs, err := queue.ReadTopic(ctx, f.kafka.BrokerList(), f.kafka.DeadLetterTopic)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", f.kafka.DeadLetterTopic, err)
	}
	var out []deadLetter
	for _, m := range msgs {
		d := decodeDeadLetter(m)
		env := d.DL.GetEnvelope()
		at := d.DL.GetDeadLetteredAt().AsTime()
		if d.Err == nil && (!since.IsZero() && at.Before(since) || !until.IsZero() && !at.Before(until)) {
			continue
		}
		if f.code != "" && !strings.EqualFold(d.Code, f.code) ||
			f.user != "" && (d.Err != nil || env.GetUserId() != f.user) ||
			len(ids) > 0 && (d.Err != nil || !ids[env.GetId()]) {
			continue
		}
		out = append(out, d)
	}
	if f.limit > 0 && len(out) > f.limit {
		out = out[len(out)-f.limit:]
	}
	return out, nil
}

func decodeDeadLetter(m kafka.Message) deadLetter {
	d := deadLetter{Partition: m.Partition, Offset: m.Offset, DL: &heraldv1.DeadLetter{}}
	for _, h := range m.Headers {
		if h.Key == "herald-error-code" {
			d.Code = string(h.Value)
		}
	}
	if err := proto.Unmarshal(m.Value, d.DL); err != nil || d.DL.GetEnvelope().GetId() == "" {
		d.Err = errors.Join(errors.New("not a herald.v1.DeadLetter"), err)
		return d
	}
	if d.Code == "" {
		d.Code = d.DL.GetErrorCode()
	}
	return d
}

// dlqCmd runs "dlq ls" and "dlq show".
func dlqCmd(args []string, stdout io.Writer) error {
	if len(args) == 0 || (args[0] != "ls" && args[0] != "show") {
		return errors.New("usage: heraldctl dlq ls|show [flags]; see heraldctl dlq ls -h")
	}
	fs := flag.NewFlagSet("dlq "+args[0], flag.ContinueOnError)
	var f dlqFilter
	f.register(fs)
	asJSON := fs.Bool("json", false, "print JSON, one dead letter per line")
	rest := args[1:]
	if args[0] == "show" && len(rest) > 0 && !strings.HasPrefix(rest[0], "-") {
		// heraldctl dlq show ID [flags]
		f.ids, rest = rest[0], rest[1:]
	}
	if err := daemon.ParseFlags(fs, rest, "HERALD_"); err != nil {
		return err
	}
	if args[0] == "show" && f.ids == "" {
		return errors.New("dlq show needs a notification id: heraldctl dlq show ID")
	}
	dls, err := f.read(context.Background())
	if err != nil {
		return err
	}
	if args[0] == "show" || *asJSON {
		return printJSON(stdout, dls, args[0] == "show")
	}
	return printTable(stdout, dls)
}

func printTable(w io.Writer, dls []deadLetter) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "DEAD-LETTERED\tNOTIFICATION\tUSER\tCODE\tATTEMPTS\tDEVICES\tEVENT\tAT")
	for _, d := range dls {
		if d.Err != nil {
			fmt.Fprintf(tw, "-\t(undecodable)\t-\t%s\t-\t-\t-\t%d/%d\n", d.Code, d.Partition, d.Offset)
			continue
		}
		env := d.DL.GetEnvelope()
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%d/%d\n",
			d.DL.GetDeadLetteredAt().AsTime().UTC().Format(time.RFC3339), env.GetId(), env.GetUserId(),
			d.Code, d.DL.GetAttempts(), d.DL.GetDevices(), orDash(env.GetEvent()), d.Partition, d.Offset)
	}
	fmt.Fprintf(tw, "%d dead letter(s)\n", len(dls))
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func printJSON(w io.Writer, dls []deadLetter, pretty bool) error {
	if pretty && len(dls) == 0 {
		return errors.New("no dead letter with that notification id")
	}
	for _, d := range dls {
		rec := map[string]any{"partition": d.Partition, "offset": d.Offset, "code": d.Code}
		if d.Err != nil {
			rec["error"] = d.Err.Error()
		} else {
			b, err := protojson.Marshal(d.DL)
			if err != nil {
				return err
			}
			rec["deadLetter"] = json.RawMessage(b)
		}
		var out []byte
		var err error
		if pretty {
			out, err = json.MarshalIndent(rec, "", "  ")
		} else {
			out, err = json.Marshal(rec)
		}
		if err != nil {
			return err
		}
		if _, err := fmt.Fprintln(w, string(out)); err != nil {
			return err
		}
	}
	return nil
}

// replayMarkTTL is how long a replay is remembered, so that replaying the
// same selection again does not push it again.
const replayMarkTTL = 7 * 24 * time.Hour

// replayCmd puts selected dead letters back on the offline topic.
func replayCmd(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("replay", flag.ContinueOnError)
	var f dlqFilter
	f.register(fs)
	f.kafka.RegisterNamed(fs, "kafka-offline-topic") // the topic replayed onto
	var rf daemon.Redis                              // where replays are remembered
	rf.Register(fs)
	var (
		dryRun     = fs.Bool("dry-run", false, "print what would be replayed, and replay nothing")
		perSecond  = fs.Float64("rate", 50, "most notifications replayed per second")
		force      = fs.Bool("force", false, "replay notifications that were replayed before, too")
		refreshTTL = fs.Duration("ttl", time.Hour, "new time to live of replayed notifications that have expired meanwhile (0 keeps them expired; the worker then drops them)")
	)
	if err := daemon.ParseFlags(fs, args, "HERALD_"); err != nil {
		return err
	}
	if *perSecond <= 0 {
		return errors.New("-rate must be above 0")
	}
	if f.since == "" && f.until == "" && f.code == "" && f.user == "" && f.ids == "" {
		return errors.New("replay needs a selection (-since, -until, -code, -user or -id); to replay everything say -since 8760h")
	}
	ctx := context.Background()
	dls, err := f.read(ctx)
	if err != nil {
		return err
	}
	rdb := rf.Client()
	defer rdb.Close()
	kcfg := queue.Config{Brokers: f.kafka.BrokerList()}
	w, err := queue.NewWriter(kcfg, f.kafka.OfflineTopic)
	if err != nil {
		return err
	}
	defer w.Close()

	tick := time.NewTicker(time.Duration(float64(time.Second) / *perSecond))
	defer tick.Stop()
	var replayed, skipped, undecodable int
	now := time.Now()
	for _, d := range dls {
		if d.Err != nil {
			undecodable++
			continue
		}
		env := proto.Clone(d.DL.GetEnvelope()).(*heraldv1.Envelope)
		mark := rf.Prefix + "dlq:replayed:" + env.GetId()
		if !*force {
			n, err := rdb.Exists(ctx, mark).Result()
			if err != nil {
				return fmt.Errorf("redis: %w", err)
			}
			if n > 0 {
				skipped++
				fmt.Fprintf(stdout, "skip    %s  (replayed before; -force replays it again)\n", env.GetId())
				continue
			}
		}
		if *refreshTTL > 0 && !env.GetExpiresAt().AsTime().After(now) {
			env.ExpiresAt = timestamppb.New(now.Add(*refreshTTL))
		}
		if *dryRun {
			fmt.Fprintf(stdout, "would replay %s  user %s  code %s\n", env.GetId(), env.GetUserId(), d.Code)
			replayed++
			continue
		}
		if replayed > 0 {
			<-tick.C
		}
		msg, err := queue.EnvelopeMessage(env)
		if err != nil {
			return err
		}
		wctx, cancel := kcfg.WriteContext(ctx)
		err = w.WriteMessages(wctx, msg)
		cancel()
		if err != nil {
			return fmt.Errorf("replay %s: %w (replayed %d before it)", env.GetId(), err, replayed)
		}
		if err := rdb.Set(ctx, mark, strconv.FormatInt(now.UnixMilli(), 10), replayMarkTTL).Err(); err != nil {
			return fmt.Errorf("replayed %s but could not remember it: %w", env.GetId(), err)
		}
		replayed++
		fmt.Fprintf(stdout, "replay  %s  user %s  code %s\n", env.GetId(), env.GetUserId(), d.Code)
	}
	verb := "replayed"
	if *dryRun {
		verb = "would replay"
	}
	_, err = fmt.Fprintf(stdout, "%s %d, skipped %d (replayed before), undecodable %d\n", verb, replayed, skipped, undecodable)
	return err
}
