package daemon

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/host"
)

// TestControlErrorClasses: the control face's errors keep their class
// across the socket (errors.Is works in dimplugctl) and their message reads
// as before, without the wire's class mark.
func TestControlErrorClasses(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	dir := pluginDir(t, testplugManifest("present", nil, hooks("request", "GET", "/api/v1/media/:id", "1s", "fail-open", 0)))
	td.install(t, dir)
	archive, err := host.Archive(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	call := func(f func() error) error { return f() }
	for _, tt := range []struct {
		name  string
		err   error
		class error
		want  string
	}{
		{"inspect missing", call(func() error { _, err := td.ctl.Inspect(ctx, "missing"); return err }),
			errdefs.ErrNotFound, `plugin "missing" is not installed (see dimplugctl ls): not installed`},
		{"enable missing", call(func() error { _, err := td.ctl.Enable(ctx, "missing"); return err }),
			errdefs.ErrNotFound, `plugin "missing" is not installed`},
		{"rm missing", td.ctl.Remove(ctx, "missing"), errdefs.ErrNotFound, `plugin "missing" is not installed`},
		{"deadline missing", call(func() error { _, err := td.ctl.SetHookDeadline(ctx, "missing", "h", time.Second); return err }),
			errdefs.ErrNotFound, `plugin "missing" is not installed`},
		{"install existing", call(func() error { _, err := td.ctl.Install(ctx, archive, host.InstallOptions{}); return err }),
			errdefs.ErrAlreadyExists, "already installed (replace it to upgrade)"},
		{"invalid name", call(func() error { _, err := td.ctl.Inspect(ctx, "Not A Name"); return err }),
			errdefs.ErrInvalid, `"Not A Name" is not a valid plugin name`},
		{"invalid archive", call(func() error {
			_, err := td.ctl.Install(ctx, []byte("not a tar archive"), host.InstallOptions{})
			return err
		}),
			errdefs.ErrInvalid, ""},
	} {
		if !errors.Is(tt.err, tt.class) {
			t.Errorf("%s: %v is not %v", tt.name, tt.err, tt.class)
			continue
		}
		if msg := tt.err.Error(); !strings.Contains(msg, tt.want) || strings.Contains(msg, "[") || strings.Contains(msg, "capnp") {
			t.Errorf("%s: message %q, want it to contain %q and no wire decoration", tt.name, msg, tt.want)
		}
		for _, other := range []error{errdefs.ErrNotFound, errdefs.ErrAlreadyExists, errdefs.ErrInvalid, errdefs.ErrConflict, errdefs.ErrUnavailable, errdefs.ErrPermissionDenied} {
			if other != tt.class && errors.Is(tt.err, other) {
				t.Errorf("%s: %v is also %v", tt.name, tt.err, other)
			}
		}
	}
	if _, err := td.ctl.Disable(ctx, "present"); err != nil {
		t.Fatal(err)
	}
	if _, err := td.ctl.Restart(ctx, "present"); !errors.Is(err, errdefs.ErrConflict) {
		t.Errorf("restart of a disabled plugin: %v, want a conflict", err)
	}
}

// TestDaemonErr: an accept loop that dies while the daemon serves (here its
// listening socket is closed behind the server's back) is reported through
// Err; a daemon closed on purpose reports nothing.
func TestDaemonErr(t *testing.T) {
	td := startDaemon(t, testRuntime(t), fastSupervision)
	select {
	case err := <-td.Err():
		t.Fatalf("Err before anything failed: %v", err)
	default:
	}
	td.ctlSrv.ln.Close()
	select {
	case err := <-td.Err():
		if !strings.Contains(err.Error(), "control socket") || !strings.Contains(err.Error(), "accept") {
			t.Errorf("Err says %q", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no error from Err after the control socket's accept loop died")
	}
}
