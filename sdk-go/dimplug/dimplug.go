// Package dimplug reads and writes .dimplug plugin packages: a
// zstd-compressed tar archive of a plugin directory that starts with a
// manifest of every file's size, mode and SHA-256 (DIMPLUG-MANIFEST), and
// optionally a minisign signature over that manifest
// (DIMPLUG-MANIFEST.minisig). The format is specified in docs/packages.md.
//
// It owns the format only: packing a directory (Pack), reading a
// package's header (ReadHeader), checking its signature against trusted
// keys (Header.Verify) and each entry against the manifest (Verifier).
// Unpacking into place belongs to the daemon's registry, which uses
// Verifier while it extracts. It must not import the daemon.
package dimplug

import (
	"archive/tar"
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path"
	"slices"
	"strconv"
	"strings"

	"aead.dev/minisign"
	"github.com/klauspost/compress/zstd"
)

// Names of the package's own entries, first in the archive, in this order.
const (
	ManifestName  = "DIMPLUG-MANIFEST"
	SignatureName = "DIMPLUG-MANIFEST.minisig"
)

// FormatVersion is the manifest format this package writes and reads.
const FormatVersion = 1

// MaxManifestSize bounds the manifest and the signature entries.
const MaxManifestSize = 4 << 20

// zstdMagic starts every zstd frame.
var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// IsPackage reports whether b, the first bytes of a file, start a zstd
// stream (the only compression a .dimplug uses).
func IsPackage(b []byte) bool { return bytes.HasPrefix(b, zstdMagic) }

// ErrInvalid marks a package that is damaged, does not match its manifest,
// or carries a bad signature.
var ErrInvalid = errors.New("invalid package")

func invalidf(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrInvalid, fmt.Sprintf(format, a...))
}

// Manifest lists a package's contents. Every regular file of the plugin
// directory is in Files and every directory in Dirs, sorted by path;
// nothing else is in the archive.
type Manifest struct {
	Format  int      `json:"format"`
	Name    string   `json:"name"`
	Version string   `json:"version"`
	Dirs    []string `json:"dirs"`
	Files   []File   `json:"files"`
}

// File is one regular file in a Manifest.
type File struct {
	Path   string `json:"path"`   // slash-separated, relative, clean
	Size   int64  `json:"size"`   // bytes
	Mode   string `json:"mode"`   // "0755" (executable) or "0644"
	SHA256 string `json:"sha256"` // lowercase hex
}

// TotalSize is the sum of the files' sizes.
func (m *Manifest) TotalSize() int64 {
	var n int64
	for _, f := range m.Files {
		n += f.Size
	}
	return n
}

// ParseManifest decodes and checks a manifest: known format, unknown
// fields refused, clean relative paths, no duplicates, sane sizes and
// hashes.
func ParseManifest(b []byte) (*Manifest, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Manifest
	if err := dec.Decode(&m); err != nil {
		return nil, invalidf("%s: %v", ManifestName, err)
	}
	if m.Format != FormatVersion {
		return nil, invalidf("%s: format %d; this dimplugd reads format %d", ManifestName, m.Format, FormatVersion)
	}
	seen := map[string]bool{}
	for _, d := range m.Dirs {
		if err := checkPath(d); err != nil {
			return nil, err
		}
		if seen[d] {
			return nil, invalidf("%s: %q is listed twice", ManifestName, d)
		}
		seen[d] = true
	}
	for _, f := range m.Files {
		if err := checkPath(f.Path); err != nil {
			return nil, err
		}
		if seen[f.Path] {
			return nil, invalidf("%s: %q is listed twice", ManifestName, f.Path)
		}
		seen[f.Path] = true
		if f.Size < 0 {
			return nil, invalidf("%s: %q: negative size", ManifestName, f.Path)
		}
		if f.Mode != "0755" && f.Mode != "0644" {
			return nil, invalidf("%s: %q: mode %q is neither 0755 nor 0644", ManifestName, f.Path, f.Mode)
		}
		if h, err := hex.DecodeString(f.SHA256); err != nil || len(h) != 32 || strings.ToLower(f.SHA256) != f.SHA256 {
			return nil, invalidf("%s: %q: sha256 %q is not 64 lowercase hex digits", ManifestName, f.Path, f.SHA256)
		}
	}
	return &m, nil
}

