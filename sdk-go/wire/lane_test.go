package wire

import (
	"context"
	"errors"
	"fmt"
	"github.com/dimplugd/dimplugd/sdk-go/internal/testwait"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

func lanePair(t *testing.T) (net.Conn, net.Conn) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var cs [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "lane")
		if cs[i], err = net.FileConn(f); err != nil {
			t.Fatal(err)
		}
		f.Close()
	}
	return cs[0], cs[1]
}

// echoHook answers a hook call with a respond result whose body is the
// hook's name; "slow" waits for cancellation, "fail" fails.
func echoHook(ctx context.Context, req, reply schema.LaneFrame) error {
	hc, err := req.Hook()
	if err != nil {
		return err
	}
	name, _ := hc.Hook()
	switch name {
	case "slow":
		<-ctx.Done()
		return ctx.Err()
	case "fail":
		return errors.New("plugin.capnp:Plugin.hook: boom")
	}
	hr, err := reply.NewHookResult()
	if err != nil {
		return err
	}
	rs, err := hr.NewRespond()
	if err != nil {
		return err
	}
	rs.SetStatus(200)
	return rs.SetBody([]byte(name))
}

func call(t *testing.T, l *LaneClient, ctx context.Context, hook string) (string, error) {
	reply, rf, err := l.Call(ctx, func(f schema.LaneFrame) error {
		hc, err := f.NewHook()
		if err != nil {
			return err
		}
		return hc.SetHook(hook)
	})
	if err != nil {
		return "", err
	}
	defer reply.Release()
	hr, err := rf.HookResult()
	if err != nil {
		return "", err
	}
	rs, err := hr.Respond()
	if err != nil {
		return "", err
	}
	b, err := rs.Body()
	return string(b), err
}

func TestLane(t *testing.T) {
	a, b := lanePair(t)
	served := make(chan error, 1)
	go func() { served <- ServeLane(context.Background(), b, echoHook) }()
	l := NewLaneClient(a)

	// Concurrent calls get their own replies.
	var wg sync.WaitGroup
	for i := 0; i < 50; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			name := string(rune('a'+i%26)) + "-hook"
			got, err := call(t, l, context.Background(), name)
			if err != nil || got != name {
				t.Errorf("call %s: %q, %v", name, got, err)
			}
		}(i)
	}
	wg.Wait()

	if _, err := call(t, l, context.Background(), "fail"); err == nil || err.Error() != "boom" {
		t.Errorf("failing handler: %v (want the bare message)", err)
	}

	// A cancelled call returns at once and the handler sees the cancel.
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	if _, err := call(t, l, ctx, "slow"); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("slow call: %v", err)
	}
	if time.Since(start) > time.Second {
		t.Errorf("a cancelled call took %s", time.Since(start))
	}

	// Closing ends the server and fails later calls.
	l.Close()
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("ServeLane: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeLane did not return after the client closed (a handler still waits?)")
	}
	if _, err := call(t, l, context.Background(), "x"); !errors.Is(err, ErrLaneClosed) {
		t.Errorf("call on a closed lane: %v", err)
	}
}

func BenchmarkLaneRoundTrip(b *testing.B) {
	fds, _ := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	var cs [2]net.Conn
	for i, fd := range fds {
		f := os.NewFile(uintptr(fd), "lane")
		cs[i], _ = net.FileConn(f)
		f.Close()
	}
	go ServeLane(context.Background(), cs[1], echoHook)
	l := NewLaneClient(cs[0])
	defer l.Close()
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		reply, _, err := l.Call(ctx, func(f schema.LaneFrame) error {
			hc, err := f.NewHook()
			if err != nil {
				return err
			}
			return hc.SetHook("bench")
		})
		if err != nil {
			b.Fatal(err)
		}
		reply.Release()
	}
}

