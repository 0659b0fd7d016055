package daemon

import (
	"fmt"

	"github.com/dimplugd/dimplugd/sdk-go/schema"

	"github.com/dimplugd/dimplugd/sdk-go/manifest"
)

// What the handshake checks against the manifest at start: every hook's
// phase must have a handler in the plugin (PluginInfo.phases), and stream
// stages need a plugin that serves frame streams (PluginInfo.frames) with a
// handler for the stage's role (PluginInfo.frameRoles, when set). A
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

// goFrameHandlers names the Go SDK method (and interface) serving each
// stream role.
var goFrameHandlers = map[manifest.StreamRole]string{
	manifest.RoleTransform: "FilterFrame (plugin.FrameFilter)",
	manifest.RoleObserve:   "ObserveFrame (plugin.FrameObserver)",
}

func missingRole(role manifest.StreamRole, stage string) error {
	fix := "add a frame handler for the role"
	if m, ok := goFrameHandlers[role]; ok {
		fix = "add a " + m + " method to the plugin (Go SDK)"
	}
	return fmt.Errorf("%s: [[streams]] %q is a %s stage, but the plugin's handshake serves no %s frames: %s, or remove the stage from %s",
		manifest.FileName, stage, role, role, fix, manifest.FileName)
}

// servedRoles reads PluginInfo.frameRoles: nil when the plugin did not set
// it (an older SDK: only frames is checked), else the set of roles served.
// Unknown role names are ignored; the list is bounded by the message size.
func servedRoles(info schema.PluginInfo) (map[manifest.StreamRole]bool, error) {
	if !info.HasFrameRoles() {
		return nil, nil
	}
	l, err := info.FrameRoles()
	if err != nil {
		return nil, err
	}
	roles := make(map[manifest.StreamRole]bool, 2)
	for i := 0; i < l.Len() && i < 16; i++ {
		r, err := l.At(i)
		if err != nil {
			return nil, err
		}
		if role := manifest.StreamRole(r); role == manifest.RoleTransform || role == manifest.RoleObserve {
			roles[role] = true
		}
	}
	return roles, nil
}
