package host

import (
	"context"
	"errors"
	"fmt"
	"io"

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

// ExportDataStream writes a plugin's data export document to w as the
// daemon streams it (no size limit, unlike ExportData), and returns its
// size and the number of keys in it.
func (c *Control) ExportDataStream(ctx context.Context, name string, w io.Writer) (bytes, keys uint64, err error) {
	sink := schema.ByteSink_ServerToClient(&writerSink{w: w})
	defer sink.Release()
	fut, release := c.c.ExportDataStream(ctx, func(p schema.Control_exportDataStream_Params) error {
		if err := p.SetName(name); err != nil {
			return err
		}
		return p.SetSink(sink.AddRef())
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return 0, 0, cleanErr(err)
	}
	return res.Bytes(), res.Keys(), nil
}

// writerSink serves ByteSink by writing each chunk to w, in order (the
// daemon's writes on one capability are delivered in order, one at a
// time).
type writerSink struct{ w io.Writer }

func (s *writerSink) Write(ctx context.Context, call schema.ByteSink_write) error {
	chunk, err := call.Args().Chunk()
	if err != nil {
		return err
	}
	_, err = s.w.Write(chunk)
	return err
}

// ImportDataStream streams a data export document from r to the daemon
// (no size limit but the daemon's bound on any export) and imports it as
// ImportData does. A read error aborts the transfer; nothing is imported.
func (c *Control) ImportDataStream(ctx context.Context, name string, r io.Reader, replace bool) (keys uint64, err error) {
	fut, release := c.c.ImportDataStream(ctx, func(p schema.Control_importDataStream_Params) error {
		p.SetReplace(replace)
		return p.SetName(name)
	})
	defer release()
	up := fut.Upload().AddRef()
	defer up.Release()
	err = streamChunks(r, func(chunk []byte) func() error {
		f, rel := up.Write(ctx, func(p schema.DataUpload_write_Params) error { return p.SetChunk(chunk) })
		return func() error { defer rel(); _, err := f.Struct(); return err }
	})
	var re *readError
	if errors.As(err, &re) {
		af, arel := up.Abort(context.Background(), func(p schema.DataUpload_abort_Params) error { return p.SetReason(re.Error()) })
		af.Struct()
		arel()
		return 0, fmt.Errorf("read the data export: %w", re.err)
	} else if err != nil {
		return 0, fmt.Errorf("send the data export: %w", cleanErr(err))
	}
	ff, frel := up.Finish(ctx, nil)
	defer frel()
	res, err := ff.Struct()
	if err != nil {
		return 0, cleanErr(err)
	}
	return res.Keys(), nil
}
