// Command goplug is the benchmark's hashicorp/go-plugin baseline: a plugin
// serving the hookwire Hooks service over go-plugin's default gRPC
// transport. Its hook does what the dimplugd badge plugin does: it adds one
// header to the response and returns the change.
package main

import (
	"context"

	"github.com/hashicorp/go-plugin"

	"github.com/dimplugd/dimplugd/bench/internal/hookwire"
)

type hooks struct{}

func (hooks) HookResponse(ctx context.Context, c *hookwire.Call) (*hookwire.Mutation, error) {
	return hookwire.Badge(c), nil
}

func main() {
	plugin.Serve(&plugin.ServeConfig{
		HandshakeConfig: hookwire.Handshake,
		Plugins:         plugin.PluginSet{hookwire.PluginName: &hookwire.Plugin{Impl: hooks{}}},
		GRPCServer:      plugin.DefaultGRPCServer,
	})
}
