package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"aead.dev/minisign"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/term"

	"github.com/dimplugd/dimplugd/sdk-go/dimplug"
	"github.com/dimplugd/dimplugd/sdk-go/errdefs"
	"github.com/dimplugd/dimplugd/sdk-go/host"
	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/termesc"
)

// maxHead bounds what install reads of a package before it shows what the
// plugin asks for (the header and plugin.toml come first).
const maxHead = 16 << 20

// packCmd builds a .dimplug package from a plugin directory.
func (c *cli) packCmd() *cobra.Command {
	var out, keyFile, passFile string
	cmd := &cobra.Command{
		Use:   "pack <dir>",
		Short: "Build a .dimplug package from a plugin directory, optionally signed",
		Long: `Build a .dimplug package (docs/packages.md): a zstd-compressed tar of the
plugin directory with a manifest of every file's SHA-256, signed with a
minisign secret key when --sign is given (make one with dimplugctl keygen).
The output is deterministic. Default output: <name>-<version>.dimplug.`,
		Args: exactArgs("<dir>"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var opt dimplug.PackOptions
			if keyFile != "" {
				k, err := c.readSecretKey(keyFile, passFile)
				if err != nil {
					return err
				}
				opt.Key = &k
			}
			m, err := manifest.Load(args[0])
			if err != nil {
				return errdefs.WithClass(fmt.Errorf("%s: %w", args[0], err), errdefs.ErrInvalid)
			}
			if out == "" {
				out = m.Name + "-" + m.Version + ".dimplug"
			}
			tmp, err := os.CreateTemp(filepath.Dir(out), ".pack-*")
			if err != nil {
				return err
			}
			defer os.Remove(tmp.Name())
			bw := bufio.NewWriter(tmp)
			pm, err := dimplug.Pack(bw, args[0], opt)
			if err == nil {
				err = bw.Flush()
			}
			if err == nil {
				err = tmp.Chmod(0o644)
			}
			if cerr := tmp.Close(); err == nil {
				err = cerr
			}
			if err == nil {
				err = os.Rename(tmp.Name(), out)
			}
			if err != nil {
				return errdefs.WithClass(err, errdefs.ErrInvalid)
			}
			sum, err := fileSHA256(out)
			if err != nil {
				return err
			}
			signed := ""
			if opt.Key != nil {
				signed = dimplug.KeyID(opt.Key.ID())
			}
			if c.json {
				return c.printJSON(map[string]any{"file": out, "name": pm.Name, "version": pm.Version, "files": len(pm.Files), "sha256": sum, "signed_by": signed})
			}
			fmt.Fprintf(c.out, "%s: %s %s, %d files, sha256 %s", out, pm.Name, pm.Version, len(pm.Files), sum)
			if signed != "" {
				fmt.Fprintf(c.out, ", signed by key %s", signed)
			} else {
				fmt.Fprint(c.out, ", unsigned")
			}
			fmt.Fprintln(c.out)
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "", "the package file to write (default <name>-<version>.dimplug)")
	cmd.Flags().StringVar(&keyFile, "sign", "", "sign with this minisign secret key file (dimplugctl keygen)")
	cmd.Flags().StringVar(&passFile, "password-file", "", "read the secret key's password from this file instead of asking")
	return cmd
}

func fileSHA256(name string) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// readSecretKey reads a minisign secret key, decrypting it with a password
// from passFile or the terminal when it is encrypted.
func (c *cli) readSecretKey(name, passFile string) (minisign.PrivateKey, error) {
	b, err := os.ReadFile(name)
	if err != nil {
		return minisign.PrivateKey{}, errdefs.WithClass(err, errdefs.ErrNotFound)
	}
	if !minisign.IsEncrypted(b) {
		var k minisign.PrivateKey
		if err := k.UnmarshalText(b); err != nil {
			return k, errdefs.WithClass(fmt.Errorf("%s: %w", name, err), errdefs.ErrInvalid)
		}
		return k, nil
	}
	pw, err := c.password(passFile, "Password for "+name+": ", false)
	if err != nil {
		return minisign.PrivateKey{}, err
	}
	k, err := minisign.DecryptKey(pw, b)
	if err != nil {
		return k, errdefs.WithClass(fmt.Errorf("%s: %w (wrong password?)", name, err), errdefs.ErrInvalid)
	}
	return k, nil
}

// password reads a password from passFile (its first line) or the
// terminal, asking twice when confirm.
func (c *cli) password(passFile, prompt string, confirm bool) (string, error) {
	if passFile != "" {
		b, err := os.ReadFile(passFile)
		if err != nil {
			return "", err
		}
		pw, _, _ := strings.Cut(string(b), "\n")
		if pw == "" {
			return "", usageError{fmt.Errorf("%s: empty password", passFile)}
		}
		return pw, nil
	}
	f, ok := c.in.(*os.File)
	if !ok || !isTerminal(c.in) {
		return "", usageError{errors.New("no terminal to ask for the password on: pass --password-file (or keygen --unencrypted)")}
	}
	fmt.Fprint(c.errw, prompt)
	pw, err := term.ReadPassword(int(f.Fd()))
	fmt.Fprintln(c.errw)
	if err != nil {
		return "", err
	}
	if confirm {
		fmt.Fprint(c.errw, "Again: ")
		again, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(c.errw)
		if err != nil {
			return "", err
		}
		if !bytes.Equal(pw, again) {
			return "", errors.New("the passwords differ")
		}
	}
	if len(pw) == 0 {
		return "", usageError{errors.New("empty password: pass --unencrypted to write the key without one")}
	}
	return string(pw), nil
}

// keygenCmd writes a minisign key pair.
func (c *cli) keygenCmd() *cobra.Command {
	var out, passFile string
	var unencrypted bool
	cmd := &cobra.Command{
		Use:   "keygen",
		Short: "Make a minisign key pair for signing packages",
		Long: `Make a minisign key pair: NAME.key (the secret key, mode 0600, encrypted
with a password asked for on the terminal or read from --password-file;
with --unencrypted stored in the clear, for CI and tests) and NAME.pub (the
public key operators trust with dimplugctl trust add). Existing files are
not overwritten. The files are minisign's own format: minisign -V works.`,
		Args: exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			if unencrypted && passFile != "" {
				return usageError{errors.New("--unencrypted and --password-file contradict each other")}
			}
			pub, priv, err := minisign.GenerateKey(rand.Reader)
			if err != nil {
				return err
			}
			var secret []byte
			if unencrypted {
				secret, err = priv.MarshalText()
			} else {
				var pw string
				if pw, err = c.password(passFile, "Password for the new secret key: ", true); err != nil {
					return err
				}
				secret, err = minisign.EncryptKey(pw, priv)
			}
			if err != nil {
				return err
			}
			pubText, _ := pub.MarshalText()
			if err := writeNew(out+".key", append(secret, '\n'), 0o600); err != nil {
				return err
			}
			if err := writeNew(out+".pub", append(pubText, '\n'), 0o644); err != nil {
				os.Remove(out + ".key")
				return err
			}
			id := dimplug.KeyID(pub.ID())
			if c.json {
				return c.printJSON(map[string]any{"key_id": id, "public_key": pub.String(), "secret_key_file": out + ".key", "public_key_file": out + ".pub", "encrypted": !unencrypted})
			}
			fmt.Fprintf(c.out, "key %s: secret key %s (%s), public key %s\n", id, out+".key", map[bool]string{true: "NOT encrypted", false: "encrypted"}[unencrypted], out+".pub")
			fmt.Fprintf(c.out, "operators trust it with: dimplugctl trust add %s --comment \"<who you are>\"\n", pub.String())
			return nil
		},
	}
	cmd.Flags().StringVarP(&out, "output", "o", "dimplug", "write NAME.key and NAME.pub")
	cmd.Flags().StringVar(&passFile, "password-file", "", "encrypt the secret key with the password in this file instead of asking")
	cmd.Flags().BoolVar(&unencrypted, "unencrypted", false, "store the secret key without a password (CI, tests)")
	return cmd
}

