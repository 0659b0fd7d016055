package host

import (
	"context"
	"encoding/hex"
	"errors"
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
	err := streamChunks(r, func(chunk []byte) func() error {
		f, rel := up.Write(ctx, func(p schema.Upload_write_Params) error { return p.SetChunk(chunk) })
		return func() error { defer rel(); _, err := f.Struct(); return err }
	})
	var re *readError
	if errors.As(err, &re) {
		af, arel := up.Abort(context.Background(), func(p schema.Upload_abort_Params) error { return p.SetReason(re.Error()) })
		af.Struct()
		arel()
		return nil, fmt.Errorf("read the package: %w", re.err)
	} else if err != nil {
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

// streamChunks reads r in chunks of ChunkSize and hands each to send,
// which starts a write and returns a function that waits for its answer;
// at most inFlight writes are unanswered at a time. It returns the first
// write's error, or r's error as a *readError (after waiting for the
// writes under way). The chunk is reused: send must copy it (a capnp
// SetChunk does).
func streamChunks(r io.Reader, send func(chunk []byte) (wait func() error)) error {
	var window []func() error
	drain := func() error {
		var first error
		for _, wait := range window {
			if err := wait(); err != nil && first == nil {
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
			window = append(window, send(buf[:n]))
			if len(window) >= inFlight {
				if err := window[0](); err != nil {
					window = window[1:]
					drain()
					return err
				}
				window = window[1:]
			}
		}
		if rerr == io.EOF {
			return drain()
		}
		if rerr != nil {
			drain()
			return &readError{rerr}
		}
	}
}

// readError is the reader's error in streamChunks.
type readError struct{ err error }

func (e *readError) Error() string { return e.err.Error() }
func (e *readError) Unwrap() error { return e.err }
