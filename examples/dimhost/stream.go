package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unsafe"

	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// streamConfig is one generated fMP4 stream to send through dimplugd.
type streamConfig struct {
	Track    fmp4Track
	MediaID  int64
	TrackID  string // Dim's track id, "42-video"
	Segments int    // media segments after the init segment
	Free     int    // free box payload in each media segment (0: none)
	Bare     []int  // media segments (numbered from 0, as n.m4s) without a free box
	Large    []int  // media segments whose mdat has a 64-bit largesize
	Session  string // put in StreamMeta.Extra["session"], to find the stream's statistics
}

func (c streamConfig) options(n int) segmentOptions {
	o := segmentOptions{Free: c.Free}
	for _, b := range c.Bare {
		if b == n {
			o.Free = 0
		}
	}
	for _, l := range c.Large {
		if l == n {
			o.LargeMdat = true
		}
	}
	return o
}

// expected returns the bytes the host sends as frame seq: 0 is the init
// segment, seq k the media segment k-1 (Dim's "<k-1>.m4s").
func (c streamConfig) expected(seq uint64) []byte {
	if seq == 0 {
		return initSegment(c.Track)
	}
	return mediaSegment(c.Track, int(seq-1), c.options(int(seq-1)))
}

func segmentName(seq uint64) string {
	if seq == 0 {
		return "init.mp4"
	}
	return fmt.Sprintf("%d.m4s", seq-1)
}

// frameReport says what the chain did to one frame.
type frameReport struct {
	Seq        uint64
	Name       string // init.mp4, 0.m4s, ...
	Sent, Back int    // sizes
	Boxes      string // top-level box types of what came back
	Changed    int    // bytes that differ within the sent length
	ChangedAt  [2]int // [first, last+1) of the changed bytes
	Appended   int    // bytes added after the sent ones
	Tag        string // a "dimplugd:" tag found in a free or skip box
	TagBox     string // "free@24": where
	ZeroCopy   bool   // came back as the very memory the host sent
	Err        error  // the structure or the change is wrong
}

// describe is the report's one-line explanation.
func (r frameReport) describe() string {
	var what string
	switch {
	case r.Changed == 0 && r.Appended == 0:
		what = "untouched"
	case r.Appended > 0 && r.Changed == 0:
		what = fmt.Sprintf("%d bytes appended", r.Appended)
	case r.Appended > 0:
		what = fmt.Sprintf("%d bytes changed in [%d,%d), %d appended", r.Changed, r.ChangedAt[0], r.ChangedAt[1], r.Appended)
	default:
		what = fmt.Sprintf("%d bytes changed in [%d,%d)", r.Changed, r.ChangedAt[0], r.ChangedAt[1])
	}
	if r.Tag != "" {
		what += fmt.Sprintf(", tag %q in %s", r.Tag, r.TagBox)
	}
	if r.ZeroCopy {
		what += " (zero-copy: the host's own memory came back)"
	} else {
		what += " (a new frame)"
	}
	if r.Err != nil {
		what += " — WRONG: " + r.Err.Error()
	}
	return what
}

// streamReport is a whole stream's outcome.
type streamReport struct {
	Stages  []string
	Frames  []frameReport
	Bytes   int64 // received
	Elapsed time.Duration
}

