package daemon

import (
	"math"
	"reflect"
	"strings"
	"testing"
	"time"

	"capnproto.org/go/capnp/v3"

	"github.com/dimplugd/dimplugd/sdk-go/manifest"
	"github.com/dimplugd/dimplugd/sdk-go/schema"
	"github.com/dimplugd/dimplugd/sdk-go/wire"
)

// controlSeeds are real control requests' parameter structs, as dimplugctl
// sends them, each marshalled as a message whose root is the struct.
func controlSeeds(tb testing.TB) [][]byte {
	var out [][]byte
	add := func(fill func(*capnp.Segment) error) {
		msg, seg, err := capnp.NewMessage(capnp.SingleSegment(nil))
		if err != nil {
			tb.Fatal(err)
		}
		if err := fill(seg); err != nil {
			tb.Fatal(err)
		}
		b, err := msg.Marshal()
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, b)
	}
	add(func(seg *capnp.Segment) error { // install with a grant
		p, err := schema.NewRootControl_install_Params(seg)
		if err != nil {
			return err
		}
		if err := p.SetArchive([]byte("\x1f\x8b\x08\x00 a gzip'd tar")); err != nil {
			return err
		}
		o, err := p.NewOptions()
		if err != nil {
			return err
		}
		o.SetReplace(true)
		o.SetEnable(true)
		g, err := o.NewGrant()
		if err != nil {
			return err
		}
		return wire.WritePermissions(g, manifest.Permissions{
			Memory: 64 * manifest.MiB, Tmp: 8 * manifest.MiB, Pids: 64, CPU: 0.5, OpenFiles: 256,
			ReadOnlyPaths: []string{"/srv/media"}, OutboundHosts: []string{"api.opensubtitles.com:443", "*.example.com:443"},
		})
	})
	add(func(seg *capnp.Segment) error { // install with --yes (no grant)
		p, err := schema.NewRootControl_install_Params(seg)
		if err != nil {
			return err
		}
		if err := p.SetArchive([]byte("tar")); err != nil {
			return err
		}
		_, err = p.NewOptions()
		return err
	})
	add(func(seg *capnp.Segment) error {
		p, err := schema.NewRootControl_setHookDeadline_Params(seg)
		if err != nil {
			return err
		}
		p.SetDeadlineMicros(50000)
		if err := p.SetHook("tag"); err != nil {
			return err
		}
		return p.SetName("media-badge")
	})
	add(func(seg *capnp.Segment) error { // wraps to 384ns without the range check
		p, err := schema.NewRootControl_setHookDeadline_Params(seg)
		if err != nil {
			return err
		}
		p.SetDeadlineMicros(math.MaxUint64/1000 + 1)
		if err := p.SetHook("tag"); err != nil {
			return err
		}
		return p.SetName("media-badge")
	})
	add(func(seg *capnp.Segment) error {
		p, err := schema.NewRootControl_logs_Params(seg)
		if err != nil {
			return err
		}
		p.SetTail(100)
		return p.SetName("media-badge")
	})
	add(func(seg *capnp.Segment) error {
		p, err := schema.NewRootControl_inspect_Params(seg)
		if err != nil {
			return err
		}
		return p.SetName("x\x00\x1b[31m")
	})
	return out
}

