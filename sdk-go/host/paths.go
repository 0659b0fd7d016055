package host

import (
	"fmt"
	"os"
	"path/filepath"
)

// DefaultSocket is where the daemon serves hosts (the host face, hook lanes
// and frame sockets) unless told otherwise:
// /run/dimplugd/dimplugd.sock for root, else
// $XDG_RUNTIME_DIR/dimplugd/dimplugd.sock, else
// /tmp/dimplugd-<uid>/dimplugd.sock. $DIMPLUGD_SOCKET overrides all of them.
func DefaultSocket() string {
	if s := os.Getenv("DIMPLUGD_SOCKET"); s != "" {
		return s
	}
	if os.Geteuid() == 0 {
		return "/run/dimplugd/dimplugd.sock"
	}
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		return filepath.Join(d, "dimplugd", "dimplugd.sock")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("dimplugd-%d", os.Geteuid()), "dimplugd.sock")
}

// DefaultControlSocket is where the daemon serves the control face (for
// operators) unless told otherwise: control.sock in the directory of the
// default host socket (/run/dimplugd/control.sock for root).
// $DIMPLUGD_CONTROL_SOCKET overrides it; $DIMPLUGD_SOCKET moves it along with
// the host socket.
func DefaultControlSocket() string {
	if s := os.Getenv("DIMPLUGD_CONTROL_SOCKET"); s != "" {
		return s
	}
	return filepath.Join(filepath.Dir(DefaultSocket()), "control.sock")
}
