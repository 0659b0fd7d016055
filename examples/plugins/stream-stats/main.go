// Command stream-stats is an example dimplugd frame-stream observer: it
// keeps statistics of every audio and video stream a host sends through
// dimplugd — segment count, bytes, bitrate, key frames, segment sizes,
// timing — in its key-value store, and serves them on routes of its own:
//
//	GET /api/v1/plugins/stream-stats/streams[?media=42&track=42-video&limit=20]
//	GET /api/v1/plugins/stream-stats/streams/:id
//
// and shows them in the host's web UI: a page in the sidebar and a card on
// the dashboard (see ui.go), which reload every few seconds, as often as
// each user chose in their settings.
//
// It sees each frame as it leaves the chain, after every transform, through
// a read-only mapping of the frame's shared memory: nothing is copied. It
// reads the fMP4 boxes it needs (trun, tfhd, trex, mdhd) and never keeps a
// frame's bytes.
//
// An observer must be fast: one that holds frames too long misses later
// ones (the daemon gives observers a small credit rather than slowing the
// stream). So ObserveFrame only updates memory and queues a JSON snapshot;
// a background goroutine writes the snapshots to the key-value store, and
// the routes write what is queued before they read.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
)

// keep is how many streams the key-value store keeps; older ones go.
const keep = 100

// Stats are one stream's statistics, as stored and served.
type Stats struct {
	ID        int64             `json:"id"`
	Kind      string            `json:"kind"`
	MediaID   int64             `json:"media_id"`
	Track     string            `json:"track"`
	Codec     string            `json:"codec"`
	Timescale uint32            `json:"timescale"`
	Extra     map[string]string `json:"extra,omitempty"`
	FirstSeen time.Time         `json:"first_seen"`
	LastSeen  time.Time         `json:"last_seen"`
	Ended     *time.Time        `json:"ended,omitempty"`     // when the stream ended; absent while it runs
	EndedHow  string            `json:"ended_how,omitempty"` // "completed", "cancelled" or "failed: why"

	Frames       int   `json:"frames"`        // every frame seen
	InitSegments int   `json:"init_segments"` // ftyp+moov
	Segments     int   `json:"segments"`      // media segments (moof)
	OtherFrames  int   `json:"other_frames"`  // neither, or not ISO BMFF
	Missed       int   `json:"missed"`        // gaps in the host's sequence numbers: frames this observer never saw
	Bytes        int64 `json:"bytes"`         // of every frame
	SegmentBytes int64 `json:"segment_bytes"` // of media segments
	MinSegment   int64 `json:"min_segment_bytes"`
	MaxSegment   int64 `json:"max_segment_bytes"`
	AvgSegment   int64 `json:"avg_segment_bytes"`

	Duration        int64   `json:"duration"` // media segments' total, in timescale units
	DurationSeconds float64 `json:"duration_seconds"`
	DurationSource  string  `json:"duration_source,omitempty"` // "frame" (the host's Duration) or "trun" (the segments' samples)
	Bitrate         int64   `json:"bitrate_bps"`               // segment_bytes × 8 / duration_seconds
	PeakBitrate     int64   `json:"peak_bitrate_bps"`          // of the densest segment

	KeyFrames   int    `json:"key_frames"`   // frames the host flagged as starting with a key frame
	Samples     int    `json:"samples"`      // in the media segments' truns
	SyncSamples int    `json:"sync_samples"` // of those, sync samples (key frames) by their sample flags
	Tagged      int    `json:"tagged"`       // media segments carrying a "dimplugd:" tag in a free or skip box
	LastTag     string `json:"last_tag,omitempty"`

	InterArrival   Timing  `json:"inter_arrival_ms"` // between consecutive frames, as this observer received them
	WallSeconds    float64 `json:"wall_seconds"`     // first to last frame
	RealtimeFactor float64 `json:"realtime_factor"`  // media seconds per wall second

	Errors    int    `json:"parse_errors"`
	LastError string `json:"last_error,omitempty"`
}

