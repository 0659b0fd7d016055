package registry

import (
	"archive/tar"
	"bufio"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"strings"
	"syscall"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/dimplug"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
)

// Limits on what one plugin may install.
const (
	// MaxInstallSize bounds the total size of a plugin's regular files.
	MaxInstallSize = 512 << 20
	// MaxInstallFiles bounds the number of files and directories.
	MaxInstallFiles = 10000
)

// Limits on how far an archive may expand: its files together may not be
// larger than MaxExpansion times the archive as received, unless they fit
// in ExpansionFloor. Plugin binaries compress three to five times; a
// decompression bomb a thousand times or more.
const (
	MaxExpansion   = 100
	ExpansionFloor = 64 << 20
)

// budget enforces the install limits across one tree or archive.
type budget struct {
	entries int
	bytes   int64
	// packed is the archive's size as received; 0: unknown, no
	// expansion limit.
	packed int64
}

func (b *budget) entry(name string) error {
	if b.entries++; b.entries > MaxInstallFiles {
		return invalidf("%s: the plugin has more than %d files and directories", name, MaxInstallFiles)
	}
	return nil
}

func (b *budget) take(name string, n int64) error {
	if n < 0 || n > MaxInstallSize-b.bytes {
		return invalidf("%s: the plugin is larger than the %s limit", name, manifest.Size(MaxInstallSize))
	}
	b.bytes += n
	if b.packed > 0 && b.bytes > ExpansionFloor && b.bytes/MaxExpansion > b.packed {
		return invalidf("%s: the archive (%s) expands to more than %s, over %d times its size: refusing what looks like a decompression bomb",
			name, manifest.Size(b.packed), manifest.Size(b.bytes), MaxExpansion)
	}
	return nil
}

// treeEntry is one directory or regular file of a plugin tree.
type treeEntry struct {
	rel  string      // slash-separated, relative to the tree's root
	dir  bool        // a directory; otherwise a regular file
	mode fs.FileMode // 0o755 for directories and executables, else 0o644
	size int64       // bytes, for files
}

// walkTree visits every entry below src in lexical order. Directories and
// regular files are passed to visit, with open for files; a symbolic link
// is passed as the regular file it points to if that is inside src, and
// anything else is rejected, naming the entry.
func walkTree(ctx context.Context, src string, visit func(e treeEntry, open func() (*os.File, error)) error) error {
	root, err := os.OpenRoot(src)
	if err != nil {
		return fmt.Errorf("open plugin directory: %w", err)
	}
	defer root.Close()
	var b budget
	return fs.WalkDir(root.FS(), ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if p == "." {
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := b.entry(p); err != nil {
			return err
		}
		var fi fs.FileInfo
		switch t := d.Type(); {
		case t.IsDir():
			return visit(treeEntry{rel: p, dir: true, mode: 0o755}, nil)
		case t.IsRegular():
			if fi, err = d.Info(); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
		case t&fs.ModeSymlink != 0:
			if fi, err = followLink(root, p); err != nil {
				return err
			}
		default:
			return invalidf("%s: is a %s; only regular files and directories can be installed", p, typeName(t))
		}
		if err := b.take(p, fi.Size()); err != nil {
			return err
		}
		mode := fs.FileMode(0o644)
		if fi.Mode()&0o111 != 0 {
			mode = 0o755
		}
		return visit(treeEntry{rel: p, mode: mode, size: fi.Size()}, func() (*os.File, error) { return root.Open(p) })
	})
}

// followLink stats the target of the symbolic link p, which must be a
// regular file inside root.
func followLink(root *os.Root, p string) (fs.FileInfo, error) {
	target, _ := root.Readlink(p)
	fi, err := root.Stat(p)
	switch {
	case err == nil && fi.Mode().IsRegular():
		return fi, nil
	case err == nil:
		return nil, invalidf("%s: symbolic link to %q is not a link to a regular file; only regular files and directories can be installed", p, target)
	case path.IsAbs(target) || strings.HasPrefix(path.Join(path.Dir(p), target), ".."):
		return nil, invalidf("%s: symbolic link to %q points outside the plugin directory", p, target)
	case errors.Is(err, fs.ErrNotExist):
		return nil, invalidf("%s: symbolic link to %q points to nothing", p, target)
	default:
		return nil, fmt.Errorf("%s: follow symbolic link: %w", p, err)
	}
}

