package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
	"github.com/dimplugd/dimplugd/sdk-go/plugin/plugintest"
)

// A small fMP4 writer for the tests.

func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func u64(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }

func mkbox(typ string, parts ...[]byte) []byte {
	body := bytes.Join(parts, nil)
	return append(append(u32(uint32(8+len(body))), typ...), body...)
}

func full(typ string, version byte, flags uint32, parts ...[]byte) []byte {
	return mkbox(typ, append([][]byte{u32(uint32(version)<<24 | flags)}, parts...)...)
}

// initSeg is ftyp + moov with an mdhd of timescale ts and a trex with a
// default sample duration and flags.
func initSeg(ts, defDur, defFlags uint32) []byte {
	mdhd := full("mdhd", 1, 0, u64(0), u64(0), u32(ts), u64(0), u32(0x55c40000))
	return bytes.Join([][]byte{
		mkbox("ftyp", []byte("iso6\x00\x00\x00\x00iso6dash")),
		mkbox("moov",
			full("mvhd", 0, 0, make([]byte, 96)),
			mkbox("trak", full("tkhd", 0, 3, make([]byte, 80)), mkbox("mdia", mdhd)),
			mkbox("mvex", full("trex", 0, 0, u32(1), u32(1), u32(defDur), u32(0), u32(defFlags)))),
	}, nil)
}

type seg struct {
	samples   int
	dur       uint32 // per sample; 0: not in trun (the trex default applies)
	size      int    // mdat payload
	free      string // a free box with this payload, if not empty
	largeMdat bool
	trexFlags bool // tfhd declares no default sample flags: trex's apply
}

// media builds a media segment: first sample sync, the others non-sync
// (tfhd's default flags).
func media(s seg) []byte {
	flags := uint32(0x1 | 0x4 | 0x200)
	if s.dur > 0 {
		flags |= 0x100
	}
	var per [][]byte
	for i := 0; i < s.samples; i++ {
		if s.dur > 0 {
			per = append(per, u32(s.dur))
		}
		n := s.size / s.samples
		if i == 0 {
			n += s.size % s.samples
		}
		per = append(per, u32(uint32(n)))
	}
	trun := full("trun", 0, flags, append([][]byte{u32(uint32(s.samples)), u32(0), u32(0x02000000)}, per...)...)
	tfhd := full("tfhd", 0, 0x020020, u32(1), u32(0x01010000))
	if s.trexFlags {
		tfhd = full("tfhd", 0, 0x020000, u32(1))
	}
	moof := mkbox("moof", full("mfhd", 0, 0, u32(1)), mkbox("traf", tfhd, full("tfdt", 1, 0, u64(0)), trun))
	var mdat []byte
	if s.largeMdat {
		mdat = append(append(append(u32(1), "mdat"...), u64(uint64(16+s.size))...), make([]byte, s.size)...)
	} else {
		mdat = mkbox("mdat", make([]byte, s.size))
	}
	parts := [][]byte{mkbox("styp", []byte("msdh\x00\x00\x00\x00msdh"))}
	if s.free != "" {
		parts = append(parts, mkbox("free", []byte(s.free)))
	}
	return bytes.Join(append(parts, moof, mdat), nil)
}

// clock is a fake time source: each reading is step later.
type clock struct {
	t    time.Time
	step time.Duration
}

func (c *clock) now() time.Time {
	c.t = c.t.Add(c.step)
	return c.t
}

var t0 = time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)

func start(t *testing.T, step time.Duration, opts ...plugintest.Option) (*statsPlugin, *plugintest.Harness) {
	p := &statsPlugin{now: (&clock{t: t0, step: step}).now}
	h := plugintest.Start(t, p, append([]plugintest.Option{plugintest.WithName("stream-stats")}, opts...)...)
	return p, h
}

func observe(p *statsPlugin, s *plugin.Stream, seq uint64, dur int64, key bool, data []byte) {
	// Observers get frames from the SDK's frame server; plugintest cannot
	// send frames, so the test calls the handler as the SDK would.
	p.ObserveFrame(context.Background(), s, &plugin.Frame{Seq: seq, Duration: dur, KeyFrame: key, ContentType: "video/iso.segment", Data: data})
}

func route(t *testing.T, h *plugintest.Harness, hook, id, query string, user int64) (int, []byte) {
	t.Helper()
	req := &plugin.Request{Method: "GET", Path: "/api/v1/plugins/stream-stats/streams", RawQuery: query, UserID: user, Authenticated: user != 0}
	if hook == "stream" {
		req.Path += "/" + id
		req.Params = []plugin.Param{{Name: "id", Value: id}}
	}
	resp, err := h.Route(hook, req)
	if err != nil {
		t.Fatal(err)
	}
	return resp.Status, resp.Body
}