// FuzzControlArgs decodes arbitrary Cap'n Proto messages as the arguments
// of the control face's methods, as the daemon does before acting on them:
// no panic; what is accepted is in range (names follow the manifest's rule,
// deadlines are between 0 and manifest.MaxDeadline and equal what was
// sent, grants validate and survive the wire round trip); errors quote at
// most a short prefix of what was sent.
func FuzzControlArgs(f *testing.F) {
	for _, s := range controlSeeds(f) {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		msg, err := capnp.Unmarshal(data)
		if err != nil {
			return
		}
		root, err := msg.Root()
		if err != nil {
			return
		}
		s := root.Struct()
		checkErr := func(what string, err error) {
			if err != nil && len(err.Error()) > 64<<10+len(data) {
				t.Fatalf("%s: a %d-byte error for a %d-byte request", what, len(err.Error()), len(data))
			}
		}

		archive, opts, err := readInstallArgs(schema.Control_install_Params(s))
		checkErr("install", err)
		if err == nil {
			if len(archive) == 0 {
				t.Fatal("accepted an empty archive")
			}
			if opts.Grant != nil {
				g := *opts.Grant
				if err := g.Validate(); err != nil {
					t.Fatalf("accepted a grant that does not validate: %v", err)
				}
				_, seg, _ := capnp.NewMessage(capnp.SingleSegment(nil))
				wg, err := schema.NewRootPermissions(seg)
				if err != nil {
					t.Fatal(err)
				}
				if err := wire.WritePermissions(wg, g); err != nil {
					t.Fatalf("write accepted grant %+v: %v", g, err)
				}
				back, err := readGrant(wg)
				if err != nil {
					t.Fatalf("accepted grant %+v refused after a round trip: %v", g, err)
				}
				if !reflect.DeepEqual(g, back) {
					t.Fatalf("grant changed in a round trip:\n%+v\n%+v", g, back)
				}
			}
		}

		name, hook, d, err := readSetHookDeadlineArgs(schema.Control_setHookDeadline_Params(s))
		checkErr("setHookDeadline", err)
		if err == nil {
			if !validName(name) || !validName(hook) {
				t.Fatalf("accepted names %q, %q", name, hook)
			}
			sent := schema.Control_setHookDeadline_Params(s).DeadlineMicros()
			if d < 0 || d > manifest.MaxDeadline || uint64(d/time.Microsecond) != sent {
				t.Fatalf("deadline of %dµs read as %s", sent, d)
			}
		}

		for what, p := range map[string]interface{ Name() (string, error) }{
			"inspect": schema.Control_inspect_Params(s),
			"logs":    schema.Control_logs_Params(s),
		} {
			name, err := argName(p)
			checkErr(what, err)
			if err == nil && !validName(name) {
				t.Fatalf("%s: accepted name %q", what, name)
			}
			if err != nil && strings.ContainsAny(err.Error(), "\x00\x1b") {
				t.Fatalf("%s: error carries raw control characters: %q", what, err)
			}
		}
	})
}

// TestControlArgs pins the decoding fixes FuzzControlArgs guards: a
// deadline whose microseconds overflow is refused (it used to wrap to
// 384ns and be stored), a grant list that cannot be read is an error (it
// used to become an empty list), and names must follow the manifest's rule.
func TestControlArgs(t *testing.T) {
	seeds := controlSeeds(t)
	read := func(b []byte) capnp.Struct {
		msg, err := capnp.Unmarshal(b)
		if err != nil {
			t.Fatal(err)
		}
		root, err := msg.Root()
		if err != nil {
			t.Fatal(err)
		}
		return root.Struct()
	}
	if _, opts, err := readInstallArgs(schema.Control_install_Params(read(seeds[0]))); err != nil || opts.Grant == nil || !opts.Replace || !opts.Enable {
		t.Errorf("install with a grant: %+v, %v", opts, err)
	}
	if _, opts, err := readInstallArgs(schema.Control_install_Params(read(seeds[1]))); err != nil || opts.Grant != nil {
		t.Errorf("install without a grant: %+v, %v", opts, err)
	}
	if name, hook, d, err := readSetHookDeadlineArgs(schema.Control_setHookDeadline_Params(read(seeds[2]))); err != nil || name != "media-badge" || hook != "tag" || d != 50*time.Millisecond {
		t.Errorf("setHookDeadline: %q %q %s %v", name, hook, d, err)
	}
	if _, _, d, err := readSetHookDeadlineArgs(schema.Control_setHookDeadline_Params(read(seeds[3]))); err == nil {
		t.Errorf("a deadline of 2^64/1000+1 µs was accepted as %s", d)
	}
	if _, err := argName(schema.Control_inspect_Params(read(seeds[5]))); err == nil || strings.ContainsAny(err.Error(), "\x00\x1b") {
		t.Errorf("a name with control characters: %v", err)
	}

	// A grant whose path list points outside its segment.
	_, seg, _ := capnp.NewMessage(capnp.SingleSegment(nil))
	g, _ := schema.NewRootPermissions(seg)
	if err := wire.WritePermissions(g, manifest.Permissions{ReadOnlyPaths: []string{"/srv"}}); err != nil {
		t.Fatal(err)
	}
	b, _ := seg.Message().Marshal()
	// Word 0 of the segment is the root pointer, the struct's data section
	// (5 words) follows, then its pointers: make readOnlyPaths' far.
	off := 8 + 8 + 5*8
	b[off] = 0xfa
	b[off+4] = 0xff
	if _, err := readGrant(schema.Permissions(read(b))); err == nil {
		t.Error("a grant with an unreadable path list was accepted")
	}
}
