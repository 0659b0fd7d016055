// Package console serves dimplugd's operator console: the data and actions
// of dimplugctl (plugins, their state, hooks, stream stages and logs;
// enable, disable, restart; global settings) as a web page and a JSON API
// under /api/.
//
// The console is a control client like dimplugctl: every request opens the
// control face (through Config.Dial, in the daemon a connection to its own
// control socket) and calls the same methods, so it passes the same
// argument checks and returns the same data as `dimplugctl --json`.
// Installing and removing plugins is not offered: those need the
// operator's approval of the permissions a plugin asks for.
//
// It must not be a way around the control socket's permissions. It listens
// on
//
//   - a Unix socket, made by the daemon with the control socket's owner,
//     group and mode, whose peers the daemon checks as on the control
//     socket (ServeUnix's check): the socket is the right, no login;
//   - a loopback TCP address, which every local user can reach: there the
//     API needs a session, opened with a one-time login URL (LoginURL)
//     that only an operator can ask for, over the control socket
//     (`dimplugctl console`).
//
// A TCP session is two secrets: an HttpOnly, SameSite=Strict cookie, and a
// key the page keeps in its origin's localStorage and sends in the
// X-Dimplugd-Console header of every API call. Cookies are not bound to a
// port, so the browser would send the cookie to any other server on the
// same loopback address; the key, held by the page's origin alone, is
// what such a server cannot get. The header also defeats cross-site
// requests (a form cannot set it, and no CORS preflight is answered).
// Requests must name the listener's own address in Host (DNS rebinding),
// a state-changing request with an Origin must come from the console's
// origin, and every response forbids framing, caching and other origins'
// scripts.
package console

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/netutil"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// Control is what the console calls: the control face as the Go SDK
// offers it (*host.Control).
type Control interface {
	List(ctx context.Context) ([]host.PluginStatus, error)
	Inspect(ctx context.Context, name string) (*host.PluginStatus, error)
	Enable(ctx context.Context, name string) (*host.PluginStatus, error)
	Disable(ctx context.Context, name string) (*host.PluginStatus, error)
	Restart(ctx context.Context, name string) (*host.PluginStatus, error)
	Logs(ctx context.Context, name string, tail int, follow func(host.LogLine)) ([]host.LogLine, error)
	Settings(ctx context.Context, name, scope string, user int64) (*host.PluginSettings, error)
	SetSettings(ctx context.Context, name, scope string, user int64, values map[string]any, replace bool) (*host.PluginSettings, error)
	Status(ctx context.Context) (*host.DaemonStatus, error)
	Close() error
}

// Config configures a console server.
type Config struct {
	// Dial opens the control face for one request. Required.
	Dial func(ctx context.Context) (Control, error)
	// Logger receives the console's log; default slog.Default().
	Logger *slog.Logger
	// TokenTTL is how long a login URL works; default 60s.
	TokenTTL time.Duration
	// SessionTTL is how long a browser session lasts; default 12h.
	SessionTTL time.Duration
	// Now tells the time; default time.Now. Tests set it.
	Now func() time.Time
}

// Limits of the console.
const (
	// maxBody bounds a request body (a settings write, as on the control
	// face).
	maxBody = 256 << 10
	// maxTokens bounds the login URLs given out and not yet used.
	maxTokens = 32
	// maxSessions bounds the open sessions; the oldest goes first.
	maxSessions = 64
	// maxConns bounds the connections open on each listener.
	maxConns = 64
	// callTimeout bounds one request's calls to the control face.
	callTimeout = 30 * time.Second
	// HeaderName is the header the page sends with every API call: the
	// session key on TCP, any non-empty value on the Unix socket.
	HeaderName = "X-Dimplugd-Console"
	// cookieName is the session cookie.
	cookieName = "dimplugd_console"
)

// Server serves the console on any number of listeners. Its goroutines
// (one per listener and one per connection, net/http's) end in Close.
type Server struct {
	cfg  Config
	log  *slog.Logger
	ctx  context.Context // cancelled by Close: ends the calls in flight
	stop context.CancelFunc

	mu       sync.Mutex
	tokens   map[[32]byte]time.Time // sha256 of a login token → expiry
	sessions map[[32]byte]*session  // sha256 of a session cookie
	tcpAddr  string                 // the TCP listener's address, "" if none
	servers  []*http.Server
	closed   bool
	wg       sync.WaitGroup
}

