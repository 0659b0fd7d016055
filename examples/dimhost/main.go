// Command dimhost is a small Dim-like media server used to show and test
// dimplugd: a REST API with a realistic subset of Dim's routes (login,
// libraries, dashboard, media, playback progress, and the streaming API:
// virtual manifest, MPEG-DASH manifest and fMP4 segments), wired through
// host.Middleware so that installed plugins can hook it. See API for where
// it differs from Dim.
//
//	dimhost serve -listen 127.0.0.1:8000 -socket /run/dimplugd/dimplugd.sock
//	dimhost shots -url http://127.0.0.1:8000 -out DIR
//	dimhost get [-X POST] [-H 'Authorization: demo-token-2'] [-d BODY] [-plugins-only] /api/v1/media/42
//	dimhost stream [-profile 480p] [-n 6] [-free 64] [-bare 3] [-large 5]
//
// get serves one request twice, through Dim's plain API and through the
// plugins, and prints both. It authenticates as the owner (demo-token-1)
// unless -H sets Authorization; -H 'Authorization:' sends no token.
//
// stream sends a generated fMP4 track (see fmp4.go) — an init segment and
// n media segments of Dim's sizes — through dimplugd's frame-stream chain,
// writing each segment straight into shared memory; it receives them back
// in order, checks their box structure, prints what the chain changed in
// each (bytes, tags, whether the host's own memory came back), then the
// statistics the stream-stats plugin kept, through its route.
//
// serve also serves a web UI standing in for Dim's (web/): open the
// address in a browser and sign in as kid/kid or admin/admin. shots signs
// in to a running serve in headless Chromium and saves screenshots of what
// plugins add to it (the demo's).
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/host"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dimhost serve|get|stream|shots [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "get":
		err = get(os.Args[2:])
	case "stream":
		err = stream(os.Args[2:])
	case "shots":
		err = shots(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "dimhost: unknown command %q (want serve, get, stream or shots)\n", os.Args[1])
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dimhost:", err)
		os.Exit(1)
	}
}

// newHandler wraps api in the dimplugd middleware.
func newHandler(ctx context.Context, socket string, api *API, opts ...host.Option) (*host.Middleware, *host.Session, error) {
	s, err := host.Dial(ctx, socket, append([]host.Option{host.WithClientName("dimhost example")}, opts...)...)
	if err != nil {
		return nil, nil, err
	}
	mw, err := host.NewMiddleware(ctx, s, api, host.WithUser(userFromToken), host.WithRouteTemplate(api.RouteTemplate))
	if err != nil {
		s.Close()
		return nil, nil, err
	}
	return mw, s, nil
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:8000", "address to serve on (loopback by default)")
	socket := fs.String("socket", host.DefaultSocket(), "dimplugd's host socket ($DIMPLUGD_SOCKET)")
	segments := fs.String("segments", "", "directory of stream segments (default: generate test fixtures in a temporary directory)")
	routeCache := fs.String("route-cache", "", "file keeping dimplugd's route table, so that a restart while the daemon is down still applies hook policies")
	fs.Parse(args)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if *segments == "" {
		dir, cleanup, err := fixtureDir()
		if err != nil {
			return err
		}
		defer cleanup()
		*segments = dir
	}
	// Serve whether or not dimplugd is up yet: the session connects (and
	// reconnects after a daemon restart) by itself.
	opts := []host.Option{host.WithStartDegraded()}
	if *routeCache != "" {
		opts = append(opts, host.WithRouteCache(*routeCache))
	}
	h, s, err := newHandler(ctx, *socket, NewAPI(*segments), opts...)
	if err != nil {
		return err
	}
	defer s.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: newWebHandler(h), ReadHeaderTimeout: 10 * time.Second}
	slog.Info("dimhost serving: open http://"+ln.Addr().String()+"/ (kid/kid, admin/admin)", "addr", ln.Addr().String(), "segments", *segments)
	go func() { <-ctx.Done(); srv.Close() }()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}

// headerFlags collects repeated -H 'Name: value' flags.
type headerFlags http.Header

func (h headerFlags) String() string { return "" }

func (h headerFlags) Set(s string) error {
	name, value, ok := strings.Cut(s, ":")
	if !ok || strings.TrimSpace(name) == "" {
		return fmt.Errorf("want 'Name: value', got %q", s)
	}
	http.Header(h).Add(strings.TrimSpace(name), strings.TrimSpace(value))
	return nil
}

// get serves one request through Dim's plain API and through the plugins,
// over a real loopback HTTP server, and prints both.
func get(args []string) error {
	fs := flag.NewFlagSet("get", flag.ExitOnError)
	socket := fs.String("socket", host.DefaultSocket(), "dimplugd's host socket ($DIMPLUGD_SOCKET)")
	method := fs.String("X", "GET", "HTTP method")
	body := fs.String("d", "", "request body")
	pluginsOnly := fs.Bool("plugins-only", false, "only send the request through dimplugd")
	hdr := headerFlags{}
	fs.Var(hdr, "H", "request header 'Name: value' (repeatable)")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("get takes one path, e.g. /api/v1/media/42")
	}
	path := fs.Arg(0)
	// A reader that stops early (`| head -n 1`) must not kill get before it
	// has waited for observers and removed its fixtures.
	signal.Ignore(syscall.SIGPIPE)
	if _, ok := hdr["Authorization"]; !ok {
		http.Header(hdr).Set("Authorization", "demo-token-1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	segments, cleanup, err := fixtureDir()
	if err != nil {
		return err
	}
	defer cleanup()
	mw, s, err := newHandler(ctx, *socket, NewAPI(segments))
	if err != nil {
		return err
	}
	defer s.Close()

	sides := []struct {
		title string
		h     http.Handler
	}{{"without plugins", NewAPI(segments)}, {"through dimplugd", mw}}
	if *pluginsOnly {
		sides = sides[1:]
	}
	for _, side := range sides {
		status, rh, rb, err := roundTrip(ctx, side.h, *method, path, http.Header(hdr), *body)
		if err != nil {
			return err
		}
		fmt.Printf("--- %s %s %s: %d\n", *method, path, side.title, status)
		keys := make([]string, 0, len(rh))
		for k := range rh {
			if k != "Date" {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Printf("%s: %s\n", k, strings.Join(rh[k], ", "))
		}
		fmt.Printf("\n%s\n", strings.TrimSpace(printable(rb)))
	}
	// Observers get their copy after the response is written: wait for
	// the hand-over before the session closes.
	return mw.Close(ctx)
}

// printable returns b, or a hex summary when it is binary (segments).
func printable(b []byte) string {
	if bytes.ContainsFunc(b, func(r rune) bool { return r < ' ' && r != '\n' && r != '\t' && r != '\r' }) {
		return fmt.Sprintf("(%d bytes) % x", len(b), b[:min(len(b), 16)]) + " ... " + strings.Map(func(r rune) rune {
			if r < ' ' || r > '~' {
				return '.'
			}
			return r
		}, string(b))
	}
	return string(b)
}

func roundTrip(ctx context.Context, h http.Handler, method, path string, hdr http.Header, body string) (int, http.Header, []byte, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, nil, nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	var rb io.Reader
	if body != "" {
		rb = strings.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+ln.Addr().String()+path, rb)
	if err != nil {
		return 0, nil, nil, err
	}
	for k, vs := range hdr {
		for _, v := range vs {
			if v != "" {
				req.Header.Add(k, v)
			}
		}
	}
	if body != "" && req.Header.Get("Content-Type") == "" {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, b, err
}