func writeNew(name string, b []byte, mode os.FileMode) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		if errors.Is(err, os.ErrExist) {
			return errdefs.WithClass(fmt.Errorf("%s exists; not overwriting it", name), errdefs.ErrAlreadyExists)
		}
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// trustCmd manages the daemon's trusted publisher keys.
func (c *cli) trustCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "trust",
		Short: "Manage the publisher keys the daemon trusts for signed packages",
	}
	var comment string
	add := &cobra.Command{
		Use:   "add <key|file>",
		Short: "Trust a publisher's minisign public key (the base64 key or a .pub file)",
		Args:  exactArgs("<key|file>"),
		RunE: func(cmd *cobra.Command, args []string) error {
			text := args[0]
			if b, err := os.ReadFile(text); err == nil {
				text = string(b)
			}
			return c.withControl(func(ctx context.Context, ctl *host.Control) error {
				k, err := ctl.TrustAdd(ctx, text, comment)
				if err != nil {
					return err
				}
				if c.json {
					return c.printJSON(k)
				}
				fmt.Fprintf(c.out, "trusted key %s %s\n", k.KeyID, termesc.String(k.Comment))
				return nil
			})
		},
	}
	add.Flags().StringVar(&comment, "comment", "", "who publishes with this key (shown at install)")
	ls := &cobra.Command{
		Use:   "ls",
		Short: "List the trusted keys",
		Args:  exactArgs(),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.withControl(func(ctx context.Context, ctl *host.Control) error {
				keys, err := ctl.TrustList(ctx)
				if err != nil {
					return err
				}
				if c.json {
					if keys == nil {
						keys = []host.TrustedKey{}
					}
					return c.printJSON(keys)
				}
				tw := tabwriter.NewWriter(c.out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "KEY ID\tADDED\tCOMMENT\tPUBLIC KEY")
				for _, k := range keys {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.KeyID, k.AddedAt.Format(time.DateOnly), termesc.String(k.Comment), k.PublicKey)
				}
				return tw.Flush()
			})
		},
	}
	rm := &cobra.Command{
		Use:   "rm <key-id>",
		Short: "Stop trusting a key",
		Args:  exactArgs("<key-id>"),
		RunE: func(cmd *cobra.Command, args []string) error {
			return c.withControl(func(ctx context.Context, ctl *host.Control) error {
				if err := ctl.TrustRemove(ctx, args[0]); err != nil {
					return err
				}
				if !c.json {
					fmt.Fprintf(c.out, "key %s is no longer trusted\n", strings.ToUpper(args[0]))
				}
				return nil
			})
		},
	}
	cmd.AddCommand(add, ls, rm)
	return cmd
}

