package plugin

import (
	"context"
	"net"
	"net/http"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// badge is the bench harness's plugin (bench/plugins/badge) in miniature.
type badge struct{}

func (badge) HookResponse(ctx context.Context, hook string, req *Request, resp *Response) error {
	resp.Header.Set("X-Dim-Badge", "plugin-approved")
	return nil
}

// BenchmarkLaneHook is one response-hook call on a hook lane, the caller's
// side (wire.CallHook, as a host's direct lane makes it) and the plugin
// SDK's side (decode, handler, diff, encode) in one process, so that
// -cpuprofile and -benchmem see both; the workload is the bench harness's.
func BenchmarkLaneHook(b *testing.B) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		b.Fatal(err)
	}
	var cs [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "lane")
		if cs[i], err = net.FileConn(f); err != nil {
			b.Fatal(err)
		}
		f.Close()
	}
	s := newServer(badge{}, config{})
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- wire.ServeLane(ctx, cs[1], s.laneHook) }()
	lane := wire.NewLaneClient(cs[0])
	defer func() { lane.Close(); cancel(); <-served }()

	req := &wire.Request{Method: "GET", Path: "/api/v1/media/42", Route: "/api/v1/media/:id",
		Params: []wire.Param{{Name: "id", Value: "42"}}, Header: http.Header{}, Body: make([]byte, 128)}
	for i := 0; i < 8; i++ {
		req.Header.Set("X-Header-"+string(rune('a'+i)), "some header value")
	}
	resp := &wire.Response{Status: 200, Header: http.Header{"Content-Type": {"application/json"}, "Cache-Control": {"no-store"}},
		Body: make([]byte, 64)}
	call := &wire.HookCall{Hook: "badge", Phase: schema.Phase_response, Timeout: 5 * time.Second, Request: req, Response: resp}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		a, herr := wire.CallHook(ctx, lane, call, "badge")
		if herr != nil || a.Kind != schema.HookResult_Which_mutateResponse {
			b.Fatalf("%+v %v", a, herr)
		}
	}
}
