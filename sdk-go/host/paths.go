package host

import (
	"fmt"
	"os"
	"path/filepath"
)

// DefaultSocket is where the daemon listens unless told otherwise:
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