// packageFlags are install's flags for packages.
type packageFlags struct {
	sha256        string
	allowUnsigned bool
}

func (pf *packageFlags) register(f *pflag.FlagSet) {
	f.StringVar(&pf.sha256, "sha256", "", "install only if the package's SHA-256 is this (hex); checked here and by the daemon")
	f.BoolVar(&pf.allowUnsigned, "allow-unsigned", false, "accept an unsigned package without asking (the daemon's policy may still refuse it)")
}

// isPackageSource reports whether install's argument is a package (a
// file, "-" for standard input, or an http(s) URL) rather than a plugin
// directory.
func isPackageSource(src string) bool {
	if src == "-" || strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://") {
		return true
	}
	fi, err := os.Stat(src)
	return err == nil && fi.Mode().IsRegular()
}

// openSource opens a package: a file, standard input, or a URL fetched
// here (with the operator's network identity and proxy settings; the
// daemon stays off the network). size is -1 when unknown.
func (c *cli) openSource(ctx context.Context, src string) (io.ReadCloser, int64, error) {
	switch {
	case src == "-":
		return io.NopCloser(c.in), -1, nil
	case strings.HasPrefix(src, "http://") || strings.HasPrefix(src, "https://"):
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, src, nil)
		if err != nil {
			return nil, 0, usageError{err}
		}
		req.Header.Set("User-Agent", "dimplugctl")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, 0, errdefs.WithClass(fmt.Errorf("fetch %s: %w", src, err), errdefs.ErrUnavailable)
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			class := errdefs.ErrUnavailable
			if resp.StatusCode == http.StatusNotFound {
				class = errdefs.ErrNotFound
			}
			return nil, 0, errdefs.WithClass(fmt.Errorf("fetch %s: %s", src, resp.Status), class)
		}
		return resp.Body, resp.ContentLength, nil
	}
	f, err := os.Open(src)
	if err != nil {
		return nil, 0, errdefs.WithClass(err, errdefs.ErrNotFound)
	}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, 0, err
	}
	return f, fi.Size(), nil
}

