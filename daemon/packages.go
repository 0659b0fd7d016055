package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"sync"
	"time"

	"aead.dev/minisign"
	"github.com/dimplugd/dimplugd/daemon/registry"
	"github.com/dimplugd/dimplugd/sdk-go/dimplug"
	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

// Policies for packages without a trusted signature (Config.UnsignedPolicy).
const (
	UnsignedRefuse = "refuse"
	UnsignedPrompt = "prompt"
	UnsignedAllow  = "allow"
)

// DefaultMaxPackageSize bounds a streamed package (Config.MaxPackageSize).
const DefaultMaxPackageSize = 1 << 30

// maxChunk is the largest Upload.write chunk.
const maxChunk = 1 << 20

// CheckUnsignedPolicy reports whether p names a policy ("" is the default).
func CheckUnsignedPolicy(p string) error {
	switch p {
	case "", UnsignedRefuse, UnsignedPrompt, UnsignedAllow:
		return nil
	}
	return fmt.Errorf("%q is not a policy: refuse, prompt or allow", p)
}

func (d *Daemon) unsignedPolicy() string {
	if d.cfg.UnsignedPolicy == "" {
		return UnsignedPrompt
	}
	return d.cfg.UnsignedPolicy
}

func (d *Daemon) maxPackageSize() int64 {
	if d.cfg.MaxPackageSize <= 0 {
		return DefaultMaxPackageSize
	}
	return d.cfg.MaxPackageSize
}

// ErrUntrusted reports a package refused by the trust policy: a signature
// by a key that is not trusted or that does not verify, or no signature
// where the policy wants one. It is of class errdefs.ErrInvalid.
var ErrUntrusted = errdefs.New(errdefs.ErrInvalid, "package refused")

// packageCheck is registry.InstallOptions.Package for the daemon's trust
// policy: it verifies a package's signature against the trusted keys and
// stores who signed it in *publisher, or applies the unsigned policy.
// allowUnsigned is the operator's answer to the prompt; plain says a plain
// archive (a directory the operator pointed at) counts as accepted.
func (d *Daemon) packageCheck(allowUnsigned, plain bool, publisher **registry.TrustedKey) func(h *dimplug.Header) error {
	return func(h *dimplug.Header) error {
		if h != nil && h.Signed() {
			keys, err := d.store.TrustedKeys()
			if err != nil {
				return err
			}
			pks := make([]minisign.PublicKey, 0, len(keys))
			for _, k := range keys {
				if pk, err := k.Key(); err == nil {
					pks = append(pks, pk)
				}
			}
			pk, err := h.Verify(pks)
			if err != nil {
				return fmt.Errorf("%w: %s %s: %v", ErrUntrusted, h.Manifest.Name, h.Manifest.Version, err)
			}
			for _, k := range keys {
				if k.KeyID == dimplug.KeyID(pk.ID()) {
					*publisher = &k
				}
			}
			return nil
		}
		what := "a plain archive (not a signed .dimplug package)"
		if h != nil {
			what = fmt.Sprintf("package %s %s is not signed", h.Manifest.Name, h.Manifest.Version)
		}
		switch d.unsignedPolicy() {
		case UnsignedAllow:
			return nil
		case UnsignedRefuse:
			return fmt.Errorf("%w: %s, and this daemon refuses unsigned packages (dimplugd serve --unsigned refuse): sign it with dimplugctl pack --sign KEY and trust the key (dimplugctl trust add)", ErrUntrusted, what)
		}
		if allowUnsigned || (h == nil && plain) {
			return nil
		}
		return fmt.Errorf("%w: %s; this daemon installs unsigned packages only when the operator accepts them (dimplugctl install asks, or --allow-unsigned)", ErrUntrusted, what)
	}
}

// The trust methods of the control face.

func (c *control) TrustAdd(ctx context.Context, call schema.Control_trustAdd) error {
	return errdefs.ToWire(c.trustAdd(call))
}

func (c *control) TrustList(ctx context.Context, call schema.Control_trustList) error {
	return errdefs.ToWire(c.trustList(call))
}

func (c *control) TrustRemove(ctx context.Context, call schema.Control_trustRemove) error {
	id, err := call.Args().KeyId()
	if err != nil {
		return errdefs.ToWire(err)
	}
	if err := c.d.store.RemoveTrustedKey(id); err != nil {
		return errdefs.ToWire(err)
	}
	c.d.log.Info("publisher key no longer trusted", "key", id)
	return nil
}

