// Command passthrough is the benchmark's frame-stream plugin: a transform
// stage that returns every frame it is given, untouched. Returning the same
// frame passes its shared-memory descriptor on (no byte is copied), and an
// inline frame back inline, so a stream through it measures the transport
// and nothing else.
package main

import (
	"context"
	"fmt"
	"os"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
)

type pass struct{}

func (pass) FilterFrame(ctx context.Context, s *plugin.Stream, f *plugin.Frame) ([]*plugin.Frame, error) {
	return []*plugin.Frame{f}, nil
}

func main() {
	if err := plugin.Serve(pass{}, plugin.WithVersion("1.0.0")); err != nil {
		fmt.Fprintln(os.Stderr, "passthrough:", err)
		os.Exit(1)
	}
}
