package wire

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"runtime"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// Fuzz targets for what a lane peer reads: the framing (readFrame, and
// ServeLane as a whole over a socket) and the request/response structs in
// the frames (ReadRequest, ReadResponse, the mutations). Seeds are real
// frames built with the same code the host and daemon use; crashers found
// so far are committed under testdata/fuzz/<FuzzName>/.

// laneFrameBytes encodes one lane frame with the given id as it goes on the
// wire.
func laneFrameBytes(tb testing.TB, id uint64, fill func(schema.LaneFrame) error) []byte {
	tb.Helper()
	msg, f, err := NewFrame()
	if err != nil {
		tb.Fatal(err)
	}
	defer msg.Release()
	if err := fill(f); err != nil {
		tb.Fatal(err)
	}
	body, err := msg.Marshal()
	if err != nil {
		tb.Fatal(err)
	}
	out := binary.LittleEndian.AppendUint32(nil, uint32(8+len(body)))
	out = binary.LittleEndian.AppendUint64(out, id)
	return append(out, body...)
}

func seedRequest() *Request {
	return &Request{
		Method:   "GET",
		Route:    "/api/v1/media/:id",
		Path:     "/api/v1/media/42",
		RawQuery: "a=1&b=2",
		Header:   http.Header{"Accept": {"application/json"}, "X-Many": {"1", "2"}},
		Body:     []byte(`{"hello":"world"}`),
		Params:   []Param{{Name: "id", Value: "42"}},
		UserID:   7, Authenticated: true,
		RemoteAddr: "127.0.0.1:5555", RequestID: "req-1",
		ReceivedAt: time.Unix(0, 1700000000123456789),
	}
}

func seedResponse() *Response {
	return &Response{Status: 200, Header: http.Header{"Content-Type": {"application/json"}}, Body: []byte(`{"id":42}`)}
}

// seedFrames returns real frames: a request-phase and a response-phase
// dispatch (host → daemon), a hook call (daemon → plugin), its results, an
// error and a cancel.
func seedFrames(tb testing.TB) map[string][]byte {
	dispatch := func(phase schema.Phase) func(schema.LaneFrame) error {
		return func(f schema.LaneFrame) error {
			ld, err := f.NewDispatch()
			if err != nil {
				return err
			}
			ld.SetPhase(phase)
			rq, err := ld.NewRequest()
			if err != nil {
				return err
			}
			if err := WriteRequest(rq, seedRequest()); err != nil {
				return err
			}
			if phase == schema.Phase_request {
				return nil
			}
			rs, err := ld.NewResponse()
			if err != nil {
				return err
			}
			return WriteResponse(rs, seedResponse())
		}
	}
	return map[string][]byte{
		"dispatch-request":  laneFrameBytes(tb, 1, dispatch(schema.Phase_request)),
		"dispatch-response": laneFrameBytes(tb, 2, dispatch(schema.Phase_response)),
		"hook": laneFrameBytes(tb, 3, func(f schema.LaneFrame) error {
			hc, err := f.NewHook()
			if err != nil {
				return err
			}
			hc.SetPhase(schema.Phase_request)
			hc.SetTimeoutMicros(250000)
			rq, err := hc.NewRequest()
			if err != nil {
				return err
			}
			if err := WriteRequest(rq, seedRequest()); err != nil {
				return err
			}
			return hc.SetHook("tag")
		}),
		"hook-result": laneFrameBytes(tb, 3, func(f schema.LaneFrame) error {
			hr, err := f.NewHookResult()
			if err != nil {
				return err
			}
			mr, err := hr.NewMutateResponse()
			if err != nil {
				return err
			}
			return WriteResponseMutation(mr, &ResponseMutation{Status: 201, ReplaceHeader: true, Header: http.Header{"X-Tag": {"1"}}, ReplaceBody: true, Body: []byte("x")})
		}),
		"dispatch-result": laneFrameBytes(tb, 1, func(f schema.LaneFrame) error {
			dr, err := f.NewDispatchResult()
			if err != nil {
				return err
			}
			mr, err := dr.Outcome().NewMutateRequest()
			if err != nil {
				return err
			}
			return WriteRequestMutation(mr, &RequestMutation{ReplaceQuery: true, RawQuery: "c=3", ReplaceBody: true, Body: []byte("y")})
		}),
		"error":  laneFrameBytes(tb, 4, func(f schema.LaneFrame) error { return f.SetError("boom") }),
		"cancel": laneFrameBytes(tb, 1, func(f schema.LaneFrame) error { f.SetCancel(); return nil }),
	}
}

