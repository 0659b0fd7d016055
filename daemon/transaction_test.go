package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// txManifest is a testplug that owns GET /tx/:id and answers "owned by
// <name>: …", at version.
func txManifest(name, version string, args ...string) string {
	m := testplugManifest(name, args, hooks("route", "GET", "/tx/:id", "2s", "fail-closed", 0))
	return strings.Replace(m, `version = "1.0.0"`, `version = "`+version+`"`, 1)
}

// txInstall installs dir with wait, reporting the error.
func (td *testDaemon) txInstall(t *testing.T, dir string, replace bool) (*host.PluginStatus, error) {
	t.Helper()
	archive, err := host.Archive(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return td.ctl.Install(ctx, archive, host.InstallOptions{Enable: true, Replace: replace, Wait: true})
}

// answeredBy dispatches GET /tx/1 and returns the name of the plugin
// version that answered, or an error.
func answeredBy(s *host.Session) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	res, err := s.Dispatch(ctx, host.PhaseRoute, get("/tx/1"), nil)
	if err != nil {
		return "", err
	}
	if res.Kind != host.Respond || res.Response == nil {
		return "", fmt.Errorf("not answered by a plugin: %+v", res)
	}
	body := string(res.Response.Body)
	name, ok := strings.CutPrefix(body, "owned by ")
	if !ok || res.Response.Status != 200 {
		return "", errors.New("answered " + body)
	}
	name, _, _ = strings.Cut(name, ":")
	return name, nil
}

func kvGet(t *testing.T, td *testDaemon, plugin, key string) string {
	t.Helper()
	v, ok, err := td.store.KV(plugin).Get(key)
	if err != nil || !ok {
		t.Fatalf("kv %s/%s: %v (found %v)", plugin, key, err, ok)
	}
	return string(v)
}

// TestInstallWaitServesAtOnce: an install with wait answers once the
// plugin serves: the first request right after it is answered by the
// plugin, not 503 "starting".
func TestInstallWaitServesAtOnce(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	s := dial(t, td.socket)
	st, err := td.txInstall(t, pluginDir(t, txManifest("txa", "1.0.0", "-name", "v1")), false)
	if err != nil {
		t.Fatalf("install: %v", err)
	}
	if st.State != StateRunning {
		t.Errorf("install answered with state %q, want running", st.State)
	}
	if who, err := answeredBy(s); err != nil || who != "v1" {
		t.Fatalf("first request after install: %q, %v", who, err)
	}
}

// TestInstallWaitFailsCleanly: a plugin that cannot start fails the
// install with its reason, and nothing of it remains.
func TestInstallWaitFailsCleanly(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	_, err := td.txInstall(t, pluginDir(t, txManifest("txb", "1.0.0", "-fail-start")), false)
	if err == nil {
		t.Fatal("installing a plugin that cannot start succeeded")
	}
	for _, want := range []string{`plugin "txb" version 1.0.0 did not become healthy`, "refusing to start on purpose", "it was not installed"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("error class: %v", err)
	}
	if _, err := td.ctl.Inspect(context.Background(), "txb"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("inspect after a failed install: %v, want not found", err)
	}
	entries, err := os.ReadDir(filepath.Join(td.state, "plugins"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("files left in plugins/: %v", entries)
	}
}

// TestUpgradeUnderLoad: an upgrade starts the new version beside the old
// one and switches over when it is ready: not one of the requests made
// continuously through it fails, and once the install answers, the new
// version serves.
func TestUpgradeUnderLoad(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	if _, err := td.txInstall(t, pluginDir(t, txManifest("txc", "1.0.0", "-name", "v1")), false); err != nil {
		t.Fatalf("install: %v", err)
	}
	s := dial(t, td.socket)
	var total, v2 atomic.Int64
	var mu sync.Mutex
	var failures []string
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				who, err := answeredBy(s)
				total.Add(1)
				switch {
				case err != nil:
					mu.Lock()
					failures = append(failures, err.Error())
					mu.Unlock()
				case who == "v2":
					v2.Add(1)
				}
			}
		}()
	}
	waitFor(t, 10*time.Second, "requests before the upgrade", func() bool { return total.Load() >= 50 })
	st, err := td.txInstall(t, pluginDir(t, txManifest("txc", "2.0.0", "-name", "v2")), true)
	if err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	if st.Version != "2.0.0" || st.State != StateRunning || st.PreviousVersion != "1.0.0" {
		t.Errorf("after the upgrade: version %s, state %s, previous %q", st.Version, st.State, st.PreviousVersion)
	}
	if who, err := answeredBy(s); err != nil || who != "v2" {
		t.Errorf("first request after the upgrade: %q, %v", who, err)
	}
	waitFor(t, 10*time.Second, "requests after the upgrade", func() bool { return v2.Load() >= 50 })
	close(stop)
	wg.Wait()
	if len(failures) > 0 {
		t.Fatalf("%d of %d requests failed during the upgrade; first: %s", len(failures), total.Load(), failures[0])
	}
	t.Logf("%d requests, %d answered by v2, none failed", total.Load(), v2.Load())
}