func list(t *testing.T, h *plugintest.Harness, query string) []Stats {
	t.Helper()
	status, body := route(t, h, "streams", "", query, 1)
	var out struct{ Streams []Stats }
	if status != 200 || json.Unmarshal(body, &out) != nil {
		t.Fatalf("%d %s", status, body)
	}
	return out.Streams
}

func TestStats(t *testing.T) {
	p, h := start(t, 250*time.Millisecond)
	video := &plugin.Stream{Kind: "video/segment", Stage: "video", Role: "observe",
		Meta: plugin.StreamMeta{MediaID: 42, Track: "42-video", Codec: "avc1.64001f", Timescale: 90000}}
	observe(p, video, 0, 0, false, initSeg(90000, 3750, 0x01010000))
	sizes := []int{600_000, 580_000, 620_000, 300_000}
	var total int64 = int64(len(initSeg(90000, 3750, 0x01010000)))
	for i, n := range sizes {
		s := seg{samples: 120, dur: 3750, size: n}
		if i == 1 {
			s.free = "dimplugd:segment-tagger seq=2\x00\x00\x00"
		}
		if i == 3 {
			s.largeMdat, s.samples = true, 60 // a short last segment: 2.5 s
		}
		b := media(s)
		total += int64(len(b))
		observe(p, video, uint64(i+1), int64(s.samples)*3750, true, b)
	}
	sts := list(t, h, "")
	if len(sts) != 1 {
		t.Fatalf("%d streams", len(sts))
	}
	st := sts[0]
	seg := func(i int) int64 {
		s := seg{samples: 120, dur: 3750, size: sizes[i]}
		if i == 1 {
			s.free = "dimplugd:segment-tagger seq=2\x00\x00\x00"
		}
		if i == 3 {
			s.largeMdat, s.samples = true, 60
		}
		return int64(len(media(s)))
	}
	segBytes := seg(0) + seg(1) + seg(2) + seg(3)
	want := Stats{ID: 1, Kind: "video/segment", MediaID: 42, Track: "42-video", Codec: "avc1.64001f", Timescale: 90000,
		FirstSeen: t0.Add(250 * time.Millisecond), LastSeen: t0.Add(5 * 250 * time.Millisecond),
		Frames: 5, InitSegments: 1, Segments: 4, Bytes: total, SegmentBytes: segBytes,
		MinSegment: seg(3), MaxSegment: seg(2), AvgSegment: segBytes / 4,
		Duration: 420 * 3750, DurationSeconds: 17.5, DurationSource: "frame",
		Bitrate: int64(float64(segBytes*8) / 17.5), PeakBitrate: int64(float64(seg(2)*8) / 5),
		KeyFrames: 4, Samples: 420, SyncSamples: 4, Tagged: 1, LastTag: "dimplugd:segment-tagger seq=2",
		InterArrival: Timing{Min: 250, Mean: 250, Max: 250}, WallSeconds: 1, RealtimeFactor: 17.5}
	if got, exp := fmt.Sprintf("%+v", st), fmt.Sprintf("%+v", want); got != exp {
		t.Errorf("stats\n got %s\nwant %s", got, exp)
	}
	// Stored in the KV, with the id counter.
	kv := h.KV()
	var stored Stats
	if err := json.Unmarshal(kv["streams/00000001"], &stored); err != nil || stored.Segments != 4 {
		t.Errorf("KV streams/00000001 = %s", kv["streams/00000001"])
	}
	if string(kv["next-id"]) != "2" {
		t.Errorf("KV next-id = %q", kv["next-id"])
	}
	// One stream by id.
	if status, body := route(t, h, "stream", "1", "", 1); status != 200 || !bytes.Contains(body, []byte(`"segments":4`)) {
		t.Errorf("stream 1: %d %s", status, body)
	}
	if bytes.Contains(kv["streams/00000001"], []byte(`"ended`)) {
		t.Errorf("a running stream is marked ended: %s", kv["streams/00000001"])
	}
	// The end of a stream is recorded: run to its end, or cancelled.
	audio := &plugin.Stream{Kind: "audio/segment", Stage: "audio", Role: "observe", Meta: plugin.StreamMeta{MediaID: 42, Track: "42-audio"}}
	observe(p, audio, 0, 0, false, initSeg(48000, 1024, 0))
	p.CloseStream(context.Background(), video, nil)
	p.CloseStream(context.Background(), audio, plugin.ErrStreamCanceled)
	for id, how := range map[string]string{"1": `"ended_how":"completed"`, "2": `"ended_how":"cancelled"`} {
		if status, body := route(t, h, "stream", id, "", 1); status != 200 || !bytes.Contains(body, []byte(how)) || !bytes.Contains(body, []byte(`"ended":"`)) {
			t.Errorf("stream %s after its end: %d %s", id, status, body)
		}
	}
}