// addLaneSeeds adds each real frame, a stream of several of them, and the
// framing edge cases.
func addLaneSeeds(f *testing.F) {
	fr := seedFrames(f)
	for _, name := range []string{"dispatch-request", "dispatch-response", "hook", "hook-result", "dispatch-result", "error", "cancel"} {
		f.Add(fr[name])
	}
	var stream []byte
	for _, name := range []string{"dispatch-request", "hook", "cancel", "dispatch-response", "dispatch-result"} {
		stream = append(stream, fr[name]...)
	}
	f.Add(stream)
	f.Add(fr["hook"][:len(fr["hook"])-3])                         // truncated body
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1, 0, 0, 0, 0, 0, 0, 0}) // length over the limit
	huge := binary.LittleEndian.AppendUint32(nil, maxLaneFrame)   // the largest allowed length, no body
	f.Add(append(huge, 1, 0, 0, 0, 0, 0, 0, 0))
	f.Add([]byte{4, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0}) // length under the id
	f.Add([]byte{8, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0}) // empty message
	f.Add([]byte{})
}

// FuzzLaneReadFrame reads frames from arbitrary bytes until the first error:
// no panic, each frame is accounted for by the input, and the reader never
// allocates much more than it was sent (a length prefix alone must not make
// it allocate that length).
func FuzzLaneReadFrame(f *testing.F) {
	addLaneSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		r := bufio.NewReaderSize(bytes.NewReader(data), 64<<10)
		consumed := 0
		var err error
		for {
			var msg *capnp.Message
			if _, msg, err = readFrame(r); err != nil {
				break
			}
			consumed += 4 + int(binary.LittleEndian.Uint32(data[consumed:]))
			if consumed > len(data) {
				t.Fatalf("read a frame beyond the input (%d > %d bytes)", consumed, len(data))
			}
			if lf, err := schema.ReadRootLaneFrame(msg); err == nil {
				_ = lf.Which()
			}
			msg.Release()
		}
		runtime.ReadMemStats(&after)
		// bufio's buffer, the frames (at most the input) and slack.
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 4*uint64(len(data))+(2<<20) {
			t.Fatalf("reading %d bytes allocated %d bytes", len(data), grew)
		}
		if consumed == len(data) {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("input ended at a frame boundary, got %v", err)
			}
		} else if err == nil || errors.Is(err, io.EOF) {
			t.Fatalf("%d bytes left after the frames, got %v", len(data)-consumed, err)
		}
	})
}

// fuzzHandler decodes what a request frame carries the way the daemon
// (dispatch) and the plugin SDK (hook) do, and answers.
func fuzzHandler(ctx context.Context, req, reply schema.LaneFrame) error {
	switch req.Which() {
	case schema.LaneFrame_Which_dispatch:
		ld, err := req.Dispatch()
		if err != nil {
			return err
		}
		rq, err := ld.Request()
		if err != nil {
			return err
		}
		if _, err := ReadRequest(rq); err != nil {
			return err
		}
		rs, err := ld.Response()
		if err != nil {
			return err
		}
		if _, err := ReadResponse(rs); err != nil {
			return err
		}
		dr, err := reply.NewDispatchResult()
		if err != nil {
			return err
		}
		dr.Outcome().SetContinue()
		return nil
	case schema.LaneFrame_Which_hook:
		hc, err := req.Hook()
		if err != nil {
			return err
		}
		if _, err := hc.Hook(); err != nil {
			return err
		}
		rq, err := hc.Request()
		if err != nil {
			return err
		}
		if _, err := ReadRequest(rq); err != nil {
			return err
		}
		hr, err := reply.NewHookResult()
		if err != nil {
			return err
		}
		hr.SetContinue()
		return nil
	}
	return errors.New("unexpected frame")
}