type session struct {
	key     string // the page's X-Dimplugd-Console value
	expires time.Time
}

// New returns a console server that serves nothing yet.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.TokenTTL <= 0 {
		cfg.TokenTTL = 60 * time.Second
	}
	if cfg.SessionTTL <= 0 {
		cfg.SessionTTL = 12 * time.Hour
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Server{cfg: cfg, log: cfg.Logger, tokens: map[[32]byte]time.Time{}, sessions: map[[32]byte]*session{}}
	s.ctx, s.stop = context.WithCancel(context.Background())
	return s
}

// CheckLoopback checks a --console-listen address: host:port where host is
// a loopback IP literal (127.0.0.0/8 or ::1). Names such as localhost are
// refused, since what they resolve to is not the console's to decide.
func CheckLoopback(addr string) error {
	h, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("console address %q: %w (want a loopback address such as 127.0.0.1:8377)", addr, err)
	}
	ip, err := netip.ParseAddr(h)
	if err != nil || !ip.IsLoopback() || ip.Zone() != "" {
		return fmt.Errorf("console address %q: %q is not a loopback IP address: the console listens only on 127.0.0.0/8 or [::1], "+
			"since every user who can reach it could try it (for remote access, forward the port over SSH)", addr, h)
	}
	return nil
}

// ListenTCP listens on addr, which must pass CheckLoopback.
func ListenTCP(addr string) (net.Listener, error) {
	if err := CheckLoopback(addr); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	return ln, nil
}

// ServeTCP serves the console with logins on ln, a loopback TCP listener
// (see ListenTCP). At most one TCP listener is served.
func (s *Server) ServeTCP(ln net.Listener) error {
	addr := ln.Addr().String()
	ap, err := netip.ParseAddrPort(addr)
	if err != nil || !ap.Addr().IsLoopback() {
		ln.Close()
		return fmt.Errorf("console: %s is not a loopback TCP address", addr)
	}
	hosts := map[string]bool{addr: true}
	if ap.Port() == 80 {
		hosts[ap.Addr().String()] = true
		if ap.Addr().Is6() {
			hosts["["+ap.Addr().String()+"]"] = true
		}
	}
	s.mu.Lock()
	if s.tcpAddr != "" {
		s.mu.Unlock()
		ln.Close()
		return errors.New("console: already serving on TCP " + s.tcpAddr)
	}
	s.tcpAddr = addr
	s.mu.Unlock()
	return s.serve(ln, &site{s: s, tcp: true, hosts: hosts})
}

// ServeUnix serves the console on ln, a Unix socket whose permissions are
// the operator right: no login. check, when set, vets each connection
// (the daemon checks the peer's credentials as on the control socket); a
// refused connection is told why in a 403 and closed.
func (s *Server) ServeUnix(ln net.Listener, check func(net.Conn) error) error {
	if check != nil {
		ln = &checkedListener{Listener: ln, check: check, log: s.log}
	}
	return s.serve(ln, &site{s: s})
}

func (s *Server) serve(ln net.Listener, st *site) error {
	ln = netutil.LimitListener(ln, maxConns)
	srv := &http.Server{
		Handler:           st.handler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      2 * callTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    16 << 10,
		BaseContext:       func(net.Listener) context.Context { return s.ctx },
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return errors.New("console: closed")
	}
	s.servers = append(s.servers, srv)
	s.wg.Add(1)
	s.mu.Unlock()
	go func() { // owned by s; ends in Close
		defer s.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("console: serving stopped", "addr", ln.Addr().String(), "err", err)
		}
	}()
	return nil
}

// Close stops every listener, ends the requests in flight (within a
// second, then cuts them) and forgets every login and session.
func (s *Server) Close() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	servers := s.servers
	s.tokens, s.sessions = map[[32]byte]time.Time{}, map[[32]byte]*session{}
	s.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var wg sync.WaitGroup
	for _, srv := range servers {
		wg.Go(func() {
			if err := srv.Shutdown(ctx); err != nil {
				s.stop()
				srv.Close()
			}
		})
	}
	wg.Wait()
	s.stop()
	s.wg.Wait()
}

