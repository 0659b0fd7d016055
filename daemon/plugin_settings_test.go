package daemon

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/host"
)

const settingsGlobalV1 = `{
  "type": "object",
  "properties": {
    "greeting":   {"type": "string", "default": "hello", "description": "What the plugin says"},
    "max_rating": {"type": "string", "enum": ["G", "PG", "PG-13", "R"], "default": "PG-13"},
    "api_key":    {"type": "string", "writeOnly": true, "description": "A secret"}
  },
  "additionalProperties": false
}`

const settingsUserV1 = `{
  "type": "object",
  "properties": {
    "volume": {"type": "integer", "minimum": 0, "maximum": 100, "default": 50}
  },
  "additionalProperties": false
}`

// settingsPlugin is a testplug directory declaring global and user
// settings with the given global schema.
func settingsPlugin(t *testing.T, version, global string) string {
	t.Helper()
	m := strings.Replace(testplugManifest("configured", nil, hooks("request", "GET", "/conf/:id", "2s", "fail-closed", 0)),
		`version = "1.0.0"`, `version = "`+version+`"`, 1)
	m += "\n[settings.global]\nschema = \"settings/global.json\"\n[settings.user]\nschema = \"settings/user.json\"\n"
	dir := pluginDir(t, m)
	if err := os.MkdirAll(filepath.Join(dir, "settings"), 0o755); err != nil {
		t.Fatal(err)
	}
	for name, doc := range map[string]string{"global.json": global, "user.json": settingsUserV1} {
		if err := os.WriteFile(filepath.Join(dir, "settings", name), []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// TestPluginSettings is the settings path end to end with a sandboxed
// plugin: defaults, a refused invalid write naming the field, a valid
// write the running plugin sees on its next call and hears of (no
// restart), secrets masked for the operator and kept when sent back
// masked, per-user values kept apart, a reset to the default, an upgrade
// whose schema no longer accepts a stored value (kept and flagged), and
// removal taking the settings with the plugin.
func TestPluginSettings(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, settingsPlugin(t, "1.0.0", settingsGlobalV1))
	first := waitState(t, td.ctl, "configured", 30*time.Second, "running", running)
	s := dial(t, td.socket)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	ask := func(query string, v any) {
		t.Helper()
		res := dispatch(t, s, host.PhaseRequest, get("/conf/1?"+query), nil)
		if res.Kind != host.Respond || res.Response.Status != 200 {
			t.Fatalf("?%s: %+v", query, res)
		}
		if err := json.Unmarshal(res.Response.Body, v); err != nil {
			t.Fatalf("?%s: %s", query, res.Response.Body)
		}
	}
	pluginSees := func(query string) map[string]any {
		t.Helper()
		var v map[string]any
		ask(query, &v)
		return v
	}
	changes := func() []string {
		t.Helper()
		var v []string
		ask("settings=changes", &v)
		return v
	}

	ps, err := td.ctl.Settings(ctx, "configured", host.ScopeGlobal, 0)
	if err != nil {
		t.Fatal(err)
	}
	if ps.Values["greeting"] != "hello" || ps.Values["max_rating"] != "PG-13" || len(ps.Stored) != 0 || len(ps.Schema) == 0 {
		t.Errorf("fresh global settings: %+v", ps)
	}

	// An invalid write is refused, naming the field; nothing is stored.
	_, err = td.ctl.SetSettings(ctx, "configured", host.ScopeGlobal, 0, map[string]any{"max_rating": "X", "greeting": "hi"}, false)
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "max_rating") {
		t.Fatalf("invalid write: %v, want invalid naming max_rating", err)
	}
	_, err = td.ctl.SetSettings(ctx, "configured", host.ScopeGlobal, 0, map[string]any{"nope": 1}, false)
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "nope") {
		t.Fatalf("unknown key: %v, want invalid naming nope", err)
	}
	if got := pluginSees("settings=global"); got["greeting"] != "hello" {
		t.Errorf("after refused writes the plugin sees %v", got)
	}

	// A valid write: the operator sees the secret masked, the plugin in
	// full, on its next call, and it heard of the change.
	ps, err = td.ctl.SetSettings(ctx, "configured", host.ScopeGlobal, 0, map[string]any{"max_rating": "PG", "api_key": "s3cret"}, false)
	if err != nil {
		t.Fatal(err)
	}
	if ps.Values["api_key"] != "********" || ps.Stored["api_key"] != "********" || ps.Values["max_rating"] != "PG" {
		t.Errorf("after a write the operator sees %+v", ps)
	}
	if got := pluginSees("settings=global"); got["max_rating"] != "PG" || got["api_key"] != "s3cret" || got["greeting"] != "hello" {
		t.Errorf("the plugin sees %v", got)
	}
	waitFor(t, 10*time.Second, "the plugin to hear of the change", func() bool {
		return slices.Contains(changes(), "global/0")
	})

	// The masked secret sent back keeps its value; null resets a default.
	if _, err := td.ctl.SetSettings(ctx, "configured", host.ScopeGlobal, 0, map[string]any{"api_key": "********", "greeting": "hi"}, false); err != nil {
		t.Fatal(err)
	}
	if got := pluginSees("settings=global"); got["api_key"] != "s3cret" || got["greeting"] != "hi" {
		t.Errorf("after sending the masked secret back the plugin sees %v", got)
	}
	if _, err := td.ctl.SetSettings(ctx, "configured", host.ScopeGlobal, 0, map[string]any{"greeting": nil}, false); err != nil {
		t.Fatal(err)
	}
	if got := pluginSees("settings=global"); got["greeting"] != "hello" {
		t.Errorf("after a reset the plugin sees %v", got)
	}

	// Users' settings are their own.
	if _, err := td.ctl.SetSettings(ctx, "configured", host.ScopeUser, 7, map[string]any{"volume": 80}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := td.ctl.SetSettings(ctx, "configured", host.ScopeUser, 8, map[string]any{"volume": 101}, false); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("volume 101: %v, want invalid", err)
	}
	if got := pluginSees("settings=user&user=7"); got["volume"] != float64(80) {
		t.Errorf("user 7 sees %v", got)
	}
	if got := pluginSees("settings=user&user=8"); got["volume"] != float64(50) {
		t.Errorf("user 8 sees %v (user 7's value leaked, or the default is lost)", got)
	}
	if _, err := td.ctl.Settings(ctx, "configured", host.ScopeUser, 0); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("user settings without a user: %v, want invalid", err)
	}

	if st := waitState(t, td.ctl, "configured", 5*time.Second, "running", running); st.PID != first.PID {
		t.Errorf("the plugin restarted (pid %d → %d): settings must apply without a restart", first.PID, st.PID)
	}

	// An upgrade whose schema no longer accepts the stored "PG": kept and
	// flagged, not lost.
	archive, err := host.Archive(settingsPlugin(t, "2.0.0", strings.Replace(settingsGlobalV1, `"G", "PG", "PG-13", "R"`, `"G", "PG-13", "R"`, 1)))
	if err != nil {
		t.Fatal(err)
	}
	// Wait: an upgrade switches to the new version (and its schemas)
	// once it runs.
	if _, err := td.ctl.Install(ctx, archive, host.InstallOptions{Replace: true, Enable: true, Wait: true}); err != nil {
		t.Fatal(err)
	}
	ps, err = td.ctl.Settings(ctx, "configured", host.ScopeGlobal, 0)
	if err != nil {
		t.Fatal(err)
	}
	if ps.Problem == "" || !strings.Contains(ps.Problem, "max_rating") || ps.Stored["max_rating"] != "PG" {
		t.Errorf("after an upgrade that no longer accepts max_rating=PG: %+v", ps)
	}

	// Removal takes the settings with the plugin.
	if err := td.ctl.Remove(ctx, "configured"); err != nil {
		t.Fatal(err)
	}
	td.install(t, settingsPlugin(t, "1.0.0", settingsGlobalV1))
	if ps, err = td.ctl.Settings(ctx, "configured", host.ScopeGlobal, 0); err != nil || len(ps.Stored) != 0 {
		t.Errorf("settings after remove and reinstall: %+v, %v", ps, err)
	}
}

