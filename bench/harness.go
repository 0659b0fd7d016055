package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/dimplugd/dimplugd/sandbox/container"
)

// Options configure a run of the harness.
type Options struct {
	Quick    bool      // short runs
	Only     []string  // sections to run; all when empty
	Out      io.Writer // the tables
	Progress io.Writer // what the harness is doing; nil for silence
	// NoRust leaves out the Rust host's row ("not measured"), sparing a
	// cargo release build of minutes on a cold cache (the smoke test).
	NoRust bool
	// JSON, when set, receives the results as JSON once every section
	// has run (see writeJSON): what main's -json writes to its file.
	JSON io.Writer
}

// section is one part of the benchmark.
type section struct {
	name  string
	needs []string // helper binaries, keys of helpers
	rust  bool     // needs the Rust host's bench-host (see rusthost.go)
	run   func(ctx context.Context, e *env) ([]*Table, error)
}

func sections() []section {
	return []section{
		{"spawn", []string{"fdecho", "media-badge", "dimplugd", "goplug"}, false, runSpawn},
		{"hooks", []string{"rawecho", "goplug", "badge", "dimplugd"}, true, runHooks},
		{"streams", []string{"framesink", "passthrough", "dimplugd"}, false, runStreams},
		{"callgrind", []string{"badge", "dimplugd"}, false, runCallgrind},
		{"load", append([]string{"dimplugd", "dimhost"}, loadPlugins...), false, runLoad},
	}
}

func sectionNames() []string {
	var out []string
	for _, s := range sections() {
		out = append(out, s.name)
	}
	return out
}

// env is what a section gets: the options, the built helpers and a
// scratch directory.
type env struct {
	opts  Options
	bins  map[string]string // helper name → binary
	dir   string            // scratch directory, removed at the end
	ctErr error             // why the container runtime cannot run here, or nil
	// benchRoot is this module's directory (bench/), repoRoot the
	// dimplugd module's (the checkout's root), as go list -m finds them.
	benchRoot, repoRoot string
	// rustHost is the Rust host's bench-host binary, or "" with rustErr
	// saying why it could not be built (its row then says so).
	rustHost string
	rustErr  error
}

// quick picks the quick or the full value.
func (e *env) quick(q, full int) int {
	if e.opts.Quick {
		return q
	}
	return full
}

func (e *env) quickDur(q, full time.Duration) time.Duration {
	if e.opts.Quick {
		return q
	}
	return full
}

func (e *env) progress(format string, args ...any) {
	if e.opts.Progress != nil {
		fmt.Fprintf(e.opts.Progress, "bench: "+format+"\n", args...)
	}
}