// installPackage installs a .dimplug (or a tar archive) from a file,
// standard input or a URL: it reads the package's head to show the
// publisher and the permissions and ask, then streams the whole package
// to the daemon (which verifies it again, authoritatively) with progress.
func (c *cli) installPackage(src string, pf packageFlags, opts host.InstallOptions, yes bool) error {
	var pin []byte
	if pf.sha256 != "" {
		p, err := hex.DecodeString(pf.sha256)
		if err != nil || len(p) != sha256.Size {
			return usageError{fmt.Errorf("--sha256 %q: want 64 hex digits", pf.sha256)}
		}
		pin = p
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	dctx, cancel := context.WithTimeout(ctx, c.timeout)
	ctl, err := c.dial(dctx)
	cancel()
	if err != nil {
		return err
	}
	defer ctl.Close()
	body, size, err := c.openSource(ctx, src)
	if err != nil {
		return err
	}
	defer body.Close()

	// The head (header and plugin.toml) is read through a recorder, so
	// that the bytes read are sent again, followed by the rest.
	rec := &recorder{r: body, max: maxHead}
	head, herr := dimplug.ReadHead(rec)
	if herr != nil && !errors.Is(herr, dimplug.ErrInvalid) {
		return fmt.Errorf("read the package from %s: %w", src, herr)
	}
	if herr != nil {
		return errdefs.WithClass(fmt.Errorf("%s: %w", src, herr), errdefs.ErrInvalid)
	}
	m, err := manifest.Parse(head.PluginTOML, "plugin.toml")
	if err != nil {
		return errdefs.WithClass(fmt.Errorf("%s: %w", src, err), errdefs.ErrInvalid)
	}
	if m.Name != head.Manifest.Name || m.Version != head.Manifest.Version {
		return errdefs.WithClass(fmt.Errorf("%s: the package says %s %s but its plugin.toml %s %s", src, head.Manifest.Name, head.Manifest.Version, m.Name, m.Version), errdefs.ErrInvalid)
	}
	allowUnsigned := pf.allowUnsigned
	if err := c.showPublisher(ctx, ctl, head.Header, m, yes, &allowUnsigned); err != nil {
		return err
	}
	var current *host.PluginStatus
	if opts.Replace {
		current, _ = ctl.Inspect(ctx, m.Name)
	}
	grant, err := c.approve(m, current, yes)
	if err != nil {
		return err
	}

	opts.Grant = grant
	// The transfer allocates a message per chunk: a soft memory limit
	// keeps the garbage collector ahead of it on a busy machine, so the
	// CLI's memory stays bounded whatever the package's size.
	debug.SetMemoryLimit(64 << 20)
	h := sha256.New()
	pr := &progress{c: c, total: size, start: time.Now(), tty: writerIsTerminal(c.errw)}
	stream := &sending{r: io.MultiReader(bytes.NewReader(rec.buf.Bytes()), body), h: h, pin: pin, p: pr}
	res, err := ctl.InstallStream(ctx, stream, host.StreamOptions{
		InstallOptions: opts,
		AllowUnsigned:  allowUnsigned,
		SHA256:         pin,
		Stage:          pr.stage,
	})
	pr.finish()
	if err != nil {
		return fmt.Errorf("install %s from %s: %w", m.Name, src, err)
	}
	if c.json {
		return c.printJSON(res)
	}
	by := "unsigned"
	if res.Publisher != nil {
		by = fmt.Sprintf("signed by %s (%s)", res.Publisher.KeyID, termesc.String(res.Publisher.Comment))
	}
	fmt.Fprintf(c.out, "installed %s %s (%s), %s, sha256 %x\n", res.Plugin.Name, res.Plugin.Version, enabledWord(res.Plugin.Enabled), by, res.SHA256)
	c.printKeptData(&res.Plugin)
	return nil
}

// printKeptData says when an install took over the data an earlier install
// of the name left behind (rm without --purge): the plugin starts with it.
func (c *cli) printKeptData(st *host.PluginStatus) {
	if st == nil || st.KeptData == nil {
		return
	}
	k := st.KeptData
	fmt.Fprintf(c.out, "%s starts with the data kept from an earlier install: %d keys, %d settings (%s); dimplugctl data export %s backs it up, rm --purge %s deletes it\n",
		st.Name, k.Keys, k.Settings, manifest.Size(int64(k.Bytes)), st.Name, st.Name)
}

// showPublisher says who signed the package (checked against the keys the
// daemon trusts; the daemon checks again) and, for an unsigned package,
// asks whether to install it anyway unless allowUnsigned or yes.
func (c *cli) showPublisher(ctx context.Context, ctl *host.Control, h *dimplug.Header, m *manifest.Manifest, yes bool, allowUnsigned *bool) error {
	if h.Signed() {
		keys, err := ctl.TrustList(ctx)
		if err != nil {
			return err
		}
		var pks []minisign.PublicKey
		byID := map[string]host.TrustedKey{}
		for _, k := range keys {
			var pk minisign.PublicKey
			if pk.UnmarshalText([]byte(k.PublicKey)) == nil {
				pks = append(pks, pk)
				byID[k.KeyID] = k
			}
		}
		pk, err := h.Verify(pks)
		if err != nil {
			return errdefs.WithClass(fmt.Errorf("%s %s: %w", m.Name, m.Version, err), errdefs.ErrInvalid)
		}
		k := byID[dimplug.KeyID(pk.ID())]
		fmt.Fprintf(c.errw, "%s %s is signed by %s (%s), a trusted publisher key.\n", m.Name, m.Version, k.KeyID, termesc.String(k.Comment))
		return nil
	}
	fmt.Fprintf(c.errw, "%s %s is NOT signed: nothing says who made it.\n", m.Name, m.Version)
	if *allowUnsigned || yes {
		*allowUnsigned = true
		return nil
	}
	if !isTerminal(c.in) {
		return usageError{errors.New("refusing an unsigned package without a terminal to ask on: pass --allow-unsigned (or --yes) to install it anyway")}
	}
	fmt.Fprint(c.errw, "Install it anyway? [y/N] ")
	line, _ := bufio.NewReader(c.in).ReadString('\n')
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		*allowUnsigned = true
		return nil
	}
	return errors.New("unsigned package not accepted; nothing was installed")
}