// TCPAddr returns the TCP listener's address, or "" if there is none.
func (s *Server) TCPAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tcpAddr
}

// ErrNoTCP is LoginURL's error when the console has no TCP listener; it is
// of class errdefs.ErrUnavailable.
var ErrNoTCP = errdefs.New(errdefs.ErrUnavailable,
	"the operator console has no TCP listener, so there is nothing to log in to (start dimplugd with --console-listen 127.0.0.1:PORT; "+
		"on its Unix socket, --console-socket, the socket's permissions are the right and no login is needed)")

// LoginURL returns a URL that opens a browser session on the TCP
// listener: it works once, within Config.TokenTTL. Only operators may ask
// for one (the daemon's control face).
func (s *Server) LoginURL() (string, error) {
	tok, err := randomString()
	if err != nil {
		return "", err
	}
	now := s.cfg.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return "", errdefs.New(errdefs.ErrUnavailable, "the operator console is shutting down")
	}
	if s.tcpAddr == "" {
		return "", ErrNoTCP
	}
	for h, exp := range s.tokens {
		if !now.Before(exp) {
			delete(s.tokens, h)
		}
	}
	if len(s.tokens) >= maxTokens {
		return "", errdefs.New(errdefs.ErrUnavailable, fmt.Sprintf("%d console login URLs are out and unused; try again in a minute", len(s.tokens)))
	}
	s.tokens[sha256.Sum256([]byte(tok))] = now.Add(s.cfg.TokenTTL)
	return "http://" + s.tcpAddr + "/login?token=" + tok, nil
}

// redeem uses up a login token and opens a session, returning its cookie
// and key; ok is false if the token is unknown, used or expired.
func (s *Server) redeem(tok string) (cookie, key string, ok bool) {
	if tok == "" || len(tok) > 128 {
		return "", "", false
	}
	h := sha256.Sum256([]byte(tok))
	now := s.cfg.Now()
	s.mu.Lock()
	exp, found := s.tokens[h]
	delete(s.tokens, h) // once, whether it worked or not
	s.mu.Unlock()
	if !found || !now.Before(exp) {
		return "", "", false
	}
	cookie, err1 := randomString()
	key, err2 := randomString()
	if err1 != nil || err2 != nil {
		return "", "", false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for h, ss := range s.sessions {
		if !now.Before(ss.expires) {
			delete(s.sessions, h)
		}
	}
	for len(s.sessions) >= maxSessions {
		var oldest [32]byte
		var first time.Time
		for h, ss := range s.sessions {
			if first.IsZero() || ss.expires.Before(first) {
				oldest, first = h, ss.expires
			}
		}
		delete(s.sessions, oldest)
	}
	s.sessions[sha256.Sum256([]byte(cookie))] = &session{key: key, expires: now.Add(s.cfg.SessionTTL)}
	return cookie, key, true
}

// session returns the live session of a cookie, or nil.
func (s *Server) session(cookie string) (*session, [32]byte) {
	h := sha256.Sum256([]byte(cookie))
	s.mu.Lock()
	defer s.mu.Unlock()
	ss := s.sessions[h]
	if ss == nil {
		return nil, h
	}
	if !s.cfg.Now().Before(ss.expires) {
		delete(s.sessions, h)
		return nil, h
	}
	return ss, h
}

func (s *Server) endSession(h [32]byte) {
	s.mu.Lock()
	delete(s.sessions, h)
	s.mu.Unlock()
}

// randomString is 256 random bits, base64url.
func randomString() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("console: random: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(b[:]), nil
}

func equal(a, b string) bool {
	return subtle.ConstantTimeCompare([]byte(a), []byte(b)) == 1
}

// checkedListener vets each accepted connection; a refused one reads a 403
// saying why, then is closed.
type checkedListener struct {
	net.Listener
	check func(net.Conn) error
	log   *slog.Logger
}

func (l *checkedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		err = l.check(c)
		if err == nil {
			return c, nil
		}
		l.log.Warn("console: connection refused", "err", err)
		msg := err.Error() + "\n"
		c.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		io.WriteString(c, fmt.Sprintf("HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s", len(msg), msg))
		c.Close()
	}
}