func typeName(t fs.FileMode) string {
	switch {
	case t&fs.ModeDevice != 0:
		return "device file"
	case t&fs.ModeNamedPipe != 0:
		return "named pipe"
	case t&fs.ModeSocket != 0:
		return "socket"
	default:
		return "special file"
	}
}

// copyTree copies the plugin tree src into the empty directory stage.
func (s *Store) copyTree(ctx context.Context, src, stage string) error {
	dst, err := os.OpenRoot(stage)
	if err != nil {
		return err
	}
	defer dst.Close()
	dirs := []string{"."}
	err = walkTree(ctx, src, func(e treeEntry, open func() (*os.File, error)) error {
		if e.dir {
			dirs = append(dirs, e.rel)
			return mkdir(dst, e.rel)
		}
		if err := s.fail("copy " + e.rel); err != nil {
			return fmt.Errorf("%s: %w", e.rel, err)
		}
		in, err := open()
		if err != nil {
			return fmt.Errorf("%s: %w", e.rel, err)
		}
		defer in.Close()
		return writeFile(ctx, dst, e.rel, e.mode, in, e.size)
	})
	if err != nil {
		return err
	}
	return syncDirs(dst, dirs)
}

// extract unpacks the archive r into the empty directory stage: a tar
// stream, plain or gzip-compressed, or a .dimplug package (zstd; see
// sdk-go/dimplug), told apart by their first bytes. For a package, the
// header (manifest, signature) is read first and handed to opt.Package,
// the manifest's totals are checked against the limits before anything is
// written, and every entry is checked against the manifest as it is
// written (listed once, same size, mode and SHA-256; nothing missing). A
// plain archive is handed to opt.Package as nil. There is one unpacker:
// both kinds go through the same entry rules below.
func (s *Store) extract(ctx context.Context, r io.Reader, stage string, opt InstallOptions) error {
	br := bufio.NewReader(sourceReader{r})
	var rd io.Reader = br
	magic, _ := br.Peek(4)
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		gz, err := gzip.NewReader(br)
		if err != nil {
			return archiveError(err)
		}
		defer gz.Close()
		rd = gz
	case dimplug.IsPackage(magic):
		zr, err := dimplug.NewReader(br)
		if err != nil {
			return archiveError(err)
		}
		defer zr.Close()
		rd = zr
	}
	dst, err := os.OpenRoot(stage)
	if err != nil {
		return err
	}
	defer dst.Close()
	tr := tar.NewReader(ctxReader{ctx, contentReader{rd}})
	b := budget{packed: opt.PackageSize}
	dirs := []string{"."}
	first, err := tr.Next()
	if err != nil && err != io.EOF {
		return archiveError(err)
	}
	var v *dimplug.Verifier
	if first != nil && first.Name == dimplug.ManifestName {
		h, next, err := dimplug.ReadHeader(tr, first)
		if err != nil {
			return &invalidError{msg: err.Error(), err: err}
		}
		if opt.Package != nil {
			if err := opt.Package(h); err != nil {
				return err
			}
		}
		// The manifest's totals, checked before anything is written (the
		// entries are held to them below).
		total := h.Manifest.TotalSize()
		if n := len(h.Manifest.Files) + len(h.Manifest.Dirs); n > MaxInstallFiles {
			return invalidf("the package lists %d files and directories, more than the %d allowed", n, MaxInstallFiles)
		}
		if err := (&budget{packed: opt.PackageSize}).take(dimplug.ManifestName, total); err != nil {
			return err
		}
		v = dimplug.NewVerifier(h.Manifest)
		first = next
	} else if opt.Package != nil {
		if err := opt.Package(nil); err != nil {
			return err
		}
	}
	opt.Report("unpacking", 0, uint64(max(opt.PackageSize, 0)))
	for hdr := first; hdr != nil; {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := s.extractEntry(ctx, dst, tr, hdr, &b, &dirs, v); err != nil {
			return err
		}
		hdr, err = tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return archiveError(err)
		}
	}
	if v != nil {
		if err := v.End(); err != nil {
			return &invalidError{msg: err.Error(), err: err}
		}
	}
	return syncDirs(dst, dirs)
}

