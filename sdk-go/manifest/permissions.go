package manifest

import (
	"errors"
	"fmt"
	"math"
	"net"
	"path/filepath"
	"strconv"
	"strings"
)

// Minimums for permissions; a zero field means "not asked for" and is not
// checked.
const (
	MinMemory    = 16 * MiB
	MinTmp       = 1 * MiB
	MinPids      = 16
	MinCPU       = 0.01
	MinOpenFiles = 16
)

// Maximums for permissions that hold on any machine. Limits that depend on
// the machine (more memory than it has) are checked by the daemon at
// install.
const (
	// MaxPids is Linux's PID_MAX_LIMIT: no system runs more tasks.
	MaxPids = 1 << 22
	// MaxCPU is a CPU quota no machine this runs on can use.
	MaxCPU = 1024
	// MaxOpenFiles is Linux's default fs.nr_open, the most
	// RLIMIT_NOFILE may be set to unless the host raised it.
	MaxOpenFiles = 1 << 20
)

// SandboxPaths are the directories every sandbox mounts for itself; a
// granted path cannot be in them.
var SandboxPaths = []string{"/proc", "/sys", "/dev", "/tmp"}

// Permissions is what a plugin asks for in its manifest, and the same shape
// is what an operator grants. A zero field means "not asked for": the
// sandbox applies its default for resource limits, and grants no paths or
// hosts.
type Permissions struct {
	// Memory limits memory (and swap) use.
	Memory Size `json:"memory,omitempty" toml:"memory,omitempty"`
	// Tmp is the size of the plugin's private writable /tmp.
	Tmp Size `json:"tmp,omitempty" toml:"tmp,omitempty"`
	// Pids limits processes and threads, the Go runtime's included.
	Pids int64 `json:"pids,omitempty" toml:"pids,omitempty"`
	// CPU is a CPU quota in cores, e.g. 0.5.
	CPU float64 `json:"cpu,omitempty" toml:"cpu,omitempty"`
	// OpenFiles limits open file descriptors.
	OpenFiles uint64 `json:"open_files,omitempty" toml:"open_files,omitempty"`
	// ReadOnlyPaths are absolute, clean host paths the plugin may read
	// (directories include everything below them).
	ReadOnlyPaths []string `json:"read_only_paths,omitempty" toml:"read_only_paths,omitempty"`
	// OutboundHosts are "host:port" destinations the plugin may reach
	// through the daemon's fetch capability. A host of the form
	// "*.example.com" matches every subdomain of example.com at any depth,
	// but not example.com itself.
	OutboundHosts []string `json:"outbound_hosts,omitempty" toml:"outbound_hosts,omitempty"`
}

// IsZero reports whether p asks for nothing.
func (p Permissions) IsZero() bool {
	return p.Memory == 0 && p.Tmp == 0 && p.Pids == 0 && p.CPU == 0 && p.OpenFiles == 0 &&
		len(p.ReadOnlyPaths) == 0 && len(p.OutboundHosts) == 0
}

// Validate checks p as a grant or a request, reporting every problem, one
// per line, each naming the field ("memory: ...", "outbound_hosts[1]: ...").
// Zero fields are not checked.
func (p Permissions) Validate() error {
	var errs []error
	p.check(func(field, problem string) {
		errs = append(errs, errors.New(field+": "+problem))
	})
	return errors.Join(errs...)
}

// check reports each problem of p to add, with field names relative to the
// permissions table.
func (p Permissions) check(add func(field, problem string)) {
	if p.Memory != 0 {
		if msg := minSizeProblem(p.Memory, MinMemory); msg != "" {
			add("memory", msg)
		}
	}
	if p.Tmp != 0 {
		if msg := minSizeProblem(p.Tmp, MinTmp); msg != "" {
			add("tmp", msg)
		}
	}
	if p.Pids != 0 {
		if msg := pidsProblem(p.Pids); msg != "" {
			add("pids", msg)
		}
	}
	if p.CPU != 0 {
		if msg := cpuProblem(p.CPU); msg != "" {
			add("cpu", msg)
		}
	}
	if p.OpenFiles != 0 {
		if msg := openFilesProblem(min(p.OpenFiles, math.MaxInt64)); msg != "" {
			add("open_files", msg)
		}
	}
	p.checkLists(add)
}

