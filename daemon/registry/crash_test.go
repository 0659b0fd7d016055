package registry

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Environment of the child process of TestCrashConsistency.
const (
	crashEnvState = "DIMPLUGD_REGISTRY_CRASH_STATE"
	crashEnvSrc   = "DIMPLUGD_REGISTRY_CRASH_SRC"
	crashEnvSrc2  = "DIMPLUGD_REGISTRY_CRASH_SRC2"
	crashEnvSrc3  = "DIMPLUGD_REGISTRY_CRASH_SRC3"
)

// TestCrashChild is not a test: it is the child process of
// TestCrashConsistency. It installs a plugin, then writes keys and
// replaces a second plugin in a loop, printing a line after each commit,
// until it is killed.
func TestCrashChild(t *testing.T) {
	state := os.Getenv(crashEnvState)
	if state == "" {
		t.Skip("child process of TestCrashConsistency")
	}
	ctx := context.Background()
	s, err := Open(state)
	if err != nil {
		fmt.Println("CRASH error", err)
		os.Exit(2)
	}
	if _, err := s.InstallDir(ctx, os.Getenv(crashEnvSrc), InstallOptions{Enable: true}); err != nil {
		fmt.Println("CRASH error", err)
		os.Exit(2)
	}
	fmt.Println("CRASH installed")
	kv := s.KV("crashy")
	deadline := time.Now().Add(time.Minute)
	for i := 0; time.Now().Before(deadline); i++ {
		if err := kv.Set(fmt.Sprintf("key-%05d", i), []byte(strconv.Itoa(i))); err != nil {
			fmt.Println("CRASH error", err)
			os.Exit(2)
		}
		fmt.Println("CRASH set", i)
		switch i % 4 {
		case 0:
			if _, err := s.InstallDir(ctx, os.Getenv(crashEnvSrc2), InstallOptions{Replace: true}); err != nil {
				fmt.Println("CRASH error", err)
				os.Exit(2)
			}
			fmt.Println("CRASH replaced", i)
		case 1:
			if _, err := s.InstallDir(ctx, os.Getenv(crashEnvSrc3), InstallOptions{Enable: true}); err != nil {
				fmt.Println("CRASH error", err)
				os.Exit(2)
			}
			if err := s.KV("passing").Set("k", []byte("v")); err != nil {
				fmt.Println("CRASH error", err)
				os.Exit(2)
			}
			fmt.Println("CRASH added", i)
		case 2:
			if err := s.Remove("passing"); err != nil {
				fmt.Println("CRASH error", err)
				os.Exit(2)
			}
			fmt.Println("CRASH removed", i)
		}
	}
	os.Exit(3) // never killed
}

// TestCrashConsistency kills a process with SIGKILL while it installs and
// writes, then checks that everything it reported as committed is there
// and that nothing half-done is left.
func TestCrashConsistency(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a child process")
	}
	for round := range 6 {
		t.Run(fmt.Sprintf("round%d", round), func(t *testing.T) {
			state := t.TempDir()
			cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
			cmd.Env = append(os.Environ(),
				crashEnvState+"="+state,
				crashEnvSrc+"="+writePlugin(t, "crashy", "1.0.0", ""),
				crashEnvSrc2+"="+writePlugin(t, "replaced", "1.0.0", ""),
				crashEnvSrc3+"="+writePlugin(t, "passing", "1.0.0", ""),
			)
			cmd.Stderr = os.Stderr
			out, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			lastSet, replaced, installed := -1, false, false
			passing := ""           // the last of "added" and "removed" acknowledged
			killAt := 30 + 17*round // vary where the kill lands
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				f := strings.Fields(sc.Text())
				if len(f) < 2 || f[0] != "CRASH" {
					continue
				}
				switch f[1] {
				case "error":
					t.Fatalf("child: %s", sc.Text())
				case "installed":
					installed = true
				case "replaced":
					replaced = true
				case "set":
					lastSet, _ = strconv.Atoi(f[2])
				case "added", "removed":
					passing = f[1]
				}
				if lastSet >= killAt {
					break
				}
			}
			if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			err = cmd.Wait()
			if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("child was not killed by SIGKILL: %v", err)
			}
			if !installed || !replaced || lastSet < killAt {
				t.Fatalf("child stopped early: installed %v, replaced %v, last key %d", installed, replaced, lastSet)
			}

			s := openStore(t, state)
			rec, err := s.Get("crashy")
			if err != nil {
				t.Fatal(err)
			}
			if !rec.Enabled {
				t.Error("enabled flag lost")
			}
			if _, err := os.Stat(filepath.Join(rec.Dir, "run.sh")); err != nil {
				t.Errorf("files of crashy: %v", err)
			}
			rep, err := s.Get("replaced")
			if err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(rep.Dir, "run.sh")); err != nil {
				t.Errorf("files of the replaced plugin: %v", err)
			}
			// "passing" was being added and removed when the kill came:
			// whichever state it is in must be whole. (The child may have
			// gone on past the last line read, so either state is right.)
			switch p, err := s.Get("passing"); {
			case err == nil:
				if _, err := os.Stat(filepath.Join(p.Dir, "run.sh")); err != nil {
					t.Errorf("files of the added plugin: %v", err)
				}
			case errors.Is(err, ErrNotFound):
				if err := s.db.View(func(tx *bolt.Tx) error {
					if tx.Bucket(bucketKV).Bucket([]byte("passing")) != nil || tx.Bucket(bucketKVSize).Get([]byte("passing")) != nil {
						return errors.New("the removed plugin's key-value data survived it")
					}
					return nil
				}); err != nil {
					t.Error(err)
				}
			default:
				t.Fatal(err)
			}
			if passing == "" {
				t.Error("the child never added or removed a plugin before the kill")
			}
			kv := s.KV("crashy")
			for i := 0; i <= lastSet; i++ {
				v, ok, err := kv.Get(fmt.Sprintf("key-%05d", i))
				if err != nil || !ok || string(v) != strconv.Itoa(i) {
					t.Fatalf("key-%05d = %q, %v, %v; want %d", i, v, ok, err, i)
				}
			}
			assertClean(t, s)
			if err := s.db.View(func(tx *bolt.Tx) error {
				for err := range tx.Check() {
					return err
				}
				return nil
			}); err != nil {
				t.Errorf("database check: %v", err)
			}
		})
	}
}
