package daemon

import (
	"context"
	"net/http"
	"sort"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/host"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// BenchmarkHookedDispatch measures one response-phase hook through the
// daemon to a sandboxed plugin and back (the bench/ harness compares it
// with go-plugin; this keeps a number next to the code).
func BenchmarkHookedDispatch(b *testing.B) {
	td := startWithPlugins(b, fastSupervision,
		testPlugin{name: "bench", frames: "", extra: hooks("request", "GET", "/api/v1/media/:id", "2s", "fail-open", 0)},
	)
	for _, mode := range []struct {
		name string
		opts []host.Option
	}{{"lane", nil}, {"rpc", []host.Option{host.WithoutLane()}}} {
		b.Run(mode.name, func(b *testing.B) { benchDispatch(b, dial(b, td.socket, mode.opts...)) })
	}
}

func benchDispatch(b *testing.B, s *host.Session) {
	req := get("/api/v1/media/42")
	for i := 0; i < 8; i++ {
		req.Header.Set("X-Header-"+string(rune('a'+i)), "some header value")
	}
	req.Body = make([]byte, 128)
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		res, err := s.Dispatch(ctx, host.PhaseRequest, req, nil)
		if err != nil || res.Kind != host.MutateRequest {
			b.Fatalf("dispatch: %v %+v", err, res)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	_ = http.MethodGet
}

// BenchmarkPluginHop measures the daemon → plugin half of a hooked request:
// dispatch called in-process, one hook on the plugin's lane.
func BenchmarkPluginHop(b *testing.B) {
	td := startWithPlugins(b, fastSupervision,
		testPlugin{name: "bench", frames: "", extra: hooks("request", "GET", "/api/v1/media/:id", "2s", "fail-open", 0)},
	)
	req := get("/api/v1/media/42")
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if out, err := td.Daemon.dispatch(ctx, schema.Phase_request, req, nil); err != nil || out.Kind != schema.DispatchResult_outcome_Which_mutateRequest {
			b.Fatalf("dispatch: %+v, %v", out, err)
		}
		lat = append(lat, time.Since(t0))
	}
	b.StopTimer()
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
}

// BenchmarkHostHopOnly measures the host → daemon half alone: a dispatch
// that matches no hook, over the host's hook lane, in-process.
func BenchmarkHostHopOnly(b *testing.B) {
	td := startDaemon(b, testRuntime(b), fastSupervision)
	s := dial(b, td.socket)
	req := get("/nothing/here")
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		if _, err := s.Dispatch(ctx, host.PhaseRequest, req, nil); err != nil {
			b.Fatal(err)
		}
		lat = append(lat, time.Since(t0))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
}

// BenchmarkStream measures frames through a sandboxed pass-through plugin,
// the host and the daemon in this process (so that -cpuprofile sees both),
// at most 1024 frames in flight.
func BenchmarkStream(b *testing.B) {
	td := startWithPlugins(b, fastSupervision,
		testPlugin{name: "passer", frames: "pass", extra: streamStage("pass", "video/segment", "transform", "fail-closed", "10s", 0)},
	)
	s := dial(b, td.socket)
	for _, bc := range []struct {
		name   string
		size   int
		inline bool
	}{{"4KiB-shm", 4 << 10, false}, {"4KiB-inline", 4 << 10, true}, {"1MiB-shm", 1 << 20, false}} {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			st, err := s.OpenStream(ctx, "video/segment", host.StreamMeta{})
			if err != nil {
				b.Fatal(err)
			}
			payload := make([]byte, bc.size)
			credit := make(chan struct{}, 1024)
			errc := make(chan error, 1)
			b.SetBytes(int64(bc.size))
			b.ResetTimer()
			go func() {
				for i := 0; i < b.N; i++ {
					credit <- struct{}{}
					f := &host.Frame{Seq: uint64(i), Data: payload}
					if !bc.inline {
						if f, err = st.NewFrame(ctx, bc.size); err != nil {
							errc <- err
							return
						}
						f.Seq = uint64(i)
					}
					if err := st.Send(ctx, f); err != nil {
						errc <- err
						return
					}
				}
				errc <- st.CloseSend()
			}()
			for i := 0; i < b.N; i++ {
				f, err := st.Recv(ctx)
				if err != nil {
					b.Fatal(err)
				}
				f.Release()
				<-credit
			}
			if err := <-errc; err != nil {
				b.Fatal(err)
			}
		})
	}
}
