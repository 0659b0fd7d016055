//go:build linux && cgo

package container

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sandbox"
)

// spawner readies one probe with the given control socket, untimed, and
// returns the timed start and the untimed teardown.
type spawner func(ctl *os.File) (start func() error, stop func(), err error)

// measureSpawn starts the probe n times, each time timing from just before
// the start until the probe's answer to "ping" arrives on the control
// socket, and returns the durations sorted.
func measureSpawn(tb testing.TB, n int, spawn spawner) []time.Duration {
	tb.Helper()
	b, _ := tb.(*testing.B)
	timer := func(on bool) {
		switch {
		case b == nil:
		case on:
			b.StartTimer()
		default:
			b.StopTimer()
		}
	}
	out := make([]time.Duration, 0, n)
	for range n {
		timer(false)
		host, plugin := socketpair(tb)
		start, stop, err := spawn(plugin)
		timer(true)
		if err != nil {
			plugin.Close()
			host.Close()
			tb.Fatal(err)
		}
		t0 := time.Now()
		err = start()
		var line string
		if err == nil {
			_ = host.SetDeadline(time.Now().Add(10 * time.Second))
			_, err = fmt.Fprintln(host, "ping")
		}
		if err == nil {
			line, err = bufio.NewReader(host).ReadString('\n')
		}
		d := time.Since(t0)
		timer(false)
		plugin.Close()
		host.Close()
		stop()
		if err != nil || line != "ok pong\n" {
			tb.Fatalf("ping: %q %v", line, err)
		}
		out = append(out, d)
	}
	timer(true)
	slices.Sort(out)
	return out
}

func commandSpawner(name string, args ...string) spawner {
	return func(ctl *os.File) (func() error, func(), error) {
		cmd := exec.Command(name, args...)
		cmd.ExtraFiles = []*os.File{ctl}
		stop := func() {
			if cmd.Process != nil {
				cmd.Process.Kill()
				cmd.Wait()
			}
		}
		return cmd.Start, stop, nil
	}
}

// bwrapArgs run the probe under bubblewrap with the same namespaces, a
// read-only root holding the plugin's files, proc, a minimal dev, a tmpfs
// /tmp and no capabilities. bwrap gets no seccomp filter or cgroups here.
func bwrapArgs(root string) []string {
	return []string{
		"--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
		"--unshare-net", "--unshare-cgroup", "--die-with-parent", "--new-session",
		"--cap-drop", "ALL",
		"--ro-bind", filepath.Join(root, "probe"), "/probe",
		"--ro-bind", filepath.Join(root, "data.txt"), "/data.txt",
		"--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
		"--remount-ro", "/",
		"--chdir", "/", "--clearenv", "--setenv", "HOME", "/tmp",
		"/probe",
	}
}

// containerSpawner times Runtime.Start; with prepared, it prepares the
// sandbox untimed and times Prepared.Start, the cost a supervisor pays for
// an instance it prepared ahead of need.
func containerSpawner(tb testing.TB, h *harness, prepared bool) spawner {
	n := 0
	return func(ctl *os.File) (func() error, func(), error) {
		n++
		spec := &sandbox.Spec{
			ID:         fmt.Sprintf("spawn-%d-%d-%t", os.Getpid(), n, prepared),
			Plugin:     "probe",
			Root:       h.root,
			Entrypoint: "probe",
			Control:    ctl,
		}
		var p sandbox.Process
		stop := func() {
			if p != nil {
				if err := p.Destroy(); err != nil {
					tb.Error(err)
				}
			}
		}
		if !prepared {
			start := func() (err error) {
				p, err = h.rt.Start(context.Background(), spec)
				return err
			}
			return start, stop, nil
		}
		pp, err := h.rt.Prepare(context.Background(), spec)
		if err != nil {
			return nil, nil, err
		}
		start := func() (err error) {
			p, err = pp.Start(context.Background())
			return err
		}
		return start, stop, nil
	}
}

// BenchmarkSpawn compares spawn-to-first-answer for a plain exec,
// bubblewrap, this runtime's Start and a prepared instance's Start. Besides
// ns/op it reports the median and 90th percentile in milliseconds.
func BenchmarkSpawn(b *testing.B) {
	h := newHarness(b)
	report := func(b *testing.B, spawn spawner) {
		measureSpawn(b, 2, spawn) // warm-up, untimed
		b.ResetTimer()
		ds := measureSpawn(b, b.N, spawn)
		b.StopTimer()
		b.ReportMetric(float64(ds[len(ds)/2].Microseconds())/1000, "ms-p50")
		b.ReportMetric(float64(ds[len(ds)*9/10].Microseconds())/1000, "ms-p90")
	}
	b.Run("exec", func(b *testing.B) { report(b, commandSpawner(filepath.Join(h.root, "probe"))) })
	b.Run("bwrap", func(b *testing.B) {
		if _, err := exec.LookPath("bwrap"); err != nil {
			b.Skip("bwrap not installed")
		}
		report(b, commandSpawner("bwrap", bwrapArgs(h.root)...))
	})
	b.Run("container", func(b *testing.B) { report(b, containerSpawner(b, h, false)) })
	b.Run("container-prepared", func(b *testing.B) { report(b, containerSpawner(b, h, true)) })
}