// Without the host's durations and timescale, the segments' samples and the
// init segment's mdhd and trex give them.
func TestStatsFromBoxes(t *testing.T) {
	p, h := start(t, time.Second)
	audio := &plugin.Stream{Kind: "audio/segment", Meta: plugin.StreamMeta{MediaID: 7, Track: "7-audio"}}
	observe(p, audio, 10, 0, false, initSeg(48000, 1024, 0)) // every sample a sync sample
	for i := 0; i < 3; i++ {
		observe(p, audio, uint64(11+i), 0, false, media(seg{samples: 235, size: 75_000, trexFlags: true})) // durations and flags: the trex default
	}
	observe(p, audio, 16, 0, false, []byte("not a box")) // 14 and 15 never seen
	st := list(t, h, "track=7-audio")[0]
	if st.Timescale != 48000 || st.DurationSource != "trun" || st.Duration != 3*235*1024 || st.Samples != 705 || st.SyncSamples != 705 || st.KeyFrames != 0 {
		t.Errorf("from boxes: %+v", st)
	}
	if st.Missed != 2 || st.OtherFrames != 1 || st.Errors != 1 || st.LastError == "" {
		t.Errorf("missed %d, other %d, errors %d %q", st.Missed, st.OtherFrames, st.Errors, st.LastError)
	}
	if want := int64(float64(st.SegmentBytes*8) / (float64(3*235*1024) / 48000)); st.Bitrate != want {
		t.Errorf("bitrate %d, want %d", st.Bitrate, want)
	}
}

func TestRoutes(t *testing.T) {
	p, h := start(t, time.Millisecond, plugintest.WithKV(map[string][]byte{"next-id": []byte("7")}))
	for i, track := range []string{"42-video", "42-audio", "13-video"} {
		s := &plugin.Stream{Kind: "video/segment", Meta: plugin.StreamMeta{MediaID: int64(42 - 29*(i/2)), Track: track, Timescale: 90000}}
		observe(p, s, 0, 450000, true, media(seg{samples: 10, dur: 45000, size: 1000}))
	}
	ids := func(sts []Stats) (out []int64) {
		for _, s := range sts {
			out = append(out, s.ID)
		}
		return out
	}
	for q, want := range map[string]string{
		"":               "[9 8 7]", // newest first; ids go on from the stored counter
		"limit=2":        "[9 8]",
		"media=42":       "[8 7]",
		"track=13-video": "[9]",
		"track=nope":     "[]",
	} {
		if got := fmt.Sprint(ids(list(t, h, q))); got != want {
			t.Errorf("?%s: ids %s, want %s", q, got, want)
		}
	}
	for _, tc := range []struct {
		hook, id string
		user     int64
		status   int
	}{
		{"streams", "", 0, http.StatusUnauthorized},
		{"stream", "8", 0, http.StatusUnauthorized},
		{"stream", "8", 2, http.StatusOK},
		{"stream", "6", 2, http.StatusNotFound},
		{"stream", "x", 2, http.StatusBadRequest},
	} {
		if status, body := route(t, h, tc.hook, tc.id, "", tc.user); status != tc.status {
			t.Errorf("%s %s as %d: %d %s, want %d", tc.hook, tc.id, tc.user, status, body, tc.status)
		}
	}
}

// The store keeps the last 100 streams.
func TestPrune(t *testing.T) {
	p, h := start(t, time.Millisecond)
	for i := 0; i < keep+5; i++ {
		observe(p, &plugin.Stream{Kind: "video/segment", Meta: plugin.StreamMeta{Track: fmt.Sprint(i)}}, 0, 0, false, initSeg(90000, 3750, 0))
	}
	list(t, h, "") // flushes
	n := 0
	for k := range h.KV() {
		if len(k) > 8 && k[:8] == "streams/" {
			n++
		}
	}
	if _, ok := h.KV()["streams/00000005"]; n != keep || ok {
		t.Errorf("%d streams kept (stream 5 kept: %v), want the last %d", n, ok, keep)
	}
}
