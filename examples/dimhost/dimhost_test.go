package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sandbox/container"
	"github.com/dimplugd/dimplugd/sdk-go/host"
)

func TestMain(m *testing.M) {
	container.Init() // required of every binary that links the container runtime
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// call sends one request to h and returns the status, headers and body.
func call(t *testing.T, h http.Handler, method, path, token, body string) (int, http.Header, []byte) {
	t.Helper()
	var rb io.Reader
	if body != "" {
		rb = strings.NewReader(body)
	}
	req := httptest.NewRequest(method, path, rb)
	if token != "" {
		req.Header.Set("Authorization", token)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Code, rec.Header(), rec.Body.Bytes()
}

func newTestAPI(t *testing.T) *API {
	t.Helper()
	dir := t.TempDir()
	if err := writeFixtures(dir); err != nil {
		t.Fatal(err)
	}
	return NewAPI(dir)
}

// TestAPI checks the Dim-like API on its own.
func TestAPI(t *testing.T) {
	api := newTestAPI(t)
	const gid42 = "00000000-0000-4000-8000-000000000042"
	for _, tc := range []struct {
		method, path, token, body string
		status                    int
		want                      string // a substring of the body
	}{
		{"POST", "/api/v1/auth/login", "", `{"username":"kid","password":"kid"}`, 200, `{"token":"demo-token-2"}`},
		{"POST", "/api/v1/auth/login", "", `{"username":"kid","password":"nope"}`, 401, "InvalidCredentials"},
		{"GET", "/api/v1/auth/whoami", "demo-token-2", "", 200, `"username":"kid"`},
		{"GET", "/api/v1/auth/whoami", "demo-token-9", "", 401, ""},
		{"GET", "/api/v1/library", "", "", 200, `"name":"Movies"`},
		{"GET", "/api/v1/library/1/media", "", "", 200, `{"Movies":[{"id":13,"name":"Alien","poster_path":"images/posters/13.jpg","rating":"R"},{"id":7,`},
		{"GET", "/api/v1/library/3/media", "", "", 404, ""},
		{"GET", "/api/v1/dashboard", "", "", 200, `"Recently added":[{"id":13,"name":"Alien"`},
		{"GET", "/api/v1/media/13", "", "", 200, `"rating":"R"`},
		{"GET", "/api/v1/media/12", "", "", 404, "NotFoundError"},
		{"POST", "/api/v1/media/42/progress?offset=15", "", "", 401, ""},
		{"POST", "/api/v1/media/42/progress?offset=x", "demo-token-2", "", 400, ""},
		{"POST", "/api/v1/media/42/progress?offset=15", "demo-token-2", "", 200, ""},
		{"GET", "/api/v1/media/42", "demo-token-2", "", 200, `"progress":15`},
		{"GET", "/api/v1/stream/42/manifest", "", "", 200, `{"gid":"` + gid42 + `","tracks":[{"id":"42-video",`},
		{"GET", "/api/v1/stream/" + gid42 + "/manifest.mpd", "", "", 200, `media="42-video/data/$Number$.m4s"`},
		{"GET", "/api/v1/stream/nope/manifest.mpd", "", "", 404, ""},
		{"GET", "/api/v1/stream/42-video/data/init.mp4", "", "", 200, "ftypiso6"},
		{"GET", "/api/v1/stream/42-audio/data/8.m4s", "", "", 200, "dimhost fixture 42-audio segment 8"},
		{"GET", "/api/v1/stream/42-audio/data/9.m4s", "", "", 404, ""},
		{"GET", "/api/v1/stream/42-audio/data/x/1.m4s", "", "", 400, "InvalidRequest"},
		{"GET", "/api/v1/stream/nope/data/0.m4s", "", "", 404, ""},
	} {
		status, _, body := call(t, api, tc.method, tc.path, tc.token, tc.body)
		if status != tc.status || !bytes.Contains(body, []byte(tc.want)) {
			t.Errorf("%s %s: %d %s, want %d with %q", tc.method, tc.path, status, body, tc.status, tc.want)
		}
	}
}

func TestRouteTemplate(t *testing.T) {
	api := newTestAPI(t)
	for path, want := range map[string]string{
		"/api/v1/media/42":                      "/api/v1/media/:id",
		"/api/v1/stream/42-video/data/init.mp4": "/api/v1/stream/:id/data/*chunk",
		"/api/v1/stream/g/manifest.mpd":         "/api/v1/stream/:gid/manifest.mpd",
		"/api/v1/stream/g/hls/master.m3u8":      "", // a plugin's route, not Dim's
	} {
		if got := api.RouteTemplate(httptest.NewRequest("GET", path, nil)); got != want {
			t.Errorf("RouteTemplate(%s) = %q, want %q", path, got, want)
		}
	}
}

// The end-to-end test runs a real dimplugd with every example plugin
// installed by dimplugctl, and checks each plugin's effect through dimhost.

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// repoRoot is the module root, from this package's directory.
const repoRoot = "../.."

// buildAll builds dimplugd, dimplugctl and every example plugin into a
// temporary directory, once per test binary.
func buildAll(t *testing.T) (bin string, plugins []string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "dimhost-e2e-bin-")
		if buildErr != nil {
			return
		}
		run := func(static bool, args ...string) error {
			cmd := exec.Command("go", args...)
			cmd.Dir = repoRoot
			cmd.Env = os.Environ()
			if static {
				cmd.Env = append(cmd.Env, "CGO_ENABLED=0")
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			return nil
		}
		if buildErr = run(false, "build", "-tags", "seccomp", "-o", filepath.Join(binDir, "dimplugd"), "./cmd/dimplugd"); buildErr != nil {
			return
		}
		if buildErr = run(false, "build", "-o", filepath.Join(binDir, "dimplugctl"), "./cmd/dimplugctl"); buildErr != nil {
			return
		}
		// Each plugin dir gets its static binary, its manifest and the
		// files the manifest names (settings schemas): everything but Go
		// sources and a binary built in place.
		plugin := func(manifest, pkg, dst string) error {
			src := filepath.Dir(manifest)
			name := filepath.Base(src)
			dir := filepath.Join(binDir, dst, name)
			err := filepath.WalkDir(src, func(path string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				rel, _ := filepath.Rel(src, path)
				switch {
				case d.IsDir():
					return os.MkdirAll(filepath.Join(dir, rel), 0o755)
				case strings.HasSuffix(rel, ".go") || rel == name || !d.Type().IsRegular():
					return nil
				}
				b, err := os.ReadFile(path)
				if err != nil {
					return err
				}
				return os.WriteFile(filepath.Join(dir, rel), b, 0o644)
			})
			if err != nil {
				return err
			}
			return run(true, "build", "-trimpath", "-o", filepath.Join(dir, name), pkg+name)
		}
		examples, _ := filepath.Glob(filepath.Join(repoRoot, "examples/plugins/*/plugin.toml"))
		for _, m := range examples {
			if buildErr = plugin(m, "./examples/plugins/", "plugins"); buildErr != nil {
				return
			}
		}
		// Test plugins (testdata/<name>/), apart from the examples.
		tests, _ := filepath.Glob("testdata/*/plugin.toml")
		for _, m := range tests {
			if buildErr = plugin(m, "./examples/dimhost/testdata/", "testplugins"); buildErr != nil {
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	plugins, _ = filepath.Glob(filepath.Join(binDir, "plugins", "*"))
	return binDir, plugins
}

// testPlugin is the directory of the test plugin testdata/<name>, built by
// buildAll.
func testPlugin(t *testing.T, name string) string {
	t.Helper()
	buildAll(t)
	return filepath.Join(binDir, "testplugins", name)
}

// startDaemon runs `dimplugd serve` on temporary state and returns its
// socket. The daemon is stopped when the test ends.
func startDaemon(t *testing.T, bin string) string {
	dir, err := os.MkdirTemp("", "dh") // short: socket paths are limited to 108 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o711) // the sandbox's mapped uids pass through to the container state
	socket := filepath.Join(dir, "d.sock")
	args := []string{"serve", "--state-dir", filepath.Join(dir, "state"), "--socket", socket,
		"--container-state", filepath.Join(dir, "ct"), "--cgroup-parent", fmt.Sprintf("dimhost-e2e-%d", os.Getpid())}
	if err := container.Available(); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("the container sandbox must run in CI but cannot: %v", err)
		}
		t.Logf("container sandbox unavailable (%v); running dimplugd --insecure-no-sandbox", err)
		args = append(args, "--insecure-no-sandbox")
	}
	cmd := exec.Command(filepath.Join(bin, "dimplugd"), args...)
	var log bytes.Buffer
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-done
			t.Errorf("dimplugd ignored SIGTERM for 20s")
		}
		if t.Failed() {
			t.Logf("dimplugd log:\n%s", log.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		c, err := host.DialControl(ctx, controlSocket(socket))
		cancel()
		if err == nil {
			c.Close()
			return socket
		}
		select {
		case <-done:
			t.Fatalf("dimplugd exited at start-up:\n%s", log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dimplugd did not serve %s within 20s: %v\n%s", socket, err, log.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// controlSocket is the control socket of the daemon serving the host
// socket socket: dimplugd serve puts it next to a --socket given alone.
func controlSocket(socket string) string {
	return filepath.Join(filepath.Dir(socket), "control.sock")
}

// waitRunning waits until every installed plugin runs.
func waitRunning(t *testing.T, socket string, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := host.DialControl(ctx, controlSocket(socket))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for {
		sts, err := c.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		running := 0
		for _, st := range sts {
			if st.State == "running" {
				running++
			}
		}
		if running == n && len(sts) == n {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("plugins not all running after 30s: %+v", sts)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// eventually retries check until it passes or 10 s have passed: observers
// run after the response has been sent.
func eventually(t *testing.T, what string, check func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// installAndServe installs the plugin dirs with dimplugctl, waits until
// they all run, and returns the test API wrapped in a middleware connected
// to the daemon, and its session (closed when the test ends).
func installAndServe(t *testing.T, ctx context.Context, bin, socket string, plugins []string) (*host.Middleware, *host.Session) {
	t.Helper()
	for _, dir := range plugins {
		cmd := exec.Command(filepath.Join(bin, "dimplugctl"), "--socket", controlSocket(socket), "install", "--yes", dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("dimplugctl install %s: %v\n%s", dir, err, out)
		}
	}
	waitRunning(t, socket, len(plugins))
	mw, s, err := newHandler(ctx, socket, newTestAPI(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return mw, s
}

func TestEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the daemon")
	}
	bin, plugins := buildAll(t)
	socket := startDaemon(t, bin)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	mw, s := installAndServe(t, ctx, bin, socket, plugins)
	srv := httptest.NewServer(mw)
	defer srv.Close()
	do := func(method, path, token, body string) (int, http.Header, []byte) {
		t.Helper()
		var rb io.Reader
		if body != "" {
			rb = strings.NewReader(body)
		}
		req, _ := http.NewRequestWithContext(ctx, method, srv.URL+path, rb)
		if token != "" {
			req.Header.Set("Authorization", token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header, b
	}
	const admin = "demo-token-1"

	// Login goes straight through (no plugin hooks it).
	status, _, body := do("POST", "/api/v1/auth/login", "", `{"username":"kid","password":"kid"}`)
	var login struct{ Token string }
	if json.Unmarshal(body, &login); status != 200 || login.Token == "" {
		t.Fatalf("login: %d %s", status, body)
	}
	kid := login.Token

	t.Run("parental-controls", func(t *testing.T) {
		// The kid's library listing hides R and unrated films; listing
		// also teaches the plugin every rating.
		_, hdr, body := do("GET", "/api/v1/library/1/media", kid, "")
		if string(body) != `{"Movies":[{"id":42,"name":"The Hitchhiker's Guide to the Galaxy","poster_path":"images/posters/42.jpg","rating":"PG"}]}` {
			t.Errorf("kid's listing: %s", body)
		}
		if hdr.Get("X-Parental-Controls") == "" {
			t.Errorf("no X-Parental-Controls header: %v", hdr)
		}
		if _, _, body := do("GET", "/api/v1/library/1/media", admin, ""); !bytes.Contains(body, []byte("Alien")) {
			t.Errorf("owner's listing: %s", body)
		}
		for _, tc := range []struct {
			path, token string
			status      int
		}{
			{"/api/v1/media/13", kid, 403},
			{"/api/v1/stream/13/manifest", kid, 403},
			{"/api/v1/media/7", kid, 403}, // not rated
			{"/api/v1/media/42", kid, 200},
			{"/api/v1/media/13", admin, 200},
			{"/api/v1/media/13", "", 403},  // anonymous: PG-13 at most
			{"/api/v1/media/99", kid, 403}, // G, but library 2 was never listed: unknown, so denied
		} {
			status, _, body := do("GET", tc.path, tc.token, "")
			if status != tc.status {
				t.Errorf("GET %s as %q: %d %s, want %d", tc.path, tc.token, status, body, tc.status)
			}
			if status == 403 && !bytes.Contains(body, []byte("blocked by parental controls")) {
				t.Errorf("GET %s: 403 body %s", tc.path, body)
			}
		}
		// The owner opens Toy Story: the observer learns G, and the kid may.
		do("GET", "/api/v1/media/99", admin, "")
		eventually(t, "kid opens Toy Story after its rating was learned", func() error {
			if status, _, body := do("GET", "/api/v1/media/99", kid, ""); status != 200 {
				return fmt.Errorf("%d %s", status, body)
			}
			return nil
		})
	})

	t.Run("dashboard-rows", func(t *testing.T) {
		for _, id := range []int{13, 13, 13, 42, 42} {
			do("GET", fmt.Sprintf("/api/v1/media/%d", id), admin, "")
		}
		// Media pages served so far, whoever asked: 13 ×4, 42 ×3, 99 ×2.
		trending := func(token string) ([]string, error) {
			status, _, body := do("GET", "/api/v1/dashboard", token, "")
			var rows map[string][]struct{ Name string }
			if err := json.Unmarshal(body, &rows); err != nil || status != 200 {
				return nil, fmt.Errorf("%d %s", status, body)
			}
			if rows["Recently added"] == nil {
				return nil, fmt.Errorf("Dim's own row is gone: %s", body)
			}
			var names []string
			for _, c := range rows["Trending"] {
				names = append(names, c.Name)
			}
			return names, nil
		}
		eventually(t, "owner's Trending row", func() error {
			names, err := trending(admin)
			if err == nil && strings.Join(names, "|") != "Alien|The Hitchhiker's Guide to the Galaxy|Toy Story" {
				err = fmt.Errorf("Trending = %q", names)
			}
			return err
		})
		// parental-controls filters the row dashboard-rows added.
		names, err := trending(kid)
		if err != nil || strings.Join(names, "|") != "The Hitchhiker's Guide to the Galaxy|Toy Story" {
			t.Errorf("kid's Trending = %q, %v", names, err)
		}
	})

	t.Run("hls-gateway", func(t *testing.T) {
		_, _, body := do("GET", "/api/v1/stream/42/manifest", admin, "")
		var vm struct {
			GID    string
			Tracks []struct {
				ID             string
				ContentType    string `json:"content_type"`
				Bandwidth      int
				Duration       int
				TargetDuration int `json:"target_duration"`
			}
		}
		if err := json.Unmarshal(body, &vm); err != nil || len(vm.Tracks) != 2 {
			t.Fatalf("virtual manifest: %s", body)
		}
		v, a := vm.Tracks[0], vm.Tracks[1]
		master := fmt.Sprintf("/api/v1/stream/%s/hls/master.m3u8?video=%s:%d&audio=%s&duration=%d&target=%d", vm.GID, v.ID, v.Bandwidth, a.ID, v.Duration, v.TargetDuration)
		status, hdr, body := do("GET", master, admin, "")
		if status != 200 || hdr.Get("Content-Type") != "application/vnd.apple.mpegurl" || !bytes.HasPrefix(body, []byte("#EXTM3U\n")) {
			t.Fatalf("master playlist: %d %v %s", status, hdr, body)
		}
		// Follow the variant and every segment it lists: each is served by Dim.
		variant := lastLine(body)
		status, _, body = do("GET", variant, admin, "")
		if status != 200 || !bytes.Contains(body, []byte("#EXT-X-ENDLIST")) {
			t.Fatalf("variant %s: %d %s", variant, status, body)
		}
		segs := 0
		for _, line := range strings.Split(string(body), "\n") {
			uri := line
			if after, ok := strings.CutPrefix(line, `#EXT-X-MAP:URI="`); ok {
				uri = strings.TrimSuffix(after, `"`)
			}
			if !strings.HasPrefix(uri, "/api/v1/stream/") {
				continue
			}
			if status, _, seg := do("GET", uri, admin, ""); status != 200 || !bytes.Contains(seg, []byte("dimhost fixture 42-video")) {
				t.Errorf("segment %s: %d %q", uri, status, seg)
			}
			segs++
		}
		if segs != 1+9 { // init + ceil(42/5)
			t.Errorf("%d segment URIs in\n%s", segs, body)
		}
	})

	t.Run("scrobbler", func(t *testing.T) {
		// The player posts every 15 s; observers are unordered, so wait
		// for each post to be recorded before the next, as 15 s would.
		do("POST", "/api/v1/media/13/progress?offset=600", admin, "")
		for i, off := range []int64{15, 30, 45} {
			if status, _, body := do("POST", fmt.Sprintf("/api/v1/media/42/progress?offset=%d", off), kid, ""); status != 200 {
				t.Fatalf("progress: %d %s", status, body)
			}
			eventually(t, "kid's history", func() error {
				status, _, body := do("GET", "/api/v1/plugins/scrobbler/history", kid, "")
				var h struct {
					UserID  int64 `json:"user_id"`
					History []struct {
						MediaID int64 `json:"media_id"`
						Offset  int64
						Posts   int
					}
				}
				if err := json.Unmarshal(body, &h); err != nil || status != 200 {
					return fmt.Errorf("%d %s", status, body)
				}
				if h.UserID != 2 || len(h.History) != 1 || h.History[0].MediaID != 42 || h.History[0].Offset != off || h.History[0].Posts != i+1 {
					return fmt.Errorf("history %s", body)
				}
				return nil
			})
		}
		if status, _, _ := do("GET", "/api/v1/plugins/scrobbler/history", "", ""); status != 401 {
			t.Errorf("anonymous history: %d", status)
		}
	})

	t.Run("media-badge", func(t *testing.T) {
		if _, hdr, _ := do("GET", "/api/v1/media/42", admin, ""); hdr.Get("X-Dim-Badge") != "plugin-approved" {
			t.Errorf("X-Dim-Badge missing: %v", hdr)
		}
	})

	t.Run("streams", func(t *testing.T) { testStreams(t, ctx, s, mw) })
	t.Run("inspect shows stream stages", func(t *testing.T) {
		out, err := exec.Command(filepath.Join(bin, "dimplugctl"), "--socket", controlSocket(socket), "inspect", "segment-tagger").CombinedOutput()
		if err != nil {
			t.Fatalf("dimplugctl inspect: %v\n%s", err, out)
		}
		// Two video streams went through it: init + 4 segments, init + 2.
		for _, want := range []string{"Streams:\n  tag        transform video/* (priority 0, deadline 2s per frame, fail-open)\n",
			"2 streams (0 open), 8 frames, 0 dropped, 0 missed deadlines, 0 failures"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("inspect lacks %q:\n%s", want, out)
			}
		}
	})

	// Without plugins, the plugin-owned routes do not exist.
	if status, _, _ := call(t, newTestAPI(t), "GET", "/api/v1/plugins/scrobbler/history", kid, ""); status != 404 {
		t.Errorf("plain API answered the scrobbler's route: %d", status)
	}
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}

// testStreams sends generated fMP4 tracks through segment-tagger (a
// transform on video/*) and stream-stats (an observer of video/* and
// audio/*), checks every byte that comes back, and the statistics route.
func testStreams(t *testing.T, ctx context.Context, s *host.Session, mw http.Handler) {
	tagBox := func(seq uint64) []byte {
		tag := fmt.Sprintf("dimplugd:segment-tagger seq=%d", seq)
		return append(binary.BigEndian.AppendUint32(nil, uint32(8+len(tag))), "free"+tag...)
	}
	run := func(c streamConfig, wantStages string, check func(seq uint64, sent, back []byte) error) *streamReport {
		t.Helper()
		var errs []string
		rep, err := runStream(ctx, s, c, func(seq uint64, sent, back []byte) {
			if err := check(seq, sent, back); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", segmentName(seq), err))
			}
		})
		if err != nil {
			t.Fatalf("%s stream: %v", c.Track.Name, err)
		}
		if got := strings.Join(rep.Stages, " "); got != wantStages {
			t.Errorf("%s chain %q, want %q", c.Track.Name, got, wantStages)
		}
		for _, e := range errs {
			t.Error(e)
		}
		for _, r := range rep.Frames {
			if r.Err != nil {
				t.Errorf("%s %s: %v", c.Track.Name, r.Name, r.Err)
			}
		}
		return rep
	}

	// 480p: segments 0, 1, 3 have a 64-byte free box (3 with a 64-bit
	// mdat size), segment 2 none.
	video := streamConfig{Track: fmp4Profiles["480p"], MediaID: 42, TrackID: "42-video", Segments: 4, Free: 64,
		Bare: []int{2}, Large: []int{3}, Session: "e2e-480p"}
	rep := run(video, "segment-tagger/tag stream-stats/video", func(seq uint64, sent, back []byte) error {
		bare := seq == 3
		switch {
		case seq == 0: // init: untouched
			if !bytes.Equal(back, sent) {
				return fmt.Errorf("init segment changed")
			}
		case bare: // appended: the original bytes, then a free box with the tag
			if !bytes.Equal(back, append(append([]byte{}, sent...), tagBox(seq)...)) {
				return fmt.Errorf("%d bytes back (sent %d): not the segment plus the tag box", len(back), len(sent))
			}
		default: // tagged over the free box: only its payload, [32, 96), changed
			tag := fmt.Sprintf("dimplugd:segment-tagger seq=%d", seq)
			want := append([]byte{}, sent...)
			copy(want[32:96], append([]byte(tag), make([]byte, 64-len(tag))...))
			if string(back[24:32]) != "\x00\x00\x00\x48free" || !bytes.Equal(back, want) {
				return fmt.Errorf("not tagged in place: free box %q", back[24:96])
			}
		}
		return nil
	})
	for _, r := range rep.Frames {
		if wantZero := r.Seq == 0; r.ZeroCopy != wantZero { // the init segment passes on untouched
			t.Errorf("%s: zero-copy %v, want %v", r.Name, r.ZeroCopy, wantZero)
		}
	}

	// 1080p, 6.3 MB segments whose 16-byte free box is too small: every
	// media segment becomes a new frame.
	big := streamConfig{Track: fmp4Profiles["1080p"], MediaID: 42, TrackID: "42-video", Segments: 2, Free: 16, Session: "e2e-1080p"}
	rep = run(big, "segment-tagger/tag stream-stats/video", func(seq uint64, sent, back []byte) error {
		if seq > 0 && !bytes.Equal(back, append(append([]byte{}, sent...), tagBox(seq)...)) {
			return fmt.Errorf("%d bytes back (sent %d): not the segment plus the tag box", len(back), len(sent))
		}
		return nil
	})
	if rep.Bytes < 12_600_000 {
		t.Errorf("1080p: %d bytes back", rep.Bytes)
	}

	// Audio: no transform takes audio/*; the observer does.
	audio := streamConfig{Track: fmp4Profiles["audio"], MediaID: 42, TrackID: "42-audio", Segments: 3, Free: 64, Session: "e2e-audio"}
	rep = run(audio, "stream-stats/audio", func(seq uint64, sent, back []byte) error {
		if !bytes.Equal(back, sent) {
			return fmt.Errorf("changed without a transform")
		}
		return nil
	})
	for _, r := range rep.Frames {
		if !r.ZeroCopy {
			t.Errorf("audio %s did not come back as the host's memory", r.Name)
		}
	}

	// The statistics, through the middleware, as a client would see them.
	type stats struct {
		Frames          int     `json:"frames"`
		InitSegments    int     `json:"init_segments"`
		Segments        int     `json:"segments"`
		Missed          int     `json:"missed"`
		KeyFrames       int     `json:"key_frames"`
		Samples         int     `json:"samples"`
		SyncSamples     int     `json:"sync_samples"`
		Tagged          int     `json:"tagged"`
		Bytes           int64   `json:"bytes"`
		SegmentBytes    int64   `json:"segment_bytes"`
		Min             int64   `json:"min_segment_bytes"`
		Max             int64   `json:"max_segment_bytes"`
		Bitrate         int64   `json:"bitrate_bps"`
		DurationSeconds float64 `json:"duration_seconds"`
		LastTag         string  `json:"last_tag"`
	}
	get := func(c streamConfig) stats {
		status, body, _, err := streamStats(ctx, mw, c.TrackID, c.Session, c.Segments+1, 10*time.Second)
		if err != nil || status != 200 {
			t.Fatalf("%s statistics: %d %v %s", c.Session, status, err, body)
		}
		var st stats
		if err := json.Unmarshal(body, &st); err != nil {
			t.Fatal(err)
		}
		return st
	}
	// What the observer saw is the chain's output: segment 2 grew by the tag box.
	segBytes := int64(0)
	sizes := []int64{}
	for n := 0; n < video.Segments; n++ {
		sz := int64(mediaSegmentSize(video.Track, video.options(n)))
		if n == 2 {
			sz += int64(len(tagBox(3)))
		}
		sizes = append(sizes, sz)
		segBytes += sz
	}
	want := stats{Frames: 5, InitSegments: 1, Segments: 4, KeyFrames: 4, Samples: 480, SyncSamples: 4, Tagged: 4,
		Bytes: segBytes + int64(len(initSegment(video.Track))), SegmentBytes: segBytes, Min: slices.Min(sizes), Max: slices.Max(sizes),
		Bitrate: int64(float64(segBytes*8) / 20), DurationSeconds: 20, LastTag: "dimplugd:segment-tagger seq=4"}
	if got := get(video); got != want {
		t.Errorf("480p statistics\n got %+v\nwant %+v", got, want)
	}
	if got := get(big); got.Segments != 2 || got.Tagged != 2 || got.Bitrate < 10_000_000 || got.Bitrate > 10_200_000 {
		t.Errorf("1080p statistics: %+v", got)
	}
	if got := get(audio); got.Segments != 3 || got.Tagged != 0 || got.Samples != 3*235 || got.SyncSamples != 3*235 || got.Bitrate < 120_000 || got.Bitrate > 130_000 {
		t.Errorf("audio statistics: %+v", got)
	}
}
