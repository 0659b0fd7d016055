// Command bench is dimplugd's benchmark harness, run by `make bench`
// (cd bench && go run -tags seccomp .). It is its own module
// (github.com/dimplugd/dimplugd/bench, with the daemon and the SDK replaced
// by this checkout), so that its baselines' dependencies (go-plugin, gRPC,
// protobuf) stay out of the daemon's module. It measures dimplugd against baselines
// measured in the same run on the same machine, and prints each result
// next to its ratio to the baseline, so that the figures in
// shared/ROADMAP.md ("Figures to beat") can be checked by reading one
// table. Absolute numbers move with the machine and its load; the ratios
// are the point.
//
// Sections (select with -only, e.g. -only spawn or -only spawn,hooks,streams):
//
// spawn — spawn-to-ready: the time from just before a process is started
// until it has answered the first message on fd 3. Rows: a plain exec of a
// static Go binary (no sandbox); bubblewrap with comparable isolation
// (--unshare-all, the binary's directory read-only as /, proc, dev, tmpfs
// /tmp, no capabilities); the container runtime's cold Start; the
// container runtime's Prepared.Start, timed alone after an untimed Prepare
// (the pre-started sandbox path); a real `dimplugd serve` process taking
// the media-badge example from `enable` to running (handshake answered, as
// stamped in the daemon's log; a note splits it at "sandbox started"); and,
// for reference, go-plugin launching its plugin unsandboxed up to the
// first answered call. Each row gives the median and 90th percentile over
// N runs after a warm-up and the ratio of its median to bubblewrap's
// (target for the sandboxed rows: at most 1.2×). A second table gives idle
// memory: VmRSS read from /proc after the plugin has been idle for a
// second, for media-badge in the sandbox under the daemon, for the
// go-plugin plugin and for the plain static binary (the Go runtime's
// floor), against the 8 MiB target and go-plugin's 13.9 MiB.
//
// hooks — one hooked request with the workload of
// shared/reference/capnp-probe.md (GET, path, 8 headers, 128 B body;
// response 200, 2 headers, 64 B body; the hook adds one header). Rows: a
// raw length-prefixed Unix-socket echo between two processes with the same
// request and response sizes (the floor of any IPC); a hashicorp/go-plugin
// v1.8.0 plugin answering the same call over its default gRPC transport
// (protobuf wire format, hand-encoded; see bench/internal/hookwire); and
// dimplugd: host.Session.Dispatch of a response-phase hook from this
// process to a `dimplugd serve` process, on to the sandboxed
// bench/plugins/badge and back (two IPC round trips where go-plugin makes
// one), and on a direct lane from the host to the plugin (one round trip),
// from this process's Go host and from the Rust host
// (sdk-rust/examples/bench-host.rs, the dimplugd-host crate's
// Session::dispatch, run as its own process against the same daemon and
// plugin; built with cargo in release mode against the crates `make
// rust-deps` unpacks, and "not measured" without them). Each row gives
// the sequential p50 and p99 latency and the throughput with 64 calls in
// flight on one connection; the ratio rows divide dimplugd's figures by
// the baselines' (target: dimplugd/go-plugin p50 at most 1×). A second table gives the cost of an unhooked request in
// the host: host.Middleware's ServeHTTP on a route no plugin hooks against
// calling the handler directly, both with an httptest.ResponseRecorder
// (target: under 1 µs more).
//
// streams — frame streams through a pass-through plugin
// (bench/plugins/passthrough, installed into a `dimplugd serve` process and
// sandboxed when the container runtime can run): MB/s and frames/s for
// 4 KiB, 256 KiB, 1 MiB and 6 MiB frames. Rows: memcpy in this process
// (the ceiling); a raw length-prefixed Unix-socket stream into a sink in
// another process; gRPC client-streaming into a sink in another process
// (default windows, protobuf wire format by hand, see
// bench/internal/framewire); and dimplugd: the host SDK sends frames it
// wrote once into shared memory (Stream.NewFrame, Send) and receives them
// back (Recv, Release) from a sender and a receiver goroutine, timed from
// the first send to the last receive, plus 4 KiB frames sent inline. Ratio
// columns divide dimplugd's MB/s by gRPC's and raw's (targets: 1 MiB frames
// at least 10× gRPC; 4 KiB frames no slower than gRPC). A second table
// gives the CPU each process of the dimplugd path spends per frame, and a
// third compares inline frames with shared-memory ones from 1 to 128 KiB,
// to place host.InlineMax.
//
// Helper binaries (the probe, the raw echo server, the go-plugin plugin,
// the badge plugin, media-badge, the stream sinks, the pass-through plugin
// and dimplugd) are built with `go build` into a temporary directory at
// start, each in its module (bench/plugins in this one, media-badge and
// dimplugd in the checkout's root); plugins are static (CGO_ENABLED=0).
// -quick makes every run short; the smoke test in bench_test.go uses it.
// Everything stays on this machine: Unix sockets and socketpairs only.
//
// -json FILE (BENCH_JSON=FILE make bench) also writes the results as JSON,
// once every section has run (a failed section's tables as far as they
// got): one object, {"run": {...}, "rows": [...]}, with one element of
// rows per line. "run" gives the start time (UTC), the Go version, GOOS,
// GOARCH, GOMAXPROCS and the CPU count, the load average, "mode" ("quick"
// or "full"), whether the race detector was on, the git commit of the
// checkout and whether it had uncommitted changes (both left out without
// git), the sections run and any section's error. "rows" has one object
// per printed value, every column of every row of every table, in the
// order printed: section, table (its title), row, column, unit and value
// (null where the table prints "–"). A row that was not measured has
// value null and "skipped" saying why ("optional": true when it needs a
// tool the rest does not, such as cargo). A ratio to a baseline (the
// "ratio X / Y" rows, and columns such as "p50 × bwrap" or "dimplugd ÷
// gRPC") has value, unit, value_row and value_column for what is
// compared, baseline (the baseline's row, or a fixed figure such as
// "target 8 MiB"), baseline_column and baseline_value for what it is
// compared with, and ratio = value / baseline_value, the printed figure:
// the Ratio type says how each is found in the table. For example:
//
//	jq -r '.rows[] | select(has("ratio")) | [.row, .column, .ratio] | @tsv' results.json
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/dimplugd/dimplugd/sandbox/container"
)

func main() {
	container.Init() // the container runtime re-executes this binary as each sandbox's init

	quick := flag.Bool("quick", false, "short runs (smoke test): the numbers are rough")
	only := flag.String("only", "", "comma-separated sections to run: "+strings.Join(sectionNames(), ", ")+" (default all)")
	jsonPath := flag.String("json", "", "also write the results as JSON to this `file` (see the package comment)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	opts := Options{Quick: *quick, Out: os.Stdout, Progress: os.Stderr}
	if *only != "" {
		opts.Only = strings.Split(*only, ",")
	}
	var results bytes.Buffer
	if *jsonPath != "" {
		opts.JSON = &results
	}
	_, err := Run(ctx, opts)
	if results.Len() > 0 {
		if werr := os.WriteFile(*jsonPath, results.Bytes(), 0o644); werr != nil {
			err = errors.Join(err, werr)
		} else {
			fmt.Fprintf(os.Stderr, "bench: wrote the results as JSON to %s\n", *jsonPath)
		}
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}
