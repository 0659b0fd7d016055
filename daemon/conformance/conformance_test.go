package conformance

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sandbox/container"
)

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds dimplugd and the kit's plugin once per test run.
func binaries(t *testing.T) (daemon, plugin string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "dpconf-bin")
		if buildErr != nil {
			return
		}
		for _, b := range []struct {
			out, pkg string
			env      []string
			args     []string
		}{
			{"dimplugd", "./cmd/dimplugd", nil, []string{"-tags", "seccomp"}},
			{"dimplugd-conformance-plugin", "./daemon/conformance/plugin", []string{"CGO_ENABLED=0"}, nil},
		} {
			cmd := exec.Command("go", append(append([]string{"build", "-o", filepath.Join(binDir, b.out)}, b.args...), b.pkg)...)
			cmd.Dir = "../.."
			cmd.Env = append(os.Environ(), b.env...)
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = &buildError{b.pkg, err, out}
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "dimplugd"), filepath.Join(binDir, "dimplugd-conformance-plugin")
}

type buildError struct {
	pkg string
	err error
	out []byte
}

func (e *buildError) Error() string {
	return "go build " + e.pkg + ": " + e.err.Error() + "\n" + string(e.out)
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// sandboxed says whether plugins run in the container sandbox: always
// under CI, where it must work.
func sandboxed(t *testing.T) bool {
	t.Helper()
	err := container.Available()
	if err != nil && os.Getenv("CI") == "true" {
		t.Fatalf("the container sandbox must run in CI but cannot: %v", err)
	}
	if err != nil {
		t.Logf("container sandbox unavailable (%v): plugins run as plain processes", err)
	}
	return err == nil
}

// requireAllPass fails the test unless every case ran and passed.
func requireAllPass(t *testing.T, rep *Report) {
	t.Helper()
	var b strings.Builder
	rep.WriteText(&b)
	t.Log("\n" + b.String())
	if len(rep.Results) != len(cases) {
		t.Errorf("%d cases ran, want %d", len(rep.Results), len(cases))
	}
	for _, r := range rep.Results {
		if r.Status != Pass {
			t.Errorf("%s: %s %s", r.Name, r.Status, r.Detail)
		}
	}
}

// TestGoHostConformance runs the kit on the Go host SDK through the
// driver protocol (`dimplugd conformance driver`), as any other language's
// driver runs, with the kit's plugin (the Go plugin SDK).
func TestGoHostConformance(t *testing.T) {
	daemon, plugin := binaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	rep, err := Run(ctx, Config{Daemon: daemon, PluginBin: plugin, Sandbox: sandboxed(t),
		NewDriver: func(ctx context.Context, socket string) (Driver, error) {
			return StartProcessDriver(ctx, []string{daemon, "conformance", "driver"}, socket)
		}})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Implementation != "dimplugd sdk-go/host" {
		t.Errorf("implementation %q", rep.Implementation)
	}
	requireAllPass(t, rep)
}

// TestPluginCommand runs `dimplugd conformance plugin` on the kit's plugin
// directory, as a plugin author would, and reads its JSON report.
func TestPluginCommand(t *testing.T) {
	daemon, plugin := binaries(t)
	dir := t.TempDir()
	b, _ := os.ReadFile(plugin)
	os.WriteFile(filepath.Join(dir, "conf"), b, 0o755)
	os.WriteFile(filepath.Join(dir, "plugin.toml"), []byte("name = \"whatever\"\nversion = \"0.1.0\"\nentrypoint = \"conf\"\n"), 0o644)
	args := []string{"conformance", "plugin", "--json", dir}
	if !sandboxed(t) {
		args = append(args, "--sandbox", "no")
	}
	cmd := exec.Command(daemon, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Errorf("dimplugd conformance plugin: %v\n%s", err, stderr.String())
	}
	var rep Report
	if err := json.Unmarshal(out, &rep); err != nil {
		t.Fatalf("report: %v\n%s", err, out)
	}
	requireAllPass(t, &rep)
}

// faulty is a host with one defect, injected into the Go host's answers.
type faulty struct {
	*GoDriver
	fault string
	stale *RoutesAnswer
}

func (f *faulty) Routes(ctx context.Context) (*RoutesAnswer, error) {
	if f.fault == "stale routes" { // a host that never watches
		if f.stale == nil {
			var err error
			if f.stale, err = f.GoDriver.Routes(ctx); err != nil {
				return nil, err
			}
		}
		return f.stale, nil
	}
	return f.GoDriver.Routes(ctx)
}

func (f *faulty) Match(ctx context.Context, template, path string) (*MatchAnswer, error) {
	if f.fault == "trailing slash" { // ignores a trailing slash
		path = strings.TrimSuffix(path, "/")
	}
	return f.GoDriver.Match(ctx, template, path)
}

func (f *faulty) Dispatch(ctx context.Context, q *DispatchQuery) (*DispatchAnswer, error) {
	if f.fault == "no cancel" && q.TimeoutMs > 0 && q.TimeoutMs < 1000 {
		// Gives up on the call when its client does, but lets it run on.
		go f.GoDriver.Dispatch(context.WithoutCancel(ctx), &DispatchQuery{Phase: q.Phase, Method: q.Method, Path: q.Path, Query: q.Query, Header: q.Header})
		time.Sleep(time.Duration(q.TimeoutMs) * time.Millisecond)
		return nil, context.DeadlineExceeded
	}
	a, err := f.GoDriver.Dispatch(ctx, q)
	if err != nil {
		return a, err
	}
	switch f.fault {
	case "no params": // a direct-lane host that leaves params empty
		if a.Request != nil {
			for k := range a.Request.Header {
				if strings.HasPrefix(strings.ToLower(k), "x-conformance-params") {
					a.Request.Header[k] = []string{""}
				}
			}
		}
	case "fail open always": // ignores fail-closed
		if a.Outcome == OutcomeFailed {
			a.Skipped = append(a.Skipped, *a.Failure)
			a.Outcome, a.Failure, a.Response = OutcomeContinue, nil, nil
		}
	case "late": // waits for the plugin past the deadline
		if len(a.Skipped) > 0 || a.Failure != nil {
			time.Sleep(2 * time.Second)
		}
	}
	return a, nil
}

func (f *faulty) Stream(ctx context.Context, q *StreamQuery) (*StreamAnswer, error) {
	a, err := f.GoDriver.Stream(ctx, q)
	if err == nil && f.fault == "lost frame" && len(a.Frames) > 0 { // stops reading one frame early
		a.Frames = a.Frames[:len(a.Frames)-1]
	}
	return a, err
}

func (f *faulty) DirectLane(ctx context.Context, plugin string) (*LaneAnswer, error) {
	if f.fault == "no lanes" {
		return &LaneAnswer{}, nil
	}
	return f.GoDriver.DirectLane(ctx, plugin)
}

// TestKitCatchesFaults: a host with one defect fails the cases that check
// for it, and only those of the selection.
func TestKitCatchesFaults(t *testing.T) {
	daemon, plugin := binaries(t)
	sb := sandboxed(t)
	for _, tc := range []struct {
		fault string
		run   string
		fails []string
	}{
		{"stale routes", "^routes/", []string{"routes/watch"}},
		{"trailing slash", "^match/", []string{"match/routes.json"}},
		{"no params", "^request/(mutate-params|order)$", []string{"request/mutate-params"}},
		{"fail open always", "^(deadline|error)/", []string{"deadline/fail-closed", "error/policies"}},
		{"late", "^deadline/", []string{"deadline/fail-open", "deadline/fail-closed"}},
		{"no lanes", "^direct/granted$", []string{"direct/granted"}},
		{"no cancel", "^cancel$", []string{"cancel"}},
		{"lost frame", "^stream/", []string{"stream/chain"}},
	} {
		t.Run(tc.fault, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			rep, err := Run(ctx, Config{Daemon: daemon, PluginBin: plugin, Sandbox: sb, Run: regexp.MustCompile(tc.run),
				NewDriver: func(ctx context.Context, socket string) (Driver, error) {
					g, err := DialGoDriver(ctx, socket)
					if err != nil {
						return nil, err
					}
					return &faulty{GoDriver: g, fault: tc.fault}, nil
				}})
			if err != nil {
				t.Fatal(err)
			}
			var failed []string
			for _, r := range rep.Results {
				if r.Status == Fail {
					failed = append(failed, r.Name)
				}
			}
			if strings.Join(failed, " ") != strings.Join(tc.fails, " ") {
				var b strings.Builder
				rep.WriteText(&b)
				t.Errorf("failed cases %q, want %q\n%s", failed, tc.fails, b.String())
			}
		})
	}
}