// Timing summarizes intervals in milliseconds.
type Timing struct {
	Min  float64 `json:"min"`
	Mean float64 `json:"mean"`
	Max  float64 `json:"max"`
}

// live is a stream being observed.
type live struct {
	st      Stats
	lastSeq uint64
	trex    map[uint32]trackDefaults // from the stream's init segment
}

type statsPlugin struct {
	host *plugin.Host
	now  func() time.Time

	mu      sync.Mutex
	nextID  int64
	streams map[*plugin.Stream]*live
	pending map[string][]byte // KV writes not yet done
	created bool              // a stream was created since the last prune

	flushMu sync.Mutex // one flush at a time
	wake    chan struct{}
	stop    context.CancelFunc
	done    chan struct{}
}

func (p *statsPlugin) Init(ctx context.Context, h *plugin.Host) error {
	next := int64(1)
	if v, ok, err := h.KV.Get(ctx, "next-id"); err != nil {
		return err
	} else if ok {
		if n, err := strconv.ParseInt(string(v), 10, 64); err == nil && n > 0 {
			next = n
		}
	}
	// Under the lock: frames are served by another goroutine than Init,
	// and the SDK does not order the two.
	p.mu.Lock()
	defer p.mu.Unlock()
	p.host = h
	if p.now == nil {
		p.now = time.Now
	}
	p.streams = map[*plugin.Stream]*live{}
	p.pending = map[string][]byte{}
	p.nextID = next
	p.wake = make(chan struct{}, 1)
	p.done = make(chan struct{})
	bg, stop := context.WithCancel(context.Background())
	p.stop = stop
	go p.flusher(bg) // ends in Close
	return nil
}

// Close writes what is queued.
func (p *statsPlugin) Close(ctx context.Context) error {
	if p.stop != nil {
		p.stop()
		<-p.done
	}
	return p.flush(ctx)
}

func streamKey(id int64) string { return fmt.Sprintf("streams/%08d", id) }