// TestConfigCLI drives `dimplugctl config` against a daemon process: a
// refused write exits 5 naming the field, set/get/--unset/--user, and edit
// through $EDITOR.
func TestConfigCLI(t *testing.T) {
	d := newDaemonProc(t)
	d.start()
	d.ctl(false, "install", "--yes", settingsPlugin(t, "1.0.0", settingsGlobalV1))
	d.waitRunning("configured", 0)

	_, errOut := d.ctl(true, "config", "set", "configured", "max_rating=X")
	if !strings.Contains(errOut, "max_rating") {
		t.Errorf("a refused write says %q, want the field named", errOut)
	}
	if code := d.ctlExit("config", "set", "configured", "max_rating=X"); code != 5 {
		t.Errorf("a refused write exits %d, want 5 (invalid)", code)
	}
	out, _ := d.ctl(false, "config", "set", "configured", "max_rating=PG", "api_key=zzz", "greeting=hi there")
	for _, want := range []string{"max_rating = PG", "api_key = ********", "greeting = hi there"} {
		if !strings.Contains(out, want) {
			t.Errorf("config set printed %q, want %q", out, want)
		}
	}
	if out, _ := d.ctl(false, "config", "get", "configured", "max_rating"); strings.TrimSpace(out) != "PG" {
		t.Errorf("config get max_rating = %q", out)
	}
	out, _ = d.ctl(false, "config", "set", "configured", "--unset", "greeting")
	if !strings.Contains(out, "greeting = hello  (default)") {
		t.Errorf("after --unset: %q", out)
	}
	d.ctl(false, "config", "set", "--user", "3", "configured", "volume=70")
	out, _ = d.ctl(false, "--json", "config", "get", "--user", "3", "configured")
	var ps host.PluginSettings
	if err := json.Unmarshal([]byte(out), &ps); err != nil || ps.Values["volume"] != float64(70) || ps.User != 3 {
		t.Errorf("config get --user 3 --json: %s (%v)", out, err)
	}
	// edit: the editor rewrites the file; the secret stays masked, so it
	// keeps its value.
	t.Setenv("EDITOR", `sed -i s/PG/R/`)
	out, _ = d.ctl(false, "config", "edit", "configured")
	if !strings.Contains(out, "max_rating = R") || !strings.Contains(out, "api_key = ********") {
		t.Errorf("config edit printed %q", out)
	}
}

