package host

import (
	"context"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// Uninstall stops and removes a plugin. Without purge its key-value data
// and settings are kept, and come back with a later install of the same
// name; kept is how many bytes were kept (0 with purge, or when it had
// none). With purge the data is deleted too; purging the name of a plugin
// that is no longer installed deletes the data kept of it. Remove is the
// older call: it always deletes the data.
func (c *Control) Uninstall(ctx context.Context, name string, purge bool) (kept uint64, err error) {
	fut, release := c.c.Uninstall(ctx, func(p schema.Control_uninstall_Params) error {
		p.SetPurge(purge)
		return p.SetName(name)
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return 0, cleanErr(err)
	}
	return res.KeptDataBytes(), nil
}

// ExportData returns a plugin's data (key-value store and settings, secrets
// in clear) as a data export document (docs/packages.md, "Data export").
func (c *Control) ExportData(ctx context.Context, name string) ([]byte, error) {
	fut, release := c.c.ExportData(ctx, func(p schema.Control_exportData_Params) error { return p.SetName(name) })
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return nil, cleanErr(err)
	}
	doc, err := res.Archive()
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), doc...), nil
}

// ImportData loads a data export document into an installed plugin's
// data: merged key by key (and settings object by settings object), or
// with replace instead of all its data. The daemon checks it all first
// and writes nothing when anything fails. It returns the keys imported.
func (c *Control) ImportData(ctx context.Context, name string, doc []byte, replace bool) (keys uint64, err error) {
	fut, release := c.c.ImportData(ctx, func(p schema.Control_importData_Params) error {
		p.SetReplace(replace)
		if err := p.SetName(name); err != nil {
			return err
		}
		return p.SetArchive(doc)
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return 0, cleanErr(err)
	}
	return res.Keys(), nil
}
