//go:build linux

package daemon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/host"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
)

// testResolver answers from a table; it never asks the system resolver.
// answers[name] is used for successive lookups; the last answer repeats.
type testResolver struct {
	mu      sync.Mutex
	answers map[string][][]netip.Addr
	lookups map[string]int
}

func newTestResolver() *testResolver {
	return &testResolver{answers: map[string][][]netip.Addr{}, lookups: map[string]int{}}
}

func (r *testResolver) set(name string, answers ...string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var as []netip.Addr
	for _, a := range answers {
		as = append(as, netip.MustParseAddr(a))
	}
	r.answers[name] = append(r.answers[name], as)
}

func (r *testResolver) LookupNetIP(ctx context.Context, network, host string) ([]netip.Addr, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	seq, ok := r.answers[host]
	if !ok {
		return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
	}
	i := min(r.lookups[host], len(seq)-1)
	r.lookups[host]++
	return seq[i], nil
}

// loopbackServer is a local HTTP service a plugin must not reach unless
// the grant names its address. It counts requests and remembers the last
// Host header.
type loopbackServer struct {
	*httptest.Server
	hits     atomic.Int64
	lastHost atomic.Value
	port     string
}

func newLoopbackServer(t *testing.T) *loopbackServer {
	s := &loopbackServer{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.hits.Add(1)
		s.lastHost.Store(r.Host)
		io.WriteString(w, "local secret")
	}))
	t.Cleanup(s.Close)
	_, s.port, _ = net.SplitHostPort(s.Listener.Addr().String())
	return s
}

func fetchGet(f *fetchServer, rawURL string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	resp, err := f.client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// TestFetchResolvedAddressChecked: a granted name that resolves to
// 127.0.0.1, where a local service listens, is refused with an error that
// says why; granting the address itself allows it, with the Host header
// still the name.
func TestFetchResolvedAddressChecked(t *testing.T) {
	srv := newLoopbackServer(t)
	res := newTestResolver()
	res.set("media.example", "127.0.0.1")
	res.set("mapped.example", "::ffff:127.0.0.1")
	name := "media.example:" + srv.port

	f := newFetchServer("sneaky", manifest.Permissions{OutboundHosts: []string{name, "mapped.example:" + srv.port}}, res)
	defer f.Shutdown()
	_, err := fetchGet(f, "http://"+name+"/")
	want := fmt.Sprintf(`plugin "sneaky" may not connect to %s: it resolves to 127.0.0.1, a loopback address, which the grant does not name (the operator may grant "127.0.0.1:%s" explicitly)`, name, srv.port)
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("fetch of a name resolving to loopback: %v\nwant %s", err, want)
	}
	if r := (*fetchRefusal)(nil); !errors.As(err, &r) {
		t.Errorf("refusal is not a *fetchRefusal: %T", err)
	}
	if _, err := fetchGet(f, "http://mapped.example:"+srv.port+"/"); err == nil || !strings.Contains(err.Error(), "resolves to ::ffff:127.0.0.1, a loopback address") {
		t.Errorf("fetch of a name resolving to IPv4-mapped loopback: %v", err)
	}
	if n := srv.hits.Load(); n != 0 {
		t.Fatalf("the local service received %d requests", n)
	}

	// The operator names the address: now it is allowed, and the request
	// still carries the name.
	f2 := newFetchServer("trusted", manifest.Permissions{OutboundHosts: []string{name, "127.0.0.1:" + srv.port}}, res)
	defer f2.Shutdown()
	body, err := fetchGet(f2, "http://"+name+"/x")
	if err != nil || body != "local secret" {
		t.Fatalf("fetch with the address granted: %q, %v", body, err)
	}
	if h := srv.lastHost.Load(); h != name {
		t.Errorf("Host header %q, want %q", h, name)
	}
	// Granting the address on another port does not name this one.
	f3 := newFetchServer("other-port", manifest.Permissions{OutboundHosts: []string{name, "127.0.0.1:1"}}, res)
	defer f3.Shutdown()
	if _, err := fetchGet(f3, "http://"+name+"/"); err == nil || !strings.Contains(err.Error(), "which the grant does not name") {
		t.Errorf("address granted on another port: %v", err)
	}
	if n := srv.hits.Load(); n != 1 {
		t.Errorf("the local service received %d requests, want 1", n)
	}
	// A name that does not resolve is an error naming it.
	if _, err := fetchGet(f, "http://nowhere.example:"+srv.port+"/"); err == nil {
		t.Error("fetch of an unknown name succeeded")
	}
}

