// Command badge is the benchmark's dimplugd plugin: a response hook that
// adds an X-Dim-Badge header, like examples/plugins/media-badge without the
// key-value store, so that a hooked request measures the transport and not
// the store.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
)

type badge struct{}

func (badge) HookResponse(ctx context.Context, hook string, req *plugin.Request, resp *plugin.Response) error {
	if resp.Status == 200 {
		resp.Header.Set("X-Dim-Badge", "plugin-approved")
	}
	return nil
}

func main() {
	if err := plugin.Serve(badge{}, plugin.WithVersion("1.0.0")); err != nil {
		fmt.Fprintln(os.Stderr, "badge:", err)
		os.Exit(1)
	}
}