// FuzzServeLane feeds arbitrary bytes to ServeLane, and to
// ServeLaneLimited as the daemon serves hosts, over a socket pair, as a
// hostile host or daemon would: no panic, every reply is a well-formed
// frame answering an id that was asked, the server ends (nil after a clean
// end of input, an error otherwise) in bounded time, and its goroutines
// end.
func FuzzServeLane(f *testing.F) {
	addLaneSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		serveLaneOnce(t, data, maxLaneFrame, ServeLane)
		const max = 1 << 20
		lim := Limits{MaxMessage: max, MessageTimeout: 5 * time.Second, Budget: NewBudget(4 << 20)}
		serveLaneOnce(t, data, max+8, func(ctx context.Context, c net.Conn, h LaneHandler) error {
			return ServeLaneLimited(ctx, c, h, lim, nil)
		})
		if n := lim.Budget.InUse(); n != 0 {
			t.Fatalf("%d bytes of the receive budget still held after the lane ended", n)
		}
	})
}

func serveLaneOnce(t *testing.T, data []byte, maxFrame uint32, serve func(context.Context, net.Conn, LaneHandler) error) {
	// What a correct reader makes of the input: the request ids and
	// whether it ends cleanly.
	asked := map[uint64]int{}
	r := bufio.NewReader(bytes.NewReader(data))
	var perr error
	for {
		if hdr, err := r.Peek(4); err == nil && binary.LittleEndian.Uint32(hdr) > maxFrame {
			perr = errors.New("frame over the limit")
			break
		}
		id, msg, err := readFrame(r)
		if err != nil {
			perr = err
			break
		}
		if lf, err := schema.ReadRootLaneFrame(msg); err != nil || lf.Which() != schema.LaneFrame_Which_cancel {
			asked[id]++
		}
		msg.Release()
	}
	clean := errors.Is(perr, io.EOF)

	goroutines := runtime.NumGoroutine()
	a, b := lanePair(t)
	served := make(chan error, 1)
	go func() { served <- serve(context.Background(), b, fuzzHandler) }()
	type reply struct {
		id  uint64
		err error
		w   schema.LaneFrame_Which
	}
	replies := make(chan []reply, 1)
	go func() {
		var got []reply
		rr := bufio.NewReader(a)
		for {
			id, msg, err := readFrame(rr)
			if err != nil {
				break
			}
			lf, err := schema.ReadRootLaneFrame(msg)
			got = append(got, reply{id: id, err: err, w: lf.Which()})
			msg.Release()
		}
		replies <- got
	}()
	_, _ = a.Write(data) // fails once the server gave up on the input
	_ = a.(*net.UnixConn).CloseWrite()
	var err error
	select {
	case err = <-served:
	case <-time.After(10 * time.Second):
		t.Fatal("the lane server did not return 10s after its input ended")
	}
	if clean && err != nil {
		t.Fatalf("well-framed input: the lane server returned %v", err)
	}
	if !clean && err == nil {
		t.Fatalf("input a reader refuses (%v): the lane server returned nil", perr)
	}
	var got []reply
	select {
	case got = <-replies:
	case <-time.After(10 * time.Second):
		t.Fatal("the server's end stayed open after the lane server returned")
	}
	a.Close()
	for _, rp := range got {
		if rp.err != nil {
			t.Fatalf("reply %d: %v", rp.id, rp.err)
		}
		switch rp.w {
		case schema.LaneFrame_Which_dispatchResult, schema.LaneFrame_Which_hookResult, schema.LaneFrame_Which_error:
		default:
			t.Fatalf("reply %d is a %s frame", rp.id, rp.w)
		}
		if asked[rp.id] == 0 {
			t.Fatalf("reply for id %d, which was not asked (or answered twice)", rp.id)
		}
		asked[rp.id]--
	}
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > goroutines {
		if time.Now().After(deadline) {
			buf := make([]byte, 1<<16)
			t.Fatalf("%d goroutines left behind:\n%s", runtime.NumGoroutine()-goroutines, buf[:runtime.Stack(buf, true)])
		}
		time.Sleep(time.Millisecond)
	}
}

