package plugin

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// fetchTransport is an http.RoundTripper that sends every request through
// the daemon's Fetcher capability: a sandboxed plugin has no network of its
// own, and reaches only the hosts the operator granted.
type fetchTransport struct{ c *capRef[schema.Fetcher] }

func (t *fetchTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		b, err := io.ReadAll(req.Body)
		req.Body.Close()
		if err != nil {
			return nil, err
		}
		body = b
	}
	var timeout time.Duration
	if d, ok := req.Context().Deadline(); ok {
		timeout = time.Until(d)
	}
	c := t.c.get()
	defer c.Release()
	fut, release := c.Fetch(req.Context(), func(p schema.Fetcher_fetch_Params) error {
		fr, err := p.NewRequest()
		if err != nil {
			return err
		}
		if err := fr.SetMethod(req.Method); err != nil {
			return err
		}
		if err := fr.SetUrl(req.URL.String()); err != nil {
			return err
		}
		if timeout > 0 {
			fr.SetTimeoutMicros(uint64(timeout / time.Microsecond))
		}
		n := 0
		for _, vs := range req.Header {
			n += len(vs)
		}
		hl, err := fr.NewHeaders(int32(n))
		if err != nil {
			return err
		}
		i := 0
		for k, vs := range req.Header {
			for _, v := range vs {
				if err := hl.At(i).SetName(k); err != nil {
					return err
				}
				if err := hl.At(i).SetValue(v); err != nil {
					return err
				}
				i++
			}
		}
		return fr.SetBody(body)
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return nil, wire.RemoteError("fetch through the daemon", err)
	}
	rs, err := res.Response()
	if err != nil {
		return nil, err
	}
	r, err := wire.ReadResponse(rs)
	if err != nil {
		return nil, err
	}
	return &http.Response{
		Status:        fmt.Sprintf("%d %s", r.Status, http.StatusText(r.Status)),
		StatusCode:    r.Status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        r.Header,
		Body:          io.NopCloser(bytes.NewReader(r.Body)),
		ContentLength: int64(len(r.Body)),
		Request:       req,
	}, nil
}
