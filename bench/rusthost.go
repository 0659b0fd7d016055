package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/dimplugd/dimplugd/bench/internal/hookwire"
)

// The Rust host's row of the hooks section: sdk-rust/examples/bench-host.rs,
// the dimplugd-host crate's Session dispatching the workload on a direct
// lane, run as its own process against the section's daemon and plugin.
// It is built with cargo in release mode, offline, against the crates
// `make rust-deps` unpacked from Debian (sdk-rust/rust.mk): without cargo
// or those crates its row says why it was not measured.

// buildRustHost builds bench-host and returns its path.
func buildRustHost(ctx context.Context, repoRoot string) (string, error) {
	cargo := os.Getenv("CARGO") // rust.mk's CARGO, passed on by `make bench`
	if cargo != "" {
		if _, err := exec.LookPath(cargo); err != nil {
			return "", fmt.Errorf("cargo is not installed: %w", err)
		}
	} else {
		var err error
		if cargo, err = exec.LookPath("cargo"); err != nil {
			home, _ := os.UserHomeDir()
			cargo = filepath.Join(home, ".cargo", "bin", "cargo")
			if _, err := os.Stat(cargo); err != nil {
				return "", errors.New("cargo is not installed (rustup's, on PATH or in ~/.cargo/bin)")
			}
		}
	}
	vendor := os.Getenv("RUST_VENDOR") // rust.mk's RUST_VENDOR
	if vendor == "" {
		vendor = filepath.Join(repoRoot, "bin", "rust-vendor")
	}
	if _, err := os.Stat(filepath.Join(vendor, "stamp")); err != nil {
		return "", fmt.Errorf("no vendored Rust crates in %s: run make rust-deps", vendor)
	}
	if _, err := exec.LookPath("capnp"); err != nil {
		return "", errors.New("the capnp tool is missing (Debian: capnproto), which the crate's build.rs needs")
	}
	// The flags of rust.mk's RUST_CARGO_FLAGS.
	args := []string{"build", "--release", "--offline",
		"--config", `source.crates-io.replace-with="debian-vendor"`,
		"--config", "source.debian-vendor.directory=" + strconv.Quote(filepath.Join(vendor, "registry")),
		"--example", "bench-host", "--message-format", "short"}
	cmd := exec.CommandContext(ctx, cargo, args...)
	cmd.Dir = filepath.Join(repoRoot, "sdk-rust")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("cargo build --release --example bench-host (in sdk-rust): %w\n%s", err, tail(out, 2000))
	}
	bin := filepath.Join(cmd.Dir, "target", "release", "examples", "bench-host")
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("cargo built no %s: %w", bin, err)
	}
	return bin, nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

// rustWorkload is the hook workload as bench-host reads it on stdin.
type rustWorkload struct {
	Method       string      `json:"method"`
	Path         string      `json:"path"`
	Headers      [][2]string `json:"headers"`
	Body         string      `json:"body"`
	Response     rustResp    `json:"response"`
	ExpectHeader [2]string   `json:"expect_header"`
}

type rustResp struct {
	Status  int         `json:"status"`
	Headers [][2]string `json:"headers"`
	Body    string      `json:"body"`
}

// rustHostWorkload converts the workload as hostRequest does for the Go
// host: method, path, headers and body (route and parameters are the
// host's to fill on a direct lane).
func rustHostWorkload(c *hookwire.Call) ([]byte, error) {
	if !utf8.Valid(c.Request.Body) || !utf8.Valid(c.Response.Body) {
		return nil, errors.New("the workload's bodies are not text: bench-host reads them as JSON strings")
	}
	req, resp := hostRequest(c)
	pairs := func(h map[string][]string) [][2]string {
		var out [][2]string
		for _, k := range slices.Sorted(maps.Keys(h)) {
			for _, v := range h[k] {
				out = append(out, [2]string{k, v})
			}
		}
		return out
	}
	return json.Marshal(rustWorkload{
		Method:       req.Method,
		Path:         req.Path,
		Headers:      pairs(req.Header),
		Body:         string(req.Body),
		Response:     rustResp{Status: resp.Status, Headers: pairs(resp.Header), Body: string(resp.Body)},
		ExpectHeader: [2]string{hookwire.BadgeHeader, hookwire.BadgeValue},
	})
}

// rustResult is what bench-host prints.
type rustResult struct {
	LatNs     []int64 `json:"lat_ns"`
	CallsPerS float64 `json:"calls_per_s"`
	LaneCalls int     `json:"lane_calls"`
}

// rustTransport runs bench-host once per round against the daemon's
// socket and plugin: its own process, session and direct lane each time.
func rustTransport(e *env, socket, plugin string, c *hookwire.Call) (*transport, error) {
	workload, err := rustHostWorkload(c)
	if err != nil {
		return nil, err
	}
	return &transport{
		round: func(ctx context.Context, warm, n int, dur time.Duration) ([]time.Duration, float64, error) {
			cmd := exec.CommandContext(ctx, e.rustHost, socket, plugin, strconv.Itoa(warm), strconv.Itoa(n),
				strconv.FormatInt(dur.Milliseconds(), 10), strconv.Itoa(inFlight))
			cmd.Stdin = bytes.NewReader(workload)
			var stderr syncBuffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				return nil, 0, fmt.Errorf("bench-host: %w\n%s", err, stderr.Tail(2000))
			}
			var res rustResult
			if err := json.Unmarshal(out, &res); err != nil {
				return nil, 0, fmt.Errorf("bench-host printed %q: %w", tail(out, 200), err)
			}
			if len(res.LatNs) != n || res.CallsPerS <= 0 {
				return nil, 0, fmt.Errorf("bench-host measured %d calls (want %d) at %.0f calls/s", len(res.LatNs), n, res.CallsPerS)
			}
			lat := make([]time.Duration, len(res.LatNs))
			for i, ns := range res.LatNs {
				lat[i] = time.Duration(ns)
			}
			return lat, res.CallsPerS, nil
		},
	}, nil
}
