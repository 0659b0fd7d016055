// Command dimplugd-conformance-plugin is the conformance kit's plugin,
// written with the Go plugin SDK: it does what each request's query tells
// it, in the parameter named after the plugin's installed name
// ("conf-a=mutate,sleep:500"). docs/conformance.md ("The plugin's
// behaviours") is its specification, which a plugin under
// `dimplugd conformance plugin` implements too.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
)

type conf struct {
	name string

	mu       sync.Mutex
	cancels  int
	observed int
}

func (c *conf) Init(ctx context.Context, h *plugin.Host) error {
	c.name = h.Name
	return nil
}

// actions are the plugin's own actions in req's query.
func (c *conf) actions(req *plugin.Request) []string {
	v := req.Query().Get(c.name)
	if v == "" {
		return nil
	}
	return strings.Split(v, ",")
}

// common runs the actions every phase shares: sleep and fail. It reports
// false when the hook must stop with err.
func (c *conf) common(ctx context.Context, a string) error {
	switch {
	case strings.HasPrefix(a, "sleep:"):
		ms, err := strconv.Atoi(strings.TrimPrefix(a, "sleep:"))
		if err != nil {
			return fmt.Errorf("bad sleep %q", a)
		}
		t := time.NewTimer(time.Duration(ms) * time.Millisecond)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			if cancelledEarly(ctx) {
				c.mu.Lock()
				c.cancels++
				c.mu.Unlock()
			}
			return ctx.Err()
		}
	case a == "fail":
		return errors.New("failing as the request asked")
	}
	return nil
}

// cancelledEarly reports whether ctx ended by a cancellation well before
// its deadline: the host (or the daemon for it) gave up on the call, as
// opposed to the deadline passing, when the plugin's own timer and a cancel
// race.
func cancelledEarly(ctx context.Context) bool {
	if !errors.Is(ctx.Err(), context.Canceled) {
		return false
	}
	dl, ok := ctx.Deadline()
	return !ok || time.Until(dl) > 100*time.Millisecond
}

func (c *conf) HookRequest(ctx context.Context, hook string, req *plugin.Request) (*plugin.Response, error) {
	for _, a := range c.actions(req) {
		if err := c.common(ctx, a); err != nil {
			return nil, err
		}
		switch {
		case a == "mutate":
			req.Header.Add("X-Conformance", c.name+"/"+hook)
			var ps []string
			for _, p := range req.Params {
				ps = append(ps, p.Name+"="+p.Value)
			}
			req.Header.Set("X-Conformance-Params-"+c.name, strings.Join(ps, "&"))
			req.Header.Set("X-Conformance-Route-"+c.name, req.Route)
		case strings.HasPrefix(a, "respond:"):
			status, err := strconv.Atoi(strings.TrimPrefix(a, "respond:"))
			if err != nil {
				return nil, fmt.Errorf("bad respond %q", a)
			}
			return &plugin.Response{Status: status, Body: []byte(c.name)}, nil
		case a == "cancels":
			c.mu.Lock()
			n := c.cancels
			c.mu.Unlock()
			return &plugin.Response{Status: 200, Body: []byte(strconv.Itoa(n))}, nil
		case a == "observed":
			c.mu.Lock()
			n := c.observed
			c.mu.Unlock()
			return &plugin.Response{Status: 200, Body: []byte(strconv.Itoa(n))}, nil
		}
	}
	return nil, nil
}

func (c *conf) HookResponse(ctx context.Context, hook string, req *plugin.Request, resp *plugin.Response) error {
	for _, a := range c.actions(req) {
		if err := c.common(ctx, a); err != nil {
			return err
		}
		if a == "mutate" {
			resp.Header.Add("X-Conformance-Response", c.name+"/"+hook)
		}
	}
	return nil
}

func (c *conf) ServeRoute(ctx context.Context, hook string, req *plugin.Request) (*plugin.Response, error) {
	return &plugin.Response{Status: 200, Body: []byte(c.name + " page " + req.Param("rest"))}, nil
}

func (c *conf) Observe(ctx context.Context, hook string, req *plugin.Request, resp *plugin.Response) {
	if strings.HasPrefix(req.Path, "/conf/observed-") {
		c.mu.Lock()
		c.observed++
		c.mu.Unlock()
	}
}

// FilterFrame is the "frames" stage: each frame comes back as a new frame
// holding "NAME:" and then the frame's bytes, with its header kept.
func (c *conf) FilterFrame(ctx context.Context, s *plugin.Stream, f *plugin.Frame) ([]*plugin.Frame, error) {
	prefix := c.name + ":"
	out, err := s.NewFrame(ctx, len(prefix)+len(f.Data))
	if err != nil {
		return nil, err
	}
	copy(out.Data, prefix)
	copy(out.Data[len(prefix):], f.Data)
	out.Seq, out.PTS, out.DTS, out.Duration, out.KeyFrame, out.ContentType = f.Seq, f.PTS, f.DTS, f.Duration, f.KeyFrame, f.ContentType
	return []*plugin.Frame{out}, nil
}

func main() {
	if err := plugin.Serve(&conf{}); err != nil {
		log.Fatal(err)
	}
}