// compare checks that back is sent with at most free/skip payloads changed
// and boxes appended, with a valid structure, and reports the differences.
func compare(seq uint64, sent, back []byte) frameReport {
	r := frameReport{Seq: seq, Name: segmentName(seq), Sent: len(sent), Back: len(back)}
	layout, err := checkSegment(back)
	r.Boxes, r.Tag = layout.Types(), layout.Tag
	if r.Tag != "" {
		r.TagBox = fmt.Sprintf("%s@%d", string(back[layout.TagAt+4:layout.TagAt+8]), layout.TagAt)
	}
	if err != nil {
		r.Err = err
		return r
	}
	if len(back) < len(sent) {
		r.Err = fmt.Errorf("%d bytes shorter than sent", len(sent)-len(back))
		return r
	}
	r.Appended = len(back) - len(sent)
	first, last := -1, -1
	for i := range sent {
		if sent[i] != back[i] {
			if first < 0 {
				first = i
			}
			last = i
			r.Changed++
		}
	}
	if r.Changed > 0 {
		r.ChangedAt = [2]int{first, last + 1}
	}
	if layout.Init && (r.Changed > 0 || r.Appended > 0) {
		r.Err = errors.New("the init segment was changed")
		return r
	}
	// Every changed byte must be in the payload of a free or skip box
	// (both in what was sent and what came back: no header moved).
	for i := first; r.Changed > 0 && i <= last; i++ {
		if sent[i] == back[i] {
			continue
		}
		ok := false
		for _, x := range layout.Boxes {
			if (x.Type == "free" || x.Type == "skip") && i >= x.Off+x.HeaderLen && i < x.Off+x.Size && x.Off+x.Size <= len(sent) {
				ok = true
				break
			}
		}
		if !ok {
			r.Err = fmt.Errorf("byte %d changed outside a free box's payload", i)
			return r
		}
	}
	return r
}

// runStream opens a stream of c's kind on s, sends c's init segment and
// media segments (written straight into shared memory), receives them back
// and compares each with what was sent. onFrame, if not nil, sees each
// sent and received frame's bytes (valid during the call).
func runStream(ctx context.Context, s *host.Session, c streamConfig, onFrame func(seq uint64, sent, back []byte)) (*streamReport, error) {
	meta := host.StreamMeta{MediaID: c.MediaID, Track: c.TrackID, Codec: c.Track.Codec, Timescale: c.Track.Timescale,
		Extra: map[string]string{"profile": c.Track.Name}}
	if c.Session != "" {
		meta.Extra["session"] = c.Session
	}
	start := time.Now()
	st, err := s.OpenStream(ctx, c.Track.Kind(), meta)
	if err != nil {
		return nil, err
	}
	rep := &streamReport{Stages: st.Stages()}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	var mu sync.Mutex
	sentAt := map[uint64]*byte{} // where each frame's bytes were in shared memory
	media := "video"
	if c.Track.Handler == "soun" {
		media = "audio"
	}
	errc := make(chan error, 1)
	go func() { // ends when every frame is sent or ctx is cancelled
		errc <- func() error {
			for seq := uint64(0); seq <= uint64(c.Segments); seq++ {
				n, ct := 0, media+"/iso.segment"
				if seq == 0 {
					n, ct = len(initSegment(c.Track)), media+"/mp4"
				} else {
					n = mediaSegmentSize(c.Track, c.options(int(seq-1)))
				}
				f, err := st.NewFrame(ctx, n)
				if err != nil {
					return err
				}
				if seq == 0 {
					copy(f.Data, initSegment(c.Track))
				} else {
					k := int64(seq - 1)
					writeMediaSegment(f.Data, c.Track, int(k), c.options(int(k)))
					f.PTS, f.DTS, f.Duration, f.KeyFrame = k*c.Track.SegmentDuration(), k*c.Track.SegmentDuration(), c.Track.SegmentDuration(), true
				}
				f.Seq, f.ContentType = seq, ct
				mu.Lock()
				sentAt[seq] = unsafe.SliceData(f.Data)
				mu.Unlock()
				if err := st.Send(ctx, f); err != nil {
					return err
				}
			}
			return st.CloseSend()
		}()
	}()

	for {
		f, err := st.Recv(ctx)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return rep, err
		}
		sent := c.expected(f.Seq)
		r := compare(f.Seq, sent, f.Data)
		mu.Lock()
		r.ZeroCopy = sentAt[f.Seq] == unsafe.SliceData(f.Data)
		mu.Unlock()
		if onFrame != nil {
			onFrame(f.Seq, sent, f.Data)
		}
		rep.Bytes += int64(len(f.Data))
		f.Release()
		rep.Frames = append(rep.Frames, r)
	}
	if err := <-errc; err != nil {
		return rep, fmt.Errorf("send: %w", err)
	}
	rep.Elapsed = time.Since(start)
	if len(rep.Frames) != c.Segments+1 {
		return rep, fmt.Errorf("%d frames came back, %d were sent", len(rep.Frames), c.Segments+1)
	}
	for i, r := range rep.Frames {
		if r.Seq != uint64(i) {
			return rep, fmt.Errorf("frame %d came back as frame %d: out of order", i, r.Seq)
		}
	}
	return rep, nil
}

