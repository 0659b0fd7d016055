package daemon

import (
	"encoding/json"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// TestRemoveKeepsDataCLI drives dimplugctl: rm keeps the data and says
// how much; a reinstall finds it; data export and import --replace round
// trip it; rm --purge deletes it and says so; an install after that starts
// empty.
func TestRemoveKeepsDataCLI(t *testing.T) {
	d := newDaemonProc(t)
	d.start()
	d.ctl(false, "install", "--yes", exampleDir(t))
	d.waitRunning("media-badge", 0)
	views := func() float64 {
		t.Helper()
		s := dial(t, d.socket)
		defer s.Close()
		resp := &host.Response{Status: 200, Header: http.Header{"Content-Type": {"application/json"}}, Body: []byte(`{}`)}
		res := dispatch(t, s, host.PhaseResponse, get("/api/v1/media/7"), resp)
		var body map[string]any
		if err := json.Unmarshal(res.ResponseMutation.Body, &body); err != nil {
			t.Fatalf("media-badge answered %s", res.ResponseMutation.Body)
		}
		v, _ := body["views"].(float64)
		return v
	}
	for range 3 {
		views()
	}
	backup := filepath.Join(t.TempDir(), "media-badge.json")
	_, errOut := d.ctl(false, "data", "export", "media-badge", "-o", backup)
	if !strings.Contains(errOut, "exported the data of media-badge to "+backup) {
		t.Errorf("data export says %q", errOut)
	}

	out, _ := d.ctl(false, "rm", "media-badge")
	if want := "removed media-badge; kept 8 B of data for media-badge (installing media-badge again finds it; dimplugctl rm --purge media-badge deletes it)"; strings.TrimSpace(out) != want {
		t.Errorf("rm says %q\nwant %q", out, want)
	}
	out, _ = d.ctl(false, "install", "--yes", exampleDir(t))
	if want := "media-badge starts with the data kept from an earlier install: 1 keys, 0 settings (8 B)"; !strings.Contains(out, want) {
		t.Errorf("the reinstall says %q\nwant it to say %q", out, want)
	}
	d.waitRunning("media-badge", 0)
	if n := views(); n != 4 {
		t.Errorf("views after a reinstall: %v, want 4", n)
	}
	out, _ = d.ctl(false, "data", "import", "media-badge", backup, "--replace")
	if !strings.Contains(out, "imported 1 keys") {
		t.Errorf("data import says %q", out)
	}
	if n := views(); n != 4 {
		t.Errorf("views after importing the backup of 3: %v, want 4", n)
	}

	out, _ = d.ctl(false, "rm", "--purge", "media-badge")
	if strings.TrimSpace(out) != "removed media-badge and deleted its data" {
		t.Errorf("rm --purge says %q", out)
	}
	out, _ = d.ctl(false, "install", "--yes", exampleDir(t))
	if strings.Contains(out, "kept") {
		t.Errorf("the install after a purge says %q: there was no data to take over", out)
	}
	d.waitRunning("media-badge", 0)
	if n := views(); n != 1 {
		t.Errorf("views after rm --purge and a reinstall: %v, want 1", n)
	}
}
