package daemon

import (
	"context"
	"fmt"
	"io"

	capnp "capnproto.org/go/capnp/v3"

	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// Streamed data export and import: the export document goes to the
// client's ByteSink in chunks, a few writes in flight; an import comes in
// chunks into a file in the state directory (never held in memory), and
// is imported from it at finish.

// sinkWindow is how many ByteSink.write calls the daemon keeps in flight.
const sinkWindow = 4

func (c *control) ExportDataStream(ctx context.Context, call schema.Control_exportDataStream) error {
	return errdefs.ToWire(c.exportDataStream(ctx, call))
}

func (c *control) exportDataStream(ctx context.Context, call schema.Control_exportDataStream) error {
	name, err := argName(call.Args())
	if err != nil {
		return err
	}
	if !call.Args().HasSink() {
		return errdefs.New(errdefs.ErrInvalid, "export: no sink to write to")
	}
	sink := call.Args().Sink().AddRef()
	defer sink.Release()
	call.Go()
	doc, keys, err := c.d.exportDoc(name)
	if err != nil {
		return err
	}
	if err := writeChunks(ctx, sink, doc); err != nil {
		return fmt.Errorf("export the data of plugin %q: write to the client: %w", name, err)
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetBytes(uint64(len(doc)))
	res.SetKeys(uint64(keys))
	return nil
}

// writeChunks writes b to sink in chunks of at most maxChunk bytes, in
// order, keeping sinkWindow writes in flight; it fails with the first
// write that fails.
func writeChunks(ctx context.Context, sink schema.ByteSink, b []byte) error {
	type pending struct {
		fut     schema.ByteSink_write_Results_Future
		release capnp.ReleaseFunc
	}
	var inflight []pending
	wait := func(p pending) error {
		defer p.release()
		_, err := p.fut.Struct()
		return err
	}
	defer func() {
		for _, p := range inflight {
			p.release()
		}
	}()
	for len(b) > 0 {
		n := min(len(b), maxChunk)
		chunk := b[:n]
		b = b[n:]
		fut, release := sink.Write(ctx, func(p schema.ByteSink_write_Params) error { return p.SetChunk(chunk) })
		inflight = append(inflight, pending{fut, release})
		if len(inflight) == sinkWindow {
			p := inflight[0]
			inflight = inflight[1:]
			if err := wait(p); err != nil {
				return err
			}
		}
	}
	for len(inflight) > 0 {
		p := inflight[0]
		inflight = inflight[1:]
		if err := wait(p); err != nil {
			return err
		}
	}
	return nil
}

func (c *control) ImportDataStream(ctx context.Context, call schema.Control_importDataStream) error {
	return errdefs.ToWire(c.importDataStream(call))
}

func (c *control) importDataStream(call schema.Control_importDataStream) error {
	name, err := argName(call.Args())
	if err != nil {
		return err
	}
	if _, err := c.d.unit(name); err != nil {
		return err
	}
	f, err := c.d.store.CreateUpload()
	if err != nil {
		return fmt.Errorf("import: create a file for the document: %w", err)
	}
	up := &dataUpload{d: c.d, name: name, replace: call.Args().Replace(), spool: spool{
		log: c.d.log.With("plugin", name), what: "data document", f: f, max: maxDataImport,
		tooLarge: fmt.Sprintf("import into plugin %q: the document is larger than %s, more than any export of a plugin's data", name, manifest.Size(maxDataImport)),
	}}
	res, err := call.AllocResults()
	if err != nil {
		up.discard()
		return err
	}
	return res.SetUpload(schema.DataUpload_ServerToClient(up))
}

// dataUpload receives one streamed import document (see spool); finish
// imports it.
type dataUpload struct {
	spool
	d       *Daemon
	name    string
	replace bool
}

func (u *dataUpload) Write(ctx context.Context, call schema.DataUpload_write) error {
	chunk, err := call.Args().Chunk()
	if err != nil {
		return err
	}
	return errdefs.ToWire(u.write(chunk))
}

func (u *dataUpload) Finish(ctx context.Context, call schema.DataUpload_finish) error {
	return errdefs.ToWire(u.finish(call))
}

func (u *dataUpload) finish(call schema.DataUpload_finish) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if err := u.beginFinishLocked(); err != nil {
		return err
	}
	defer u.closeLocked()
	if _, err := u.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	call.Go()
	keys, err := u.d.ImportDataFrom(u.name, u.f, u.n, u.replace)
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	res.SetKeys(uint64(keys))
	return nil
}

func (u *dataUpload) Abort(ctx context.Context, call schema.DataUpload_abort) error {
	reason, _ := call.Args().Reason()
	u.abort(reason)
	return nil
}

// Shutdown is called when the client lets go of the upload.
func (u *dataUpload) Shutdown() { u.lost() }
