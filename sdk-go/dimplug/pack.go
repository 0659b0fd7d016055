package dimplug

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"time"

	"aead.dev/minisign"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/klauspost/compress/zstd"
)

// PackOptions control Pack.
type PackOptions struct {
	// Key, when set, signs the manifest.
	Key *minisign.PrivateKey
	// TrustedComment goes into the signature (signed); default names the
	// plugin and version.
	TrustedComment string
}

// Pack writes the plugin directory dir to w as a .dimplug package and
// returns its manifest. The output is deterministic: entries in lexical
// order, modes 0755 or 0644, times zero, owners 0 with no names. Only
// directories and regular files are packed; anything else (a symbolic link,
// a device) is an error naming it. The plugin's manifest (plugin.toml) must
// be valid. It does not close w.
func Pack(w io.Writer, dir string, opt PackOptions) (*Manifest, error) {
	pm, err := manifest.Load(dir)
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", dir, err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("pack: %w", err)
	}
	defer root.Close()
	m := &Manifest{Format: FormatVersion, Name: pm.Name, Version: pm.Version, Dirs: []string{}, Files: []File{}}
	err = fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == "." {
			return nil
		}
		if p == ManifestName || p == SignatureName {
			return fmt.Errorf("%s: reserved name", p)
		}
		switch t := d.Type(); {
		case t.IsDir():
			m.Dirs = append(m.Dirs, p)
			return nil
		case !t.IsRegular():
			return fmt.Errorf("%s: is a %s; only regular files and directories can be packed", p, t)
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		f, err := root.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		h := sha256.New()
		n, err := io.Copy(h, f)
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		m.Files = append(m.Files, File{Path: p, Size: n, Mode: ModeOf(fi.Mode()&0o111 != 0), SHA256: hex.EncodeToString(h.Sum(nil))})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("pack %s: %w", dir, err)
	}
	m.sort()
	mb, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	mb = append(mb, '\n')
	zw, err := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithWindowSize(8<<20), zstd.WithEncoderConcurrency(1))
	if err != nil {
		return nil, err
	}
	tw := tar.NewWriter(zw)
	if err := writeEntry(tw, ManifestName, mb); err != nil {
		return nil, err
	}
	if opt.Key != nil {
		tc := opt.TrustedComment
		if tc == "" {
			tc = fmt.Sprintf("dimplug %s %s", m.Name, m.Version)
		}
		sig := minisign.SignWithComments(*opt.Key, mb, tc, "signature from dimplugctl pack")
		if err := writeEntry(tw, SignatureName, sig); err != nil {
			return nil, err
		}
	}
	// plugin.toml first, so that a reader can show what the plugin asks
	// for before the rest arrives; then directories and files in one
	// lexical order, so that parents come before their children.
	type ent struct {
		path string
		file *File
	}
	var all []ent
	for _, d := range m.Dirs {
		all = append(all, ent{path: d})
	}
	for i := range m.Files {
		all = append(all, ent{path: m.Files[i].Path, file: &m.Files[i]})
	}
	sortEnts := func(a, b ent) int {
		switch {
		case a.path == manifest.FileName:
			return -1
		case b.path == manifest.FileName:
			return 1
		case a.path < b.path:
			return -1
		case a.path > b.path:
			return 1
		}
		return 0
	}
	slices.SortFunc(all, sortEnts)
	for _, e := range all {
		if e.file == nil {
			if err := tw.WriteHeader(header(e.path+"/", tar.TypeDir, 0o755, 0)); err != nil {
				return nil, err
			}
			continue
		}
		if err := tw.WriteHeader(header(e.path, tar.TypeReg, int64(ParseMode(e.file.Mode)), e.file.Size)); err != nil {
			return nil, err
		}
		f, err := root.Open(e.path)
		if err != nil {
			return nil, err
		}
		_, err = io.CopyN(tw, f, e.file.Size)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("pack %s: %s changed while being packed: %w", dir, e.path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return m, nil
}

func header(name string, typ byte, mode, size int64) *tar.Header {
	return &tar.Header{Name: name, Typeflag: typ, Mode: mode, Size: size, ModTime: time.Unix(0, 0), Format: tar.FormatPAX}
}

func writeEntry(tw *tar.Writer, name string, b []byte) error {
	if err := tw.WriteHeader(header(name, tar.TypeReg, 0o644, int64(len(b)))); err != nil {
		return err
	}
	_, err := tw.Write(b)
	return err
}
