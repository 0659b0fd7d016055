package host

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	"github.com/dimplugd/dimplugd/sdk-go/manifest"
)

// The route table cache (WithRouteCache) is the table as JSON, written to
// a temporary file and renamed over the cache, so that a reader never sees
// half a table.

// saveRoutes writes t to file atomically.
func saveRoutes(file string, t *RouteTable) error {
	b, err := json.Marshal(t)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(file), filepath.Base(file)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // gone after the rename
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), file)
}

// loadRoutes reads a table saveRoutes wrote, compiling its routes again.
func loadRoutes(file string) (*RouteTable, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, err
	}
	var t RouteTable
	if err := json.Unmarshal(b, &t); err != nil {
		return nil, fmt.Errorf("route cache %s: %w", file, err)
	}
	for i := range t.Entries {
		r, err := manifest.ParseRoute(t.Entries[i].Route)
		if err != nil {
			return nil, fmt.Errorf("route cache %s: entry %q: %w", file, t.Entries[i].Route, err)
		}
		t.Entries[i].route = r
	}
	return &t, nil
}