// ctlExit runs dimplugctl and returns its exit code.
func (p *daemonProc) ctlExit(args ...string) int {
	p.t.Helper()
	cmd := exec.Command(buildBin(p.t, "./cmd/dimplugctl", true), append([]string{"--socket", p.control}, args...)...)
	err := cmd.Run()
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		p.t.Fatal(err)
	}
	return 0
}

// TestUserSettingsThroughHost: a host's middleware serves each user their
// own settings, as the user it authenticated (here a header stands in for
// Dim's session): user 8 never sees or changes user 7's values, an
// invalid write is 422 naming the field, and no user means 401.
func TestUserSettingsThroughHost(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, settingsPlugin(t, "1.0.0", settingsGlobalV1))
	waitState(t, td.ctl, "configured", 30*time.Second, "running", running)
	s := dial(t, td.socket)
	mw, err := host.NewMiddleware(context.Background(), s, http.NotFoundHandler(), host.WithUser(func(r *http.Request) (int64, bool) {
		id, err := strconv.ParseInt(r.Header.Get("X-Test-User"), 10, 64)
		return id, err == nil
	}))
	if err != nil {
		t.Fatal(err)
	}
	call := func(user, method, body string) (int, host.PluginSettings, string) {
		t.Helper()
		req := httptest.NewRequest(method, "/api/v1/plugins/configured/settings", strings.NewReader(body))
		if user != "" {
			req.Header.Set("X-Test-User", user)
		}
		rec := httptest.NewRecorder()
		mw.ServeHTTP(rec, req)
		var ps host.PluginSettings
		if rec.Code == 200 {
			if err := json.Unmarshal(rec.Body.Bytes(), &ps); err != nil {
				t.Fatalf("%s as user %s: %v: %s", method, user, err, rec.Body)
			}
		}
		return rec.Code, ps, rec.Body.String()
	}
	if code, ps, body := call("7", "PATCH", `{"volume": 80}`); code != 200 || ps.Values["volume"] != float64(80) || ps.User != 7 {
		t.Fatalf("user 7 PATCH: %d %s", code, body)
	}
	if code, ps, body := call("8", "GET", ""); code != 200 || ps.Values["volume"] != float64(50) {
		t.Errorf("user 8 GET: %d %s: user 7's value leaked, or the default is lost", code, body)
	}
	if code, _, body := call("8", "PATCH", `{"volume": 101}`); code != 422 || !strings.Contains(body, "volume") {
		t.Errorf("user 8 invalid PATCH: %d %s, want 422 naming volume", code, body)
	} else {
		var ref host.SettingsRefusal
		if err := json.Unmarshal([]byte(body), &ref); err != nil || len(ref.Problems) != 1 ||
			ref.Problems[0].Field != "volume" || !strings.Contains(ref.Problems[0].Reason, "100") {
			t.Errorf("refusal %s: want one problem for field volume saying the maximum (%v)", body, err)
		}
	}
	if code, ps, _ := call("7", "GET", ""); code != 200 || ps.Values["volume"] != float64(80) {
		t.Errorf("user 7 after user 8's writes: %d %+v", code, ps)
	}
	if code, _, _ := call("", "GET", ""); code != 401 {
		t.Errorf("no user: %d, want 401", code)
	}
	if code, _, _ := call("7", "PATCH", `{"max_rating": "R"}`); code != 422 {
		t.Errorf("a user writing a global setting: %d, want 422 (not a user setting)", code)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ps, err := td.ctl.Settings(ctx, "configured", host.ScopeGlobal, 0); err != nil || len(ps.Stored) != 0 {
		t.Errorf("global settings after users' writes: %+v, %v", ps, err)
	}
}