func (c *control) trustAdd(call schema.Control_trustAdd) error {
	pub, err := call.Args().PublicKey()
	if err != nil {
		return err
	}
	comment, err := call.Args().Comment()
	if err != nil {
		return err
	}
	k, err := c.d.store.AddTrustedKey(pub, comment)
	if err != nil {
		return err
	}
	c.d.log.Info("publisher key trusted", "key", k.KeyID, "comment", k.Comment)
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	out, err := res.NewKey()
	if err != nil {
		return err
	}
	return writeTrustedKey(out, k)
}

func (c *control) trustList(call schema.Control_trustList) error {
	keys, err := c.d.store.TrustedKeys()
	if err != nil {
		return err
	}
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	l, err := res.NewKeys(int32(len(keys)))
	if err != nil {
		return err
	}
	for i, k := range keys {
		if err := writeTrustedKey(l.At(i), k); err != nil {
			return err
		}
	}
	return nil
}

func writeTrustedKey(out schema.TrustedKey, k registry.TrustedKey) error {
	out.SetAddedAtUnixMs(k.AddedAt.UnixMilli())
	if err := out.SetKeyId(k.KeyID); err != nil {
		return err
	}
	if err := out.SetPublicKey(k.PublicKey); err != nil {
		return err
	}
	return out.SetComment(k.Comment)
}

// InstallStream starts receiving a package; see upload.
func (c *control) InstallStream(ctx context.Context, call schema.Control_installStream) error {
	return errdefs.ToWire(c.installStream(call))
}

func (c *control) installStream(call schema.Control_installStream) error {
	o, err := call.Args().Options()
	if err != nil {
		return fmt.Errorf("install: options: %w", err)
	}
	opts := registry.InstallOptions{Replace: o.Replace(), Enable: o.Enable(), Wait: o.Wait()}
	if o.HasGrant() {
		g, err := o.Grant()
		if err != nil {
			return fmt.Errorf("install: grant: %w", err)
		}
		p, err := readGrant(g)
		if err != nil {
			return err
		}
		opts.Grant = &p
	}
	pin, err := o.Sha256()
	if err != nil {
		return fmt.Errorf("install: sha256: %w", err)
	}
	if len(pin) != 0 && len(pin) != sha256.Size {
		return errdefs.New(errdefs.ErrInvalid, fmt.Sprintf("install: sha256 pin has %d bytes, not %d", len(pin), sha256.Size))
	}
	f, err := c.d.store.CreateUpload()
	if err != nil {
		return fmt.Errorf("install: create a file for the package: %w", err)
	}
	max := c.d.maxPackageSize()
	up := &upload{
		c: c, opts: opts, allowUnsigned: o.AllowUnsigned(), pin: bytes.Clone(pin),
		h: sha256.New(), started: time.Now(),
		spool: spool{log: c.d.log, what: "package", f: f, max: max,
			tooLarge: fmt.Sprintf("install: the package is larger than this daemon's limit of %d bytes (dimplugd serve --max-package-size)", max)},
	}
	up.onChunk = up.received
	if call.Args().HasProgress() {
		up.progress = call.Args().Progress().AddRef()
	}
	res, err := call.AllocResults()
	if err != nil {
		up.cleanup()
		return err
	}
	return res.SetUpload(schema.Upload_ServerToClient(up))
}

// upload receives one streamed package (see spool), bounded by
// MaxPackageSize, hashing it as it comes; finish checks the pin and
// installs from the file (Daemon.InstallFrom, which verifies it before
// anything is unpacked into place).
type upload struct {
	spool
	c             *control
	opts          registry.InstallOptions
	allowUnsigned bool
	pin           []byte
	progress      schema.InstallProgress
	started       time.Time

	// progressMu guards progressOff, set once finish has answered: stages
	// of an install that did not wait happen after the answer, and are
	// not reported (the client may have released progress by then).
	progressMu  sync.Mutex
	progressOff bool

	h        hash.Hash // under spool.mu
	reported int64     // bytes at the last "receiving" stage; under spool.mu
}

func (u *upload) Write(ctx context.Context, call schema.Upload_write) error {
	return errdefs.ToWire(u.write(ctx, call))
}

func (u *upload) write(ctx context.Context, call schema.Upload_write) error {
	chunk, err := call.Args().Chunk()
	if err != nil {
		return err
	}
	return u.spool.write(chunk)
}