// extractEntry unpacks one archive entry, checked against v when the
// archive is a package.
func (s *Store) extractEntry(ctx context.Context, dst *os.Root, tr *tar.Reader, hdr *tar.Header, b *budget, dirs *[]string, v *dimplug.Verifier) error {
	name, err := entryName(hdr)
	if err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	case tar.TypeDir:
		if name == "." {
			return nil
		}
		if err := b.entry(name); err != nil {
			return err
		}
		if v != nil {
			if err := v.Dir(name); err != nil {
				return &invalidError{msg: err.Error(), err: err}
			}
		}
		if err := mkdirAll(dst, name); err != nil {
			return entryError(hdr, err)
		}
		*dirs = append(*dirs, name)
	case tar.TypeReg, '\x00': // '\x00' is the pre-POSIX regular file
		if name == "." {
			return invalidf("archive entry %q: a file cannot be the plugin directory itself", hdr.Name)
		}
		if err := b.entry(name); err != nil {
			return err
		}
		if err := b.take(name, hdr.Size); err != nil {
			return err
		}
		var r io.Reader = tr
		if v != nil {
			w, err := v.File(name, hdr.Size, hdr.Mode&0o111 != 0)
			if err != nil {
				return &invalidError{msg: err.Error(), err: err}
			}
			r = io.TeeReader(tr, w)
		}
		if parent := path.Dir(name); parent != "." {
			if err := mkdirAll(dst, parent); err != nil {
				return entryError(hdr, err)
			}
			*dirs = append(*dirs, parent)
		}
		if err := s.fail("copy " + name); err != nil {
			return fmt.Errorf("archive entry %q: %w", hdr.Name, err)
		}
		mode := fs.FileMode(0o644)
		if hdr.Mode&0o111 != 0 {
			mode = 0o755
		}
		if err := writeFile(ctx, dst, name, mode, r, hdr.Size); err != nil {
			return entryError(hdr, err)
		}
		if v != nil {
			if err := v.Done(); err != nil {
				return &invalidError{msg: err.Error(), err: err}
			}
		}
	case tar.TypeSymlink:
		return invalidf("archive entry %q: symbolic links are not allowed (it points to %q)", hdr.Name, hdr.Linkname)
	case tar.TypeLink:
		return invalidf("archive entry %q: hard links are not allowed (it links to %q)", hdr.Name, hdr.Linkname)
	case tar.TypeChar, tar.TypeBlock:
		return invalidf("archive entry %q: device files are not allowed", hdr.Name)
	case tar.TypeFifo:
		return invalidf("archive entry %q: named pipes are not allowed", hdr.Name)
	default:
		return invalidf("archive entry %q: entry type %q is not allowed; only regular files and directories can be installed", hdr.Name, hdr.Typeflag)
	}
	return nil
}

// entryName checks an archive entry's path and returns it cleaned,
// relative and slash-separated.
func entryName(hdr *tar.Header) (string, error) {
	n := hdr.Name
	switch {
	case n == "":
		return "", invalidf("archive has an entry with an empty name")
	case strings.IndexByte(n, 0) >= 0:
		return "", invalidf("archive entry %q: name contains a NUL byte", n)
	case strings.HasPrefix(n, "/"):
		return "", invalidf("archive entry %q: absolute path; entries must be relative to the plugin directory", n)
	}
	for el := range strings.SplitSeq(n, "/") {
		if el == ".." {
			return "", invalidf("archive entry %q: path leaves the plugin directory (\"..\")", n)
		}
	}
	return path.Clean(n), nil
}

// entryError names the entry in err, and makes errors that come from the
// archive's content (a path used twice, a file where a directory should be,
// data cut short) ErrInvalid.
func entryError(hdr *tar.Header, err error) error {
	switch {
	case errors.Is(err, fs.ErrExist) && hdr.Typeflag != tar.TypeDir:
		return invalidf("archive entry %q: appears twice, or names a directory", hdr.Name)
	case errors.Is(err, fs.ErrExist) || errors.Is(err, syscall.ENOTDIR):
		return &invalidError{msg: fmt.Sprintf("archive entry %q: a file is in the way: %v", hdr.Name, err), err: err}
	case errors.Is(err, io.ErrUnexpectedEOF):
		return invalidf("archive entry %q: the archive ends inside it (truncated?)", hdr.Name)
	}
	return fmt.Errorf("archive entry %q: %w", hdr.Name, err)
}