// checkLists checks the path and host lists.
func (p Permissions) checkLists(add func(field, problem string)) {
	seen := make(map[string]int)
	var good []int // indexes of the valid paths so far
	for i, path := range p.ReadOnlyPaths {
		field := fmt.Sprintf("read_only_paths[%d]", i)
		if msg := readPathProblem(path); msg != "" {
			add(field, msg)
		} else if j, dup := seen[path]; dup {
			add(field, fmt.Sprintf("%q repeats read_only_paths[%d]", path, j))
		} else {
			seen[path] = i
			// The sandbox mounts each path at the same place: one inside
			// another would need a mount point in the granted directory.
			nested := false
			for _, j := range good {
				o := p.ReadOnlyPaths[j]
				switch {
				case pathCovers(o, path):
					add(field, fmt.Sprintf("%q is inside read_only_paths[%d] (%q), which already grants it", path, j, o))
				case pathCovers(path, o):
					add(field, fmt.Sprintf("%q contains read_only_paths[%d] (%q); grant only %q", path, j, o, path))
				default:
					continue
				}
				nested = true
				break
			}
			if !nested {
				good = append(good, i)
			}
		}
	}
	clear(seen)
	for i, host := range p.OutboundHosts {
		field := fmt.Sprintf("outbound_hosts[%d]", i)
		if msg := hostProblem(host); msg != "" {
			add(field, msg)
		} else if j, dup := seen[host]; dup {
			add(field, fmt.Sprintf("%q repeats outbound_hosts[%d]", host, j))
		} else {
			seen[host] = i
		}
	}
}

func minSizeProblem(s, minimum Size) string {
	if s < minimum {
		return fmt.Sprintf("%s is below the minimum of %s", s, minimum)
	}
	return ""
}

func cpuProblem(c float64) string {
	switch {
	case math.IsNaN(c) || math.IsInf(c, 0):
		return fmt.Sprintf("%v is not a number of cores", c)
	case c < MinCPU:
		return fmt.Sprintf("%g is below the minimum of %g cores", c, MinCPU)
	case c > MaxCPU:
		return fmt.Sprintf("%g is above the maximum of %d cores", c, MaxCPU)
	}
	return ""
}

func pidsProblem(n int64) string {
	switch {
	case n < MinPids:
		return fmt.Sprintf("%d is below the minimum of %d", n, MinPids)
	case n > MaxPids:
		return fmt.Sprintf("%d is above the maximum of %d (Linux's limit on tasks)", n, MaxPids)
	}
	return ""
}

func openFilesProblem(n uint64) string {
	switch {
	case n < MinOpenFiles:
		return fmt.Sprintf("%d is below the minimum of %d", n, MinOpenFiles)
	case n > MaxOpenFiles:
		return fmt.Sprintf("%d is above the maximum of %d (Linux's default fs.nr_open)", n, MaxOpenFiles)
	}
	return ""
}

func readPathProblem(p string) string {
	switch {
	case !filepath.IsAbs(p):
		return fmt.Sprintf("%q is not an absolute path", p)
	case strings.ContainsRune(p, 0):
		return fmt.Sprintf("%q contains a NUL byte", p)
	case filepath.Clean(p) != p:
		return fmt.Sprintf("%q is not clean (write %q)", p, filepath.Clean(p))
	case p == "/":
		return `"/" would expose the whole host filesystem; name the directories the plugin needs`
	}
	for _, sp := range SandboxPaths {
		if pathCovers(sp, p) {
			return fmt.Sprintf("%q: the sandbox mounts its own %s; a plugin cannot be granted paths in /proc, /sys, /dev or /tmp", p, sp)
		}
	}
	return ""
}