// FuzzLaneConvert reads arbitrary Cap'n Proto messages as the structs a
// lane frame carries: no panic, and whatever is accepted survives a write
// and a second read unchanged.
func FuzzLaneConvert(f *testing.F) {
	for _, fr := range seedFrames(f) {
		f.Add(fr[12:])
	}
	f.Add(zeroSizedListRequest(8<<20-16, 0))
	f.Add(zeroSizedListRequest(0, 8<<20-16))
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := capnp.Unmarshal(data)
		if err != nil {
			return
		}
		root, err := msg.Root()
		if err != nil {
			return
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		defer func() {
			runtime.ReadMemStats(&after)
			// The decoded copies, the round trips' messages and slack:
			// nothing proportional to a list's declared length.
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 64*uint64(len(data))+(8<<20) {
				t.Fatalf("decoding a %d-byte message allocated %d bytes", len(data), grew)
			}
		}()
		s := root.Struct()
		// The root as each struct the lane carries, and the structs under
		// a LaneFrame root.
		checkRequest(t, schema.HttpRequest(s))
		checkResponse(t, schema.HttpResponse(s))
		checkRequestMutation(t, schema.RequestMutation(s))
		checkResponseMutation(t, schema.ResponseMutation(s))
		lf := schema.LaneFrame(s)
		switch lf.Which() {
		case schema.LaneFrame_Which_dispatch:
			if ld, err := lf.Dispatch(); err == nil {
				if rq, err := ld.Request(); err == nil {
					checkRequest(t, rq)
				}
				if rs, err := ld.Response(); err == nil {
					checkResponse(t, rs)
				}
			}
		case schema.LaneFrame_Which_hook:
			if hc, err := lf.Hook(); err == nil {
				if rq, err := hc.Request(); err == nil {
					checkRequest(t, rq)
				}
			}
		case schema.LaneFrame_Which_hookResult:
			if hr, err := lf.HookResult(); err == nil {
				switch hr.Which() {
				case schema.HookResult_Which_mutateRequest:
					if m, err := hr.MutateRequest(); err == nil {
						checkRequestMutation(t, m)
					}
				case schema.HookResult_Which_mutateResponse:
					if m, err := hr.MutateResponse(); err == nil {
						checkResponseMutation(t, m)
					}
				case schema.HookResult_Which_respond:
					if rs, err := hr.Respond(); err == nil {
						checkResponse(t, rs)
					}
				}
			}
		}
	})
}