// checkPath refuses paths that are not clean, relative and inside the
// plugin directory, and the package's own entry names.
func checkPath(p string) error {
	switch {
	case p == "" || p == ".":
		return invalidf("%s: empty path", ManifestName)
	case strings.HasPrefix(p, "/"):
		return invalidf("%s: %q: absolute path", ManifestName, p)
	case path.Clean(p) != p || strings.IndexByte(p, 0) >= 0:
		return invalidf("%s: %q: not a clean path", ManifestName, p)
	case p == ".." || strings.HasPrefix(p, "../"):
		return invalidf("%s: %q: path leaves the plugin directory", ManifestName, p)
	case p == ManifestName || p == SignatureName:
		return invalidf("%s: %q: reserved name", ManifestName, p)
	}
	return nil
}

// Header is what comes before a package's files: the manifest, as signed,
// and the signature, if any.
type Header struct {
	Manifest      *Manifest
	ManifestBytes []byte
	Signature     []byte // minisign signature file; nil when unsigned
}

// Signed reports whether the package carries a signature.
func (h *Header) Signed() bool { return len(h.Signature) > 0 }

// SignatureKeyID is the key id the signature names (16 uppercase hex
// digits, as minisign prints it), or "" when unsigned or unreadable.
func (h *Header) SignatureKeyID() string {
	var s minisign.Signature
	if !h.Signed() || s.UnmarshalText(h.Signature) != nil {
		return ""
	}
	return KeyID(s.KeyID)
}

// KeyID formats a minisign key id as minisign prints it.
func KeyID(id uint64) string { return strings.ToUpper(fmt.Sprintf("%016x", id)) }

// ErrUntrusted marks a signature by a key that is not trusted, or one that
// does not verify.
var ErrUntrusted = errors.New("untrusted signature")

// Verify checks the signature against keys and returns the key that made
// it. An unsigned package is an error (test Signed first).
func (h *Header) Verify(keys []minisign.PublicKey) (minisign.PublicKey, error) {
	if !h.Signed() {
		return minisign.PublicKey{}, fmt.Errorf("%w: the package is not signed", ErrUntrusted)
	}
	var s minisign.Signature
	if err := s.UnmarshalText(h.Signature); err != nil {
		return minisign.PublicKey{}, invalidf("%s: %v", SignatureName, err)
	}
	for _, k := range keys {
		if k.ID() != s.KeyID {
			continue
		}
		if minisign.Verify(k, h.ManifestBytes, h.Signature) {
			return k, nil
		}
		return minisign.PublicKey{}, fmt.Errorf("%w: the signature by key %s does not match the package's manifest (tampered, or signed by another key with the same id)", ErrUntrusted, KeyID(s.KeyID))
	}
	return minisign.PublicKey{}, fmt.Errorf("%w: signed by key %s, which is not trusted (dimplugctl trust add)", ErrUntrusted, KeyID(s.KeyID))
}

// NewReader decompresses a package. The caller closes the decoder.
func NewReader(r io.Reader) (*zstd.Decoder, error) {
	// A small window bounds the decoder's memory whatever the input
	// claims (Pack writes 8 MiB windows).
	return zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(64<<20), zstd.WithDecoderLowmem(true))
}

