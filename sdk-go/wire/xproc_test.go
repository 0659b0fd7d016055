package wire

import (
	"context"
	"net"
	"os"
	"os/exec"
	"sort"
	"syscall"
	"testing"
	"time"

	"github.com/dimplugd/dimplugd/sdk-go/schema"
)

func BenchmarkLaneCrossProcess(b *testing.B) {
	bin := b.TempDir() + "/laneecho"
	if out, err := exec.Command("go", "build", "-o", bin, "./testdata/laneecho").CombinedOutput(); err != nil {
		b.Fatalf("%v %s", err, out)
	}
	fds, _ := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	theirs := os.NewFile(uintptr(fds[1]), "t")
	cmd := exec.Command(bin)
	cmd.ExtraFiles = []*os.File{theirs}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	theirs.Close()
	defer cmd.Process.Kill()
	f := os.NewFile(uintptr(fds[0]), "o")
	c, _ := net.FileConn(f)
	f.Close()
	l := NewLaneClient(c)
	defer l.Close()
	ctx := context.Background()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		reply, _, err := l.Call(ctx, func(f schema.LaneFrame) error { _, err := f.NewHook(); return err })
		if err != nil {
			b.Fatal(err)
		}
		reply.Release()
		lat = append(lat, time.Since(t0))
	}
	sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
}