// TestFetchNoRebinding: the daemon dials exactly the addresses it checked.
// An answer mixing a public and a loopback address is refused outright;
// a name that resolves to a public address first and to loopback on the
// next lookup never makes the daemon connect to loopback; and every dial
// is to an IP address, never a name resolved again.
func TestFetchNoRebinding(t *testing.T) {
	srv := newLoopbackServer(t)
	res := newTestResolver()
	res.set("mixed.example", "93.184.215.14", "127.0.0.1")
	res.set("rebind.example", "93.184.215.14")
	res.set("rebind.example", "127.0.0.1")
	grant := manifest.Permissions{OutboundHosts: []string{"mixed.example:" + srv.port, "rebind.example:" + srv.port}}
	f := newFetchServer("rebinder", grant, res)
	defer f.Shutdown()
	var mu sync.Mutex
	var dialed []string
	realDial := f.dial
	f.dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
		mu.Lock()
		dialed = append(dialed, addr)
		mu.Unlock()
		if ap, err := netip.ParseAddrPort(addr); err != nil || !ap.Addr().IsLoopback() {
			// Nothing leaves this machine in tests.
			return nil, fmt.Errorf("test dialer: not connecting to %s", addr)
		}
		return realDial(ctx, network, addr)
	}

	_, err := fetchGet(f, "http://mixed.example:"+srv.port+"/")
	if err == nil || !strings.Contains(err.Error(), "it resolves to 127.0.0.1, a loopback address") {
		t.Errorf("public+loopback answer: %v", err)
	}
	for i := 0; i < 3; i++ {
		_, err := fetchGet(f, "http://rebind.example:"+srv.port+"/")
		if i == 0 && (err == nil || !strings.Contains(err.Error(), "test dialer: not connecting to 93.184.215.14:"+srv.port)) {
			t.Errorf("first lookup (public): %v", err)
		}
		if i > 0 && (err == nil || !strings.Contains(err.Error(), "it resolves to 127.0.0.1, a loopback address")) {
			t.Errorf("rebound lookup %d (loopback): %v", i, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	for _, a := range dialed {
		if _, err := netip.ParseAddrPort(a); err != nil {
			t.Errorf("dialed %q, not a checked IP address", a)
		}
	}
	if len(dialed) != 1 || dialed[0] != "93.184.215.14:"+srv.port {
		t.Errorf("dialed %q, want only the checked public address", dialed)
	}
	if n := srv.hits.Load(); n != 0 {
		t.Errorf("the local service received %d requests", n)
	}
}

func TestClassifyAddr(t *testing.T) {
	tests := []struct {
		addr string
		want string // "" for public
	}{
		{"93.184.215.14", ""},
		{"8.8.8.8", ""},
		{"2606:4700:4700::1111", ""},
		{"127.0.0.1", "a loopback address"},
		{"127.255.255.254", "a loopback address"},
		{"::1", "a loopback address"},
		{"::ffff:127.0.0.1", "a loopback address"},
		{"0.0.0.0", "an unspecified address"},
		{"::", "an unspecified address"},
		{"0.1.2.3", `a "this network" address`},
		{"10.1.2.3", "a private (RFC 1918) address"},
		{"172.16.0.1", "a private (RFC 1918) address"},
		{"172.31.255.255", "a private (RFC 1918) address"},
		{"172.32.0.1", ""},
		{"192.168.1.1", "a private (RFC 1918) address"},
		{"::ffff:192.168.1.1", "a private (RFC 1918) address"},
		{"fd00::1", "a private (unique local, fc00::/7) address"},
		{"fc00::1", "a private (unique local, fc00::/7) address"},
		{"169.254.169.254", "a link-local address (the cloud metadata service)"},
		{"::ffff:169.254.169.254", "a link-local address (the cloud metadata service)"},
		{"169.254.1.1", "a link-local address"},
		{"fe80::1", "a link-local address"},
		{"fe80::1%eth0", "a link-local address"},
		{"100.64.0.1", "a carrier-grade NAT (shared, RFC 6598) address"},
		{"100.127.255.255", "a carrier-grade NAT (shared, RFC 6598) address"},
		{"100.128.0.1", ""},
		{"224.0.0.1", "a multicast address"},
		{"239.255.255.250", "a multicast address"},
		{"ff02::1", "a multicast address"},
		{"255.255.255.255", "a reserved address"},
		{"240.0.0.1", "a reserved address"},
		{"192.0.0.170", "an IETF protocol assignment address"},
		{"192.0.2.1", "a documentation address"},
		{"198.51.100.1", "a documentation address"},
		{"203.0.113.1", "a documentation address"},
		{"2001:db8::1", "a documentation address"},
		{"198.18.0.1", "a benchmarking address"},
		{"::127.0.0.1", "an IPv4-compatible (deprecated) address"},
		{"64:ff9b::7f00:1", "a loopback address (127.0.0.1) embedded in a NAT64 or 6to4 address"},
		{"64:ff9b::a9fe:a9fe", "a link-local address (the cloud metadata service) (169.254.169.254) embedded in a NAT64 or 6to4 address"},
		{"64:ff9b::5db8:d70e", ""},
		{"64:ff9b:1::1", "a local-use NAT64 address"},
		{"2002:c0a8:0101::1", "a private (RFC 1918) address (192.168.1.1) embedded in a NAT64 or 6to4 address"},
		{"2001::1", "a Teredo tunnel address"},
		{"fec0::1", "a site-local (deprecated, private) address"},
		{"100::1", "a discard-only address"},
	}
	for _, tt := range tests {
		if got := classify(netip.MustParseAddr(tt.addr)).name; got != tt.want {
			t.Errorf("classify(%s) = %q, want %q", tt.addr, got, tt.want)
		}
	}
}

// TestFetchResolvedLoopbackThroughPlugin: the same attack from a sandboxed
// plugin: its grant names a host that the (test) resolver maps to
// 127.0.0.1, where a local service listens. The plugin gets the refusal;
// the local service sees nothing; another plugin keeps working.
func TestFetchResolvedLoopbackThroughPlugin(t *testing.T) {
	srv := newLoopbackServer(t)
	res := newTestResolver()
	res.set("subs.example", "127.0.0.1")
	td := startDaemonConfig(t, Config{Resolver: res, Supervision: fastSupervision})
	name := "subs.example:" + srv.port
	td.install(t, pluginDir(t, testplugManifest("rebinder", nil,
		fmt.Sprintf("[permissions]\noutbound_hosts = [%q]\n", name)+hooks("request", "GET", "/f/:id", "10s", "fail-open", 0))))
	td.install(t, pluginDir(t, testplugManifest("bystander", nil, hooks("request", "GET", "/b/:id", "10s", "fail-open", 0))))
	waitState(t, td.ctl, "rebinder", 30*time.Second, "running", running)
	waitState(t, td.ctl, "bystander", 30*time.Second, "running", running)
	s := dial(t, td.socket)
	r := dispatch(t, s, host.PhaseRequest, get("/f/1?fetch="+url.QueryEscape("http://"+name+"/secret")), nil)
	if r.Kind != host.Respond || r.Response.Status != 598 ||
		!strings.Contains(string(r.Response.Body), "it resolves to 127.0.0.1, a loopback address, which the grant does not name") {
		t.Fatalf("plugin fetch of a name resolving to loopback: %+v", r)
	}
	if n := srv.hits.Load(); n != 0 {
		t.Fatalf("the local service received %d requests", n)
	}
	if r := dispatch(t, s, host.PhaseRequest, get("/b/1"), nil); r.Kind != host.MutateRequest || r.RequestMutation.Header.Get("X-Test-Request") != "bystander" {
		t.Errorf("bystander: %+v", r)
	}
	if st := waitState(t, td.ctl, "rebinder", 5*time.Second, "running", running); st.Restarts != 0 {
		t.Errorf("the refused plugin restarted: %+v", st)
	}
}
