package wire

import (
	"errors"
	"fmt"
	"testing"

	"capnproto.org/go/capnp/v3/exc"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
)

// TestErrorClassRoundTrip: an error marked by a server (errdefs.ToWire)
// and read back from the exception a client gets (RemoteError,
// RemoteClass) keeps its class and its message, without the mark.
func TestErrorClassRoundTrip(t *testing.T) {
	sentinel := errdefs.New(errdefs.ErrNotFound, "not installed")
	for _, tt := range []struct {
		name  string
		err   error // what the server method returns
		class error // what the client sees, nil: none
		msg   string
	}{
		{"not found", fmt.Errorf("plugin %q is %w", "x", sentinel), errdefs.ErrNotFound, `plugin "x" is not installed`},
		{"already exists", fmt.Errorf("install: %w", errdefs.ErrAlreadyExists), errdefs.ErrAlreadyExists, "install: already exists"},
		{"invalid", errdefs.WithClass(errors.New(`"A" is not a valid name`), errdefs.ErrInvalid), errdefs.ErrInvalid, `"A" is not a valid name`},
		{"conflict", fmt.Errorf("%w: two owners", errdefs.New(errdefs.ErrConflict, "route conflict")), errdefs.ErrConflict, "route conflict: two owners"},
		{"unavailable", errdefs.WithClass(errors.New("plugin is not running"), errdefs.ErrUnavailable), errdefs.ErrUnavailable, "plugin is not running"},
		{"permission denied", fmt.Errorf("control socket: %w: uid 1000", errdefs.ErrPermissionDenied), errdefs.ErrPermissionDenied, "control socket: permission denied: uid 1000"},
		{"no class", errors.New("something broke"), nil, "something broke"},
		{"text that looks like a mark", errors.New("[not-a-class] x"), nil, "[not-a-class] x"},
		{"marked twice", errdefs.ToWire(fmt.Errorf("plugin %q is %w", "x", sentinel)), errdefs.ErrNotFound, `plugin "x" is not installed`},
	} {
		t.Run(tt.name, func(t *testing.T) {
			onWire := errdefs.ToWire(tt.err)
			if !errors.Is(onWire, errdefs.Class(tt.err)) && tt.class != nil {
				t.Errorf("the marked error lost its class")
			}
			// What go-capnp hands the client: an exception with the
			// method as prefix and the server's message as cause.
			got := exc.New(exc.Failed, "control.capnp:Control.inspect", onWire.Error())
			class, msg := RemoteClass(got)
			if class != tt.class || msg != tt.msg {
				t.Errorf("RemoteClass = %v, %q; want %v, %q", class, msg, tt.class, tt.msg)
			}
			re := RemoteError("inspect x", got)
			if re.Error() != "inspect x: "+tt.msg {
				t.Errorf("RemoteError says %q", re)
			}
			if tt.class != nil && !errors.Is(re, tt.class) {
				t.Errorf("RemoteError %v is not %v", re, tt.class)
			}
			if tt.class == nil && errdefs.Class(re) != nil {
				t.Errorf("RemoteError %v has class %v", re, errdefs.Class(re))
			}
		})
	}
}
