package daemon

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"time"

	"github.com/dimplugd/dimplugd/schema"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// maxFetchBody bounds each fetch's request and response body.
const maxFetchBody = 16 << 20

// fetchServer is the Fetcher capability: outbound HTTP performed by the
// daemon for a plugin whose sandbox has no network, limited to the hosts the
// operator granted. Every connection is checked at dial time, so a redirect
// or a URL with a different port cannot reach a host outside the grant.
type fetchServer struct {
	plugin string
	grant  manifest.Permissions
	client *http.Client
}

func newFetchServer(plugin string, grant manifest.Permissions) *fetchServer {
	f := &fetchServer{plugin: plugin, grant: grant}
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	f.client = &http.Client{
		Transport: &http.Transport{
			Proxy: nil, // the daemon's environment must not reroute plugin traffic
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				if !f.grant.AllowsHost(addr) {
					return nil, f.refusal(addr)
				}
				return dialer.DialContext(ctx, network, addr)
			},
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     30 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return f
}

func (f *fetchServer) refusal(hostport string) error {
	return fmt.Errorf("plugin %q may not connect to %s: the operator granted only %v", f.plugin, hostport, f.grant.OutboundHosts)
}

// Shutdown is called when the plugin's connection ends.
func (f *fetchServer) Shutdown() { f.client.CloseIdleConnections() }

func (f *fetchServer) Fetch(ctx context.Context, call schema.Fetcher_fetch) error {
	call.Go() // fetches are slow; serve them concurrently
	fr, err := call.Args().Request()
	if err != nil {
		return err
	}
	method, _ := fr.Method()
	if method == "" {
		method = http.MethodGet
	}
	raw, _ := fr.Url()
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("fetch: %q is not an absolute http:// or https:// URL", raw)
	}
	hostport := u.Host
	if u.Port() == "" {
		port := "80"
		if u.Scheme == "https" {
			port = "443"
		}
		hostport = net.JoinHostPort(u.Hostname(), port)
	}
	if !f.grant.AllowsHost(hostport) {
		return f.refusal(hostport)
	}
	body, _ := fr.Body()
	if len(body) > maxFetchBody {
		return fmt.Errorf("fetch %s: request body of %d bytes exceeds the %d byte limit", raw, len(body), maxFetchBody)
	}
	timeout := 30 * time.Second
	if t := fr.TimeoutMicros(); t > 0 {
		timeout = time.Duration(t) * time.Microsecond
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, method, raw, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("fetch %s: %w", raw, err)
	}
	hl, _ := fr.Headers()
	for i := 0; i < hl.Len(); i++ {
		k, _ := hl.At(i).Name()
		v, _ := hl.At(i).Value()
		req.Header.Add(k, v)
	}
	resp, err := f.client.Do(req)
	if err != nil {
		return fmt.Errorf("fetch %s %s: %w", method, raw, err)
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, maxFetchBody+1))
	if err != nil {
		return fmt.Errorf("fetch %s %s: read response: %w", method, raw, err)
	}
	if len(rb) > maxFetchBody {
		return fmt.Errorf("fetch %s %s: response body exceeds the %d byte limit", method, raw, maxFetchBody)
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	out, err := res.NewResponse()
	if err != nil {
		return err
	}
	return wire.WriteResponse(out, &wire.Response{Status: resp.StatusCode, Header: resp.Header, Body: rb})
}
