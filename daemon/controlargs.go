package daemon

import (
	"fmt"
	"time"

	"capnproto.org/go/capnp/v3"

	"github.com/dimplugd/dimplugd/daemon/registry"
	"github.com/dimplugd/dimplugd/daemon/settings"
	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// What the control face reads from a request, decoded and checked before
// the daemon acts on it. Each function refuses what no installed plugin
// could match or what the daemon cannot represent, with an error for the
// operator, and never echoes back more than a short prefix of a bad value.

// maxGrantEntries bounds the read-only paths and the outbound hosts of a
// grant sent to the control face.
const maxGrantEntries = 1024

// readName checks the name of a plugin or of a hook (what is "plugin" or
// "hook") against the manifest's rule for names: 1 to 40 lowercase letters,
// digits or dashes, starting with a letter.
func readName(what, s string, err error) (string, error) {
	if err != nil {
		return "", fmt.Errorf("%s name: %w", what, err)
	}
	if !validName(s) {
		if len(s) > 64 {
			return "", errdefs.WithClass(fmt.Errorf("%s name of %d bytes is not a valid name (want 1 to 40 lowercase letters, digits or dashes, starting with a letter)", what, len(s)), errdefs.ErrInvalid)
		}
		return "", errdefs.WithClass(fmt.Errorf("%q is not a valid %s name (want 1 to 40 lowercase letters, digits or dashes, starting with a letter)", s, what), errdefs.ErrInvalid)
	}
	return s, nil
}

func validName(s string) bool {
	if len(s) == 0 || len(s) > 40 || s[0] < 'a' || s[0] > 'z' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// readInstallArgs decodes Control.install's arguments.
func readInstallArgs(a schema.Control_install_Params) ([]byte, registry.InstallOptions, error) {
	archive, err := a.Archive()
	if err != nil {
		return nil, registry.InstallOptions{}, fmt.Errorf("install: archive: %w", err)
	}
	if len(archive) == 0 {
		return nil, registry.InstallOptions{}, fmt.Errorf("install: the archive is empty")
	}
	o, err := a.Options()
	if err != nil {
		return nil, registry.InstallOptions{}, fmt.Errorf("install: options: %w", err)
	}
	opts := registry.InstallOptions{Replace: o.Replace(), Enable: o.Enable(), Wait: o.Wait()}
	if o.HasGrant() {
		g, err := o.Grant()
		if err != nil {
			return nil, registry.InstallOptions{}, fmt.Errorf("install: grant: %w", err)
		}
		p, err := readGrant(g)
		if err != nil {
			return nil, registry.InstallOptions{}, err
		}
		opts.Grant = &p
	}
	return archive, opts, nil
}

// readGrant decodes an operator's grant: a list that cannot be read is an
// error (not an empty list), and the grant must pass the same checks as a
// manifest's permissions.
func readGrant(g schema.Permissions) (manifest.Permissions, error) {
	for _, l := range []struct {
		field string
		read  func() (capnp.TextList, error)
	}{
		{"read_only_paths", func() (capnp.TextList, error) { return g.ReadOnlyPaths() }},
		{"outbound_hosts", func() (capnp.TextList, error) { return g.OutboundHosts() }},
	} {
		tl, err := l.read()
		if err != nil {
			return manifest.Permissions{}, fmt.Errorf("grant: %s: %w", l.field, err)
		}
		if tl.Len() > maxGrantEntries {
			return manifest.Permissions{}, fmt.Errorf("grant: %s: %d entries, more than the %d allowed", l.field, tl.Len(), maxGrantEntries)
		}
		for i := 0; i < tl.Len(); i++ {
			if _, err := tl.At(i); err != nil {
				return manifest.Permissions{}, fmt.Errorf("grant: %s[%d]: %w", l.field, i, err)
			}
		}
	}
	p := wire.ReadPermissions(g)
	if err := p.Validate(); err != nil {
		return manifest.Permissions{}, fmt.Errorf("grant:\n%w", err)
	}
	return p, nil
}

// readHookDeadline converts a deadline in microseconds (0: the manifest's)
// to a duration, refusing what is longer than manifest.MaxDeadline rather
// than letting the multiplication wrap around.
func readHookDeadline(micros uint64) (time.Duration, error) {
	if micros > uint64(manifest.MaxDeadline/time.Microsecond) {
		return 0, fmt.Errorf("hook deadline of %dµs is longer than the maximum of %s", micros, manifest.MaxDeadline)
	}
	return time.Duration(micros) * time.Microsecond, nil
}

// readSetHookDeadlineArgs decodes Control.setHookDeadline's arguments.
func readSetHookDeadlineArgs(a schema.Control_setHookDeadline_Params) (name, hook string, d time.Duration, err error) {
	name, err = a.Name()
	if name, err = readName("plugin", name, err); err != nil {
		return "", "", 0, err
	}
	hook, err = a.Hook()
	if hook, err = readName("hook", hook, err); err != nil {
		return "", "", 0, err
	}
	if d, err = readHookDeadline(a.DeadlineMicros()); err != nil {
		return "", "", 0, err
	}
	return name, hook, d, nil
}

// argName reads and checks the plugin name of a control method's arguments.
func argName(a interface{ Name() (string, error) }) (string, error) {
	name, err := a.Name()
	return readName("plugin", name, err)
}

// maxSettingsDoc bounds a settings write's JSON.
const maxSettingsDoc = 256 << 10

// readSettingsArgs reads and checks what getSettings and setSettings share.
func readSettingsArgs(a interface {
	Name() (string, error)
	Scope() (string, error)
	User() int64
}) (name, scope string, user int64, err error) {
	if name, err = argName(a); err != nil {
		return "", "", 0, err
	}
	if scope, err = a.Scope(); err != nil {
		return "", "", 0, fmt.Errorf("settings scope: %w", err)
	}
	if scope != "global" && scope != "user" {
		if len(scope) > 16 {
			scope = scope[:16] + "…"
		}
		return "", "", 0, errdefs.WithClass(fmt.Errorf("settings scope %q: want global or user", scope), errdefs.ErrInvalid)
	}
	return name, scope, a.User(), nil
}

// readSettingsValues reads a settings write's JSON object.
func readSettingsValues(a schema.Control_setSettings_Params) (map[string]any, error) {
	doc, err := a.Values()
	if err != nil {
		return nil, fmt.Errorf("settings values: %w", err)
	}
	if len(doc) > maxSettingsDoc {
		return nil, errdefs.WithClass(fmt.Errorf("settings of %d bytes: at most %d", len(doc), maxSettingsDoc), errdefs.ErrInvalid)
	}
	return settings.DecodeValues(doc)
}
