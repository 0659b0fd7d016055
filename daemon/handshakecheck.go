package daemon

import (
	"fmt"

	"github.com/dimplugd/dimplugd/sdk-go/manifest"
)

// What the handshake checks against the manifest at start: every hook's
// phase must have a handler in the plugin (PluginInfo.phases), and stream
// stages need a plugin that serves frame streams (PluginInfo.frames). A
// plugin failing them is failed at its first start with these errors,
// which say what to add in the Go SDK, rather than failing its first
// requests.

// goHandlers names the Go SDK method (and interface) serving each phase.
var goHandlers = map[manifest.Phase]string{
	manifest.PhaseRequest:  "HookRequest (plugin.RequestHook)",
	manifest.PhaseResponse: "HookResponse (plugin.ResponseHook)",
	manifest.PhaseRoute:    "ServeRoute (plugin.RouteHandler)",
	manifest.PhaseObserve:  "Observe (plugin.Observer)",
}

func missingHandler(phase manifest.Phase, hook string) error {
	fix := "add a handler for the phase"
	if m, ok := goHandlers[phase]; ok {
		fix = "add a " + m + " method to the plugin (Go SDK)"
	}
	return fmt.Errorf("%s: [[hooks]] %q is a %s hook, but the plugin's handshake serves no %s phase: %s, or remove the hook from %s",
		manifest.FileName, hook, phase, phase, fix, manifest.FileName)
}

func missingFrames(stage string) error {
	return fmt.Errorf("%s: [[streams]] %q is a stream stage, but the plugin's handshake does not serve frame streams: serve them (Go SDK: a FilterFrame or ObserveFrame method), or remove the stage from %s",
		manifest.FileName, stage, manifest.FileName)
}