// TestBrokenUpgradeRollsBack: an upgrade whose new version cannot start
// fails, saying why; the old version keeps running with its data.
func TestBrokenUpgradeRollsBack(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	first, err := td.txInstall(t, pluginDir(t, txManifest("txd", "1.0.0", "-name", "v1")), false)
	if err != nil {
		t.Fatalf("install: %v", err)
	}
	if err := td.store.KV("txd").Set("k", []byte("before")); err != nil {
		t.Fatal(err)
	}
	_, err = td.txInstall(t, pluginDir(t, txManifest("txd", "2.0.0", "-fail-start")), true)
	if err == nil {
		t.Fatal("a broken upgrade succeeded")
	}
	for _, want := range []string{`version 2.0.0 did not become healthy`, "exited with code 4", "refusing to start on purpose", "rolled back to version 1.0.0"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	st, err := td.ctl.Inspect(context.Background(), "txd")
	if err != nil {
		t.Fatal(err)
	}
	if st.Version != "1.0.0" || st.State != StateRunning || st.PID != first.PID || st.Dir != first.Dir || st.PreviousVersion != "" {
		t.Errorf("after the rollback: %+v (before: pid %d dir %s)", st, first.PID, first.Dir)
	}
	if v := kvGet(t, td, "txd", "k"); v != "before" {
		t.Errorf("kv after the rollback: %q", v)
	}
	s := dial(t, td.socket)
	if who, err := answeredBy(s); err != nil || who != "v1" {
		t.Errorf("request after the rollback: %q, %v", who, err)
	}
}

// TestBrokenUpgradeInPlaceRollsBack: the old version is not running (it is
// stopped), so the new one starts in its place; when it cannot, the old
// version comes back with its data.
func TestBrokenUpgradeInPlaceRollsBack(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	if _, err := td.txInstall(t, pluginDir(t, txManifest("txf", "1.0.0", "-name", "v1")), false); err != nil {
		t.Fatalf("install: %v", err)
	}
	if err := td.store.KV("txf").Set("k", []byte("before")); err != nil {
		t.Fatal(err)
	}
	u, err := td.unit("txf")
	if err != nil {
		t.Fatal(err)
	}
	u.mu.Lock()
	u.restartReq = true // the run loop stops it and starts the upgrade in place
	u.mu.Unlock()
	_, err = td.txInstall(t, pluginDir(t, txManifest("txf", "2.0.0", "-fail-start")), true)
	if err == nil || !strings.Contains(err.Error(), "rolled back to version 1.0.0") {
		t.Fatalf("broken upgrade: %v", err)
	}
	st := waitState(t, td.ctl, "txf", 30*time.Second, "v1 running again", func(s *host.PluginStatus) bool {
		return s.State == StateRunning && s.Version == "1.0.0"
	})
	if st.PreviousVersion != "" {
		t.Errorf("previous version after a failed upgrade: %q", st.PreviousVersion)
	}
	if v := kvGet(t, td, "txf", "k"); v != "before" {
		t.Errorf("kv after the rollback: %q", v)
	}
}

// TestRollback: rollback returns to the previous version with its data as
// it was at the upgrade; the version rolled back from becomes the previous
// one, so a second rollback returns to it with its own data.
func TestRollback(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	ctx := context.Background()
	if _, err := td.ctl.Rollback(ctx, "nope"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("rollback of a plugin not installed: %v", err)
	}
	if _, err := td.txInstall(t, pluginDir(t, txManifest("txe", "1.0.0", "-name", "v1")), false); err != nil {
		t.Fatalf("install: %v", err)
	}
	if _, err := td.ctl.Rollback(ctx, "txe"); !errors.Is(err, errdefs.ErrNotFound) || !strings.Contains(err.Error(), "no previous version") {
		t.Errorf("rollback without a previous version: %v", err)
	}
	if err := td.store.KV("txe").Set("k", []byte("v1 data")); err != nil {
		t.Fatal(err)
	}
	if _, err := td.txInstall(t, pluginDir(t, txManifest("txe", "2.0.0", "-name", "v2")), true); err != nil {
		t.Fatalf("upgrade: %v", err)
	}
	if err := td.store.KV("txe").Set("k", []byte("v2 data")); err != nil {
		t.Fatal(err)
	}
	s := dial(t, td.socket)

	st, err := td.ctl.Rollback(ctx, "txe")
	if err != nil {
		t.Fatalf("rollback: %v", err)
	}
	if st.Version != "1.0.0" || st.PreviousVersion != "2.0.0" || st.State != StateRunning {
		t.Errorf("after rollback: version %s previous %q state %s", st.Version, st.PreviousVersion, st.State)
	}
	if v := kvGet(t, td, "txe", "k"); v != "v1 data" {
		t.Errorf("kv after rollback: %q", v)
	}
	if who, err := answeredBy(s); err != nil || who != "v1" {
		t.Errorf("request after rollback: %q, %v", who, err)
	}

	st, err = td.ctl.Rollback(ctx, "txe")
	if err != nil {
		t.Fatalf("second rollback: %v", err)
	}
	if st.Version != "2.0.0" || st.PreviousVersion != "1.0.0" {
		t.Errorf("after the second rollback: version %s previous %q", st.Version, st.PreviousVersion)
	}
	if v := kvGet(t, td, "txe", "k"); v != "v2 data" {
		t.Errorf("kv after the second rollback: %q", v)
	}
	if who, err := answeredBy(s); err != nil || who != "v2" {
		t.Errorf("request after the second rollback: %q, %v", who, err)
	}
}

// TestInstallStages: a streamed install reports each stage as it begins,
// in order: a fresh install, an upgrade started beside the old version
// and switched to, and an upgrade that cannot start and is rolled back.
func TestInstallStages(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	install := func(dir string, replace bool) ([]string, error) {
		t.Helper()
		archive, err := host.Archive(dir)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var mu sync.Mutex
		var stages []string
		_, err = td.ctl.InstallStream(ctx, bytes.NewReader(archive), host.StreamOptions{
			InstallOptions: host.InstallOptions{Enable: true, Replace: replace, Wait: true},
			AllowUnsigned:  true,
			Stage: func(stage string, done, total uint64) {
				mu.Lock()
				defer mu.Unlock()
				if len(stages) == 0 || stages[len(stages)-1] != stage {
					stages = append(stages, stage)
				}
			},
		})
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(stages), err
	}
	for _, tc := range []struct {
		name    string
		dir     string
		replace bool
		fails   bool
		want    []string
	}{
		{"fresh install", pluginDir(t, txManifest("stg", "1.0.0", "-name", "v1")), false, false,
			[]string{"verifying", "unpacking", "starting", "waiting"}},
		{"upgrade beside", pluginDir(t, txManifest("stg", "2.0.0", "-name", "v2")), true, false,
			[]string{"verifying", "unpacking", "starting", "waiting", "switching"}},
		{"broken upgrade", pluginDir(t, txManifest("stg", "3.0.0", "-fail-start")), true, true,
			[]string{"verifying", "unpacking", "starting", "rolling back"}},
	} {
		stages, err := install(tc.dir, tc.replace)
		if (err != nil) != tc.fails {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if !slices.Equal(stages, tc.want) {
			t.Errorf("%s: stages %q, want %q", tc.name, stages, tc.want)
		}
	}
}

// TestConcurrentUpgrades: two upgrades of one plugin at once, one of a
// version that cannot start and one of a good version, in either order:
// each commits against the outcome of the other, so the broken one's
// rollback never undoes the good one, and the good version ends up serving.
func TestConcurrentUpgrades(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	if _, err := td.txInstall(t, pluginDir(t, txManifest("txc", "1.0.0", "-name", "v1")), false); err != nil {
		t.Fatalf("install: %v", err)
	}
	broken, good := pluginDir(t, txManifest("txc", "2.0.0", "-crash")), pluginDir(t, txManifest("txc", "3.0.0", "-name", "v3"))
	for round := range 3 {
		var wg sync.WaitGroup
		var brokenErr, goodErr error
		wg.Add(2)
		// Each on its own control connection, as two operators would:
		// one connection's calls are answered in order.
		upgrade := func(dir string, err *error) {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			ctl, derr := host.DialControl(ctx, td.control)
			if derr != nil {
				*err = derr
				return
			}
			defer ctl.Close()
			archive, aerr := host.Archive(dir)
			if aerr != nil {
				*err = aerr
				return
			}
			_, *err = ctl.Install(ctx, archive, host.InstallOptions{Enable: true, Replace: true, Wait: true})
		}
		go upgrade(broken, &brokenErr)
		go upgrade(good, &goodErr)
		wg.Wait()
		if brokenErr == nil || !strings.Contains(brokenErr.Error(), "version 2.0.0 did not become healthy") {
			t.Errorf("round %d: the broken upgrade: %v", round, brokenErr)
		}
		if goodErr != nil {
			t.Fatalf("round %d: the good upgrade: %v", round, goodErr)
		}
		st, err := td.ctl.Inspect(context.Background(), "txc")
		if err != nil || st.Version != "3.0.0" || st.State != StateRunning {
			t.Fatalf("round %d: after both: %+v, %v; want 3.0.0 running", round, st, err)
		}
		s := dial(t, td.socket)
		if who, err := answeredBy(s); err != nil || who != "v3" {
			t.Fatalf("round %d: answered by %q, %v; want v3", round, who, err)
		}
		s.Close()
	}
}