// received hashes a chunk and reports the bytes so far every 8 MiB
// (spool.onChunk, under spool.mu).
func (u *upload) received(chunk []byte) {
	u.h.Write(chunk)
	if u.n-u.reported >= 8<<20 {
		u.reported = u.n
		u.stage(context.Background(), "receiving", uint64(u.n), 0)
	}
}

// stage reports progress without waiting for the answer.
func (u *upload) stage(ctx context.Context, stage string, done, total uint64) {
	u.progressMu.Lock()
	defer u.progressMu.Unlock()
	if u.progressOff || !u.progress.IsValid() {
		return
	}
	_, release := u.progress.Stage(context.Background(), func(p schema.InstallProgress_stage_Params) error {
		p.SetDone(done)
		p.SetTotal(total)
		return p.SetStage(stage)
	})
	release()
}

// releaseProgress stops reporting stages and lets go of the client's
// InstallProgress.
func (u *upload) releaseProgress() {
	u.progressMu.Lock()
	defer u.progressMu.Unlock()
	u.progressOff = true
	u.progress.Release()
}

// progressDone stops reporting stages: finish has answered.
func (u *upload) progressDone() {
	u.progressMu.Lock()
	u.progressOff = true
	u.progressMu.Unlock()
}

func (u *upload) Finish(ctx context.Context, call schema.Upload_finish) error {
	return errdefs.ToWire(u.finish(ctx, call))
}

func (u *upload) finish(ctx context.Context, call schema.Upload_finish) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if err := u.beginFinishLocked(); err != nil {
		return err
	}
	defer u.closeLocked()
	sum := u.h.Sum(nil)
	log := u.c.d.log.With("bytes", u.n, "sha256", hex.EncodeToString(sum))
	if len(u.pin) > 0 && !bytes.Equal(sum, u.pin) {
		err := errdefs.New(errdefs.ErrInvalid, fmt.Sprintf("install: the package's SHA-256 is %x, not the pinned %x", sum, u.pin))
		log.Warn("package refused", "err", err)
		return err
	}
	if _, err := u.f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	u.stage(ctx, "verifying", uint64(u.n), uint64(u.n))
	var publisher *registry.TrustedKey
	opts := u.opts
	opts.PackageSize = u.n
	opts.Package = u.c.d.packageCheck(u.allowUnsigned, false, &publisher)
	opts.Provenance = func() (*registry.TrustedKey, string) { return publisher, hex.EncodeToString(sum) }
	opts.Progress = func(stage string, done, total uint64) { u.stage(ctx, stage, done, total) }
	defer u.progressDone()
	call.Go()
	rec, err := u.c.d.InstallFrom(ctx, u.f, opts)
	if err != nil {
		log.Warn("package install failed", "err", err)
		return err
	}
	var who []any
	if publisher != nil {
		who = []any{"publisher", publisher.KeyID, "publisher_comment", publisher.Comment}
	}
	log.Info("package installed", append([]any{"plugin", rec.Name, "version", rec.Manifest.Version, "took", time.Since(u.started).Round(time.Millisecond)}, who...)...)
	res, err := call.AllocResults()
	if err != nil {
		return err
	}
	if err := res.SetSha256(sum); err != nil {
		return err
	}
	if publisher != nil {
		k, err := res.NewPublisher()
		if err != nil {
			return err
		}
		if err := writeTrustedKey(k, *publisher); err != nil {
			return err
		}
	}
	return installedInto(u.c.d, func() (schema.Upload_finish_Results, error) { return res, nil }, rec)
}

func (u *upload) Abort(ctx context.Context, call schema.Upload_abort) error {
	reason, _ := call.Args().Reason()
	u.abort(reason)
	return nil
}

// Shutdown is called when the client lets go of the upload: a transfer
// that did not finish is logged and its file removed.
func (u *upload) Shutdown() {
	u.lost()
	u.releaseProgress()
}

func (u *upload) cleanup() {
	u.discard()
	u.releaseProgress()
}

// writeProvenance writes who signed the installed package and its hash.
func writeProvenance(s schema.PluginStatus, rec registry.Record) error {
	if rec.SHA256 != "" {
		if sum, err := hex.DecodeString(rec.SHA256); err == nil {
			if err := s.SetSha256(sum); err != nil {
				return err
			}
		}
	}
	if rec.Publisher == nil {
		return nil
	}
	k, err := s.NewPublisher()
	if err != nil {
		return err
	}
	return writeTrustedKey(k, *rec.Publisher)
}
