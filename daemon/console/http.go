package console

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"io/fs"
	"net/http"
	"strconv"
	"strings"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/host"
)

//go:embed static
var static embed.FS

// site is the console on one listener.
type site struct {
	s     *Server
	tcp   bool            // logins and sessions; else the Unix socket, where none are needed
	hosts map[string]bool // Host values naming the TCP listener
}

func (st *site) handler() http.Handler {
	mux := http.NewServeMux()
	files, _ := fs.Sub(static, "static")
	mux.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(files)))
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		http.ServeFileFS(w, r, files, "index.html")
	})
	if st.tcp {
		mux.HandleFunc("GET /login", st.login)
	}
	mux.HandleFunc("POST /api/logout", st.api(st.logout))
	mux.HandleFunc("GET /api/status", st.api(st.status))
	mux.HandleFunc("GET /api/plugins", st.api(st.list))
	mux.HandleFunc("GET /api/plugins/{name}", st.api(st.inspect))
	mux.HandleFunc("GET /api/plugins/{name}/logs", st.api(st.logs))
	mux.HandleFunc("POST /api/plugins/{name}/{action}", st.api(st.act))
	mux.HandleFunc("GET /api/plugins/{name}/settings", st.api(st.settings))
	mux.HandleFunc("PATCH /api/plugins/{name}/settings", st.api(st.setSettings))
	return st.guard(mux)
}

// guard applies what every response and request of the site needs.
func (st *site) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		h.Set("Cache-Control", "no-store")
		h.Set("Cross-Origin-Opener-Policy", "same-origin")
		h.Set("Cross-Origin-Resource-Policy", "same-origin")
		if st.tcp && !st.hosts[r.Host] {
			// A page on another name that resolves to loopback (DNS
			// rebinding) sends its own name.
			writeError(w, http.StatusForbidden, "", "wrong Host header: the console answers only to its own address")
			return
		}
		switch r.Method {
		case http.MethodGet, http.MethodHead:
		case http.MethodPost, http.MethodPatch:
			if err := st.sameOrigin(r); err != "" {
				writeError(w, http.StatusForbidden, "", err)
				return
			}
		default:
			writeError(w, http.StatusMethodNotAllowed, "", "method not allowed")
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, maxBody)
		next.ServeHTTP(w, r)
	})
}

// sameOrigin vets a state-changing request: it must not come from another
// site, and must carry the console's header, which a form cannot send.
func (st *site) sameOrigin(r *http.Request) string {
	if o := r.Header.Get("Origin"); o != "" && o != "http://"+r.Host {
		return "cross-origin request refused (Origin " + strconv.Quote(o) + ")"
	}
	switch r.Header.Get("Sec-Fetch-Site") {
	case "", "same-origin", "none":
	default:
		return "cross-site request refused"
	}
	if r.Header.Get(HeaderName) == "" {
		return "missing " + HeaderName + " header: changes need it (curl: -H '" + HeaderName + ": 1')"
	}
	return ""
}

// login redeems a one-time token from `dimplugctl console`: it opens a
// session and sends the browser to the console, the session key in the
// URL's fragment, which the page moves into its localStorage.
func (st *site) login(w http.ResponseWriter, r *http.Request) {
	cookie, key, ok := st.s.redeem(r.URL.Query().Get("token"))
	if !ok {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(http.StatusForbidden)
		w.Write([]byte("This console login link does not work: each works once, within a minute.\nAsk for a new one with: dimplugctl console\n"))
		return
	}
	http.SetCookie(w, &http.Cookie{
		Name: cookieName, Value: cookie, Path: "/",
		MaxAge:   int(st.s.cfg.SessionTTL.Seconds()),
		HttpOnly: true, SameSite: http.SameSiteStrictMode,
	})
	st.s.log.Info("console: operator logged in", "remote", r.RemoteAddr)
	http.Redirect(w, r, "/#k="+key, http.StatusSeeOther)
}

// apiFunc answers one API call with a value to send as JSON, or an error.
type apiFunc func(ctx context.Context, ctl Control, r *http.Request) (any, error)

// api authenticates a call (on TCP), opens the control face for it and
// writes its answer.
func (st *site) api(f apiFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if st.tcp {
			c, err := r.Cookie(cookieName)
			if err != nil {
				writeError(w, http.StatusUnauthorized, "", "not logged in: open a login URL from `dimplugctl console`")
				return
			}
			ss, h := st.s.session(c.Value)
			if ss == nil {
				writeError(w, http.StatusUnauthorized, "", "the session expired or ended: open a new login URL from `dimplugctl console`")
				return
			}
			if !equal(r.Header.Get(HeaderName), ss.key) {
				writeError(w, http.StatusForbidden, "", "missing or wrong "+HeaderName+" header: the console page sends it; open a new login URL from `dimplugctl console` if this page lost it")
				return
			}
			if r.URL.Path == "/api/logout" {
				st.s.endSession(h)
			}
		}
		ctx, cancel := context.WithTimeout(r.Context(), callTimeout)
		defer cancel()
		ctl, err := st.s.cfg.Dial(ctx)
		if err != nil {
			writeErr(w, err, false)
			return
		}
		defer ctl.Close()
		v, err := f(ctx, ctl, r)
		if err != nil {
			writeErr(w, err, r.Method == http.MethodPatch)
			return
		}
		writeJSON(w, http.StatusOK, v)
	}
}

func (st *site) logout(ctx context.Context, ctl Control, r *http.Request) (any, error) {
	return map[string]bool{"ok": true}, nil
}