// Run runs the selected sections, printing each section's tables to
// opts.Out as soon as it is done, and returns the tables by section. A
// failed section does not stop the others; the error joins every failure.
func Run(ctx context.Context, opts Options) (map[string][]*Table, error) {
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	var todo []section
	for _, s := range sections() {
		if len(opts.Only) == 0 || slices.Contains(opts.Only, s.name) {
			todo = append(todo, s)
		}
	}
	for _, name := range opts.Only {
		if !slices.Contains(sectionNames(), name) {
			return nil, fmt.Errorf("unknown section %q (have %s)", name, strings.Join(sectionNames(), ", "))
		}
	}

	started := time.Now()
	dir, err := os.MkdirTemp("", "dimplugd-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	// The sandboxes' mapped uids must pass through the scratch directory
	// to reach the plugin binaries.
	if err := os.Chmod(dir, 0o711); err != nil {
		return nil, err
	}
	e := &env{opts: opts, dir: dir, ctErr: container.Available()}
	if e.ctErr != nil {
		e.progress("%v: sandboxed rows are skipped", e.ctErr)
	}
	if e.benchRoot, e.repoRoot, err = moduleRoots(); err != nil {
		return nil, err
	}
	var need []string
	rust := false
	for _, s := range todo {
		for _, n := range s.needs {
			if !slices.Contains(need, n) {
				need = append(need, n)
			}
		}
		rust = rust || s.rust
	}
	start := time.Now()
	rustDone := make(chan struct{})
	go func() {
		defer close(rustDone)
		if !rust {
			return
		}
		if e.opts.NoRust {
			e.rustErr = errors.New("left out (Options.NoRust)")
			return
		}
		t0 := time.Now()
		e.rustHost, e.rustErr = buildRustHost(ctx, e.repoRoot)
		if e.rustErr != nil {
			e.progress("the Rust host's row is not measured: %v", e.rustErr)
		} else {
			e.progress("built the Rust host's bench-host in %s", time.Since(t0).Round(time.Millisecond))
		}
	}()
	e.bins, err = buildHelpers(ctx, e.benchRoot, e.repoRoot, filepath.Join(dir, "bin"), need)
	<-rustDone
	if err != nil {
		return nil, err
	}
	e.progress("built %s in %s", strings.Join(need, ", "), time.Since(start).Round(time.Millisecond))

	mode := ""
	if opts.Quick {
		mode += ", QUICK MODE (rough numbers)"
	}
	if raceEnabled {
		mode += ", RACE DETECTOR ON (numbers not comparable)"
	}
	load := loadAvg()
	fmt.Fprintf(opts.Out, "dimplugd bench — %s, %s/%s, %d CPUs, load %s%s\n\n", runtime.Version(), runtime.GOOS, runtime.GOARCH,
		runtime.NumCPU(), load, mode)
	info := runInfo{Time: started.UTC().Format(time.RFC3339), Go: runtime.Version(), GOOS: runtime.GOOS, GOARCH: runtime.GOARCH,
		GOMAXPROCS: runtime.GOMAXPROCS(0), CPUs: runtime.NumCPU(), Load: load, Mode: "full", Quick: opts.Quick, Race: raceEnabled}
	if opts.Quick {
		info.Mode = "quick"
	}
	info.GitCommit, info.GitDirty = gitState(e.repoRoot)
	out := map[string][]*Table{}
	var ordered []sectionTables
	var errs []error
	for _, s := range todo {
		if ctx.Err() != nil {
			errs = append(errs, ctx.Err())
			break
		}
		start := time.Now()
		e.progress("section %s", s.name)
		tables, err := s.run(ctx, e)
		for _, t := range tables {
			t.Print(opts.Out)
		}
		out[s.name] = tables
		ordered = append(ordered, sectionTables{s.name, tables})
		info.Sections = append(info.Sections, s.name)
		if err != nil {
			errs = append(errs, fmt.Errorf("section %s: %w", s.name, err))
			fmt.Fprintf(opts.Out, "section %s FAILED: %v\n\n", s.name, err)
			if info.Errors == nil {
				info.Errors = map[string]string{}
			}
			info.Errors[s.name] = err.Error()
		}
		e.progress("section %s took %s", s.name, time.Since(start).Round(time.Millisecond))
	}
	if opts.JSON != nil {
		if err := writeJSON(opts.JSON, info, ordered); err != nil {
			errs = append(errs, fmt.Errorf("writing the JSON results: %w", err))
		}
	}
	return out, errors.Join(errs...)
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// --- building the helpers ---

// helper is a binary the harness builds.
type helper struct {
	pkg    string // relative to its module's directory
	repo   bool   // in the dimplugd module (the checkout's root), not this one
	static bool   // CGO_ENABLED=0, -trimpath: how plugins are built
}

var helpers = map[string]helper{
	"fdecho":            {"./plugins/fdecho", false, true},
	"rawecho":           {"./plugins/rawecho", false, true},
	"goplug":            {"./plugins/goplug", false, true},
	"badge":             {"./plugins/badge", false, true},
	"framesink":         {"./plugins/framesink", false, true},
	"passthrough":       {"./plugins/passthrough", false, true},
	"media-badge":       {"./examples/plugins/media-badge", true, true},
	"dashboard-rows":    {"./examples/plugins/dashboard-rows", true, true},
	"parental-controls": {"./examples/plugins/parental-controls", true, true},
	"scrobbler":         {"./examples/plugins/scrobbler", true, true},
	"dimhost":           {"./examples/dimhost", true, true},
	"dimplugd":          {"./cmd/dimplugd", true, false},
}

// moduleRoots finds this module's directory and the dimplugd module's
// (which go.mod replaces with the checkout's root).
func moduleRoots() (bench, repo string, err error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Path}} {{.Dir}}", benchModule, repoModule).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%w: %s", err, bytes.TrimSpace(ee.Stderr))
		}
		return "", "", fmt.Errorf("go list -m (run the benchmark inside the bench module: cd bench): %w", err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		path, dir, _ := strings.Cut(line, " ")
		switch path {
		case benchModule:
			bench = dir
		case repoModule:
			repo = dir
		}
	}
	if bench == "" || repo == "" {
		return "", "", fmt.Errorf("go list -m found no directory for %s or %s: run the benchmark inside the bench module (cd bench)", benchModule, repoModule)
	}
	return bench, repo, nil
}