// TestLaneGoodbye: when the server's goodbye closes, a call it had started
// is still answered, the client learns from the stopping frame that the
// lane ends, and calls after it fail with ErrStopping (not started), not
// ErrLaneClosed (fate unknown).
func TestLaneGoodbye(t *testing.T) {
	a, b := lanePair(t)
	release := make(chan struct{})
	var started atomic.Int32
	handler := func(ctx context.Context, req, reply schema.LaneFrame) error {
		started.Add(1)
		hc, err := req.Hook()
		if err != nil {
			return err
		}
		if name, _ := hc.Hook(); name == "held" {
			<-release
		}
		return echoHook(ctx, req, reply)
	}
	goodbye := make(chan struct{})
	served := make(chan error, 1)
	go func() {
		served <- ServeLaneLimited(context.Background(), b, handler, Limits{MaxMessage: 1 << 20}, goodbye)
	}()
	l := NewLaneClient(a)

	held := make(chan error, 1)
	go func() {
		got, err := call(t, l, context.Background(), "held")
		if err == nil && got != "held" {
			err = fmt.Errorf("reply %q", got)
		}
		held <- err
	}()
	testwait.Until(t, "the held call to start", func() bool { return started.Load() == 1 })
	close(goodbye)
	close(release)
	if err := <-held; err != nil {
		t.Errorf("a call started before the goodbye: %v, want its answer", err)
	}
	select {
	case err := <-served:
		if err != nil {
			t.Errorf("ServeLaneLimited after goodbye: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeLaneLimited did not return after goodbye")
	}
	<-l.Done()
	_, err := call(t, l, context.Background(), "late")
	if !errors.Is(err, ErrStopping) || !IsStopping(err) {
		t.Errorf("a call after the stopping frame: %v, want ErrStopping", err)
	}
	if n := started.Load(); n != 1 {
		t.Errorf("the handler ran %d times, want once", n)
	}
}

// TestLaneCutMidFrame: a reply cut short by the other end dying (a daemon
// killed mid-write) reads as the lane closing, which callers treat as the
// daemon going away, not as a failed call.
func TestLaneCutMidFrame(t *testing.T) {
	a, b := lanePair(t)
	l := NewLaneClient(a)
	done := make(chan error, 1)
	go func() {
		_, err := call(t, l, context.Background(), "x")
		done <- err
	}()
	// Read the request, answer with the first bytes of a frame, die.
	buf := make([]byte, 4096)
	if _, err := b.Read(buf); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Write([]byte{200, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7}); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if err := <-done; !errors.Is(err, ErrLaneClosed) {
		t.Errorf("a call whose reply was cut short: %v, want ErrLaneClosed", err)
	}
}

// TestCallErrorClasses: how a hook call's error reads for the policy. A
// plugin that says it is stopping (unavailable, marked over the lane)
// counts as unavailable, not as a failure of the plugin.
func TestCallErrorClasses(t *testing.T) {
	a, b := lanePair(t)
	go ServeLane(context.Background(), b, func(ctx context.Context, req, reply schema.LaneFrame) error {
		return errdefs.ToWire(errdefs.New(errdefs.ErrUnavailable, "plugin is stopping"))
	})
	l := NewLaneClient(a)
	defer l.Close()
	_, err := call(t, l, context.Background(), "x")
	if !errors.Is(err, errdefs.ErrUnavailable) || err.Error() != "plugin is stopping" {
		t.Fatalf("lane error: %q (%v), want the bare message, unavailable", err, err)
	}
	ctx := context.Background()
	for _, c := range []struct {
		err  error
		kind schema.HookErrorKind
	}{
		{err, schema.HookErrorKind_unavailable},
		{errors.New("plugin.capnp:Plugin.hook: [unavailable] plugin is stopping"), schema.HookErrorKind_unavailable},
		{errors.New("boom"), schema.HookErrorKind_failed},
	} {
		e := CallError(ctx, ctx, time.Now(), time.Second, c.err, "p", "h", "on GET /x")
		if e.Kind != c.kind || strings.Contains(e.Message, "[") {
			t.Errorf("CallError(%q) = %v %q, want %v and no mark", c.err, e.Kind, e.Message, c.kind)
		}
	}
}