func (st *site) status(ctx context.Context, ctl Control, r *http.Request) (any, error) {
	ds, err := ctl.Status(ctx)
	if err != nil {
		return nil, err
	}
	return map[string]any{"daemon": ds, "login": st.tcp}, nil
}

func (st *site) list(ctx context.Context, ctl Control, r *http.Request) (any, error) {
	ps, err := ctl.List(ctx)
	if ps == nil && err == nil {
		ps = []host.PluginStatus{}
	}
	return ps, err
}

func (st *site) inspect(ctx context.Context, ctl Control, r *http.Request) (any, error) {
	return ctl.Inspect(ctx, r.PathValue("name"))
}

// maxTail bounds the log lines one call returns.
const maxTail = 2000

func (st *site) logs(ctx context.Context, ctl Control, r *http.Request) (any, error) {
	tail := 200
	if s := r.URL.Query().Get("tail"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return nil, errdefs.New(errdefs.ErrInvalid, "tail: want a number of lines")
		}
		tail = min(n, maxTail)
	}
	lines, err := ctl.Logs(ctx, r.PathValue("name"), tail, nil)
	if lines == nil && err == nil {
		lines = []host.LogLine{}
	}
	return lines, err
}

func (st *site) act(ctx context.Context, ctl Control, r *http.Request) (any, error) {
	name := r.PathValue("name")
	switch r.PathValue("action") {
	case "enable":
		return ctl.Enable(ctx, name)
	case "disable":
		return ctl.Disable(ctx, name)
	case "restart":
		return ctl.Restart(ctx, name)
	}
	return nil, errdefs.New(errdefs.ErrNotFound, "no such action: want enable, disable or restart (install and remove are dimplugctl's: they need the operator's approval of permissions)")
}

// The console edits global settings only; user settings are each user's,
// through the host (Dim's preferences).
func (st *site) settings(ctx context.Context, ctl Control, r *http.Request) (any, error) {
	return ctl.Settings(ctx, r.PathValue("name"), host.ScopeGlobal, 0)
}

// setSettings is a partial update (see schema/control.capnp setSettings):
// a key set to null goes back to its default, a secret sent back masked
// keeps its value. The daemon validates it.
func (st *site) setSettings(ctx context.Context, ctl Control, r *http.Request) (any, error) {
	if ct := r.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") && !strings.HasPrefix(ct, "application/merge-patch+json") {
		return nil, errdefs.New(errdefs.ErrInvalid, "settings: want a JSON object (Content-Type: application/json)")
	}
	dec := json.NewDecoder(r.Body)
	dec.UseNumber()
	var values map[string]any
	if err := dec.Decode(&values); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errdefs.New(errdefs.ErrInvalid, "settings: the request is larger than "+strconv.Itoa(maxBody)+" bytes")
		}
		return nil, errdefs.New(errdefs.ErrInvalid, "settings: not a JSON object: "+err.Error())
	}
	if values == nil {
		return nil, errdefs.New(errdefs.ErrInvalid, "settings: want a JSON object")
	}
	return ctl.SetSettings(ctx, r.PathValue("name"), host.ScopeGlobal, 0, values, false)
}

// apiError is the body of every failed API call.
type apiError struct {
	Error string `json:"error"`
	// Code is the error's class (errdefs.Code): "not-found", "invalid"...
	Code string `json:"code,omitempty"`
	// Fields are the failing fields of a settings write.
	Fields []fieldError `json:"fields,omitempty"`
}

type fieldError struct {
	Field  string `json:"field"` // "" for the settings as a whole
	Reason string `json:"reason"`
}

// writeErr answers with err's class as the status. A rejected settings
// write (settings) is 422 and lists the daemon's "field: reason" lines.
func writeErr(w http.ResponseWriter, err error, settings bool) {
	class := errdefs.Class(err)
	msg := err.Error()
	var re *host.RemoteError
	if errors.As(err, &re) {
		msg = re.Msg
	}
	status := http.StatusInternalServerError
	switch class {
	case errdefs.ErrNotFound:
		status = http.StatusNotFound
	case errdefs.ErrInvalid:
		status = http.StatusBadRequest
		if settings {
			status = http.StatusUnprocessableEntity
		}
	case errdefs.ErrConflict, errdefs.ErrAlreadyExists:
		status = http.StatusConflict
	case errdefs.ErrUnavailable:
		status = http.StatusServiceUnavailable
	case errdefs.ErrPermissionDenied:
		status = http.StatusForbidden
	}
	e := apiError{Error: msg, Code: errdefs.Code(class)}
	if settings && class == errdefs.ErrInvalid {
		e.Fields = fieldErrors(msg)
	}
	writeJSON(w, status, e)
}

// fieldErrors reads the daemon's rejection of a settings write: a line
// saying nothing was saved, then one "field: reason" line per problem
// (settings.ValidationError).
func fieldErrors(msg string) []fieldError {
	head, rest, ok := strings.Cut(msg, "not saved:\n")
	if !ok || strings.Contains(head, "\n") {
		return nil
	}
	var out []fieldError
	for line := range strings.SplitSeq(rest, "\n") {
		field, reason, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		if field == "(settings)" {
			field = ""
		}
		out = append(out, fieldError{Field: field, Reason: reason})
	}
	return out
}

func writeError(w http.ResponseWriter, status int, code, msg string) {
	writeJSON(w, status, apiError{Error: msg, Code: code})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(true)
	enc.Encode(v)
}