// ObserveFrame updates the stream's statistics. It runs for each frame of a
// stream in order, concurrently with other streams.
func (p *statsPlugin) ObserveFrame(ctx context.Context, s *plugin.Stream, f *plugin.Frame) {
	// A stream's frames come one at a time: only this call changes l.
	p.mu.Lock()
	now := p.now()
	l := p.streams[s]
	if l == nil {
		l = &live{st: Stats{ID: p.nextID, Kind: s.Kind, MediaID: s.Meta.MediaID, Track: s.Meta.Track, Codec: s.Meta.Codec,
			Timescale: s.Meta.Timescale, Extra: s.Meta.Extra, FirstSeen: now.UTC()}}
		p.nextID++
		p.streams[s] = l
		p.pending["next-id"] = []byte(strconv.FormatInt(p.nextID, 10))
		p.created = true
	} else if f.Seq > l.lastSeq+1 {
		l.st.Missed += int(f.Seq - l.lastSeq - 1)
	}
	trex := l.trex
	p.mu.Unlock()
	sg, perr := inspect(f.Data, trex) // outside the lock: reading the bytes is the slow part
	p.mu.Lock()
	defer p.mu.Unlock()
	st := &l.st
	if st.Frames > 0 {
		gap := float64(now.Sub(st.LastSeen)) / float64(time.Millisecond)
		if st.Frames == 1 || gap < st.InterArrival.Min {
			st.InterArrival.Min = gap
		}
		st.InterArrival.Max = max(st.InterArrival.Max, gap)
	}
	st.Frames++
	st.LastSeen = now.UTC()
	l.lastSeq = f.Seq
	n := int64(len(f.Data))
	st.Bytes += n
	if f.KeyFrame {
		st.KeyFrames++
	}
	switch {
	case perr != nil:
		st.OtherFrames++
		st.Errors++
		st.LastError = fmt.Sprintf("frame %d: %v", f.Seq, perr)
	case sg.init:
		st.InitSegments++
		l.trex = sg.trex
		if st.Timescale == 0 {
			st.Timescale = sg.timescale
		}
	case sg.media:
		st.Segments++
		st.SegmentBytes += n
		if st.Segments == 1 || n < st.MinSegment {
			st.MinSegment = n
		}
		st.MaxSegment = max(st.MaxSegment, n)
		st.AvgSegment = st.SegmentBytes / int64(st.Segments)
		st.Samples += sg.samples
		st.SyncSamples += sg.sync
		if sg.tag != "" {
			st.Tagged++
			st.LastTag = sg.tag
		}
		d := f.Duration
		if d > 0 {
			st.DurationSource = "frame"
		} else if d = sg.duration; d > 0 && st.DurationSource == "" {
			st.DurationSource = "trun"
		}
		st.Duration += d
		if ts := st.Timescale; ts > 0 && d > 0 {
			peak := int64(float64(n*8) * float64(ts) / float64(d))
			st.PeakBitrate = max(st.PeakBitrate, peak)
		}
	default:
		st.OtherFrames++
	}
	if st.Timescale > 0 {
		st.DurationSeconds = float64(st.Duration) / float64(st.Timescale)
	}
	if st.DurationSeconds > 0 {
		st.Bitrate = int64(float64(st.SegmentBytes*8) / st.DurationSeconds)
	}
	wall := st.LastSeen.Sub(st.FirstSeen)
	st.WallSeconds = wall.Seconds()
	if st.Frames > 1 {
		st.InterArrival.Mean = float64(wall) / float64(time.Millisecond) / float64(st.Frames-1)
	}
	if st.WallSeconds > 0 {
		st.RealtimeFactor = st.DurationSeconds / st.WallSeconds
	}
	b, _ := json.Marshal(st)
	p.pending[streamKey(st.ID)] = b
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// CloseStream records how a stream ended and forgets it (its statistics
// stay in the key-value store).
func (p *statsPlugin) CloseStream(ctx context.Context, s *plugin.Stream, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	l := p.streams[s]
	if l == nil { // no frame seen: nothing to record
		return
	}
	delete(p.streams, s)
	ended := p.now().UTC()
	l.st.Ended = &ended
	switch {
	case err == nil:
		l.st.EndedHow = "completed"
	case errors.Is(err, plugin.ErrStreamCanceled):
		l.st.EndedHow = "cancelled"
	default:
		l.st.EndedHow = "failed: " + err.Error()
	}
	b, _ := json.Marshal(l.st)
	p.pending[streamKey(l.st.ID)] = b
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// flusher writes queued snapshots shortly after they are queued.
func (p *statsPlugin) flusher(ctx context.Context) {
	defer close(p.done)
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		}
		select { // coalesce a burst of frames into one write per stream
		case <-ctx.Done():
			return
		case <-time.After(20 * time.Millisecond):
		}
		wctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := p.flush(wctx); err != nil && ctx.Err() == nil {
			p.host.Log.Warn("could not store stream statistics", "err", err)
		}
		cancel()
	}
}

// flush writes the queued snapshots to the key-value store and, when new
// streams appeared, forgets all but the last keep streams.
func (p *statsPlugin) flush(ctx context.Context) error {
	p.flushMu.Lock()
	defer p.flushMu.Unlock()
	p.mu.Lock()
	pending, created := p.pending, p.created
	p.pending, p.created = map[string][]byte{}, false
	p.mu.Unlock()
	keys := make([]string, 0, len(pending))
	for k := range pending {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		if err := p.host.KV.Set(ctx, k, pending[k]); err != nil {
			p.mu.Lock() // keep what was not written, unless newer came
			for _, k := range keys[i:] {
				if _, ok := p.pending[k]; !ok {
					p.pending[k] = pending[k]
				}
			}
			p.mu.Unlock()
			return err
		}
	}
	if !created {
		return nil
	}
	all, err := p.host.KV.List(ctx, "streams/", 0)
	if err != nil {
		return err
	}
	sort.Strings(all)
	for len(all) > keep {
		if err := p.host.KV.Delete(ctx, all[0]); err != nil {
			return err
		}
		all = all[1:]
	}
	return nil
}

