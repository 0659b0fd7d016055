// Command dimhost is a small Dim-like media server used to show and test
// dimplugd: a REST API with a realistic subset of Dim's routes, wired
// through host.Middleware so that installed plugins can hook it.
//
//	dimhost serve -listen 127.0.0.1:8000 -socket /run/dimplugd/dimplugd.sock
//	dimhost get   -socket ... /api/v1/media/42   # one request, printed with and without plugins
package main

import (
	"context"
	"encoding/json"
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
		fmt.Fprintln(os.Stderr, "usage: dimhost serve|get [flags]")
		os.Exit(2)
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "get":
		err = get(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "dimhost: unknown command %q (want serve or get)\n", os.Args[1])
		os.Exit(2)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "dimhost:", err)
		os.Exit(1)
	}
}

// newHandler wraps Dim's API in the dimplugd middleware.
func newHandler(ctx context.Context, socket string) (http.Handler, *host.Session, error) {
	s, err := host.Dial(ctx, socket, host.WithClientName("dimhost example"))
	if err != nil {
		return nil, nil, err
	}
	mw, err := host.NewMiddleware(ctx, s, NewAPI(), host.WithUser(userFromToken))
	if err != nil {
		s.Close()
		return nil, nil, err
	}
	return mw, s, nil
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:8000", "address to serve on (loopback by default)")
	socket := fs.String("socket", host.DefaultSocket(), "dimplugd socket")
	fs.Parse(args)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	h, s, err := newHandler(ctx, *socket)
	if err != nil {
		return err
	}
	defer s.Close()
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	slog.Info("dimhost serving", "addr", ln.Addr().String())
	go func() { <-ctx.Done(); srv.Close() }()
	if err := srv.Serve(ln); err != http.ErrServerClosed {
		return err
	}
	return nil
}

// get serves one request through Dim's plain API and through the plugins,
// over a real loopback HTTP server, and prints both.
func get(args []string) error {
	fs := flag.NewFlagSet("get", flag.ExitOnError)
	socket := fs.String("socket", host.DefaultSocket(), "dimplugd socket")
	method := fs.String("X", "GET", "HTTP method")
	fs.Parse(args)
	if fs.NArg() != 1 {
		return fmt.Errorf("get takes one path, e.g. /api/v1/media/42")
	}
	path := fs.Arg(0)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	h, s, err := newHandler(ctx, *socket)
	if err != nil {
		return err
	}
	defer s.Close()

	for _, side := range []struct {
		title string
		h     http.Handler
	}{{"without plugins", NewAPI()}, {"through dimplugd", h}} {
		status, hdr, body, err := roundTrip(ctx, side.h, *method, path)
		if err != nil {
			return err
		}
		fmt.Printf("--- %s %s %s: %d\n", *method, path, side.title, status)
		keys := make([]string, 0, len(hdr))
		for k := range hdr {
			if k != "Date" {
				keys = append(keys, k)
			}
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Printf("%s: %s\n", k, strings.Join(hdr[k], ", "))
		}
		fmt.Printf("\n%s\n", strings.TrimSpace(string(body)))
	}
	return nil
}

func roundTrip(ctx context.Context, h http.Handler, method, path string) (int, http.Header, []byte, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, nil, nil, err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	defer srv.Close()
	req, err := http.NewRequestWithContext(ctx, method, "http://"+ln.Addr().String()+path, nil)
	if err != nil {
		return 0, nil, nil, err
	}
	req.Header.Set("Authorization", "demo-token-1")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, body, err
}

// userFromToken mimics Dim's auth middleware: the Authorization header
// carries a token naming the user.
func userFromToken(r *http.Request) (int64, bool) {
	var id int64
	if _, err := fmt.Sscanf(r.Header.Get("Authorization"), "demo-token-%d", &id); err == nil {
		return id, true
	}
	return 0, false
}

// NewAPI is the Dim-like REST API, without any plugin.
func NewAPI() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/media/{id}", func(w http.ResponseWriter, r *http.Request) {
		m, ok := library[r.PathValue("id")]
		if !ok {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no such media"})
			return
		}
		writeJSON(w, http.StatusOK, m)
	})
	mux.HandleFunc("GET /api/v1/dashboard", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"Recently added": []media{library["42"], library["7"]}})
	})
	mux.HandleFunc("POST /api/v1/auth/login", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"token": "demo-token-1"})
	})
	return mux
}

type media struct {
	ID     int    `json:"id"`
	Name   string `json:"name"`
	Year   int    `json:"year"`
	Rating string `json:"rating"`
}

var library = map[string]media{
	"42": {ID: 42, Name: "The Hitchhiker's Guide to the Galaxy", Year: 2005, Rating: "PG"},
	"7":  {ID: 7, Name: "Seven Samurai", Year: 1954, Rating: "NR"},
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
