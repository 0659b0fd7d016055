package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// maxFetchBody bounds each fetch's request and response body.
const maxFetchBody = 16 << 20

// Resolver resolves the host names plugins fetch. *net.Resolver implements
// it; Config.Resolver defaults to net.DefaultResolver.
type Resolver interface {
	LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error)
}

// fetchServer is the Fetcher capability: outbound HTTP performed by the
// daemon for a plugin whose sandbox has no network, limited to the hosts the
// operator granted.
//
// Every connection is checked at dial time, so a redirect or a URL with a
// different port cannot reach a host outside the grant. The check is on
// addresses, not only names: the daemon resolves the granted name itself,
// refuses the connection when any address it resolves to is not a public
// Internet address (loopback, private, link-local, CGNAT, multicast, ...;
// see classify) unless the grant names that address as an IP literal, and
// then dials exactly the addresses it checked, so a second resolution
// cannot rebind the name to another address. TLS and the Host header still
// use the name.
type fetchServer struct {
	plugin   string
	grant    manifest.Permissions
	resolver Resolver
	// dial connects to a checked "ip:port"; tests replace it.
	dial   func(ctx context.Context, network, addr string) (net.Conn, error)
	client *http.Client
}

func newFetchServer(plugin string, grant manifest.Permissions, resolver Resolver) *fetchServer {
	if resolver == nil {
		resolver = net.DefaultResolver
	}
	f := &fetchServer{plugin: plugin, grant: grant, resolver: resolver}
	dialer := &net.Dialer{Timeout: 10 * time.Second}
	f.dial = dialer.DialContext
	f.client = &http.Client{
		Transport: &http.Transport{
			Proxy:               nil, // the daemon's environment must not reroute plugin traffic
			DialContext:         f.dialChecked,
			MaxIdleConnsPerHost: 4,
			IdleConnTimeout:     30 * time.Second,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return f
}

// fetchRefusal is a connection the grant does not allow. Its message is
// written for the plugin's author.
type fetchRefusal struct{ msg string }

func (e *fetchRefusal) Error() string { return e.msg }

func (f *fetchServer) refusal(hostport string) error {
	return &fetchRefusal{fmt.Sprintf("plugin %q may not connect to %s: the operator granted only %v", f.plugin, hostport, f.grant.OutboundHosts)}
}

// dialChecked connects to hostport ("host:port") if the grant allows the
// name and every address it resolves to, dialing only those addresses.
func (f *fetchServer) dialChecked(ctx context.Context, network, hostport string) (net.Conn, error) {
	if !f.grant.AllowsHost(hostport) {
		return nil, f.refusal(hostport)
	}
	host, port, err := net.SplitHostPort(hostport)
	if err != nil {
		return nil, err
	}
	addrs, err := f.resolve(ctx, host)
	if err != nil {
		return nil, fmt.Errorf("plugin %q: cannot resolve %s: %w", f.plugin, host, err)
	}
	for _, a := range addrs {
		if c := classify(a); !c.public() && !f.grantNames(a, port) {
			how := "it resolves to " + a.String()
			if a.String() == host {
				how = "it is"
			}
			return nil, &fetchRefusal{fmt.Sprintf("plugin %q may not connect to %s: %s, %s, which the grant does not name (the operator may grant %q explicitly)",
				f.plugin, hostport, how, c.name, net.JoinHostPort(a.WithZone("").Unmap().String(), port))}
		}
	}
	var firstErr error
	for _, a := range addrs {
		conn, err := f.dial(ctx, network, net.JoinHostPort(a.String(), port))
		if err == nil {
			return conn, nil
		}
		if firstErr == nil {
			firstErr = err
		}
		if ctx.Err() != nil {
			break
		}
	}
	return nil, firstErr
}

// maxFetchAddrs bounds the addresses tried per connection.
const maxFetchAddrs = 16

// resolve returns host's addresses: host itself when it is an IP literal,
// else what the resolver answers (at most maxFetchAddrs of them).
func (f *fetchServer) resolve(ctx context.Context, host string) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	addrs, err := f.resolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return nil, err
	}
	if len(addrs) == 0 {
		return nil, errors.New("no addresses")
	}
	if len(addrs) > maxFetchAddrs {
		addrs = addrs[:maxFetchAddrs]
	}
	return addrs, nil
}

// grantNames reports whether the grant lists address a on port as an IP
// literal ("10.0.0.5:8080", "[fd00::5]:443").
func (f *fetchServer) grantNames(a netip.Addr, port string) bool {
	a = a.WithZone("").Unmap()
	for _, g := range f.grant.OutboundHosts {
		h, p, err := net.SplitHostPort(g)
		if err != nil || p != port {
			continue
		}
		if ga, err := netip.ParseAddr(h); err == nil && ga.Unmap() == a {
			return true
		}
	}
	return false
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
		if r := (*fetchRefusal)(nil); errors.As(err, &r) {
			return r
		}
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
