package daemon

import (
	"context"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// Control.remove (an older dimplugctl's rm) still deletes the plugin's
// data with it; Control.uninstall keeps it unless asked to purge.

func (c *control) Uninstall(ctx context.Context, call schema.Control_uninstall) error {
	return errdefs.ToWire(c.uninstall(call))
}

func (c *control) uninstall(call schema.Control_uninstall) error {
	name, err := argName(call.Args())
	if err != nil {
		return err
	}
	purge := call.Args().Purge()
	call.Go()
	use, err := c.d.Uninstall(name, purge)
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	if !purge {
		res.SetKeptDataBytes(uint64(use.Bytes))
	}
	return nil
}

func (c *control) ExportData(ctx context.Context, call schema.Control_exportData) error {
	return errdefs.ToWire(c.exportData(call))
}

func (c *control) exportData(call schema.Control_exportData) error {
	name, err := argName(call.Args())
	if err != nil {
		return err
	}
	doc, err := c.d.ExportData(name)
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	return res.SetArchive(doc)
}

func (c *control) ImportData(ctx context.Context, call schema.Control_importData) error {
	return errdefs.ToWire(c.importData(call))
}

func (c *control) importData(call schema.Control_importData) error {
	name, err := argName(call.Args())
	if err != nil {
		return err
	}
	doc, err := call.Args().Archive()
	if err != nil {
		return err
	}
	replace := call.Args().Replace()
	doc = append([]byte(nil), doc...) // the call's message goes with call.Go
	call.Go()
	n, err := c.d.ImportData(name, doc, replace)
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetKeys(uint64(n))
	return nil
}