// recorder keeps what is read through it, up to max bytes.
type recorder struct {
	r   io.Reader
	buf bytes.Buffer
	max int
}

func (r *recorder) Read(p []byte) (int, error) {
	if r.buf.Len() >= r.max {
		return 0, fmt.Errorf("%w: no plugin.toml within the first %d bytes", dimplug.ErrInvalid, r.max)
	}
	if len(p) > r.max-r.buf.Len() {
		p = p[:r.max-r.buf.Len()]
	}
	n, err := r.r.Read(p)
	r.buf.Write(p[:n])
	return n, err
}

// sending is the package as sent: it hashes the bytes and checks the pin
// at the end, so that a mismatch aborts the transfer before the daemon is
// asked to install, and reports progress.
type sending struct {
	r   io.Reader
	h   hash.Hash
	pin []byte
	p   *progress
}

func (s *sending) Read(b []byte) (int, error) {
	n, err := s.r.Read(b)
	s.h.Write(b[:n])
	s.p.add(int64(n))
	if err == io.EOF && len(s.pin) > 0 {
		if sum := s.h.Sum(nil); !bytes.Equal(sum, s.pin) {
			return n, fmt.Errorf("%w: the package's SHA-256 is %x, not the pinned %x", errdefs.ErrInvalid, sum, s.pin)
		}
	}
	return n, err
}