// hostProblem checks a "host:port" or "*.domain:port" entry.
func hostProblem(hp string) string {
	if i := strings.Index(hp, "://"); i >= 0 {
		return fmt.Sprintf("%q has a scheme; write host:port, e.g. %q", hp, hp[i+3:])
	}
	host, port, err := net.SplitHostPort(hp)
	if err != nil {
		if strings.Contains(err.Error(), "missing port") {
			return fmt.Sprintf("%q has no port; write host:port, e.g. %q", hp, hp+":443")
		}
		return fmt.Sprintf("%q is not host:port", hp)
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 || port[0] == '0' {
		return fmt.Sprintf("%q: port %q is not a number from 1 to 65535", hp, port)
	}
	if net.ParseIP(host) != nil {
		if strings.Contains(host, ":") && !strings.HasPrefix(hp, "[") {
			return fmt.Sprintf("%q: write IPv6 addresses in brackets, e.g. \"[::1]:443\"", hp)
		}
		return ""
	}
	name, wildcard := strings.CutPrefix(host, "*.")
	if !dnsName(name) {
		if strings.ToLower(host) != host && dnsName(strings.ToLower(name)) {
			return fmt.Sprintf("%q: write the host name in lowercase", hp)
		}
		return fmt.Sprintf("%q: %q is not a valid host name", hp, host)
	}
	if wildcard && !strings.Contains(name, ".") {
		return fmt.Sprintf("%q: a wildcard must cover a domain with at least two labels, e.g. \"*.example.com\"", hp)
	}
	return ""
}

// dnsName reports whether s is a lowercase DNS name (LDH labels, no
// trailing dot).
func dnsName(s string) bool {
	if s == "" || len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	return true
}

// AllowsHost reports whether hostport ("host:port", as a fetch would
// dial it) is allowed by p.OutboundHosts. Host names compare
// case-insensitively.
func (p Permissions) AllowsHost(hostport string) bool {
	hostport = strings.ToLower(hostport)
	if strings.HasPrefix(hostport, "*") || hostProblem(hostport) != "" {
		return false
	}
	for _, pattern := range p.OutboundHosts {
		if hostCovers(pattern, hostport) {
			return true
		}
	}
	return false
}

// hostCovers reports whether the granted pattern g allows everything entry h
// allows; both are "host:port", either may be a "*." wildcard.
func hostCovers(g, h string) bool {
	if g == h {
		return true
	}
	gh, gp, err1 := net.SplitHostPort(g)
	hh, hp, err2 := net.SplitHostPort(h)
	if err1 != nil || err2 != nil || gp != hp {
		return false
	}
	suffix, ok := strings.CutPrefix(gh, "*")
	if !ok {
		return gh == hh
	}
	// suffix is ".example.com"; h may be "a.example.com" or a narrower
	// wildcard "*.a.example.com" (trimmed to ".a.example.com").
	return strings.HasSuffix(strings.TrimPrefix(hh, "*"), suffix)
}

// pathCovers reports whether granted path g includes path p.
func pathCovers(g, p string) bool {
	if g == p {
		return true
	}
	return strings.HasPrefix(p, g) && (strings.HasSuffix(g, "/") || p[len(g)] == '/')
}

// Describe returns plain-English lines for an operator prompt, one per
// thing p asks for, e.g. "use up to 64 MiB of memory" or "connect to
// api.opensubtitles.com:443 through the daemon". It returns
// ["no special permissions"] when p asks for nothing.
func (p Permissions) Describe() []string {
	var lines []string
	if p.Memory != 0 {
		lines = append(lines, describeMemory(p.Memory))
	}
	if p.Tmp != 0 {
		lines = append(lines, describeTmp(p.Tmp))
	}
	if p.Pids != 0 {
		lines = append(lines, describePids(p.Pids))
	}
	if p.CPU != 0 {
		lines = append(lines, describeCPU(p.CPU))
	}
	if p.OpenFiles != 0 {
		lines = append(lines, describeOpenFiles(p.OpenFiles))
	}
	for _, path := range p.ReadOnlyPaths {
		lines = append(lines, describePath(path))
	}
	for _, host := range p.OutboundHosts {
		lines = append(lines, describeHost(host))
	}
	if len(lines) == 0 {
		return []string{"no special permissions"}
	}
	return lines
}

func describeMemory(s Size) string { return fmt.Sprintf("use up to %s of memory", s) }
func describeTmp(s Size) string    { return fmt.Sprintf("write up to %s to a private /tmp", s) }
func describePids(n int64) string  { return fmt.Sprintf("run up to %d processes or threads", n) }
func describeOpenFiles(n uint64) string {
	return fmt.Sprintf("keep up to %d files open", n)
}
func describePath(p string) string { return fmt.Sprintf("read files under %s (read-only)", p) }

func describeCPU(c float64) string {
	if c == 1 {
		return "use up to 1 CPU core"
	}
	return fmt.Sprintf("use up to %g CPU cores", c)
}

func describeHost(h string) string {
	if strings.HasPrefix(h, "*.") {
		return fmt.Sprintf("connect to any host matching %s through the daemon", h)
	}
	return fmt.Sprintf("connect to %s through the daemon", h)
}

// Exceeds lists, in Describe's words, what p asks for beyond granted; it
// returns nil when granted covers p. The daemon uses it to decide whether an
// upgrade needs the operator's approval again. A limit granted as zero (the
// runtime default) does not cover an explicit request, since the default is
// not known here; a granted path covers the paths below it, and a granted
// wildcard host covers the hosts and narrower wildcards it matches.
func (p Permissions) Exceeds(granted Permissions) []string {
	var out []string
	was := func(line string, g fmt.Stringer, zero bool) string {
		if zero {
			return line + " (granted: the default)"
		}
		return fmt.Sprintf("%s (granted %s)", line, g)
	}
	if p.Memory > 0 && (granted.Memory == 0 || p.Memory > granted.Memory) {
		out = append(out, was(describeMemory(p.Memory), granted.Memory, granted.Memory == 0))
	}
	if p.Tmp > 0 && (granted.Tmp == 0 || p.Tmp > granted.Tmp) {
		out = append(out, was(describeTmp(p.Tmp), granted.Tmp, granted.Tmp == 0))
	}
	if p.Pids > 0 && (granted.Pids == 0 || p.Pids > granted.Pids) {
		out = append(out, was(describePids(p.Pids), count(granted.Pids), granted.Pids == 0))
	}
	if p.CPU > 0 && (granted.CPU == 0 || p.CPU > granted.CPU) {
		out = append(out, was(describeCPU(p.CPU), cores(granted.CPU), granted.CPU == 0))
	}
	if p.OpenFiles > 0 && (granted.OpenFiles == 0 || p.OpenFiles > granted.OpenFiles) {
		out = append(out, was(describeOpenFiles(p.OpenFiles), count(granted.OpenFiles), granted.OpenFiles == 0))
	}
next:
	for _, path := range p.ReadOnlyPaths {
		for _, g := range granted.ReadOnlyPaths {
			if pathCovers(g, path) {
				continue next
			}
		}
		out = append(out, describePath(path))
	}
nextHost:
	for _, host := range p.OutboundHosts {
		for _, g := range granted.OutboundHosts {
			if hostCovers(g, host) {
				continue nextHost
			}
		}
		out = append(out, describeHost(host))
	}
	return out
}

type count uint64

func (c count) String() string { return strconv.FormatUint(uint64(c), 10) }

type cores float64

func (c cores) String() string { return strconv.FormatFloat(float64(c), 'g', -1, 64) }
