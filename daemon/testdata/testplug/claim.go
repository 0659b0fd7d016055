package main

import (
	"context"
	"errors"
	"net"
	"os"

	"capnproto.org/go/capnp/v3"

	"github.com/dimplugd/dimplugd/sdk-go/plugin"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// claimName makes testplug a plugin that calls itself name in its
// handshake, whatever it was installed as (-claim NAME): the SDK always
// answers with the installed name, so this speaks the handshake itself.
// It serves until the daemon closes the control socket.
func claimName(name string) error {
	f := os.NewFile(plugin.ControlFD, "dimplugd-control")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		return err
	}
	conn := wire.NewConn(c, capnp.Client(schema.PluginBootstrap_ServerToClient(&claimer{name: name})), nil)
	<-conn.Done()
	return nil
}

type claimer struct{ name string }

func (cl *claimer) Handshake(ctx context.Context, call schema.PluginBootstrap_handshake) error {
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	if err := wire.WriteVersions(res.NewPluginVersions, schema.SupportedVersions); err != nil {
		return err
	}
	res.SetVersion(schema.SupportedVersions[len(schema.SupportedVersions)-1])
	info, err := res.NewInfo()
	if err != nil {
		return err
	}
	if err := info.SetName(cl.name); err != nil {
		return err
	}
	if err := info.SetVersion("1.0.0"); err != nil {
		return err
	}
	ph, err := info.NewPhases(1)
	if err != nil {
		return err
	}
	ph.Set(0, schema.Phase_request)
	return res.SetPlugin(schema.Plugin_ServerToClient(cl))
}

var errClaimer = errors.New("testplug -claim serves nothing")

func (cl *claimer) Describe(context.Context, schema.Plugin_describe) error { return errClaimer }
func (cl *claimer) Hook(context.Context, schema.Plugin_hook) error         { return errClaimer }
func (cl *claimer) Health(context.Context, schema.Plugin_health) error     { return nil }
func (cl *claimer) Stop(context.Context, schema.Plugin_stop) error         { return nil }