// streamStats fetches stream-stats' statistics of the stream with session
// id session through h (the dimplugd middleware), waiting up to wait for the
// observer to have seen frames frames. It returns the status, the stream's
// JSON (or the body) and the request path.
func streamStats(ctx context.Context, h http.Handler, trackID, session string, frames int, wait time.Duration) (int, []byte, string, error) {
	path := "/api/v1/plugins/stream-stats/streams?" + url.Values{"track": {trackID}, "limit": {"5"}}.Encode()
	deadline := time.Now().Add(wait)
	hdr := http.Header{"Authorization": {"demo-token-1"}}
	for {
		status, _, body, err := roundTrip(ctx, h, "GET", path, hdr, "")
		if err != nil || status != 200 {
			return status, body, path, err
		}
		var out struct {
			Streams []json.RawMessage `json:"streams"`
		}
		if err := json.Unmarshal(body, &out); err != nil {
			return status, body, path, err
		}
		for _, raw := range out.Streams {
			var st struct {
				Frames int               `json:"frames"`
				Extra  map[string]string `json:"extra"`
			}
			if json.Unmarshal(raw, &st) == nil && st.Extra["session"] == session && (st.Frames >= frames || time.Now().After(deadline)) {
				return status, raw, path, nil
			}
		}
		if time.Now().After(deadline) {
			return http.StatusNotFound, []byte("no statistics of this stream (observer not installed, or it missed the stream)"), path, nil
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func humanBytes(n int) string {
	switch {
	case n >= 1_000_000:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	case n >= 1000:
		return fmt.Sprintf("%.1f KB", float64(n)/1e3)
	}
	return fmt.Sprintf("%d B", n)
}

// intList parses "1,3,5".
type intList []int

func (l *intList) String() string { return fmt.Sprint(*l) }

func (l *intList) Set(s string) error {
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return fmt.Errorf("want segment numbers like 3,5, got %q", s)
		}
		*l = append(*l, n)
	}
	return nil
}

// stream is `dimhost stream`: a generated fMP4 stream through dimplugd's
// frame stream chain, compared frame by frame, then its statistics.
func stream(args []string) error {
	fs := flag.NewFlagSet("stream", flag.ExitOnError)
	socket := fs.String("socket", host.DefaultSocket(), "dimplugd's host socket ($DIMPLUGD_SOCKET)")
	profile := fs.String("profile", "480p", "track profile: audio (75 KB segments), 480p (600 KB), 720p (3.1 MB), 1080p (6.3 MB)")
	size := fs.String("size", "", "override the mdat payload per segment, e.g. 250KB or 2MiB")
	segments := fs.Int("n", 6, "media segments after the init segment")
	free := fs.Int("free", 64, "free box payload bytes in each media segment, room for a plugin's tag (0: none)")
	mediaID := fs.Int64("media", 42, "media id")
	var bare, large intList
	fs.Var(&bare, "bare", "media segments (numbered from 0) without a free box, e.g. 3,5")
	fs.Var(&large, "large", "media segments whose mdat has a 64-bit largesize header")
	stats := fs.Bool("stats", true, "show stream-stats' statistics of the stream afterwards")
	asJSON := fs.Bool("json", false, "with -stats: print the statistics' JSON too")
	fs.Parse(args)
	t, ok := fmp4Profiles[*profile]
	if !ok {
		return fmt.Errorf("unknown profile %q (want audio, 480p, 720p or 1080p)", *profile)
	}
	if *size != "" {
		n, err := parseSize(*size)
		if err != nil {
			return err
		}
		t.SegmentBytes = n
	}
	if *segments < 0 || *free < 0 {
		return errors.New("-n and -free must not be negative")
	}
	signal.Ignore(syscall.SIGPIPE)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	s, err := host.Dial(ctx, *socket, host.WithClientName("dimhost stream"))
	if err != nil {
		return err
	}
	defer s.Close()
	kind := "video"
	if t.Handler == "soun" {
		kind = "audio"
	}
	c := streamConfig{Track: t, MediaID: *mediaID, TrackID: fmt.Sprintf("%d-%s", *mediaID, kind), Segments: *segments,
		Free: *free, Bare: bare, Large: large, Session: fmt.Sprintf("dimhost-%d-%d", os.Getpid(), time.Now().UnixNano())}
	fmt.Printf("%s stream %s (%s, %s, timescale %d): init.mp4 + %d × %s segments of %.2f s\n", c.Track.Kind(), c.TrackID, t.Name, t.Codec,
		t.Timescale, c.Segments, humanBytes(mediaSegmentSize(t, segmentOptions{Free: c.Free})), float64(t.SegmentDuration())/float64(t.Timescale))
	rep, err := runStream(ctx, s, c, nil)
	if rep != nil {
		if len(rep.Stages) == 0 {
			fmt.Println("chain: (no plugin takes this kind: frames come straight back)")
		} else {
			fmt.Printf("chain (transforms in order, then observers): %s\n", strings.Join(rep.Stages, " → "))
		}
		bad := 0
		for _, r := range rep.Frames {
			size := humanBytes(r.Back)
			if r.Back != r.Sent {
				size = fmt.Sprintf("%s %+d B", humanBytes(r.Sent), r.Back-r.Sent)
			}
			fmt.Printf("  %-8s %-16s [%s] %s\n", r.Name, size, r.Boxes, r.describe())
			if r.Err != nil {
				bad++
			}
		}
		if rep.Elapsed > 0 {
			fmt.Printf("%d frames, %s back in %v (%.0f MB/s), every box structure valid: %v\n", len(rep.Frames), humanBytes(int(rep.Bytes)),
				rep.Elapsed.Round(time.Millisecond), float64(rep.Bytes)/1e6/rep.Elapsed.Seconds(), bad == 0)
		}
		if bad > 0 && err == nil {
			err = fmt.Errorf("%d frames came back wrong", bad)
		}
	}
	if err != nil {
		return err
	}
	if !*stats {
		return nil
	}
	mw, ms, err := newHandler(ctx, *socket, NewAPI(os.TempDir()))
	if err != nil {
		return err
	}
	defer ms.Close()
	status, body, path, err := streamStats(ctx, mw, c.TrackID, c.Session, len(rep.Frames), 3*time.Second)
	if err != nil {
		return err
	}
	fmt.Printf("--- GET %s through dimplugd: %d\n", path, status)
	var v map[string]any
	if status == 200 && json.Unmarshal(body, &v) == nil {
		fmt.Println(statsSummary(v))
		if *asJSON {
			var b bytes.Buffer
			json.Indent(&b, body, "", "  ")
			fmt.Println(b.String())
		}
	} else {
		fmt.Println(strings.TrimSpace(string(body)))
	}
	return mw.Close(ctx)
}

// statsSummary is one line about a stream-stats record.
func statsSummary(v map[string]any) string {
	num := func(k string) float64 { f, _ := v[k].(float64); return f }
	ia, _ := v["inter_arrival_ms"].(map[string]any)
	iaf := func(k string) float64 { f, _ := ia[k].(float64); return f }
	return fmt.Sprintf("stream-stats #%.0f: %.0f init + %.0f segments, %s, %.0f kb/s over %.1f s of media (peak %.0f kb/s), %.0f key frames (%.0f sync samples of %.0f), segments %s–%s, %.0f tagged, %.0f missed, inter-arrival %.2f/%.2f/%.2f ms (min/mean/max)",
		num("id"), num("init_segments"), num("segments"), humanBytes(int(num("bytes"))), num("bitrate_bps")/1000, num("duration_seconds"), num("peak_bitrate_bps")/1000,
		num("key_frames"), num("sync_samples"), num("samples"), humanBytes(int(num("min_segment_bytes"))), humanBytes(int(num("max_segment_bytes"))),
		num("tagged"), num("missed"), iaf("min"), iaf("mean"), iaf("max"))
}
