package daemon

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// countPlugin is a testplug hooking GET /count/:id, whose ?incr=<key>
// counts (see testplug).
func countPlugin(t *testing.T, name string) string {
	return pluginDir(t, testplugManifest(name, nil, hooks("request", "GET", "/count/:id", "10s", "fail-closed", 0)))
}

// incr adds one to a plugin's counter through its hook and returns the
// count it answered.
func incr(t *testing.T, s *host.Session, key, by string) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := s.Dispatch(ctx, host.PhaseRequest, get("/count/1?incr="+key+"&by="+by), nil)
	if err != nil {
		t.Errorf("incr %s: %v", key, err)
		return -1
	}
	if res.Kind != host.Respond || res.Response.Status != 200 {
		t.Errorf("incr %s: %+v", key, res)
		return -1
	}
	n, err := strconv.Atoi(string(res.Response.Body))
	if err != nil {
		t.Errorf("incr %s answered %q", key, res.Response.Body)
	}
	return n
}

// TestKVCountersUnderConcurrentHooks: concurrent hook calls of a
// sandboxed plugin each add one to a counter, 200 with KV.Increment and 20
// with a compare-and-swap loop (each retry is a durable commit, and under
// contention each call retries about as often as there are callers);
// every call gets a different count and the counter ends exact.
func TestKVCountersUnderConcurrentHooks(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	td.install(t, countPlugin(t, "counter"))
	waitState(t, td.ctl, "counter", 30*time.Second, "running", running)
	s := dial(t, td.socket)
	for by, calls := range map[string]int{"increment": 200, "cas": 20} {
		t.Run(by, func(t *testing.T) {
			got := make([]int, calls)
			var wg sync.WaitGroup
			for i := range calls {
				wg.Add(1)
				go func() {
					defer wg.Done()
					got[i] = incr(t, s, "views-"+by, by)
				}()
			}
			wg.Wait()
			seen := map[int]bool{}
			for _, n := range got {
				if n < 1 || n > calls || seen[n] {
					t.Fatalf("counts answered: %v; want each of 1..%d once", got, calls)
				}
				seen[n] = true
			}
			if n := incr(t, s, "views-"+by, by); n != calls+1 {
				t.Fatalf("after %d concurrent increments the next is %d, want %d", calls, n, calls+1)
			}
		})
	}
}

// TestUninstallKeepsData: uninstalling keeps the plugin's key-value data
// and settings (saying how much), a later install of the name finds them,
// and --purge deletes them; removing a plugin that is gone purges what is
// kept of it.
func TestUninstallKeepsData(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := settingsPlugin(t, "1.0.0", settingsGlobalV1)
	td.install(t, dir)
	waitState(t, td.ctl, "configured", 30*time.Second, "running", running)
	s := dial(t, td.socket)
	counter := func() int {
		t.Helper()
		res := dispatch(t, s, host.PhaseRequest, get("/conf/1?incr=n"), nil)
		n, _ := strconv.Atoi(string(res.Response.Body))
		return n
	}
	for range 3 {
		counter()
	}
	if _, err := td.ctl.SetSettings(ctx, "configured", host.ScopeGlobal, 0, map[string]any{"greeting": "kept"}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := td.ctl.SetSettings(ctx, "configured", host.ScopeUser, 7, map[string]any{"volume": 9}, false); err != nil {
		t.Fatal(err)
	}

	kept, err := td.ctl.Uninstall(ctx, "configured", false)
	if err != nil {
		t.Fatal(err)
	}
	if want := uint64(len("n1") + len(`{"greeting":"kept"}`) + len(`{"volume":9}`)); kept != want {
		t.Errorf("kept %d bytes, want %d", kept, want)
	}
	if list, err := td.ctl.List(ctx); err != nil || len(list) != 0 {
		t.Fatalf("after uninstall: %+v, %v", list, err)
	}
	if _, err := td.ctl.Uninstall(ctx, "configured", false); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "are kept (purge deletes them)") {
		t.Errorf("uninstall again: %v", err)
	}

	// A fresh install of the name finds the data, and says so.
	td.install(t, dir)
	waitState(t, td.ctl, "configured", 30*time.Second, "running", running)
	if n := counter(); n != 4 {
		t.Errorf("the counter after a reinstall went on at %d, want 4", n)
	}
	if ps, err := td.ctl.Settings(ctx, "configured", host.ScopeUser, 7); err != nil || ps.Values["volume"] != json.Number("9") && ps.Values["volume"] != float64(9) {
		t.Errorf("user 7 settings after a reinstall: %+v, %v", ps.Values, err)
	}
	lines, err := td.ctl.Logs(ctx, "configured", 100, nil)
	if err != nil {
		t.Fatal(err)
	}
	var said bool
	for _, l := range lines {
		said = said || strings.Contains(l.Text, "kept data of a previous install: 1 keys, 2 settings objects")
	}
	if !said {
		t.Errorf("the log does not tell of the kept data: %+v", lines)
	}

	// --purge deletes it: the next install starts empty.
	if kept, err := td.ctl.Uninstall(ctx, "configured", true); err != nil || kept != 0 {
		t.Fatalf("uninstall --purge: %d, %v", kept, err)
	}
	td.install(t, dir)
	waitState(t, td.ctl, "configured", 30*time.Second, "running", running)
	if n := counter(); n != 1 {
		t.Errorf("the counter after a purge and reinstall is %d, want 1", n)
	}
	if ps, err := td.ctl.Settings(ctx, "configured", host.ScopeGlobal, 0); err != nil || len(ps.Stored) != 0 {
		t.Errorf("settings after a purge: %+v, %v", ps.Stored, err)
	}

	// Purging after the fact.
	if _, err := td.ctl.Uninstall(ctx, "configured", false); err != nil {
		t.Fatal(err)
	}
	if _, err := td.ctl.Uninstall(ctx, "configured", true); err != nil {
		t.Fatalf("purge of kept data: %v", err)
	}
	if _, err := td.ctl.Uninstall(ctx, "configured", true); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("purge of nothing: %v", err)
	}
}