const (
	benchModule = "github.com/dimplugd/dimplugd/bench"
	repoModule  = "github.com/dimplugd/dimplugd"
)

// buildHelpers builds the named helpers into dir, each in its module (this
// one, under benchRoot, or dimplugd's, under repoRoot): the static ones in
// one go build per module, the daemon (cgo, -tags seccomp, like `make
// build`) in another, all at the same time.
func buildHelpers(ctx context.Context, benchRoot, repoRoot, dir string, names []string) (map[string]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	// A build: its module's directory and whether it is static.
	type build struct {
		root   string
		static bool
	}
	pkgs := map[build][]string{}
	var order []build
	bins := map[string]string{}
	for _, n := range names {
		h, ok := helpers[n]
		if !ok {
			return nil, fmt.Errorf("unknown helper %q", n)
		}
		b := build{benchRoot, h.static}
		if h.repo {
			b.root = repoRoot
		}
		if _, ok := pkgs[b]; !ok {
			order = append(order, b)
		}
		pkgs[b] = append(pkgs[b], h.pkg)
		bins[n] = filepath.Join(dir, filepath.Base(h.pkg))
	}
	run := func(b build) error {
		args := []string{"build", "-o", dir + "/"}
		env := []string{"CGO_ENABLED=1"}
		if b.static {
			args, env = append(args, "-trimpath"), []string{"CGO_ENABLED=0"}
		} else {
			args = append(args, "-tags", "seccomp")
		}
		args = append(args, pkgs[b]...)
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Dir = b.root
		cmd.Env = append(os.Environ(), env...)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s (in %s): %w\n%s", strings.Join(args, " "), b.root, err, out)
		}
		return nil
	}
	var wg sync.WaitGroup
	errs := make([]error, len(order))
	for i, b := range order {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = run(b)
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return bins, nil
}

// --- statistics ---

// pct is the p-th percentile (0 < p ≤ 1) of sorted, by nearest rank.
func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// ratio is a/b, NaN when either is missing.
func ratio(a, b float64) float64 {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return math.NaN()
	}
	return a / b
}

// --- tables ---

// Table is one printed result table.
type Table struct {
	Title string
	Label string // heading of the row-name column
	Cols  []Col
	Rows  []Row
	Notes []string
}

// Col is a value column.
type Col struct {
	Name   string
	Format string // fmt verb for the value, e.g. "%.1f"
	// Signed columns may hold zero or negative values (a difference of
	// two measurements); the others must be positive when measured.
	Signed bool
	// Optional columns may be missing (NaN) in a measured row: a ratio
	// to a baseline that could not run.
	Optional bool
	Unit     string // of the values, for the JSON results ("" for a ratio column: see Ratio)
	// Ratio, when set, makes every value of this column a ratio to a
	// baseline (a row's Ratios override it); see Ratio.
	Ratio *Ratio
}

// Row is one table row. NaN values print as "–". A row whose Skip is set
// was not measured, and says why.
type Row struct {
	Name    string
	Vals    []float64
	Skip    string
	Formats []string // per-value formats overriding the columns'; optional
	// Optional rows need tools the rest of the bench does not (cargo and
	// the vendored crates for the Rust host): when Skip is set they print
	// "not measured", and the smoke test accepts that even in CI.
	Optional bool
	// Ratios, by column, say which values are ratios to a baseline and
	// how they are computed (nil or short: the column's Ratio, if any).
	// The printed value is then computed from them; see Ratio.
	Ratios []*Ratio
}

