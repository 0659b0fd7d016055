package host

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// TrustedKey is a publisher key the daemon trusts for signed packages.
type TrustedKey struct {
	KeyID     string    `json:"key_id"`     // minisign key id, 16 hex digits
	PublicKey string    `json:"public_key"` // minisign public key (base64)
	Comment   string    `json:"comment"`    // who publishes with it
	AddedAt   time.Time `json:"added_at"`
}

func readTrustedKey(k schema.TrustedKey) TrustedKey {
	id, _ := k.KeyId()
	pk, _ := k.PublicKey()
	c, _ := k.Comment()
	return TrustedKey{KeyID: id, PublicKey: pk, Comment: c, AddedAt: time.UnixMilli(k.AddedAtUnixMs())}
}

// TrustAdd trusts a minisign public key (the base64 line or a .pub file's
// text) with a comment saying who publishes with it.
func (c *Control) TrustAdd(ctx context.Context, publicKey, comment string) (*TrustedKey, error) {
	fut, release := c.c.TrustAdd(ctx, func(p schema.Control_trustAdd_Params) error {
		if err := p.SetPublicKey(publicKey); err != nil {
			return err
		}
		return p.SetComment(comment)
	})
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return nil, cleanErr(err)
	}
	k, err := res.Key()
	if err != nil {
		return nil, err
	}
	tk := readTrustedKey(k)
	return &tk, nil
}

// TrustList lists the trusted keys.
func (c *Control) TrustList(ctx context.Context) ([]TrustedKey, error) {
	fut, release := c.c.TrustList(ctx, nil)
	defer release()
	res, err := fut.Struct()
	if err != nil {
		return nil, cleanErr(err)
	}
	l, err := res.Keys()
	if err != nil {
		return nil, err
	}
	keys := make([]TrustedKey, l.Len())
	for i := range keys {
		keys[i] = readTrustedKey(l.At(i))
	}
	return keys, nil
}

// TrustRemove stops trusting the key with this id.
func (c *Control) TrustRemove(ctx context.Context, keyID string) error {
	fut, release := c.c.TrustRemove(ctx, func(p schema.Control_trustRemove_Params) error { return p.SetKeyId(keyID) })
	defer release()
	_, err := fut.Struct()
	return cleanErr(err)
}

// StreamOptions says how to install a streamed package.
type StreamOptions struct {
	InstallOptions
	// AllowUnsigned: the operator accepted an unsigned package (the
	// daemon's policy "prompt").
	AllowUnsigned bool
	// SHA256, when set, pins the package's hash; the daemon checks it.
	SHA256 []byte
	// Stage, when set, hears what the daemon is doing: "receiving",
	// "verifying", then the install's own stages.
	Stage func(stage string, done, total uint64)
}

// Installed is the result of InstallStream.
type Installed struct {
	Plugin    PluginStatus `json:"plugin"`
	Publisher *TrustedKey  `json:"publisher"` // nil: unsigned
	SHA256    []byte       `json:"sha256"`
}

// ChunkSize is the size of the chunks InstallStream sends, and inFlight
// how many it keeps in flight.
const (
	ChunkSize = 1 << 20
	inFlight  = 4
)

// InstallStream installs the package read from r (a .dimplug, or a tar
// archive of a plugin directory) by streaming it to the daemon in chunks
// of ChunkSize, a few in flight, never holding it whole. A read error
// aborts the transfer and the daemon logs why.
func (c *Control) InstallStream(ctx context.Context, r io.Reader, opts StreamOptions) (*Installed, error) {
	var prog schema.InstallProgress
	if opts.Stage != nil {
		prog = schema.InstallProgress_ServerToClient(progressFunc(opts.Stage))
	}
	fut, release := c.c.InstallStream(ctx, func(p schema.Control_installStream_Params) error {
		o, err := p.NewOptions()
		if err != nil {
			return err
		}
		o.SetReplace(opts.Replace)
		o.SetEnable(opts.Enable)
		o.SetWait(opts.Wait)
		o.SetAllowUnsigned(opts.AllowUnsigned)
		if len(opts.SHA256) > 0 {
			if err := o.SetSha256(opts.SHA256); err != nil {
				return err
			}
		}
		if opts.Grant != nil {
			g, err := o.NewGrant()
			if err != nil {
				return err
			}
			if err := wire.WritePermissions(g, *opts.Grant); err != nil {
				return err
			}
		}
		if prog.IsValid() {
			return p.SetProgress(prog)
		}
		return nil
	})
	defer release()
	up := fut.Upload().AddRef()
	defer up.Release()
	type pending struct {
		f       schema.Upload_write_Results_Future
		release func()
	}
	var window []pending
	wait := func(p pending) error {
		_, err := p.f.Struct()
		p.release()
		return err
	}
	drain := func() error {
		var first error
		for _, p := range window {
			if err := wait(p); err != nil && first == nil {
				first = err
			}
		}
		window = nil
		return first
	}
	buf := make([]byte, ChunkSize)
	for {
		n, rerr := fill(r, buf)
		if n > 0 {
			chunk := buf[:n]
			f, rel := up.Write(ctx, func(p schema.Upload_write_Params) error { return p.SetChunk(chunk) })
			window = append(window, pending{f, rel})
			if len(window) >= inFlight {
				if err := wait(window[0]); err != nil {
					drain()
					return nil, fmt.Errorf("send the package: %w", cleanErr(err))
				}
				window = window[1:]
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			drain()
			af, arel := up.Abort(context.Background(), func(p schema.Upload_abort_Params) error { return p.SetReason(rerr.Error()) })
			af.Struct()
			arel()
			return nil, fmt.Errorf("read the package: %w", rerr)
		}
	}
	if err := drain(); err != nil {
		return nil, fmt.Errorf("send the package: %w", cleanErr(err))
	}
	ff, frel := up.Finish(ctx, nil)
	defer frel()
	res, err := ff.Struct()
	if err != nil {
		return nil, cleanErr(err)
	}
	s, err := res.Plugin()
	if err != nil {
		return nil, err
	}
	out := &Installed{Plugin: readStatus(s)}
	if out.SHA256, err = res.Sha256(); err != nil {
		return nil, err
	}
	out.SHA256 = append([]byte(nil), out.SHA256...)
	if res.HasPublisher() {
		k, err := res.Publisher()
		if err != nil {
			return nil, err
		}
		tk := readTrustedKey(k)
		out.Publisher = &tk
	}
	return out, nil
}

// progressFunc serves InstallProgress.
type progressFunc func(stage string, done, total uint64)

func (f progressFunc) Stage(ctx context.Context, call schema.InstallProgress_stage) error {
	s, err := call.Args().Stage()
	if err != nil {
		return err
	}
	f(s, call.Args().Done(), call.Args().Total())
	return nil
}

func readSHA256(s schema.PluginStatus) string {
	b, err := s.Sha256()
	if err != nil || len(b) == 0 {
		return ""
	}
	return hex.EncodeToString(b)
}

func readPublisher(s schema.PluginStatus) *TrustedKey {
	if !s.HasPublisher() {
		return nil
	}
	k, err := s.Publisher()
	if err != nil {
		return nil
	}
	tk := readTrustedKey(k)
	return &tk
}

// fill reads into buf until it is full, the reader ends (io.EOF, with
// what was read) or fails; unlike io.ReadFull it tells a clean end from a
// reader failing with io.ErrUnexpectedEOF (a cut download).
func fill(r io.Reader, buf []byte) (int, error) {
	n := 0
	for n < len(buf) {
		m, err := r.Read(buf[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}