// TestDataExportImport: an export holds the key-value data and settings
// in the documented format; importing it into a fresh install restores
// all of it (round trip); merge keeps other keys, --replace does not; an
// import that breaks a limit or a settings schema, names another plugin
// or is not an export writes nothing.
func TestDataExportImport(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := settingsPlugin(t, "1.0.0", settingsGlobalV1)
	td.install(t, dir)
	waitState(t, td.ctl, "configured", 30*time.Second, "running", running)
	s := dial(t, td.socket)
	for range 5 {
		dispatch(t, s, host.PhaseRequest, get("/conf/1?incr=views/1"), nil)
	}
	dispatch(t, s, host.PhaseRequest, get("/conf/1?incr=views/2"), nil)
	if _, err := td.ctl.SetSettings(ctx, "configured", host.ScopeGlobal, 0, map[string]any{"max_rating": "PG", "api_key": "s3cret"}, false); err != nil {
		t.Fatal(err)
	}
	if _, err := td.ctl.SetSettings(ctx, "configured", host.ScopeUser, 12, map[string]any{"volume": 30}, false); err != nil {
		t.Fatal(err)
	}

	doc, err := td.ctl.ExportData(ctx, "configured")
	if err != nil {
		t.Fatal(err)
	}
	var ex struct {
		Format        int       `json:"format"`
		Plugin        string    `json:"plugin"`
		PluginVersion string    `json:"plugin_version"`
		ExportedAt    time.Time `json:"exported_at"`
		KV            []struct {
			Key   string `json:"key"`
			Value string `json:"value_base64"`
		} `json:"kv"`
		Settings struct {
			Global map[string]any            `json:"global"`
			Users  map[string]map[string]any `json:"users"`
		} `json:"settings"`
	}
	if err := json.Unmarshal(doc, &ex); err != nil {
		t.Fatalf("export is not JSON: %v\n%s", err, doc)
	}
	if ex.Format != 1 || ex.Plugin != "configured" || ex.PluginVersion != "1.0.0" || time.Since(ex.ExportedAt) > time.Minute ||
		len(ex.KV) != 2 || ex.KV[0].Key != "views/1" || ex.KV[0].Value != base64.StdEncoding.EncodeToString([]byte("5")) ||
		ex.Settings.Global["api_key"] != "s3cret" || ex.Settings.Users["12"]["volume"] != float64(30) {
		t.Fatalf("export:\n%s", doc)
	}

	// Round trip into a fresh install.
	if _, err := td.ctl.Uninstall(ctx, "configured", true); err != nil {
		t.Fatal(err)
	}
	td.install(t, dir)
	waitState(t, td.ctl, "configured", 30*time.Second, "running", running)
	if n, err := td.ctl.ImportData(ctx, "configured", doc, false); err != nil || n != 2 {
		t.Fatalf("import: %d, %v", n, err)
	}
	again, err := td.ctl.ExportData(ctx, "configured")
	if err != nil {
		t.Fatal(err)
	}
	if stripTime(t, again) != stripTime(t, doc) {
		t.Errorf("export after import differs:\n%s\nwant\n%s", again, doc)
	}
	if res := dispatch(t, s, host.PhaseRequest, get("/conf/1?settings=global"), nil); !strings.Contains(string(res.Response.Body), `"api_key":"s3cret"`) {
		t.Errorf("the plugin sees %s after the import", res.Response.Body)
	}
	if res := dispatch(t, s, host.PhaseRequest, get("/conf/1?incr=views/1"), nil); string(res.Response.Body) != "6" {
		t.Errorf("the counter after the import went on at %s, want 6", res.Response.Body)
	}

	// Merge keeps keys the export lacks; replace drops them.
	dispatch(t, s, host.PhaseRequest, get("/conf/1?incr=other"), nil)
	if _, err := td.ctl.ImportData(ctx, "configured", doc, false); err != nil {
		t.Fatal(err)
	}
	if keys := exportedKeys(t, td, "configured"); strings.Join(keys, ",") != "other,views/1,views/2" {
		t.Errorf("after a merge: %q", keys)
	}
	if _, err := td.ctl.ImportData(ctx, "configured", doc, true); err != nil {
		t.Fatal(err)
	}
	if keys := exportedKeys(t, td, "configured"); strings.Join(keys, ",") != "views/1,views/2" {
		t.Errorf("after a replace: %q", keys)
	}

	// Refusals write nothing.
	before := stripTime(t, mustExport(t, td, "configured"))
	big := base64.StdEncoding.EncodeToString(make([]byte, 1<<20+1))
	for _, tt := range []struct{ name, doc, want string }{
		{"oversized value", `{"format":1,"plugin":"configured","kv":[{"key":"a","value_base64":"YQ=="},{"key":"big","value_base64":"` + big + `"}]}`,
			`kv[1] (key "big"): value is 1048577 bytes, over the 1 MiB limit per value`},
		{"empty key", `{"format":1,"plugin":"configured","kv":[{"key":"","value_base64":""}]}`, "kv[0]: key is empty"},
		{"settings against the schema", `{"format":1,"plugin":"configured","kv":[{"key":"a","value_base64":"YQ=="}],"settings":{"users":{"7":{"volume":101}}}}`,
			"user settings (user 7) fail the plugin's schema"},
		{"unknown settings key", `{"format":1,"plugin":"configured","settings":{"global":{"nope":1}}}`, "nope"},
		{"bad user id", `{"format":1,"plugin":"configured","settings":{"users":{"-3":{}}}}`, `"-3" is not a user id`},
		{"another plugin", `{"format":1,"plugin":"other","kv":[]}`, `the export is of plugin "other", not "configured"`},
		{"another format", `{"format":2,"plugin":"configured","kv":[]}`, "export format 2; this dimplugd reads format 1"},
		{"not an export", `{"hello":"world"}`, "not a dimplugd data export"},
	} {
		_, err := td.ctl.ImportData(ctx, "configured", []byte(tt.doc), true)
		if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "nothing was imported") {
			t.Errorf("import %s: %v\nwant invalid, saying %q", tt.name, err, tt.want)
		}
	}
	if after := stripTime(t, mustExport(t, td, "configured")); after != before {
		t.Errorf("refused imports changed the data:\n%s\nwas\n%s", after, before)
	}
}

func mustExport(t *testing.T, td *testDaemon, name string) []byte {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	doc, err := td.ctl.ExportData(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	return doc
}

func exportedKeys(t *testing.T, td *testDaemon, name string) []string {
	t.Helper()
	var ex struct {
		KV []struct {
			Key string `json:"key"`
		} `json:"kv"`
	}
	if err := json.Unmarshal(mustExport(t, td, name), &ex); err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, e := range ex.KV {
		keys = append(keys, e.Key)
	}
	return keys
}

// stripTime returns an export without its exported_at, to compare.
func stripTime(t *testing.T, doc []byte) string {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(doc, &m); err != nil {
		t.Fatal(err)
	}
	delete(m, "exported_at")
	b, _ := json.Marshal(m)
	return string(b)
}