// newStruct returns a fresh root struct of the given kind.
func newStruct[S any](t *testing.T, newRoot func(*capnp.Segment) (S, error)) S {
	_, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
	if err != nil {
		t.Fatal(err)
	}
	s, err := newRoot(seg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func checkRequest(t *testing.T, s schema.HttpRequest) {
	r, err := ReadRequest(s)
	if err != nil {
		return
	}
	out := newStruct(t, schema.NewRootHttpRequest)
	if err := WriteRequest(out, r); err != nil {
		t.Fatalf("write accepted request %+v: %v", r, err)
	}
	back, err := ReadRequest(out)
	if err != nil {
		t.Fatalf("read back accepted request %+v: %v", r, err)
	}
	if !reflect.DeepEqual(r, back) {
		t.Fatalf("request changed in a round trip:\n%+v\n%+v", r, back)
	}
}

func checkResponse(t *testing.T, s schema.HttpResponse) {
	r, err := ReadResponse(s)
	if err != nil {
		return
	}
	out := newStruct(t, schema.NewRootHttpResponse)
	if err := WriteResponse(out, r); err != nil {
		t.Fatalf("write accepted response %+v: %v", r, err)
	}
	back, err := ReadResponse(out)
	if err != nil {
		t.Fatalf("read back accepted response %+v: %v", r, err)
	}
	if !reflect.DeepEqual(r, back) {
		t.Fatalf("response changed in a round trip:\n%+v\n%+v", r, back)
	}
}

func checkRequestMutation(t *testing.T, s schema.RequestMutation) {
	m, err := ReadRequestMutation(s)
	if err != nil {
		return
	}
	out := newStruct(t, schema.NewRootRequestMutation)
	if err := WriteRequestMutation(out, &m); err != nil {
		t.Fatalf("write accepted request mutation %+v: %v", m, err)
	}
	back, err := ReadRequestMutation(out)
	if err != nil {
		t.Fatalf("read back accepted request mutation %+v: %v", m, err)
	}
	if !sameMutation(m.Header, back.Header, m.Body, back.Body) || m.ReplaceHeader != back.ReplaceHeader ||
		m.ReplaceQuery != back.ReplaceQuery || m.RawQuery != back.RawQuery || m.ReplaceBody != back.ReplaceBody {
		t.Fatalf("request mutation changed in a round trip:\n%+v\n%+v", m, back)
	}
}

func checkResponseMutation(t *testing.T, s schema.ResponseMutation) {
	m, err := ReadResponseMutation(s)
	if err != nil {
		return
	}
	out := newStruct(t, schema.NewRootResponseMutation)
	if err := WriteResponseMutation(out, &m); err != nil {
		t.Fatalf("write accepted response mutation %+v: %v", m, err)
	}
	back, err := ReadResponseMutation(out)
	if err != nil {
		t.Fatalf("read back accepted response mutation %+v: %v", m, err)
	}
	if !sameMutation(m.Header, back.Header, m.Body, back.Body) || m.Status != back.Status ||
		m.ReplaceHeader != back.ReplaceHeader || m.ReplaceBody != back.ReplaceBody {
		t.Fatalf("response mutation changed in a round trip:\n%+v\n%+v", m, back)
	}
}

// sameMutation compares headers and bodies of mutations, where an empty
// replacement body may come back nil.
func sameMutation(h1, h2 http.Header, b1, b2 []byte) bool {
	return HeadersEqual(h1, h2) && bytes.Equal(b1, b2)
}

// zeroSizedListRequest is a message of about 80 bytes whose root, read as
// an HttpRequest, has headers and params lists of n zero-sized structs
// each (a null list when n is 0).
func zeroSizedListRequest(headers, params uint32) []byte {
	// Word 0: the root pointer (a struct right after it with no data and 7
	// pointers); words 1-7: the struct's pointers; word 8: the tag word of
	// both composite lists (n elements of no data and no pointers).
	words := make([]uint64, 9)
	words[0] = 7 << 48
	listPtr := func(at int) uint64 { return 1 | uint64(8-at-1)<<2 | 7<<32 }
	n := max(headers, params)
	words[8] = uint64(n) << 2
	if headers > 0 {
		words[5] = listPtr(5) // headers @4
	}
	if params > 0 {
		words[7] = listPtr(7) // params @6
	}
	out := binary.LittleEndian.AppendUint32(nil, 0) // one segment
	out = binary.LittleEndian.AppendUint32(out, uint32(len(words)))
	for _, w := range words {
		out = binary.LittleEndian.AppendUint64(out, w)
	}
	return out
}

// TestReadRequestZeroSizedLists is the regression test for the first
// finding of FuzzLaneConvert's seeds: an 80-byte message declaring 8
// million empty headers made ReadRequest allocate 768 MB and spend 2 s
// (256 MB for params), on the daemon's side of a host's lane and on a
// plugin's side of its hook calls.
func TestReadRequestZeroSizedLists(t *testing.T) {
	for _, tc := range []struct {
		headers, params uint32
		ok              bool
	}{
		{8<<20 - 16, 0, false},
		{0, 8<<20 - 16, false},
		{MaxHeaders + 1, 0, false},
		{0, MaxParams + 1, false},
		{MaxHeaders, 0, true},
		{0, MaxParams, true},
	} {
		msg, err := capnp.Unmarshal(zeroSizedListRequest(tc.headers, tc.params))
		if err != nil {
			t.Fatal(err)
		}
		rq, err := schema.ReadRootHttpRequest(msg)
		if err != nil {
			t.Fatal(err)
		}
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err = ReadRequest(rq)
		runtime.ReadMemStats(&after)
		if (err == nil) != tc.ok {
			t.Errorf("%d headers, %d params: error %v, want ok=%v", tc.headers, tc.params, err, tc.ok)
		}
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 4<<20 {
			t.Errorf("%d headers, %d params: reading 80 bytes allocated %d bytes", tc.headers, tc.params, grew)
		}
	}
}