// progress shows the transfer on a terminal (bytes, rate, ETA, redrawn at
// most ten times a second), or as JSON lines with --json; nothing
// otherwise.
type progress struct {
	c     *cli
	total int64 // -1: unknown
	start time.Time
	tty   bool

	mu    sync.Mutex
	done  int64
	last  time.Time
	drawn bool
}

func (p *progress) add(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.done += n
	if now := time.Now(); now.Sub(p.last) >= 100*time.Millisecond || (p.total > 0 && p.done == p.total) {
		p.last = now
		p.showLocked("sending", p.done, p.total)
	}
}

func (p *progress) stage(stage string, done, total uint64) {
	if stage == "receiving" {
		return // the daemon's view of what add shows
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.showLocked(stage, int64(done), int64(total))
}

func (p *progress) showLocked(stage string, done, total int64) {
	elapsed := time.Since(p.start)
	rate := float64(done) / max(elapsed.Seconds(), 1e-3)
	switch {
	case p.c.json:
		ev := map[string]any{"event": "progress", "stage": stage, "bytes": done, "elapsed_ms": elapsed.Milliseconds(), "bytes_per_second": int64(rate)}
		if total > 0 {
			ev["total"] = total
		}
		b, _ := json.Marshal(ev)
		fmt.Fprintf(p.c.errw, "%s\n", b)
	case p.tty && done == 0 && total == 0:
		// A stage of the plugin's start: nothing to count.
		fmt.Fprintf(p.c.errw, "\r\033[K%s…", stage)
		p.drawn = true
	case p.tty:
		line := fmt.Sprintf("%s %s", stage, manifest.Size(done))
		if total > 0 {
			line += fmt.Sprintf(" / %s (%d%%)", manifest.Size(total), done*100/total)
		}
		if stage == "sending" {
			line += fmt.Sprintf("  %s/s", manifest.Size(int64(rate)))
			if total > 0 && rate > 0 && done < total {
				line += fmt.Sprintf("  ETA %s", time.Duration(float64(total-done)/rate*float64(time.Second)).Round(time.Second))
			}
		}
		fmt.Fprintf(p.c.errw, "\r\033[K%s", line)
		p.drawn = true
	}
}

func (p *progress) finish() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.drawn {
		fmt.Fprintln(p.c.errw)
	}
}

// writerIsTerminal reports whether w is a terminal: the progress bar is
// drawn only there.
func writerIsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// printProvenance is inspect's publisher line: who signed the installed
// package, or that it was not signed.
func (c *cli) printProvenance(st *host.PluginStatus) {
	switch {
	case st.Publisher != nil:
		fmt.Fprintf(c.out, "Publisher:   %s (%s)\n", st.Publisher.KeyID, termesc.String(st.Publisher.Comment))
	case st.SHA256 != "":
		fmt.Fprintf(c.out, "Publisher:   none (unsigned package)\n")
	default:
		fmt.Fprintf(c.out, "Publisher:   none (installed from a directory)\n")
	}
	if st.SHA256 != "" {
		fmt.Fprintf(c.out, "Package:     sha256 %s\n", st.SHA256)
	}
}