// add appends a row.
func (t *Table) add(name string, vals ...float64) {
	t.Rows = append(t.Rows, Row{Name: name, Vals: vals})
}

// skip appends a row that could not be measured.
func (t *Table) skip(name, why string) { t.Rows = append(t.Rows, Row{Name: name, Skip: why}) }

// notMeasured appends an optional row that could not be measured.
func (t *Table) notMeasured(name, why string) {
	t.Rows = append(t.Rows, Row{Name: name, Skip: why, Optional: true})
}

// note appends a line printed under the table.
func (t *Table) note(format string, args ...any) {
	t.Notes = append(t.Notes, fmt.Sprintf(format, args...))
}

// Print writes t as an aligned Markdown table with its notes.
func (t *Table) Print(w io.Writer) {
	t.resolveRatios()
	cells := [][]string{append([]string{t.Label}, colNames(t.Cols)...)}
	for _, r := range t.Rows {
		line := []string{r.Name}
		for i, c := range t.Cols {
			switch {
			case r.Skip != "":
				if i == 0 && r.Optional {
					line = append(line, "not measured: "+r.Skip)
				} else if i == 0 {
					line = append(line, "skipped: "+r.Skip)
				} else {
					line = append(line, "")
				}
			case i >= len(r.Vals) || math.IsNaN(r.Vals[i]):
				line = append(line, "–")
			case i < len(r.Formats) && r.Formats[i] != "":
				line = append(line, fmtNum(r.Formats[i], r.Vals[i]))
			default:
				line = append(line, fmtNum(c.Format, r.Vals[i]))
			}
		}
		cells = append(cells, line)
	}
	width := make([]int, len(cells[0]))
	for _, line := range cells {
		for i, c := range line {
			if r := runeLen(c); r > width[i] && !(i == 1 && (strings.HasPrefix(c, "skipped: ") || strings.HasPrefix(c, "not measured: "))) {
				width[i] = r
			}
		}
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "### %s\n\n", t.Title)
	for n, line := range cells {
		b.WriteString("|")
		for i, c := range line {
			pad := strings.Repeat(" ", max(0, width[i]-runeLen(c)))
			if i == 0 {
				b.WriteString(" " + c + pad + " |")
			} else {
				b.WriteString(" " + pad + c + " |")
			}
		}
		b.WriteString("\n")
		if n == 0 {
			b.WriteString("|")
			for i := range line {
				if i == 0 {
					b.WriteString(strings.Repeat("-", width[i]+2) + "|")
				} else {
					b.WriteString(strings.Repeat("-", width[i]+1) + ":|")
				}
			}
			b.WriteString("\n")
		}
	}
	for _, n := range t.Notes {
		b.WriteString("\n" + n)
	}
	b.WriteString("\n\n")
	w.Write(b.Bytes())
}

func colNames(cs []Col) []string {
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.Name
	}
	return out
}

func runeLen(s string) int { return len([]rune(s)) }

// fmtNum formats v with format, grouping thousands for "%.0f".
func fmtNum(format string, v float64) string {
	s := fmt.Sprintf(format, v)
	if format != "%.0f" || math.Abs(v) < 10000 {
		return s
	}
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if neg {
		return "-" + string(out)
	}
	return string(out)
}

// --- small helpers ---

// copyFile copies src to dst with mode.
func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Chmod(dst, mode)
}

// vmRSS reads the resident set size of pid, in bytes.
func vmRSS(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(rest)
			if len(f) == 2 && f[1] == "kB" {
				kb, err := strconv.ParseInt(f[0], 10, 64)
				return kb << 10, err
			}
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// removeCgroups removes the (empty) cgroup parent rel from every hierarchy.
func removeCgroups(rel string) {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", rel))
	if d := filepath.Join("/sys/fs/cgroup", rel); isDir(d) {
		dirs = append(dirs, d) // cgroup v2
	}
	for _, d := range dirs {
		_ = os.Remove(d)
	}
}

func isDir(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.IsDir()
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// Tail returns the last n bytes written.
func (s *syncBuffer) Tail(n int) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.b.Bytes()
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