// ServeRoute answers the stats routes and the UI pages.
func (p *statsPlugin) ServeRoute(ctx context.Context, hook string, req *plugin.Request) (*plugin.Response, error) {
	if !req.Authenticated && (hook == "page" || hook == "card") {
		return htmlPage(http.StatusUnauthorized, unauthorizedPage, nil)
	}
	if !req.Authenticated {
		return jsonResponse(http.StatusUnauthorized, map[string]string{"error": "log in to see stream statistics"}), nil
	}
	if err := p.flush(ctx); err != nil {
		return nil, err
	}
	switch hook {
	case "stream":
		id, err := strconv.ParseInt(req.Param("id"), 10, 64)
		if err != nil || id <= 0 {
			return jsonResponse(http.StatusBadRequest, map[string]string{"error": "the stream id is a positive number"}), nil
		}
		v, ok, err := p.host.KV.Get(ctx, streamKey(id))
		if err != nil {
			return nil, err
		}
		if !ok {
			return jsonResponse(http.StatusNotFound, map[string]string{"error": fmt.Sprintf("no stream %d", id)}), nil
		}
		return &plugin.Response{Status: http.StatusOK, Header: http.Header{"Content-Type": {"application/json"}}, Body: v}, nil
	case "streams":
		q := req.Query()
		limit := 20
		if s := q.Get("limit"); s != "" {
			if n, err := strconv.Atoi(s); err == nil && n > 0 {
				limit = min(n, keep)
			}
		}
		all, err := p.stored(ctx)
		if err != nil {
			return nil, err
		}
		out := []json.RawMessage{}
		for _, s := range all {
			if len(out) == limit {
				break
			}
			if m := q.Get("media"); m != "" && m != strconv.FormatInt(s.MediaID, 10) {
				continue
			}
			if tr := q.Get("track"); tr != "" && tr != s.Track {
				continue
			}
			if kd := q.Get("kind"); kd != "" && !strings.EqualFold(kd, s.Kind) {
				continue
			}
			out = append(out, s.raw)
		}
		return jsonResponse(http.StatusOK, map[string]any{"streams": out}), nil
	case "page", "card":
		return p.serveUI(ctx, hook, req)
	}
	return jsonResponse(http.StatusNotFound, map[string]string{"error": "no such route"}), nil
}

// storedStats is one stream's statistics as stored, and decoded.
type storedStats struct {
	Stats
	raw json.RawMessage
}

// stored returns the statistics of every stream the store keeps, newest
// first.
func (p *statsPlugin) stored(ctx context.Context) ([]storedStats, error) {
	keys, err := p.host.KV.List(ctx, "streams/", 0)
	if err != nil {
		return nil, err
	}
	sort.Sort(sort.Reverse(sort.StringSlice(keys))) // newest first
	out := make([]storedStats, 0, len(keys))
	for _, k := range keys {
		v, ok, err := p.host.KV.Get(ctx, k)
		if err != nil {
			return nil, err
		}
		s := storedStats{raw: v}
		if !ok || json.Unmarshal(v, &s.Stats) != nil {
			continue
		}
		out = append(out, s)
	}
	return out, nil
}

func jsonResponse(status int, v any) *plugin.Response {
	b, _ := json.Marshal(v)
	return &plugin.Response{Status: status, Header: http.Header{"Content-Type": {"application/json"}}, Body: b}
}

func main() {
	if err := plugin.Serve(&statsPlugin{}, plugin.WithVersion("1.1.0")); err != nil {
		fmt.Fprintln(os.Stderr, "stream-stats:", err)
		os.Exit(1)
	}
}