// archiveError classifies an error from reading the archive: damaged or
// truncated input is invalid, anything else (the reader failing) is not.
func archiveError(err error) error {
	if errors.Is(err, tar.ErrHeader) || errors.Is(err, gzip.ErrHeader) || errors.Is(err, gzip.ErrChecksum) ||
		errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, tar.ErrFieldTooLong) {
		return &invalidError{msg: "read archive: " + err.Error() + " (is it a tar or tar.gz file?)", err: err}
	}
	return fmt.Errorf("read archive: %w", err)
}

func mkdir(dst *os.Root, name string) error {
	if err := dst.Mkdir(name, 0o755); err != nil {
		return err
	}
	return dst.Chmod(name, 0o755) // not subject to umask
}

func mkdirAll(dst *os.Root, name string) error {
	if err := dst.MkdirAll(name, 0o755); err != nil {
		return err
	}
	return dst.Chmod(name, 0o755)
}

// writeFile creates name in dst with exactly size bytes from r and syncs
// it.
func writeFile(ctx context.Context, dst *os.Root, name string, mode fs.FileMode, r io.Reader, size int64) error {
	f, err := dst.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	n, err := io.Copy(f, ctxReader{ctx, io.LimitReader(r, size)})
	if err == nil && n != size {
		err = fmt.Errorf("%s: file changed while being copied (%d of %d bytes)", name, n, size)
	}
	if err == nil {
		err = f.Chmod(mode) // not subject to umask
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// syncDirs makes the directory entries of a staged tree durable.
func syncDirs(root *os.Root, dirs []string) error {
	for _, d := range dirs {
		f, err := root.Open(d)
		if err != nil {
			return err
		}
		err = f.Sync()
		f.Close()
		if err != nil {
			return fmt.Errorf("sync %s: %w", d, err)
		}
	}
	return nil
}

// ctxReader stops reading once its context is done.
// sourceReader marks the errors of the reader the archive comes from
// (sourceError), so that contentReader can tell them from damage.
type sourceReader struct{ r io.Reader }

type sourceError struct{ err error }

func (e *sourceError) Error() string { return e.err.Error() }
func (e *sourceError) Unwrap() error { return e.err }

func (s sourceReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p)
	if err != nil && err != io.EOF {
		err = &sourceError{err}
	}
	return n, err
}

// contentReader reads the decompressed archive: an error that did not come
// from the source (a corrupt zstd or gzip stream, whatever the
// decompressor says about it) is damage, and invalid input.
type contentReader struct{ r io.Reader }

func (c contentReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	var se *sourceError
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF && !errors.As(err, &se) && !errors.Is(err, ErrInvalid) {
		err = &invalidError{msg: "the archive is damaged: " + err.Error(), err: err}
	}
	return n, err
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// WriteArchive writes the plugin directory dir to w as an uncompressed tar
// stream that InstallArchive accepts: directories and regular files only
// (symbolic links to files inside dir become regular files), modes
// normalized to 0755 or 0644, times and owners zeroed, in lexical order. It
// applies the same rules and limits as InstallDir, so a directory that
// would not install fails here, naming the entry. It does not close w.
func WriteArchive(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	epoch := time.Unix(0, 0)
	err := walkTree(context.Background(), dir, func(e treeEntry, open func() (*os.File, error)) error {
		hdr := &tar.Header{Name: e.rel, Mode: int64(e.mode), ModTime: epoch, Typeflag: tar.TypeReg, Size: e.size}
		if e.dir {
			hdr.Name += "/"
			hdr.Typeflag = tar.TypeDir
			hdr.Size = 0
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if e.dir {
			return nil
		}
		f, err := open()
		if err != nil {
			return fmt.Errorf("%s: %w", e.rel, err)
		}
		defer f.Close()
		if _, err := io.CopyN(tw, f, e.size); err != nil {
			return fmt.Errorf("%s: %w", e.rel, err)
		}
		return nil
	})
	if err == nil {
		err = tw.Close()
	}
	if err != nil {
		return fmt.Errorf("archive plugin directory %s: %w", dir, err)
	}
	return nil
}