// ReadHeader reads the manifest and the optional signature from the start
// of tr, a package's tar stream, leaving tr at the first file. first, when
// not nil, is the first header already read from tr.
func ReadHeader(tr *tar.Reader, first *tar.Header) (*Header, *tar.Header, error) {
	hdr := first
	var err error
	if hdr == nil {
		if hdr, err = tr.Next(); err != nil {
			return nil, nil, invalidf("read %s: %v", ManifestName, err)
		}
	}
	if hdr.Name != ManifestName || hdr.Typeflag != tar.TypeReg {
		return nil, nil, invalidf("the first entry is %q, not %s", hdr.Name, ManifestName)
	}
	mb, err := readSmall(tr, hdr)
	if err != nil {
		return nil, nil, err
	}
	m, err := ParseManifest(mb)
	if err != nil {
		return nil, nil, err
	}
	h := &Header{Manifest: m, ManifestBytes: mb}
	next, err := tr.Next()
	if err == io.EOF {
		return h, nil, nil
	}
	if err != nil {
		return nil, nil, invalidf("read archive: %v", err)
	}
	if next.Name == SignatureName {
		if next.Typeflag != tar.TypeReg {
			return nil, nil, invalidf("%s is not a regular file", SignatureName)
		}
		if h.Signature, err = readSmall(tr, next); err != nil {
			return nil, nil, err
		}
		next, err = tr.Next()
		if err == io.EOF {
			return h, nil, nil
		}
		if err != nil {
			return nil, nil, invalidf("read archive: %v", err)
		}
	}
	return h, next, nil
}

func readSmall(tr *tar.Reader, hdr *tar.Header) ([]byte, error) {
	if hdr.Size > MaxManifestSize {
		return nil, invalidf("%s is larger than %d bytes", hdr.Name, MaxManifestSize)
	}
	b, err := io.ReadAll(tr)
	if err != nil {
		return nil, invalidf("read %s: %v", hdr.Name, err)
	}
	return b, nil
}

// ModeOf is the manifest's mode string for a file's permission bits.
func ModeOf(executable bool) string {
	if executable {
		return "0755"
	}
	return "0644"
}

// ParseMode is the inverse of ModeOf.
func ParseMode(s string) uint32 {
	v, _ := strconv.ParseUint(s, 8, 32)
	return uint32(v)
}

// sortFiles sorts files and dirs by path, as the format requires.
func (m *Manifest) sort() {
	slices.Sort(m.Dirs)
	slices.SortFunc(m.Files, func(a, b File) int { return strings.Compare(a.Path, b.Path) })
}

// Head is the start of a package as a client reads it before sending it:
// the header and the plugin's manifest file.
type Head struct {
	*Header
	PluginTOML []byte // plugin.toml, checked against the manifest's hash
}

// ReadHead reads a package's header and its plugin.toml, which Pack writes
// right after the header, from r (the compressed package), reading no
// further than that. The plugin.toml must match the manifest's size and
// SHA-256.
func ReadHead(r io.Reader) (*Head, error) {
	magic := make([]byte, len(zstdMagic))
	if n, err := io.ReadFull(r, magic); err != nil || !IsPackage(magic) {
		return nil, invalidf("not a .dimplug package (it does not start as a zstd stream; %d bytes read) — to install a plugin directory, give the directory", n)
	}
	zr, err := NewReader(io.MultiReader(bytes.NewReader(magic), r))
	if err != nil {
		return nil, invalidf("%v", err)
	}
	defer zr.Close()
	tr := tar.NewReader(zr)
	h, next, err := ReadHeader(tr, nil)
	if err != nil {
		return nil, err
	}
	for hdr := next; hdr != nil; {
		if path.Clean(hdr.Name) == "plugin.toml" && hdr.Typeflag == tar.TypeReg {
			v := NewVerifier(h.Manifest)
			w, err := v.File("plugin.toml", hdr.Size, hdr.Mode&0o111 != 0)
			if err != nil {
				return nil, err
			}
			b, err := readSmall(tr, hdr)
			if err != nil {
				return nil, err
			}
			w.Write(b)
			if err := v.Done(); err != nil {
				return nil, err
			}
			return &Head{Header: h, PluginTOML: b}, nil
		}
		if hdr.Typeflag != tar.TypeDir {
			break // Pack puts plugin.toml before any other file
		}
		if hdr, err = tr.Next(); err != nil {
			break
		}
	}
	return nil, invalidf("plugin.toml does not follow the package's header (was the package made with dimplugctl pack?)")
}
